"""Label maps, splits, the dataset writer (COCO consistency, whole-dataset replacement), shards."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from alps_client.config import AmgConfig, ClusterConfig, GateConfig, InputConfig, PipelineConfig, WriterConfig
from alps_client.errors import AlpsError
from alps_client.io import publish as publish_module
from alps_client.io.shards import (
    ImageShard,
    read_pfl,
    read_shard,
    read_shard_meta,
    read_shard_status,
    shard_damage,
    shard_fingerprint,
    write_shard,
)
from alps_client.io.splits import assign_splits, images_outside_split_folders, split_shortfall
from alps_client.io.writer import write_dataset
from alps_client.labels.classes import ClassMap
from alps_client.labels.painting import IGNORE, paint_label_map, palette
from alps_client.masks import MaskSet, encode_coco_rle
from tests.mmseg_checks import loader_splits, mmseg_listing


def boxes(*rects, size=(10, 10)):
    masks = np.zeros((len(rects), *size), bool)
    for m, (y0, y1, x0, x1) in zip(masks, rects):
        m[y0:y1, x0:x1] = True
    return masks


def test_paint_small_masks_on_top_255_elsewhere_and_dropped_classes_hide():
    masks = boxes((3, 5, 3, 5), (1, 9, 1, 9))  # small first: area order must still win
    rles = encode_coco_rle(masks)
    label = paint_label_map((10, 10), rles, [4, 64], [7, 2])
    assert label[0, 0] == IGNORE and label[1, 1] == 2 and label[3, 3] == 7
    dropped = paint_label_map((10, 10), rles, [4, 64], [IGNORE, 2])
    assert dropped[3, 3] == IGNORE and dropped[1, 1] == 2
    assert paint_label_map((4, 5), [], [], []).tolist() == [[IGNORE] * 5] * 4
    with pytest.raises(ValueError, match=r"one area and one class id per mask, got 2 areas and 1 ids for 2 masks"):
        paint_label_map((10, 10), rles, [4, 64], [1])
    with pytest.raises(ValueError, match=r"got 0 areas and 0 ids for 2 masks"):  # its message itself failed
        paint_label_map((10, 10), rles, [], [])
    with pytest.raises(ValueError, match=r"got 1 areas"):  # the second mask was left unpainted, unsaid
        paint_label_map((10, 10), rles, [4], [7, 2])
    with pytest.raises(ValueError, match=r"class ids in 0\.\.255, got -1\.\.2"):
        paint_label_map((10, 10), rles, [4, 64], [-1, 2])


def test_paint_refuses_a_size_its_masks_do_not_have():
    """A map of another size was painted from the masks' column-major runs, scrambled, without a word."""
    masks = np.zeros((1, 4, 6), bool)
    masks[0, 1:3, 2:5] = True
    rles = encode_coco_rle(masks)
    assert paint_label_map((4, 6), rles, [6], [1]).sum() == 6 + 255 * 18
    with pytest.raises(ValueError, match=r"image_size is \(6, 4\) \(H, W\), but the masks' RLEs are \(4, 6\) "
                                         r"\(give \(H, W\), not PIL's \(W, H\)\)"):
        paint_label_map((6, 4), rles, [6], [1])
    with pytest.raises(ValueError, match=r"image_size is \(3, 3\) \(H, W\), but the masks' RLEs are \(4, 6\)$"):
        paint_label_map((3, 3), rles, [6], [1])


def test_splits_near_the_fraction_by_group_and_given_splits_kept():
    stems = [(f"img_{i}", f"img_{i}", None) for i in range(12)]
    splits = assign_splits(stems, seed=0, val_fraction=0.3)
    assert list(splits.values()).count("val") == 4  # round(0.3 * 12), not a coin flip per image
    assert splits == assign_splits(list(reversed(stems)), seed=0, val_fraction=0.3)  # order does not matter
    assert splits != assign_splits(stems, seed=1, val_fraction=0.3)
    tiles = [(f"scene{s}__x{x}", f"scene{s}", None) for s in range(5) for x in range(4)]
    by_scene = assign_splits(tiles, seed=0, val_fraction=0.3)
    for s in range(5):  # the tiles of one scene never straddle train and val
        assert len({by_scene[f"scene{s}__x{x}"] for x in range(4)}) == 1
    given = assign_splits([("a", "a", "test"), ("b", "b", "val"), ("c", "c", None)], 0, 0.0)
    assert given == {"a": "test", "b": "val", "c": "train"}
    # Rounding may not leave train empty: round(0.5 * 2) and round(0.5 * 1) scenes went to val, none to train.
    for n in (1, 2):
        few = assign_splits([(f"s{i}", f"s{i}", None) for i in range(n)], seed=0, val_fraction=0.5)
        assert list(few.values()).count("train") == 1
    assert assign_splits([("t", "t", "train"), ("s", "s", None)], 0, 0.5) == {"t": "train", "s": "val"}


def test_a_split_that_whole_scenes_leave_far_from_the_fraction_is_said():
    """12 tiles of one scene at 0.2: none can go to val (one group stays in train), which went unsaid."""
    def said(images, fraction=0.2):
        return split_shortfall(images, assign_splits(images, seed=0, val_fraction=fraction), fraction)

    one_scene = [(f"scene__x{x}", "scene", None) for x in range(12)]
    line = said(one_scene)
    assert line.startswith("val holds 0 of the 12 images (0%; --val-fraction 0.2): the split keeps the tiles of a "
                           "scene and the slices of a volume together (1 group(s) here)")
    assert line.endswith("without val images mmseg_dataset.py validates on test, else on the images trained on "
                         "(scores not held out)")
    two_scenes = [(f"s{s}__x{x}", f"s{s}", None) for s in range(2) for x in range(6)]
    assert said(two_scenes).startswith("val holds 0 of the 12 images")
    assert said([(f"i{i}", f"i{i}", None) for i in range(12)]) is None  # 2 of 12: as near as whole images allow
    assert said([("only", "only", None)]) is None  # one image: nothing to split
    assert said(one_scene, 0.0) is None  # no val asked for
    subject = [(f"sub-01__s{x}", "sub-01", None) for x in range(12)]  # grouped by --split-group, not by scene
    assert split_shortfall(subject, assign_splits(subject, 0, 0.2), 0.2, "sub-[^/]+").startswith(
        "val holds 0 of the 12 images (0%; --val-fraction 0.2): the split keeps the inputs of each --split-group "
        "'sub-[^/]+' match together (1 group(s) here), so it cannot come nearer")
    assert said([(f"t{i}", f"t{i}", "train") for i in range(5)]) is None  # the user's own folders
    # Images beside train/ and val/ folders went to a split unsaid (a layout that looked like the whole choice).
    mixed = [("t", "t", "train"), ("v", "v", "val"), ("loose", "loose", None)]
    assert images_outside_split_folders(mixed, assign_splits(mixed, 0, 0.3), 0.3) == (
        "1 image(s) lie outside the dataset's train/val/test folders (e.g. loose): split by --val-fraction 0.3 as a "
        "dataset without those folders is, 0 to val and 1 to train; move them into a folder to choose")
    free = [("a", "a", None), ("b", "b", None)]
    assert images_outside_split_folders(free, assign_splits(free, 0, 0.3), 0.3) is None  # no folders at all


def test_the_fraction_counts_images_not_scenes():
    """One scene of 12 tiles beside one small image at 0.3: 12 val / 1 train (half the scenes), whichever the
    seed ranked first; and a few scenes of unequal tiles come near 0.3 of the images."""
    tiles = [(f"scene__x{x}", "scene", None) for x in range(12)]
    for seed in range(6):
        splits = assign_splits([*tiles, ("small", "small", None)], seed=seed, val_fraction=0.3)
        assert list(splits.values()).count("val") == 1 and splits["small"] == "val"  # |1 - 3.9| < |12 - 3.9|
    scenes = [(f"s{s}__x{x}", f"s{s}", None) for s, n in enumerate([9, 1, 1, 6, 2, 3, 8]) for x in range(n)]
    for seed in range(6):
        n_val = list(assign_splits(scenes, seed=seed, val_fraction=0.3).values()).count("val")
        assert abs(n_val - 0.3 * 30) <= 9 / 2  # within half the largest scene of 0.3


def test_a_resplit_keeps_the_earlier_split_of_every_group_and_splits_the_added_ones():
    """Ranking every group again put some of the earlier val images in train once images were added: a model
    validated on them would then be trained on them."""
    first = assign_splits([(f"img_{i}", f"img_{i}", None) for i in range(12)], seed=0, val_fraction=0.3)
    grown = [(f"img_{i}", f"img_{i}", None) for i in range(40)]
    fresh = assign_splits(grown, seed=0, val_fraction=0.3)
    assert any(fresh[stem] != split for stem, split in first.items())  # what a fresh ranking does
    kept = assign_splits(grown, seed=0, val_fraction=0.3, earlier=first)
    assert {stem: kept[stem] for stem in first} == first
    assert list(kept.values()).count("val") == 12  # round(0.3 * 40): the added images make up the fraction
    # the earlier train images gone: all that is left was val, and train may not be empty
    val_only = [(stem, stem, None) for stem, split in first.items() if split == "val"]
    assert "train" in assign_splits(val_only, seed=0, val_fraction=0.3, earlier=first).values()


def make_shard(path, stem, masks, keep, pfl, extra=None):
    ms = MaskSet.from_rles(masks.shape[1:], encode_coco_rle(masks), predicted_iou=np.linspace(0.9, 1, len(masks)))
    shard = ImageShard(stem, f"{stem}.png", "fp", ms, np.asarray(keep, bool), np.asarray(pfl, np.float32), extra or {})
    write_shard(path, shard)
    return path


def test_shard_round_trip_status_and_stale(tmp_path):
    masks = boxes((0, 5, 0, 5), (2, 9, 3, 8))
    path = make_shard(tmp_path / "s.npz", "s", masks, [True, False], np.ones((1, 256)), {"k": 1})
    back = read_shard(path)
    assert back.masks.rles == encode_coco_rle(masks) and back.masks.areas.tolist() == [25, 35]
    assert back.keep.tolist() == [True, False] and back.extra == {"k": 1} and back.image_size == (10, 10)
    fp_a = shard_fingerprint("model-a", PipelineConfig().labelling_dict())
    fp_b = shard_fingerprint("model-a", PipelineConfig(amg=AmgConfig(points_per_side=8)).labelling_dict())
    assert fp_a != fp_b and fp_a == shard_fingerprint("model-a", PipelineConfig().labelling_dict())
    assert read_shard_status(tmp_path / "absent.npz", "fp")[0] == "missing"
    assert read_shard_status(path, "fp")[0] == "current" and read_shard_status(path, fp_b)[0] == "stale"
    # With the input file's signature: a shard that does not record the one it was made from is not trusted.
    signature = {"name": "s.png", "size": 10, "mtime_ns": 1}
    assert read_shard_status(path, "fp", signature)[0] == "changed"
    assert read_shard_status(path, fp_b, signature)[0] == "stale"
    signed = make_shard(tmp_path / "t.npz", "t", masks, [True, False], np.ones((1, 256)), {"source_signature": signature})
    assert read_shard_status(signed, "fp", signature)[0] == "current"
    for changed in ({**signature, "size": 11}, {**signature, "mtime_ns": 2}, {**signature, "name": "s.jpg"}, {}):
        assert read_shard_status(signed, "fp", changed)[0] == "changed"
    # The path in the dataset: a shard that records it is another file's once that differs; one written before
    # paths were recorded is judged without it (an upgrade does not label every image of a nested dataset again).
    in_val = {**signature, "path": "val/s.png"}
    assert read_shard_status(signed, "fp", in_val)[0] == "current"
    at_path = make_shard(tmp_path / "u.npz", "u", masks, [True, False], np.ones((1, 256)), {"source_signature": in_val})
    assert read_shard_status(at_path, "fp", in_val)[0] == "current"
    assert read_shard_status(at_path, "fp", {**signature, "path": "train/s.png"})[0] == "changed"
    # The files GDAL reads beside it likewise: recorded ({} for none), a sidecar added, changed or gone is a change.
    placed = {**in_val, "sidecars": {"s.tif.aux.xml": "00ff"}}
    assert read_shard_status(at_path, "fp", placed)[0] == "current"  # written before sidecars were recorded
    with_sidecars = make_shard(tmp_path / "v.npz", "v", masks, [True, False], np.ones((1, 256)),
                               {"source_signature": {**in_val, "sidecars": {}}})
    assert read_shard_status(with_sidecars, "fp", {**in_val, "sidecars": {}})[0] == "current"
    assert read_shard_status(with_sidecars, "fp", placed)[0] == "changed"
    # Damaged: its features' bytes altered (the metadata intact: it read as current, and every rerun then failed
    # in the clustering), cut short, or zero bytes (a crash before the data reached the disk).
    data = bytearray(signed.read_bytes())
    at = data.index(np.ones(4, np.float32).tobytes())
    data[at + 3] ^= 0xFF
    signed.write_bytes(bytes(data))
    assert read_shard_status(signed, "fp", signature)[0] == "damaged" and "CRC-32" in shard_damage(signed)
    for broken in (b"truncated", b""):
        path.write_bytes(broken)
        assert read_shard_status(path, "fp")[0] == "damaged" and shard_damage(path)


def test_shards_read_by_several_threads_at_once_read_whole(tmp_path):
    """The images in flight read shards at once, while the garbage collector runs Python code inside whatever
    allocates (here: objects with a ``__del__``, collected often; the switch interval short, as on a busy machine).
    In CPython 3.11 two array headers parsed at once failed one read with a SystemError ("AST constructor
    recursion depth mismatch")."""
    import gc
    import sys
    import threading

    masks = boxes((0, 5, 0, 5), (2, 9, 3, 8))
    path = make_shard(tmp_path / "s.npz", "s", masks, [True, False], np.arange(512).reshape(2, 256), {"k": 1})
    expected = read_shard(path)

    class Cycle:
        def __init__(self) -> None:
            self.me = self

        def __del__(self) -> None:
            sum(range(50))

    failures, wrong = [], []

    def read_many() -> None:
        for _ in range(500):
            try:
                meta, pfl, whole = read_shard_meta(path), read_pfl(path), read_shard(path)
            except Exception as err:  # noqa: BLE001 (what the test is about)
                failures.append(f"{type(err).__name__}: {err}")
                return
            if meta["stem"] != "s" or not np.array_equal(pfl, expected.pfl) or whole.masks.rles != expected.masks.rles:
                wrong.append(meta)
            for _ in range(5):
                Cycle()

    switch, threshold = sys.getswitchinterval(), gc.get_threshold()
    sys.setswitchinterval(1e-6)
    gc.set_threshold(50)
    try:
        threads = [threading.Thread(target=read_many) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(switch)
        gc.set_threshold(*threshold)
    assert not failures and not wrong, (failures[:3], len(wrong))


@pytest.fixture
def two_shards(tmp_path):
    """Image 'a': a big mask (cluster 0) holding a small one (cluster 1), plus a gated one. Image 'b': all gated."""
    big, small, gated = boxes((1, 9, 1, 9), (3, 5, 3, 5), (0, 10, 0, 10))
    centroids = np.eye(2, 256, dtype=np.float32)
    a = make_shard(tmp_path / "a.npz", "a", np.stack([big, small, gated]), [True, True, False], centroids)
    b = make_shard(tmp_path / "b.npz", "b", gated[None], [False], np.zeros((0, 256)))
    for stem in "ab":
        Image.fromarray(np.full((10, 10, 3), 100, np.uint8)).save(tmp_path / f"{stem}.png")
    sources = {s: tmp_path / f"{s}.png" for s in "ab"}
    return [a, b], centroids, sources


def read_labels(out):
    return {p.stem: np.asarray(Image.open(p)) for p in (out / "ann_dir").glob("*/*.png")}


def coco_files(out):
    return {p.name: json.loads(p.read_text()) for p in out.glob("instances_*.json")}


def test_dataset_files_counts_and_coco_consistency(two_shards, tmp_path):
    shards, centroids, sources = two_shards
    cfg = PipelineConfig(cluster=ClusterConfig(n_clusters=2), writer=WriterConfig(val_fraction=0.5))
    errors = [{"path": "bad.jpg", "reason": "zero-byte file"}]
    out = tmp_path / "out"
    summary = write_dataset(out, shards, centroids, cfg, {"is_stand_in": True}, errors, sources)
    labels = read_labels(out)
    assert (labels["b"] == IGNORE).all()  # every readable image gets a label file, even when all masks are gated
    assert labels["a"][1, 1] == 0 and labels["a"][3, 3] == 1 and labels["a"][0, 0] == IGNORE
    assert summary.n_masks_gated == 2 and summary.n_masks_kept == 2 and summary.n_train + summary.n_val == 2
    assert summary.masks_per_class == [1, 1] and summary.pixels_per_class == [60, 4]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model_is_stand_in"] and manifest["counts"]["n_images"] == 2
    assert manifest["classes"] == {"names": ["cluster_0", "cluster_1"], "cluster_to_class": [0, 1]}
    assert (out / "errors.jsonl").read_text() == json.dumps(errors[0], sort_keys=True) + "\n"
    annotations = [a for coco in coco_files(out).values() for a in coco["annotations"]]
    assert len(annotations) == 2
    for ann in annotations:  # COCO boxes and areas are those of the RLE itself
        rle = {**ann["segmentation"], "counts": ann["segmentation"]["counts"].encode()}
        assert ann["bbox"] == mask_utils.toBbox(rle).tolist() and ann["area"] == int(mask_utils.area(rle))
        decoded = mask_utils.decode(rle).astype(bool)
        # The instance's pixels carry its class in ann_dir, except where a smaller (later-painted) mask covers them.
        cls = ann["category_id"] - 1
        assert (labels["a"][decoded] == cls).mean() == (1.0 if cls == 1 else 60 / 64)
    assert np.load(out / "centroids.npy").shape == (2, 256)


def test_kept_and_gated_counts_and_coco_ids_are_each_their_own(two_shards, tmp_path):
    """Counts and ids a hand mutation could swap unseen (mutation audit): the fixture above keeps as many masks as it
    gates, and holds one image with annotations, so neither the gated count taking the kept one nor annotation ids
    repeated from one image to the next failed a test."""
    from tests.coco_checks import assert_coco_consistent, coco_by_image

    _, centroids, sources = two_shards
    big, small, gated = boxes((1, 9, 1, 9), (3, 5, 3, 5), (0, 10, 0, 10))
    corner = big.copy()
    corner[6:9, 6:9] = False  # not a box: a COCO area taken from its bbox differs from the RLE's
    shards = [make_shard(tmp_path / "a.npz", "a", np.stack([big, small, gated]), [True, True, False], centroids),
              make_shard(tmp_path / "b.npz", "b", np.stack([corner, small]), [True, True], centroids)]
    cfg = PipelineConfig(cluster=ClusterConfig(n_clusters=2), writer=WriterConfig(val_fraction=0.0))
    summary = write_dataset(tmp_path / "out", shards, centroids, cfg, {}, [], sources)
    assert (summary.n_masks_kept, summary.n_masks_gated) == (4, 1)
    counts = json.loads((tmp_path / "out" / "manifest.json").read_text())["counts"]
    assert (counts["n_masks_kept"], counts["n_masks_gated"]) == (4, 1)
    assert sorted(len(annotations) for annotations in coco_by_image(tmp_path / "out").values()) == [2, 2]  # ids unique
    assert_coco_consistent(tmp_path / "out")  # areas and boxes those of the RLEs


def test_a_dataset_of_255_clusters_uses_every_id_beside_the_one_for_no_mask(tmp_path):
    """Class ids 0..254 and 255 for no mask fill a uint8 label map: 255 clusters were refused "(255 marks 'no
    mask')", one short (code review)."""
    from tests.coco_checks import assert_coco_consistent

    pixels = np.arange(255)
    masks = np.zeros((255, 16, 16), bool)
    masks[pixels, pixels // 16, pixels % 16] = True  # one pixel each; the last pixel under no mask
    centroids = np.eye(255, 256, dtype=np.float32)
    shard = make_shard(tmp_path / "a.npz", "a", masks, np.ones(255, bool), centroids)
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(tmp_path / "a.png")
    cfg = PipelineConfig(cluster=ClusterConfig(n_clusters=255), writer=WriterConfig(val_fraction=0.0))
    summary = write_dataset(tmp_path / "out", [shard], centroids, cfg, {}, [], {"a": tmp_path / "a.png"})
    label = read_labels(tmp_path / "out")["a"]
    assert summary.n_classes == 255 and label.ravel().tolist() == [*range(255), IGNORE]
    assert_coco_consistent(tmp_path / "out")
    assert json.loads((tmp_path / "out" / "classes.json").read_text())["classes"][-1]["id"] == 254
    with pytest.raises(ValueError, match=r"n_clusters must be an integer in 1\.\.255 \(class ids 0\.\.254; 255 marks"):
        ClusterConfig(n_clusters=256)


def test_a_dataset_without_a_val_split_is_validated_on_train_in_its_mmsegmentation_config(two_shards, tmp_path):
    """``--val-fraction 0``, or a single scene: ``mmseg_dataset.py`` validated on ``img_dir/val``, which did not
    exist, so mmsegmentation failed as training started."""
    shards, centroids, sources = two_shards
    cfg = PipelineConfig(cluster=ClusterConfig(n_clusters=2), writer=WriterConfig(val_fraction=0.0))
    summary = write_dataset(tmp_path / "out", shards, centroids, cfg, {}, [], sources)
    assert summary.n_train == 2 and summary.n_val == 0 and not (tmp_path / "out" / "img_dir" / "val").exists()
    assert len(mmseg_listing(tmp_path / "out")) == 2  # every loader lists images that exist
    note = comments((tmp_path / "out" / "mmseg_dataset.py").read_text())
    assert "no val split" in note and "validation and test run on train, the images trained on." in note


@pytest.mark.parametrize(("given", "trained", "validated", "tested"), [
    (("val", "test"), "val", "val", "test"),
    (("test", "test"), "test", "test", "test"),
])
def test_a_dataset_whose_folders_give_no_train_images_trains_on_what_it_has(two_shards, tmp_path, given, trained,
                                                                             validated, tested):
    """Input folders that hold only val/ and test/ images: the config trained on ``img_dir/train``, which did not
    exist, so mmsegmentation failed as training started."""
    _, centroids, sources = two_shards
    big = boxes((1, 9, 1, 9))
    shards = [make_shard(tmp_path / f"{stem}.npz", stem, big, [True], centroids[:1], {"split": split})
              for stem, split in zip("ab", given, strict=True)]
    cfg = PipelineConfig(cluster=ClusterConfig(n_clusters=1))
    summary = write_dataset(tmp_path / "out", shards, centroids[:1], cfg, {}, [], sources)
    assert summary.n_train == 0 and not (tmp_path / "out" / "img_dir" / "train").exists()
    assert len(mmseg_listing(tmp_path / "out")) == 2  # every loader lists images that exist
    assert loader_splits(tmp_path / "out") == {"train": trained, "val": validated, "test": tested}
    cfg_text = (tmp_path / "out" / "mmseg_dataset.py").read_text()
    assert f"no train split (its input's folders hold only {' and '.join(dict.fromkeys(given))} images): training" \
           f" runs on {trained}." in comments(cfg_text)


def test_images_and_previews_asked_for_need_a_file_for_each_image(two_shards, tmp_path):
    """Without ``image_sources`` the dataset had no img_dir/ nor vis/, its manifest recording copy_images and
    write_vis and its mmsegmentation config listing img_dir/, without a word."""
    shards, centroids, sources = two_shards
    cfg = PipelineConfig(cluster=ClusterConfig(n_clusters=2))
    with pytest.raises(ValueError, match=r"image_sources names no image file for 2 of the 2 labelled image\(s\) "
                                         r"\(a, b\), which copy_images and write_vis need"):
        write_dataset(tmp_path / "out", shards, centroids, cfg, {}, [])
    with pytest.raises(ValueError, match=r"for 1 of the 2 labelled image\(s\) \(b\)"):
        write_dataset(tmp_path / "out", shards, centroids, cfg, {}, [], {"a": sources["a"]})
    assert not (tmp_path / "out" / "manifest.json").exists()
    bare = PipelineConfig(cluster=ClusterConfig(n_clusters=2), writer=WriterConfig(copy_images=False, write_vis=False))
    assert write_dataset(tmp_path / "out", shards, centroids, bare, {}, []).n_images == 2
    assert not (tmp_path / "out" / "img_dir").exists() and (tmp_path / "out" / "ann_dir").is_dir()


def comments(config_text: str) -> str:
    """The comment lines of a config file, unwrapped into one line."""
    return " ".join(ln[2:] for ln in config_text.splitlines() if ln.startswith("# "))


def test_img_dir_holds_one_image_format_as_mmsegmentation_needs(two_shards, tmp_path):
    """Sources that share a format are copied byte for byte (.jpeg as .jpg); mixed ones all become PNGs of the
    same pixels, since mmsegmentation lists a split's images by one img_suffix."""
    shards, centroids, _ = two_shards
    cfg = PipelineConfig(cluster=ClusterConfig(n_clusters=2))
    rgb = np.random.default_rng(0).integers(0, 255, (10, 10, 3), np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=90)
    Image.fromarray(rgb).save(tmp_path / "b.JPEG", quality=90)
    Image.fromarray(rgb).save(tmp_path / "b.png")
    copies = {}
    for name, sources in (("same", {"a": tmp_path / "a.jpg", "b": tmp_path / "b.JPEG"}),
                          ("mixed", {"a": tmp_path / "a.jpg", "b": tmp_path / "b.png"})):
        write_dataset(tmp_path / name, shards, centroids, cfg, {}, [], sources)
        copies[name] = {p.name: p for p in (tmp_path / name / "img_dir").glob("*/*")}
        assert json.loads((tmp_path / name / "manifest.json").read_text())["img_suffix"] == (
            ".jpg" if name == "same" else ".png")
        names = {a["file_name"] for coco in coco_files(tmp_path / name).values() for a in coco["images"]}
        assert names == set(copies[name])
        assert len(mmseg_listing(tmp_path / name)) == 2  # what mmsegmentation loads: every image, with labels
    uncopied = PipelineConfig(cluster=ClusterConfig(n_clusters=2), writer=WriterConfig(copy_images=False))
    write_dataset(tmp_path / "uncopied", shards, centroids, uncopied, {}, [],
                  {"a": tmp_path / "a.jpg", "b": tmp_path / "b.png"})  # for the previews
    assert not (tmp_path / "uncopied" / "img_dir").exists()
    assert not (tmp_path / "uncopied" / "mmseg_dataset.py").exists()  # it would name images that are not there
    assert set(copies["same"]) == {"a.jpg", "b.jpg"}
    assert copies["same"]["b.jpg"].read_bytes() == (tmp_path / "b.JPEG").read_bytes()
    assert set(copies["mixed"]) == {"a.png", "b.png"}
    for stem, source in (("a", "a.jpg"), ("b", "b.png")):
        np.testing.assert_array_equal(np.asarray(Image.open(copies["mixed"][f"{stem}.png"])),
                                      np.asarray(Image.open(tmp_path / source).convert("RGB")))
    # A JPEG saved as .png beside PNGs lay in img_dir as JPEG bytes under .png (and a PNG as .jpg beside JPEGs,
    # under img_suffix .jpg): a loader that picks its decoder by the extension cannot read them.
    (tmp_path / "c.png").write_bytes((tmp_path / "a.jpg").read_bytes())
    (tmp_path / "d.jpg").write_bytes((tmp_path / "b.png").read_bytes())
    for name, sources in (("misnamed_jpeg", {"a": tmp_path / "b.png", "b": tmp_path / "c.png"}),
                          ("misnamed_png", {"a": tmp_path / "a.jpg", "b": tmp_path / "d.jpg"})):
        write_dataset(tmp_path / name, shards, centroids, cfg, {}, [], sources)
        assert json.loads((tmp_path / name / "manifest.json").read_text())["img_suffix"] == ".png"
        for copy in (tmp_path / name / "img_dir").glob("*/*"):
            assert copy.suffix == ".png" and Image.open(copy).format == "PNG", copy


def test_an_image_named_with_the_image_suffix_pairs_with_its_label_map_in_mmsegmentation(tmp_path):
    """mmsegmentation finds a label map by ``img.replace(img_suffix, seg_map_suffix)``, everywhere in the name:
    ``photo.jpg.jpg`` under img_suffix .jpg would look for ``photo.png.png``. Such a dataset's images are PNGs."""
    centroids = np.eye(2, 256, dtype=np.float32)
    (box,) = boxes((1, 9, 1, 9))
    rgb = np.random.default_rng(0).integers(0, 255, (10, 10, 3), np.uint8)
    shards, sources = [], {}
    for stem in ("photo.jpg", "b"):
        shards.append(make_shard(tmp_path / f"{stem}.npz", stem, box[None], [True], centroids[:1]))
        Image.fromarray(rgb).save(tmp_path / f"{stem}.jpg", quality=90)
        sources[stem] = tmp_path / f"{stem}.jpg"
    write_dataset(tmp_path / "out", shards, centroids, PipelineConfig(cluster=ClusterConfig(n_clusters=1)), {}, [],
                  sources)
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["img_suffix"] == ".png"
    assert sorted(image.name for image, _ in mmseg_listing(tmp_path / "out")) == ["b.png", "photo.jpg.png"]


def test_rerun_replaces_the_whole_dataset_and_a_class_map_merges_and_drops(two_shards, tmp_path):
    shards, centroids, sources = two_shards
    out = tmp_path / "out"
    by_split = {}
    for seed in range(6):  # find two seeds that put image 'a' in different splits
        cfg = PipelineConfig(cluster=ClusterConfig(n_clusters=2), writer=WriterConfig(seed=seed, val_fraction=0.5))
        write_dataset(out, shards, centroids, cfg, {}, [], sources)
        (out / "ann_dir" / "mine.txt").write_text("a user's file inside a dataset folder is replaced with it")
        (out / "notes.txt").write_text("a user's file beside the dataset stays")
        files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if ".alps" not in p.parts)
        assert sum("ann_dir/" in f and f.endswith(".png") for f in files) == 2  # never old + new split
        by_split.setdefault(next(f for f in files if f.endswith(("ann_dir/train/a.png", "ann_dir/val/a.png"))), seed)
    assert len(by_split) == 2 and (out / "notes.txt").is_file()
    (out / "evaluation.json").write_text("{}")  # `alps evaluate`'s scores of these labels
    said = []
    last = PipelineConfig(cluster=ClusterConfig(n_clusters=2), writer=WriterConfig(seed=5, val_fraction=0.5))
    write_dataset(out, shards, centroids, last, {}, [], sources, warn=said.append)  # the same labels again
    assert (out / "evaluation.json").read_text() == "{}" and not said  # it still scores them: kept (was removed)
    # but not where an image is gone, or the classes renamed with names of the same length: the label maps and
    # classes.json are compared whole, not by their list or sizes alone (mutation audit)
    for fewer, renamed in ((shards[:1], None), (shards, ClassMap(("cluster_9", "cluster_8"), (0, 1)))):
        write_dataset(out, fewer, centroids, last, {}, [], sources, class_map=renamed)
        assert not (out / "evaluation.json").exists(), (len(fewer), renamed)
        write_dataset(out, shards, centroids, last, {}, [], sources)
        (out / "evaluation.json").write_text("{}")
    merged = ClassMap(("thing",), (0, 0))
    write_dataset(out, shards, centroids, PipelineConfig(), {}, [], sources, class_map=merged, warn=said.append)
    assert not (out / "evaluation.json").exists()  # stale: it scored the earlier labels
    assert said == [("evaluation.json (it scored the earlier labels: run `alps evaluate` again) of the earlier dataset "
                     "is not in the new one (a rewrite replaces the dataset whole)")]  # it went unsaid
    assert set(np.unique(read_labels(out)["a"])) == {0, IGNORE}
    dropped = ClassMap(("big",), (0, IGNORE))
    write_dataset(out, shards, centroids, PipelineConfig(), {}, [], sources, class_map=dropped)
    label = read_labels(out)["a"]
    assert label[1, 1] == 0 and label[3, 3] == IGNORE  # the dropped small mask hides what lies under it
    classes = json.loads((out / "classes.json").read_text())
    assert classes["dropped_clusters"] == [1] and classes["classes"][0]["clusters"] == [0]
    assert sum(len(c["annotations"]) for c in coco_files(out).values()) == 1


def at_third_swap_rename(monkeypatch: pytest.MonkeyPatch, out: Path, action: Callable[[], None]) -> list[str]:
    """Call ``action`` at the third rename of a swap into ``out``; the renames made (sources), filled as they come."""
    renames: list[str] = []
    real_replace = publish_module.os.replace

    def replace(src, dst):
        if Path(dst).parent in (out, out / ".alps" / "previous"):  # the swap's renames, not the staged writes
            renames.append(src)
            if len(renames) == 3:
                action()
        return real_replace(src, dst)

    monkeypatch.setattr(publish_module.os, "replace", replace)
    return renames

def test_a_clean_up_killed_part_way_never_leaves_an_output_of_the_earlier_dataset(two_shards, tmp_path):
    """``OUT/.alps/previous`` left by a clean-up killed part way: the next swap parked nothing there (a name already
    taken), and an output the new dataset lacks (``vis/`` after ``--no-vis``) stayed in OUT beside it."""
    shards, centroids, sources = two_shards
    out = tmp_path / "out"
    write_dataset(out, shards, centroids, PipelineConfig(), {}, [], sources)
    assert (out / "vis").is_dir()
    (out / ".alps" / "previous" / "vis").mkdir(parents=True)
    write_dataset(out, shards, centroids, PipelineConfig(writer=WriterConfig(write_vis=False)), {}, [], sources)
    assert not (out / "vis").exists() and not (out / ".alps" / "previous").exists()


def test_a_report_killed_after_its_swap_before_its_clean_up_is_finished(two_shards, tmp_path):
    """The new page in place and the old one still aside: putting the old one back failed ("Directory not empty")
    in every command's recovery, until the user deleted it by hand."""
    from alps_client.io import publish as publish_module

    shards, centroids, sources = two_shards
    out = tmp_path / "out"
    write_dataset(out, shards, centroids, PipelineConfig(), {}, [], sources)
    page = (out / "report" / "index.html").read_text()
    old = out / publish_module.REPORT_OLD
    old.mkdir(parents=True)
    (old / "index.html").write_text("the page before")
    assert publish_module.recover(out) is False  # (no dataset write to finish)
    assert not old.exists() and (out / "report" / "index.html").read_text() == page


@pytest.mark.parametrize("moved", [False, True], ids=["in-place", "OUT-moved"])
def test_an_interrupted_swap_is_finished_by_the_next_write(two_shards, tmp_path, monkeypatch, moved):
    """Also after OUT moved (it may): the journal named the staging folder by its absolute path, and the finish
    with a folder not there moved every dataset output aside and deleted it."""
    shards, centroids, sources = two_shards
    out = tmp_path / "out"
    write_dataset(out, shards, centroids, PipelineConfig(), {}, [], sources)

    def killed():
        raise KeyboardInterrupt("killed mid-swap")

    at_third_swap_rename(monkeypatch, out, killed)
    cfg = PipelineConfig(writer=WriterConfig(write_vis=False))
    with pytest.raises(KeyboardInterrupt):
        write_dataset(out, shards, centroids, cfg, {}, [], sources)
    monkeypatch.undo()
    assert (out / ".alps" / "publish.json").is_file()
    if moved:
        out = out.rename(tmp_path / "moved")
        assert publish_module.recover(out)
    else:  # `alps evaluate` finishes it too: it named the new label maps' classes by the old classes.json
        from alps_client.evaluate import evaluate_dataset

        for stem in "ab":
            (tmp_path / "gt").mkdir(exist_ok=True)
            Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "gt" / f"{stem}.png")
        evaluate_dataset(out, tmp_path / "gt")
        assert not (out / ".alps" / "publish.json").exists()
    assert not (out / "vis").exists()  # the new dataset, whole: no previews
    assert json.loads((out / "manifest.json").read_text())["config"]["writer"]["write_vis"] is False
    assert len(read_labels(out)) == 2 and not (out / ".alps" / "staging").exists()


def test_a_first_write_killed_mid_swap_is_finished_whole(two_shards, tmp_path, monkeypatch):
    """The entries swapped in before the kill were taken for the previous dataset's (there was none) and deleted:
    the next command left OUT with a manifest of two images and no img_dir/ nor ann_dir/."""
    shards, centroids, sources = two_shards
    out = tmp_path / "out"

    def killed():
        raise KeyboardInterrupt("killed mid-swap")

    renames = at_third_swap_rename(monkeypatch, out, killed)
    with pytest.raises(KeyboardInterrupt):
        write_dataset(out, shards, centroids, PipelineConfig(), {}, [], sources)
    monkeypatch.undo()
    assert [Path(p).name for p in renames] == ["img_dir", "ann_dir", "vis"] and (out / "img_dir").is_dir()
    assert (out / ".alps" / "publish.json").is_file() and not (out / "manifest.json").exists()  # half swapped
    assert publish_module.recover(out)
    assert len(read_labels(out)) == 2 and len(list((out / "img_dir").rglob("*.png"))) == 2
    assert json.loads((out / "manifest.json").read_text())["counts"]["n_images"] == 2 and (out / "vis").is_dir()
    assert not (out / ".alps" / "previous").exists() and not (out / ".alps" / "staging").exists()


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals reach the main thread")
def test_a_stop_held_through_the_swap_leaves_no_earlier_dataset_behind(two_shards, tmp_path, monkeypatch):
    """The stop was raised as the swap ended, before the clean-up: a whole earlier dataset stayed in OUT/.alps."""
    shards, centroids, sources = two_shards
    out = tmp_path / "out"
    write_dataset(out, shards, centroids, PipelineConfig(), {}, [], sources)

    class Stopped(Exception):
        pass

    def stopped(signum, frame):
        raise Stopped

    previous_handler = signal.signal(signal.SIGTERM, stopped)
    try:
        at_third_swap_rename(monkeypatch, out, lambda: os.kill(os.getpid(), signal.SIGTERM))
        with pytest.raises(Stopped) as stop:
            write_dataset(out, shards, centroids, PipelineConfig(writer=WriterConfig(write_vis=False)), {}, [],
                          sources)
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        monkeypatch.undo()
    assert publish_module.SWAPPED_WHOLE in stop.value.__notes__
    assert not (out / "vis").exists() and len(read_labels(out)) == 2  # the new dataset, whole
    assert not (out / ".alps" / "publish.json").exists()
    assert not (out / ".alps" / "previous").exists() and not (out / ".alps" / "staging").exists()


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals reach the main thread")
@pytest.mark.parametrize("staging", ["../victim", "{victim}"], ids=["relative", "absolute"])
def test_a_crafted_journal_never_moves_or_deletes_a_folder_outside_out(two_shards, tmp_path, staging):
    """An OUT handed over with `.alps/publish.json` naming `../victim`: the next command (report, relabel --dry-run,
    evaluate, a run) swapped that folder's entries into OUT and deleted it (security audit)."""
    shards, centroids, sources = two_shards
    out, victim = tmp_path / "out", tmp_path / "victim"
    write_dataset(out, shards, centroids, PipelineConfig(), {}, [], sources)
    labels_before = {p.relative_to(out): p.read_bytes() for p in (out / "ann_dir").rglob("*.png")}
    (victim / "img_dir").mkdir(parents=True)
    (victim / "img_dir" / "mine.txt").write_text("not alps's")
    (out / ".alps" / "publish.json").write_text(json.dumps({"staging": staging.format(victim=victim)}))
    assert not publish_module.recover(out)  # no staging of its own: nothing to finish
    assert (victim / "img_dir" / "mine.txt").read_text() == "not alps's"
    assert {p.relative_to(out): p.read_bytes() for p in (out / "ann_dir").rglob("*.png")} == labels_before
    assert not (out / ".alps" / "publish.json").exists()


@pytest.mark.parametrize("folder", ["staging", "previous"])
def test_a_staging_or_previous_folder_that_is_a_link_is_refused(two_shards, tmp_path, folder):
    """Linked elsewhere, the swap moved that folder's entries into OUT, or OUT's out into it."""
    shards, centroids, sources = two_shards
    out, victim = tmp_path / "out", tmp_path / "victim"
    write_dataset(out, shards, centroids, PipelineConfig(), {}, [], sources)
    (victim / "img_dir").mkdir(parents=True)
    (victim / "img_dir" / "mine.txt").write_text("not alps's")
    (out / ".alps" / folder).symlink_to(victim)
    (out / ".alps" / "publish.json").write_text(json.dumps({"staging": ".alps/staging"}))
    with pytest.raises(AlpsError, match=rf"{out / '.alps' / folder} is a symbolic link .* which alps never makes"):
        publish_module.recover(out)
    assert sorted(p.name for p in victim.rglob("*")) == ["img_dir", "mine.txt"] and len(read_labels(out)) == 2


def test_ctrl_c_during_the_swap_lands_once_the_new_dataset_is_whole(two_shards, tmp_path, monkeypatch):
    """Stopped between two of the swap's renames, a command left OUT half swapped, and the next command (`alps
    evaluate` too) put the stopped write in place unsaid. A stop now waits for the swap's few renames to end."""
    shards, centroids, sources = two_shards
    out = tmp_path / "out"
    write_dataset(out, shards, centroids, PipelineConfig(), {}, [], sources)
    renames = at_third_swap_rename(monkeypatch, out, lambda: signal.raise_signal(signal.SIGINT))
    with pytest.raises(KeyboardInterrupt) as stopped:
        write_dataset(out, shards, centroids, PipelineConfig(writer=WriterConfig(write_vis=False)), {}, [], sources)
    assert len(renames) > 3 and publish_module.SWAPPED_WHOLE in getattr(stopped.value, "__notes__", [])
    assert not (out / ".alps" / "publish.json").exists() and not (out / "vis").exists()  # the new dataset, whole
    assert json.loads((out / "manifest.json").read_text())["config"]["writer"]["write_vis"] is False
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_oracle_masks_reach_high_miou(tmp_path):
    """Ground-truth instances as masks + a colour embedding: clustering and writing recover the classes."""
    from scipy import ndimage

    from alps_client.backends.base import Embedding
    from alps_client.evaluate import evaluate_dataset, format_table
    from alps_client.labels.clustering import fit_centroids
    from alps_client.labels.features import pool_mask_features
    from alps_client.synthetic import write_synthetic_dataset

    root = write_synthetic_dataset(tmp_path / "data", 6, seed=1, size=(128, 128), n_classes=5)
    cfg = PipelineConfig(gate=GateConfig(sigma=1.0), cluster=ClusterConfig(n_clusters=5, seed=0))
    shards = []
    for path in sorted((root / "images").glob("*.png")):
        image = np.asarray(Image.open(path).convert("RGB"))
        gt = np.asarray(Image.open(root / "gt" / path.name))
        masks = [comps == k for cls in np.unique(gt) for comps, n in [ndimage.label(gt == cls)] for k in range(1, n + 1)]
        ms = MaskSet.from_rles(gt.shape, encode_coco_rle(np.stack(masks)))
        feat = np.zeros((256, 64, 64), np.float32)
        small = np.asarray(Image.fromarray(image).resize((64, 64), Image.BILINEAR), np.float32)
        feat[:3] = small.transpose(2, 0, 1) / 255.0
        pfl = pool_mask_features(Embedding(feat, (1024, 1024), gt.shape), ms.rles, cfg.features)
        shard = ImageShard(path.stem, str(path), "oracle", ms, np.ones(len(ms), bool), pfl)
        write_shard(tmp_path / "shards" / f"{path.stem}.npz", shard)
        shards.append(tmp_path / "shards" / f"{path.stem}.npz")
    centroids = fit_centroids(shards, cfg.cluster)
    summary = write_dataset(tmp_path / "out", shards, centroids, cfg, {}, [],
                            {p.stem: p for p in (root / "images").glob("*.png")})
    report = evaluate_dataset(tmp_path / "out", root / "gt")
    assert report.miou >= 0.9 and report.coverage == pytest.approx(1.0), format_table(report)
    assert summary.n_images == 6 and summary.labelled_pixel_fraction == pytest.approx(1.0)


def test_a_write_that_finds_the_disk_full_names_the_file_and_leaves_no_temp_file(tmp_path):
    import errno
    import os

    from alps_client.errors import OutputDiskFullError
    from alps_client.io import atomic

    def failing(err: OSError):
        def writer(f) -> None:
            f.write(b"partial")
            raise err
        return writer

    target = tmp_path / "out" / "shard.npz"
    with pytest.raises(OutputDiskFullError, match=r"^no space left on the disk while writing .*/out/shard\.npz, "
                                                  r"[0-9.]+ [KMG]?i?B free there: free space on that disk$"):
        atomic.write_with(target, failing(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))))
    with pytest.raises(OutputDiskFullError, match=r"^disk quota exceeded while writing"):
        atomic.write_with(target, failing(OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))))
    with pytest.raises(PermissionError):  # any other failure is left as it is
        atomic.write_with(target, failing(PermissionError(errno.EACCES, "denied")))
    assert list((tmp_path / "out").iterdir()) == []  # no half-written file, no temp file
    assert atomic.size_text(0) == "0 B" and atomic.size_text(28 * 1024) == "28 KiB"
    assert atomic.size_text(int(1.5 * 2**30)) == "1.5 GiB"


def test_a_disk_out_of_inodes_is_said_to_be_so_not_out_of_space(tmp_path, monkeypatch):
    """``ENOSPC`` with megabytes free is a file system out of inodes (a tmpfs or small disk after one file per
    shard): "63.7 MiB free there: free space on that disk" contradicted itself. A full inode table cannot be made
    here without mounting one: the file system's own counts (statvfs) stand in for it."""
    import errno
    import os

    from alps_client.errors import OutputDiskFullError
    from alps_client.io import atomic

    real = os.statvfs(tmp_path)

    def counts(files: int):  # the real figures, the inodes' replaced
        fields = {name: getattr(real, name) for name in dir(real) if name.startswith("f_")}
        return lambda path: type("statvfs", (), {**fields, "f_files": files, "f_ffree": 0, "f_favail": 0})()

    monkeypatch.setattr(os, "statvfs", counts(1000))
    err = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with pytest.raises(OutputDiskFullError, match=r"^no free inodes left on the disk while writing .*/shard\.npz, "
                                                  r"[0-9.]+ [KMG]?i?B free there but no room for another file: "
                                                  r"delete files on that disk, or use one with more inodes$"):
        raise atomic.disk_full_error(tmp_path / "shard.npz", err)
    monkeypatch.setattr(os, "statvfs", counts(0))  # a file system that counts no inodes (btrfs)
    assert str(atomic.disk_full_error(tmp_path / "shard.npz", err)).startswith("no space left on the disk")


def test_class_colours_stay_apart_at_every_number_of_classes():
    """At the paper's 64 classes, golden-ratio hues gave seven pairs a few RGB levels apart ([178, 62, 164] and
    [178, 62, 170] for classes 3 and 58): one colour in the previews, the report and mmseg's palette."""
    for n in (16, 64, 254):
        colours = palette(n).astype(np.int64)
        gaps = np.abs(colours[:, None] - colours[None]).sum(axis=2)[np.triu_indices(n, 1)]
        assert gaps.min() >= 17, n  # at least one full grid step of the 16 levels
        assert not (colours == 0).all(axis=1).any()  # black is "no label" in the previews
    assert (palette(64)[:16] == palette(16)).all()  # a class keeps its colour whatever the number of classes


def test_a_stitched_scene_has_the_same_bytes_whatever_order_its_tiles_come_in(tmp_path):
    """Written window by window, a stitched GeoTIFF's bytes hung on when GDAL flushed the blocks two windows share
    (its block cache, which other reads of the process fill): a rerun that labelled nothing rewrote
    stitched/big.tif, 13,994 -> 10,233 bytes. A small cache and another tile order stand in for that here."""
    import rasterio

    from alps_client.io.scenes import SceneOutputs
    from alps_client.io.tiling import tile_windows

    Image.fromarray(np.zeros((300, 400, 3), np.uint8)).save(tmp_path / "scene.png")
    config = InputConfig(tile=128, overlap=48, stitch=True)
    windows = tile_windows(300, 400, config.tile, config.overlap)
    rng = np.random.default_rng(0)
    metas = [{"stem": f"scene__x{w[0]}_y{w[1]}", "source": str(tmp_path / "scene.png"),
              "extra": {"kind": "tile", "scene": "scene", "window": list(w)}} for w in windows]
    labels = [rng.integers(0, 4, (w[3] - w[1], w[2] - w[0]), np.uint8) for w in windows]
    written = []
    for order, cache_bytes in ((range(len(metas)), 1 << 26), (reversed(range(len(metas))), 1)):
        out = tmp_path / f"out{len(written)}"
        with rasterio.Env(GDAL_CACHEMAX=cache_bytes):
            scenes = SceneOutputs(out, metas, config)
            for i in order:
                scenes.add(metas[i], labels[i])
            assert scenes.close() == {"geotiff": 0, "stitched": 1, "volumes": 0}
        written.append((out / "stitched" / "scene.tif").read_bytes())
    assert written[0] == written[1]


def test_the_preview_is_made_in_bands_of_rows_with_the_pixels_of_a_whole_image(monkeypatch):
    """Its float temporaries, ~80 bytes a pixel, were made for the whole image: 2.3 GB of a run's peak on one
    24 Mpx photo. Bands of 7 rows (not a divisor of the height) give the same bytes."""
    from alps_client.labels import painting

    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (45, 31, 3), dtype=np.uint8)
    label = rng.integers(0, 5, (45, 31)).astype(np.uint8)
    label[:9] = IGNORE
    whole = painting.overlay(image, label, 5)
    monkeypatch.setattr(painting, "OVERLAY_BAND_PIXELS", 7 * 31)
    banded = painting.overlay(image, label, 5)
    assert banded.dtype == np.uint8 and banded.shape == image.shape and np.array_equal(banded, whole)
    grey = np.clip(image[:9].astype(np.float32).mean(axis=2) * 0.6 + 0.5, 0, 255).astype(np.uint8)
    assert np.array_equal(banded[:9, :, 0], grey) and not np.array_equal(banded[9:], image[9:])


def test_a_label_geotiff_of_a_scene_without_georeference_writes_no_rasterio_warning(tmp_path):
    """`--tile --stitch` on PNG scenes printed rasterio's NotGeoreferencedWarning (two lines of noise) for each
    stitched scene: a scene without a CRS is written in pixel coordinates on purpose, as a TIFF without one is read."""
    import subprocess
    import sys

    script = ("import sys, numpy as np\nfrom alps_client.io.geotiff import LabelGeoTiff, write_geotiff_label\n"
              "labels = np.zeros((40, 50), np.uint8)\nwrite_geotiff_label(sys.argv[1] + '/a.tif', labels, None)\n"
              "big = LabelGeoTiff(sys.argv[1] + '/b.tif', (40, 50), None)\nbig.write(0, 0, labels)\nbig.close()\n")
    result = subprocess.run([sys.executable, "-W", "default", "-c", script, str(tmp_path)], capture_output=True,
                            text=True, check=False, cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0 and (tmp_path / "a.tif").is_file() and (tmp_path / "b.tif").is_file(), result.stderr
    assert result.stderr == ""
