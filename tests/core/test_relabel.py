"""The classes file of `alps relabel` (every problem one line), vector geometry, the review selection's determinism."""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path

import numpy as np
import pytest

from alps_client.errors import AlpsError
from alps_client.io.shards import ImageShard
from alps_client.io.vectors import mask_polygons, square_metres
from alps_client.labels.classes import ClassMap
from alps_client.labels.painting import IGNORE
from alps_client.labels.relabel import (
    ClassesFileError,
    class_map_from_spec,
    classes_yaml,
    clusters_key,
    parse_classes,
)
from alps_client.masks import MaskSet, encode_coco_rle
from alps_client.review.select import N_NEAR, N_RANDOM, ReviewCollector


def test_listed_classes_first_then_unlisted_clusters_in_order_and_drops():
    spec = {"classes": [{"name": "building", "clusters": [3, 0]}, {"name": "water", "clusters": [1]}], "drop": [4]}
    cm = class_map_from_spec(spec, 6)
    assert cm.names == ("building", "water", "cluster_2", "cluster_5")
    assert cm.cluster_to_class == (0, 1, 2, 0, IGNORE, 3)
    assert cm.label_lut()[[0, 3, 4, 5, 255]].tolist() == [0, 0, 255, 3, 255]
    only_drop = class_map_from_spec({"drop": [0]}, 3)
    assert only_drop.names == ("cluster_1", "cluster_2") and only_drop.cluster_to_class == (IGNORE, 0, 1)
    # Nothing listed, nothing dropped: the classes `alps run` wrote, the way back from a relabel (it was refused as
    # "nothing would change", which was not so on a relabelled dataset)
    persian = "\u0646\u06cc\u0645\u200c\u0641\u0627\u0635\u0644\u0647"  # a zero-width non-joiner is part of the word
    assert class_map_from_spec({"classes": [{"name": persian, "clusters": [0]}]}, 1).names == (persian,)
    undone = class_map_from_spec({"classes": []}, 3)
    assert undone.names == ("cluster_0", "cluster_1", "cluster_2") and undone.cluster_to_class == (0, 1, 2)
    # (mutation audit of relabel:) names stripped; `classes:` or `drop:` left empty; 255 classes fit; two dropped
    # clusters both said (the report's template listed the first alone, and re-applied it gave the second back)
    assert class_map_from_spec({"classes": [{"name": " roof ", "clusters": [0]}]}, 2).names == ("roof", "cluster_1")
    assert class_map_from_spec({"classes": None, "drop": [0]}, 2).names == ("cluster_1",)
    assert class_map_from_spec({"classes": [{"name": "a", "clusters": [0]}], "drop": None}, 2).dropped == []
    assert class_map_from_spec({"classes": []}, IGNORE).n_classes == IGNORE
    two_dropped = class_map_from_spec({"classes": [{"name": "a", "clusters": [0]}], "drop": [1, 2]}, 4)
    assert two_dropped.dropped == [1, 2] and two_dropped.names == ("a", "cluster_3")
    from alps_client.labels.classes import in_dropped_clusters

    assert in_dropped_clusters({"n_masks_in_dropped_clusters": 1}) == " (1 in dropped clusters)"
    assert in_dropped_clusters({"n_masks_in_dropped_clusters": 0}) == in_dropped_clusters({}) == ""


@pytest.mark.parametrize(
    ("spec", "problems"),
    [
        ({"classes": [{"name": "a", "clusters": [0, 9]}]}, ["class 'a' clusters: cluster 9 does not exist (this dataset has clusters 0..3)"]),
        ({"classes": [{"name": "a", "clusters": [0]}, {"name": "b", "clusters": [0, 1]}]},
         ["cluster 0 is in two classes, 'a' and 'b'; keep it in one"]),
        ({"classes": [{"name": "a", "clusters": []}]}, ["class 'a' lists no clusters; give it at least one, e.g. clusters: [0]"]),
        ({"classes": [{"name": "a", "clusters": [2]}], "drop": [2]}, ["cluster 2 is both in class 'a' and in drop"]),
        ({"classes": [{"name": "a", "clusters": [0]}, {"name": "a", "clusters": [1]}]}, ["class 'a' is listed twice"]),
        ({"classes": [{"name": "cluster_3", "clusters": [0]}]}, ["the name 'cluster_3' is taken by unlisted cluster 3"]),
        ({"drop": [0, 1, 2, 3]}, ["every cluster is dropped"]),
        ({"clases": [{"name": "a", "clusters": [0]}]}, ["unknown key(s) ['clases']: only 'classes', 'drop' and 'centroids' are read"]),
        ({"classes": [{"name": "a", "clusters": [True, "x"]}]},
         ["class 'a' clusters: True is not a cluster id", "class 'a' clusters: 'x' is not a cluster id"]),
        ({"classes": [{"clusters": [0]}]}, ["class #1 needs a non-empty 'name'"]),
        ({"classes": [{"name": True, "clusters": [0]}]}, ["got True (quote it: YAML reads yes, no"]),
        ({"classes": [{"name": "a"}]}, ["class 'a' lists no clusters"]),  # one line, not two
        ({"classes": [{"name": "a", "clusters": 0}]}, ["class 'a' clusters must be a list of cluster ids, got 0"]),
        ({"classes": [{"name": "a\nb", "clusters": [0]}]}, ["class #1 name 'a\\nb' holds a control character"]),
        ({"classes": [{"name": "caf\u00e9", "clusters": [0]}, {"name": "cafe\u0301", "clusters": [1]}]},
         ["class 'caf\u00e9' is listed twice"]),  # one name typed two ways (NFC, NFD): two classes that look alike
        ({"classes": [{"name": "a\u200bb", "clusters": [0]}]}, ["class #1 name 'a\\u200bb' holds an invisible character (U+200B)"]),
        ({"classes": [{"name": "\u202eabc", "clusters": [0]}]}, ["holds an invisible character (U+202E)"]),
        ({"classes": [{"name": "a", "clusters": [0]}], "drop": 1}, ["drop must be a list of cluster ids, got 1"]),
        # Ignored before, as if empty: a drop of cluster 0 meant as `drop: [0]` silently kept it.
        ({"classes": [{"name": "a", "clusters": [1]}], "drop": 0}, ["drop must be a list of cluster ids, got 0"]),
        ({"classes": {}}, ["'classes' must be a list of {name, clusters} entries, got {}"]),
        ({"classes": 0}, ["'classes' must be a list of {name, clusters} entries, got 0"]),
        # (mutation audit of relabel:) the cluster one past the last, which crashed with an IndexError
        ({"classes": [{"name": "a", "clusters": [4]}]}, ["cluster 4 does not exist (this dataset has clusters 0..3)"]),
        ({"classes": [{"name": "   ", "clusters": [0]}]}, ["class #1 needs a non-empty 'name', got '   '"]),
        ({"classes": [{"name": " a ", "clusters": [0]}, {"name": "a", "clusters": [1]}]}, ["class 'a' is listed twice"]),
        # a key of the file indented into a class: its clusters would stay labelled, unsaid
        ({"classes": [{"name": "a", "clusters": [0], "drop": [1]}]}, ["class #1 must be {name: ..., clusters: [...]}"]),
        ({"classes": [{"name": "a", "clusters": [0]}], 1: "x", "foo": "y"},  # keys of two types: a TypeError
         ["unknown key(s) ['foo', 1]: only 'classes', 'drop' and 'centroids' are read"]),
        ({"classes": [{"name": "roof\uffff", "clusters": [0]}]},  # its YAML template could not be read back
         ["class #1 name 'roof\\uffff' holds U+FFFF, which is no character of text"]),
        ({"classes": [{"name": "a\ud800", "clusters": [0]}]}, ["holds U+D800, which is no character of text"]),
        ({"classes": [{"name": "a b", "clusters": [0]}, {"name": "a\u00a0b", "clusters": [1]}]},  # a no-break space
         ["class 'a\u00a0b' looks like class 'a b' ('a\\xa0b' and 'a b': they differ in a space or the form"]),
    ],
)
def test_every_problem_is_one_clear_line(spec, problems):
    with pytest.raises(ClassesFileError) as info:
        class_map_from_spec(spec, 4, "c.yaml")
    got = info.value.problems
    assert len(got) == len(problems), got
    for line, expected in zip(got, problems):
        assert expected in line and "\n" not in line
    assert str(info.value).splitlines()[0].startswith("c.yaml: ")


def test_files_yaml_json_and_syntax_errors(tmp_path):
    (tmp_path / "c.yaml").write_text("classes:\n  - {name: building, clusters: [0, 3]}\ndrop: [1]\n")
    cm, record = parse_classes(tmp_path / "c.yaml", _centres(4))
    assert cm.names == ("building", "cluster_2") and record["spec"]["drop"] == [1]
    (tmp_path / "c.json").write_text(json.dumps({"classes": [{"name": "x", "clusters": [1]}]}))
    assert parse_classes(tmp_path / "c.json", _centres(2))[0].names == ("x", "cluster_0")
    (tmp_path / "bad.yaml").write_text("classes: [{name: a, clusters: [0]}\n")
    with pytest.raises(ClassesFileError, match=r"not valid YAML: .* at line \d+ column \d+"):
        parse_classes(tmp_path / "bad.yaml", _centres(2))
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ClassesFileError, match="not valid JSON"):
        parse_classes(tmp_path / "bad.json", _centres(2))
    with pytest.raises(ClassesFileError, match="no such file"):
        parse_classes(tmp_path / "absent.yaml", _centres(2))
    with pytest.raises(ClassesFileError, match="a folder, not a classes file"):  # it said "no such file"
        parse_classes(tmp_path, _centres(2))
    # A pipe, as bash's `--classes <(...)` gives: read as a file is (it was "no such file").
    os.mkfifo(tmp_path / "pipe")
    writer = threading.Thread(target=(tmp_path / "pipe").write_text, args=("classes: [{name: p, clusters: [1]}]\n",))
    writer.start()
    assert parse_classes(tmp_path / "pipe", _centres(2))[0].names == ("p", "cluster_0")
    writer.join()
    # A key given twice: the parsers kept the last, and a class or a whole `classes:` block went unsaid
    for name, text, where in (
            ("twice.yaml", "classes:\n  - {name: a, clusters: [0]}\nclasses:\n  - {name: b, clusters: [1]}\n",
             "key 'classes' given twice (first at line 1; only the last would count) at line 3"),
            ("clusters.yaml", "classes:\n  - {name: a, clusters: [0], clusters: [1]}\n", "key 'clusters' given twice"),
            ("drop.json", '{"classes": [], "drop": [0], "drop": [1]}', "not valid JSON: key 'drop' given twice")):
        (tmp_path / name).write_text(text)
        with pytest.raises(ClassesFileError, match=re.escape(where)):
            parse_classes(tmp_path / name, _centres(2))
    (tmp_path / "merged.yaml").write_text("classes:\n  - &a {name: a, clusters: [0]}\n  - {<<: *a, name: c, clusters: [1]}\n")
    assert parse_classes(tmp_path / "merged.yaml", _centres(2))[0].names == ("a", "c")  # keys after a merge key override it
    # Aliases repeating anchors ("billion laughs", 469 bytes): the line naming the wrong entry wrote all 10^9 of
    # them out, 9.5 GB and rising (security audit). Refused before anything is built from it.
    levels = "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9))
    (tmp_path / "laughs.yaml").write_text(f"a0: &a0 [{', '.join('0' * 10)}]\n{levels}classes:\n  - {{name: x, clusters: *a8}}\n")
    with pytest.raises(ClassesFileError, match=r"not valid YAML: its aliases \(\*name\) repeat its anchors \(&name\) into "
                                                r"more than 1,000,000 entries"):
        parse_classes(tmp_path / "laughs.yaml", _centres(2))
    # What Windows editors save: UTF-16 ("Unicode"), Latin-1, or UTF-8 with a byte-order mark (JSON too).
    text = "classes:\n  - {name: café, clusters: [0]}\n"
    for encoding, readable in (("utf-16", False), ("latin-1", False), ("utf-8-sig", True)):
        for suffix, content in ((".yaml", text), (".json", json.dumps({"classes": [{"name": "café", "clusters": [0]}]}, ensure_ascii=False))):
            path = tmp_path / f"{encoding}{suffix}"
            path.write_bytes(content.encode(encoding))
            if readable:
                assert parse_classes(path, _centres(2))[0].names == ("café", "cluster_1")
            else:
                with pytest.raises(ClassesFileError, match=r"not UTF-8 text \(byte 0x[0-9a-f]{2} at offset \d+\); save"):
                    parse_classes(path, _centres(2))


def test_a_problem_with_a_class_of_a_yaml_file_names_its_line(tmp_path):
    """In a long reviewed file, "class #4 needs a non-empty 'name'" left the user counting entries (class review
    audit); each class problem names the entry's line now."""
    (tmp_path / "c.yaml").write_text(
        "# reviewed\nclasses:\n  - {name: roofs, clusters: [0]}\n  - name: water\n    clusters: [1, 9]\n"
        "  - {name: pool, clusters: [1]}\n  - {name: , clusters: [2]}\n  - {name: roofs, clusters: [3]}\n"
        "  - {name: cluster_2, clusters: [0]}\n")
    with pytest.raises(ClassesFileError) as raised:
        parse_classes(tmp_path / "c.yaml", _centres(4))
    where = tmp_path / "c.yaml"
    assert str(raised.value).splitlines() == [
        f"{where}: class 'water' (line 4) clusters: cluster 9 does not exist (this dataset has clusters 0..3)",
        f"{where}: cluster 1 is in two classes, 'water' and 'pool' (line 6); keep it in one",
        f"{where}: class #4 (line 7) needs a non-empty 'name', got None",
        f"{where}: class 'roofs' (line 8) is listed twice; list all its clusters in one entry to merge them",
        f"{where}: cluster 0 is in two classes, 'roofs' and 'cluster_2' (line 9); keep it in one",
        f"{where}: the name 'cluster_2' (line 9) is taken by unlisted cluster 2; choose another name"]
    # the drop list names the line of the entry at fault too, in either YAML style (the list's first line was named)
    (tmp_path / "d.yaml").write_text("classes:\n  - {name: a, clusters: [0]}\ndrop:\n  - 2\n  - 7\n")
    (tmp_path / "e.yaml").write_text("classes: [{name: a, clusters: [0, 2]}]\n\ndrop: [2, x]\n")
    (tmp_path / "g.yaml").write_text("classes: []\n# dropped:\ndrop: 3\n")
    for name, expected in (("d.yaml", ["drop (line 5): cluster 7 does not exist (this dataset has clusters 0..3)"]),
                           ("e.yaml", ["drop (line 3): 'x' is not a cluster id (an integer)",
                                       ("cluster 2 is both in class 'a' (line 1) and in drop (line 3); keep it in one "
                                        "of them")]),
                           ("g.yaml", ["drop (line 3) must be a list of cluster ids, got 3"])):
        with pytest.raises(ClassesFileError) as raised:
            parse_classes(tmp_path / name, _centres(4))
        assert str(raised.value).splitlines() == [f"{tmp_path / name}: {line}" for line in expected]
    (tmp_path / "f.json").write_text('{"classes": [], "drop": [7]}')  # JSON has no lines to name
    with pytest.raises(ClassesFileError, match=r"f.json: drop: cluster 7 does not exist"):
        parse_classes(tmp_path / "f.json", _centres(4))


def test_the_template_reads_back_as_the_same_classes(tmp_path):
    cm = ClassMap(("building", "yes", "a: b", "water body", "水"), (0, IGNORE, 1, 0, 2, 3, 4))
    (tmp_path / "t.yaml").write_text(classes_yaml(cm, "header"))
    assert parse_classes(tmp_path / "t.yaml", _centres(7))[0] == cm
    assert '"水"' in (tmp_path / "t.yaml").read_text()  # shown as written, not as "\\u6c34"


def test_a_template_names_its_clusters_and_another_datasets_is_refused(tmp_path):
    """A reviewed classes file applied to another run with as many clusters put its names on other clusters without
    a word (its cluster 3 is not this one's); the template says which clusters it names (class review audit)."""
    cm = ClassMap(("building", "water"), (0, 1, IGNORE))
    ours, theirs = _centres(3), _centres(3, seed=1)
    (tmp_path / "t.yaml").write_text(classes_yaml(cm, "header", ours))
    assert f'centroids: "{clusters_key(ours)}"' in (tmp_path / "t.yaml").read_text()
    assert parse_classes(tmp_path / "t.yaml", ours)[0] == cm
    assert parse_classes(tmp_path / "t.yaml", ours.astype(np.float64))[0] == cm  # as the review reads them
    with pytest.raises(ClassesFileError) as refused:
        parse_classes(tmp_path / "t.yaml", theirs)
    (line,) = str(refused.value).splitlines()
    assert f"written for other clusters (centroids: {clusters_key(ours)}; this dataset's are " \
           f"{clusters_key(theirs)})" in line and "delete the 'centroids:' line" in line
    without = "\n".join(x for x in (tmp_path / "t.yaml").read_text().splitlines() if not x.startswith("centroids:"))
    (tmp_path / "hand.yaml").write_text(without)
    assert parse_classes(tmp_path / "hand.yaml", theirs)[0] == cm  # a file without the line: taken as it is


def _centres(n: int, seed: int = 0) -> np.ndarray:
    """``(n, 8) float32`` cluster centres."""
    return np.random.default_rng(seed).standard_normal((n, 8)).astype(np.float32)


def test_polygons_keep_holes_and_parts_and_rasterise_back_exactly():
    from affine import Affine
    from rasterio.features import rasterize

    mask = np.zeros((20, 30), bool)
    mask[2:12, 3:15] = True
    mask[5:8, 6:9] = False  # a hole
    mask[14:18, 20:29] = True  # a second part
    mask[13, 19] = True  # touches the second part at a corner only
    geometry = mask_polygons(mask, Affine.identity())
    assert geometry.geom_type == "MultiPolygon" and geometry.is_valid
    assert sorted(len(p.interiors) for p in geometry.geoms) == [0, 0, 1]
    assert (rasterize([geometry], out_shape=mask.shape, dtype=np.uint8) > 0).tolist() == mask.tolist()
    moved = mask_polygons(mask, Affine(0.5, 0, 100, 0, -0.5, 200))
    assert moved.bounds == (101.5, 191.0, 114.5, 199.0) and moved.area == mask.sum() * 0.25


def test_a_polygons_area_on_the_ground_in_metres_feet_degrees_or_none():
    """On the ellipsoid: a projection's scale (Web Mercator, 4x at 60 degrees north) and unit change nothing."""
    import math

    from rasterio.crs import CRS
    from shapely.geometry import MultiPolygon, Polygon, box

    from alps_client.io.vectors import PIXEL_CRS
    from tests.flows.test_placement import equal_area

    for code, field in ((32633, box(500000, 4000000, 500100, 4000050)), (3857, box(1113194, 8399737, 1113294, 8399787)),
                        (2227, box(6000000, 2000000, 6000100, 2000050)), (4326, box(10, 0, 10.001, 0.001)),
                        (4326, box(10, 60, 10.001, 60.001))):
        assert square_metres(CRS.from_epsg(code).to_wkt())(field) == pytest.approx(equal_area(field, code), rel=1e-6)
    assert square_metres(CRS.from_epsg(3857).to_wkt())(box(1113194, 8399737, 1113294, 8399787)) == \
        pytest.approx(5000 / 4, rel=0.01)  # 60 degrees north: Web Mercator draws it 4x as large
    degrees = square_metres(CRS.from_epsg(4326).to_wkt())
    assert degrees(box(10, 0, 10.001, 0.001)) == pytest.approx(12309, rel=1e-3)  # 111.32 m x 110.57 m
    # a hole cuts, whichever way its rings turn (pyproj signs rings by their direction), and parts add up
    outline, hole = box(10, 0, 10.01, 0.01).exterior.coords, box(10.002, 0.002, 10.004, 0.004).exterior.coords
    for ring in (hole, hole[::-1]):
        holed = Polygon(outline, [ring])
        assert degrees(holed) == pytest.approx(degrees(Polygon(outline)) - degrees(Polygon(ring)), rel=1e-9)
        assert degrees(MultiPolygon([holed, box(11, 0, 11.001, 0.001)])) == pytest.approx(degrees(holed) + 12309,
                                                                                          rel=1e-3)
    field = box(0, 0, 100, 50)
    assert all(math.isnan(square_metres(crs)(field)) for crs in (None, "", PIXEL_CRS))  # pixels, no CRS


def _shard(stem, n, seed):
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, 8, 8), bool)
    for i in range(n):
        masks[i, i % 8, :] = True
    ms = MaskSet.from_rles((8, 8), encode_coco_rle(masks))
    return ImageShard(stem, f"{stem}.png", "fp", ms, np.ones(n, bool), rng.normal(size=(n, 4)).astype(np.float32))


def test_review_selection_is_bounded_and_independent_of_order():
    centroids = np.zeros((2, 4), np.float32)
    centroids[1] = 1.0
    shards = [_shard(f"img{i}", 8, i) for i in range(9)]

    def collect(order):
        c = ReviewCollector(centroids, seed=0)
        for s in order:
            ids = np.argmin(((s.pfl[:, None] - centroids[None]) ** 2).sum(-1), 1)
            label = np.full((8, 8), IGNORE, np.uint8)
            for i, k in enumerate(ids):
                label[i % 8] = k
            c.add(s, ids, label)
        return c

    a, b = collect(shards), collect(shards[::-1])
    for ca, cb in zip(a.clusters, b.clusters):
        assert ca.shown() == cb.shown() and ca.top_images() == cb.top_images() and ca.n_masks == cb.n_masks
        assert len(ca.shown()) == min(N_NEAR + N_RANDOM, ca.n_masks) and len({(p.stem, p.index) for _, p in ca.shown()}) == len(ca.shown())
    assert sum(c.n_masks for c in a.clusters) == 72
    nearest = a.clusters[0].shown()[0][1]
    assert nearest.key == min(p.key for kind, p in a.clusters[0].shown() if kind == "near")


@pytest.mark.parametrize("relabelled", [True, False], ids=["relabelled", "earlier"])
def test_centroids_set_aside_by_a_rerun_keep_their_model_family(tmp_path, relabelled):
    """The ``--centroids`` a rerun's warning names (a relabel's clusters, or the earlier clusters it replaced) were
    saved without a ``centroids.json``: a SAM 2.1 run refused them ("nothing beside them says which model's
    features they were fitted on") and the user's classes could not come back; a SAM run warned about its own file."""
    from alps_client.io.rewrite import carried_relabel
    from alps_client.labels.clustering import centroids_family, centroids_sidecar, check_centroids_family

    out = tmp_path / "out"
    out.mkdir()
    earlier = np.eye(4, 8, dtype=np.float32)
    np.save(out / "centroids.npy", earlier)
    (out / "centroids.json").write_text(json.dumps(centroids_sidecar({"model_family": "sam2",
                                                                       "model_type": "sam2.1_hiera_t"})))
    record = {"spec": {"classes": [{"name": "road", "clusters": [0, 1]}]}, "classes_file_sha256": "0" * 64}
    (out / "manifest.json").write_text(json.dumps({"relabel": record} if relabelled else {}))
    warnings: list[str] = []
    assert carried_relabel(out, earlier[:3] + 1, warnings.append) is None
    (warning,) = warnings
    aside = Path(warning.split("--centroids ")[1].split()[0])
    assert aside.parent.parent.name == ("relabelled" if relabelled else "earlier")
    np.testing.assert_array_equal(np.load(aside), earlier)
    assert centroids_family(aside) == ("sam2", "sam2.1_hiera_t")
    check_centroids_family(aside, "sam2")  # the command the warning gives is not refused
    with pytest.raises(AlpsError, match=r"fitted on sam2 features \(sam2\.1_hiera_t\)"):
        check_centroids_family(aside, "sam")


def test_classes_carried_from_another_dataset_record_its_absolute_path(tmp_path, monkeypatch):
    """``relabel.from`` held the ``--centroids`` folder as typed (``audit/o6``): a record that meant another folder
    when read from anywhere but the run's working directory."""
    from alps_client.io.rewrite import carried_relabel

    other = tmp_path / "other"
    other.mkdir()
    centroids = np.eye(3, 8, dtype=np.float32)
    np.save(other / "centroids.npy", centroids)
    record = {"spec": {"classes": [{"name": "road", "clusters": [0, 2]}]}, "classes_file_sha256": "0" * 64}
    (other / "manifest.json").write_text(json.dumps({"relabel": record}))
    monkeypatch.chdir(tmp_path)
    carried = carried_relabel(tmp_path / "new", centroids, pytest.fail, centroids_file="other/centroids.npy")
    assert carried is not None
    class_map, carried_record = carried
    assert class_map.names == ("road", "cluster_1") and carried_record == {**record, "from": str(other)}


def test_a_run_that_wrote_no_dataset_is_named_by_what_it_did(tmp_path):
    """The refusal said "set out to label N" with N the images the run labelled before it failed (1 of 2)."""
    from alps_client.io.dataset import _check_last_run

    with pytest.raises(AlpsError, match=r"on .* labelled 1 image\(s\) and wrote no dataset"):
        _check_last_run(tmp_path, {"dataset_written": False, "to_label": 2, "labelled": ["a"]}, {}, "rerun")
    with pytest.raises(AlpsError, match=r"set out to label 2 image\(s\) and wrote no dataset"):
        _check_last_run(tmp_path, {"dataset_written": False, "to_label": 2}, {}, "rerun")
    _check_last_run(tmp_path, {"dataset_written": False, "to_label": 0, "labelled": []}, {}, "rerun")  # shards as they were
    _check_last_run(tmp_path, {"dataset_written": True, "to_label": 2, "labelled": ["a"]}, {}, "rerun")
