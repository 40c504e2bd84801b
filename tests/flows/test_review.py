"""Review, name, relabel on a labelled demo dataset: the report in headless Chromium, relabel exactly as mapped.

One dataset per module (12 synthetic scenes, one with a ring-shaped region, labelled by the flow on the numpy fake
SAM with --vector gpkg); tests that change it work on copies.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from alps_client.config import AmgConfig, BackendConfig, ClusterConfig, PipelineConfig, WriterConfig
from alps_client.evaluate import Confusion, match_clusters, scores
from alps_client.masks import decode_coco_rle
from alps_client.synthetic import write_synthetic_dataset
from flows.alps_flow import alps_flow
from flows.cli import main as alps
from tests.flows.conftest import ALPS, CWD, cli_env
from tests.mmseg_checks import mmseg_listing
from tests.review.chromium import chromium_or_why_not, visit
from tests.runs import HOLD_LOCK, run_log, wait_until

PROBE = """({
  sections: [...document.querySelectorAll("section[data-class-id]")].map(s => ({
    id: s.dataset.classId, clusters: [...s.querySelectorAll("[data-cluster-id]")].map(c => c.dataset.clusterId)})),
  images: document.images.length,
  loaded: [...document.images].filter(i => i.complete && i.naturalWidth > 0).length,
  marked: document.body.dataset.brokenImages,
})"""


def ring_scene(size=(96, 128), seed=0):
    """Ground with a blue ring around a red disc: the ring's mask has a hole. Returns (rgb, gt)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: size[0], : size[1]]
    r = np.hypot(yy - 48, xx - 64)
    gt = np.where(r < 12, 2, np.where(r < 26, 1, 0)).astype(np.uint8)
    colours = np.array([(150, 130, 100), (60, 90, 210), (205, 70, 60)], np.float32)
    rgb = colours[gt] + rng.normal(0, 3, (*size, 3))
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8), gt


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, fake_repo):
    root = tmp_path_factory.mktemp("review")
    data = write_synthetic_dataset(root / "data", 11, seed=5, size=(96, 128), n_classes=4)
    rgb, gt = ring_scene()
    Image.fromarray(rgb).save(data / "images" / "ring.png")
    Image.fromarray(gt).save(data / "gt" / "ring.png")
    repo = shutil.copytree(fake_repo, root / "repo")  # deleted before `alps report`: no model needed
    cfg = PipelineConfig(backend=BackendConfig(model_repository=str(repo)), amg=AmgConfig(points_per_side=8),
                         cluster=ClusterConfig(n_clusters=4), writer=WriterConfig(vector_format="gpkg"))
    state = alps_flow(str(data / "images"), str(root / "out"), cfg, progress_bar=False, return_state=True)
    return SimpleNamespace(out=root / "out", data=data, repo=repo, result=state.result(),
                           flow_run_id=state.state_details.flow_run_id)


def rerun_config(labelled: SimpleNamespace, fake_repo: Path) -> PipelineConfig:
    """The settings ``labelled`` was made with: a run with them finds every image done."""
    if not labelled.repo.exists():  # another test removed it to show that the report needs no model
        shutil.copytree(fake_repo, labelled.repo)
    return PipelineConfig(backend=BackendConfig(model_repository=str(labelled.repo)), amg=AmgConfig(points_per_side=8),
                          cluster=ClusterConfig(n_clusters=4), writer=WriterConfig(vector_format="gpkg"))


def killed_mid_swap(out: Path, replace):
    """``os.replace`` that raises KeyboardInterrupt at the third rename of the swap into ``out`` (once its journal
    is written): some dataset outputs moved in, the others not."""
    calls = {"n": 0}

    def replace_then_die(src, dst):
        if (out / ".alps" / "publish.json").is_file():
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt("killed in the middle of the swap")
        replace(src, dst)

    return replace_then_die


def tree_hashes(out: Path) -> dict[str, str]:
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file() and ".alps" not in p.relative_to(out).parts}


def label_maps(out: Path) -> dict[str, np.ndarray]:
    return {f"{p.parent.name}/{p.stem}": np.asarray(Image.open(p)) for p in sorted((out / "ann_dir").glob("*/*.png"))}


def coco(out: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted(out.glob("instances_*.json"))}


def test_run_writes_the_review_page_and_vectors_and_links_the_page(labelled):
    import geopandas as gpd
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
    from rasterio.features import rasterize

    out, summary = labelled.out, labelled.result["summary"]
    assert summary["n_images"] == 12 and summary["n_val"] == 4  # round(0.3 * 12): 0.33, not 11/1
    assert (out / "report" / "index.html").is_file() and (out / "report" / "classes.yaml").is_file()

    async def link():
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[labelled.flow_run_id]), key=ArtifactFilterKey(any_=["alps-report"])))

    artifacts = asyncio.run(link())
    assert len(artifacts) == 1 and (out / "report" / "index.html").resolve().as_uri() in artifacts[0].data

    vectors = gpd.read_file(out / "vectors" / "masks.gpkg", layer="masks")
    assert len(vectors) == summary["n_masks_kept"] == sum(len(c["annotations"]) for c in coco(out).values())
    assert vectors.crs.name.startswith("image pixels")
    assert set(vectors.columns) >= {"class_id", "class_name", "cluster_id", "score", "area", "image", "source", "split"}
    from alps_client.io.shards import read_shard

    holes = 0
    for stem, rows in vectors.groupby("image", sort=True):
        kept = read_shard(out / ".alps" / "shards" / f"{stem}.npz").kept_masks()
        masks = decode_coco_rle(kept.rles)
        assert len(rows) == len(masks) and (out / "ann_dir" / rows.split.iloc[0] / f"{stem}.png").is_file()
        for (_, row), mask in zip(rows.iterrows(), masks):  # each polygon is its mask, pixel for pixel
            assert (rasterize([row.geometry], out_shape=mask.shape, dtype=np.uint8) > 0).tolist() == mask.tolist()
            assert row.area == mask.sum() and row.class_name == f"cluster_{row.class_id}"
            assert row.source.endswith(f"{stem}.png")
            holes += sum(len(p.interiors) for p in row.geometry.geoms)
    assert holes > 0  # the ring at least


def test_report_from_shards_alone_opens_in_chromium_with_every_section_and_thumbnail(labelled, tmp_path, capsys):
    binary, why = chromium_or_why_not()
    out = labelled.out
    written_by_run = {k: v for k, v in tree_hashes(out).items() if k.startswith("report/")}
    shutil.rmtree(labelled.repo, ignore_errors=True)  # built from shards + centroids: no model repository
    assert alps(["report", str(out)]) == 0
    assert "report/index.html" in capsys.readouterr().out
    assert {k: v for k, v in tree_hashes(out).items() if k.startswith("report/")} == written_by_run
    classes = json.loads((out / "classes.json").read_text())["classes"]
    crops = sorted((out / "report" / "crops").glob("*.jpg"))
    lit = sorted((out / "report" / "images").glob("*.jpg"))
    counts = labelled.result["summary"]["masks_per_class"]
    assert len(crops) == sum(min(12, n) for n in counts) and len(lit) <= 3 * len(classes)
    for p in crops:
        assert max(Image.open(p).size) == 128  # thumbnails as files of a fixed size
    size = sum(p.stat().st_size for p in (out / "report").rglob("*") if p.is_file())
    print(f"report: {len(classes)} clusters, {len(crops) + len(lit)} thumbnails, {size / 1e3:.0f} kB")
    if binary is None:
        pytest.skip(f"headless Chromium unavailable: {why}")
    seen = visit(binary, (out / "report" / "index.html").as_uri(), PROBE)
    assert [s["id"] for s in seen.value["sections"]] == [str(c["id"]) for c in classes]
    assert all(s["clusters"] == [str(s["id"])] for s in seen.value["sections"])
    assert seen.value["images"] == len(crops) + len(lit) == seen.value["loaded"] and seen.value["marked"] == "0"
    assert seen.console == [] and seen.log_errors == []
    shot = tmp_path / "report.png"
    shot.write_bytes(seen.screenshot)
    assert Image.open(shot).size == (1280, 900)

    broken = shutil.copytree(out / "report", tmp_path / "broken")  # the same checks catch a broken page
    (broken / crops[0].relative_to(out / "report")).unlink()
    index = broken / "index.html"
    index.write_text(index.read_text().replace("</body>", "<script>console.error('boom')</script></body>"))
    seen = visit(binary, index.as_uri(), PROBE)
    assert seen.value["loaded"] == seen.value["images"] - 1 and seen.value["marked"] == "1"
    assert any("boom" in line for line in seen.console)


SPEC = "classes:\n  - {name: merged, clusters: [0, 1]}\n  - {name: named, clusters: [3]}\ndrop: [2]\n"


def evaluation(out: Path, gt: Path, tmp_path: Path, name: str) -> dict:
    assert alps(["evaluate", str(out), str(gt), "--json", str(tmp_path / name)]) == 0
    return json.loads((tmp_path / name).read_text())


def test_relabel_changes_labels_coco_classes_manifest_vectors_and_evaluation_exactly_as_mapped(labelled, tmp_path,
                                                                                               capsys):
    import geopandas as gpd

    out = Path(shutil.copytree(labelled.out, tmp_path / "out"))
    gt = labelled.data / "gt"
    before_maps, before_coco = label_maps(out), coco(out)
    before_eval = evaluation(out, gt, tmp_path, "before.json")
    (tmp_path / "classes.yaml").write_text(SPEC)
    assert alps(["relabel", str(out), "--classes", str(tmp_path / "classes.yaml")]) == 0
    lut = np.full(256, 255, np.uint8)
    lut[[0, 1, 2, 3]] = [0, 0, 255, 1]
    after_maps = label_maps(out)
    assert after_maps.keys() == before_maps.keys()
    for key, old in before_maps.items():
        assert (after_maps[key] == lut[old]).all(), key
    after_coco = coco(out)
    for name, old in before_coco.items():
        new = after_coco[name]
        assert [c["name"] for c in new["categories"]] == ["merged", "named"]
        kept = [a for a in old["annotations"] if a["category_id"] - 1 != 2]
        assert [a["segmentation"] for a in new["annotations"]] == [a["segmentation"] for a in kept]
        assert [a["category_id"] - 1 for a in new["annotations"]] == [int(lut[a["category_id"] - 1]) for a in kept]
    classes = json.loads((out / "classes.json").read_text())
    assert [(c["name"], c["clusters"]) for c in classes["classes"]] == [("merged", [0, 1]), ("named", [3])]
    assert classes["dropped_clusters"] == [2]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"] == {"names": ["merged", "named"], "cluster_to_class": [0, 0, 255, 1]}
    assert manifest["relabel"]["spec"]["drop"] == [2] and len(manifest["relabel"]["classes_file_sha256"]) == 64
    assert len(mmseg_listing(out)) == manifest["counts"]["n_images"]  # its mmsegmentation config names them too
    vectors = gpd.read_file(out / "vectors" / "masks.gpkg")
    assert sorted(set(vectors.class_name)) == ["merged", "named"] and 2 not in set(vectors.cluster_id)
    assert len(vectors) == sum(len(c["annotations"]) for c in after_coco.values())
    page = (out / "report" / "index.html").read_text()
    assert 'data-class-id="0"' in page and 'data-class-id="1"' in page and 'data-class-id="255"' in page
    assert 'data-class-id="2"' not in page
    # the gate's kept masks still count those of the dropped cluster, and say so (44 kept beside classes of 38)
    in_dropped = sum(a["category_id"] - 1 == 2 for c in before_coco.values() for a in c["annotations"])
    counts = manifest["counts"]
    assert in_dropped and counts["n_masks_in_dropped_clusters"] == in_dropped
    assert sum(counts["masks_per_class"]) + in_dropped == counts["n_masks_kept"]
    assert f"{counts['n_masks_kept']} masks kept ({in_dropped} in dropped clusters)" in page
    # A class of one cluster showed the same pixels as two shares (30.0 % of labelled pixels, 17.8 % of masked
    # pixels, the dropped cluster's included): a kept cluster's share is of the labelled pixels, as its class's.
    named = page.split('id="class-1"')[1].split("</section>")[0]
    class_share, cluster_share = re.findall(r"([\d.]+)% of labelled pixels", named)
    assert class_share == cluster_share == f"{100 * counts['pixels_per_class'][1] / sum(counts['pixels_per_class']):.1f}"
    assert "% of masked pixels (no label now)" in page.split('id="class-255"')[1]

    after_eval = evaluation(out, gt, tmp_path, "after.json")
    conf_old = sum((Confusion.of(m, np.asarray(Image.open(gt / f"{k.split('/')[1]}.png")))
                    for k, m in before_maps.items()), Confusion())
    conf_new = Confusion(np.zeros_like(conf_old.counts), conf_old.values)
    np.add.at(conf_new.counts, lut, conf_old.counts)  # the mapping applied to the rows of the old confusion matrix
    expected = scores(conf_new, match_clusters(conf_new, "hungarian"))
    assert after_eval["miou"] == pytest.approx(expected.miou) and after_eval["coverage"] == pytest.approx(expected.coverage)
    # After a relabel the pseudo-labels are its classes, not clusters: the report's keys said "clusters" of them.
    assert after_eval["pseudo_label_names"] == {"0": "merged", "1": "named"}
    assert {v for values in after_eval["class_to_pseudo_labels"].values() for v in values} <= {0, 1}
    assert not any("cluster" in key for key in after_eval)
    labelled = conf_old.without([255]).counts
    dropped_share = labelled[2].sum() / labelled.sum()
    assert after_eval["coverage"] == pytest.approx(before_eval["coverage"] - dropped_share)

    first = tree_hashes(out)
    assert alps(["relabel", str(out), "--classes", str(tmp_path / "classes.yaml")]) == 0
    assert tree_hashes(out) == first  # idempotent: the same file gives the same bytes
    capsys.readouterr()
    assert alps(["relabel", str(out), "--classes", str(tmp_path / "classes.yaml"), "--vector", "geojson"]) == 0
    assert sorted(p.name for p in (out / "vectors").iterdir()) == ["masks.geojson"]
    # GeoJSON has no way to say "pixels": readers take them for degrees, and the relabel says so
    assert "alps: vectors/masks.geojson: images with no map placement have pixel coordinates, which GeoJSON cannot " \
        "say: GIS tools take them for WGS 84 degrees; --vector gpkg declares them as image pixels" in capsys.readouterr().err
    assert len(gpd.read_file(out / "vectors" / "masks.geojson")) == len(vectors)
    (tmp_path / "undo.yaml").write_text("classes: []\n")  # the way back: the classes `alps run` wrote
    assert alps(["relabel", str(out), "--classes", str(tmp_path / "undo.yaml")]) == 0
    undone = label_maps(out)
    assert undone.keys() == before_maps.keys() and coco(out) == before_coco
    assert all((undone[key] == old).all() for key, old in before_maps.items())


def test_interrupted_relabel_leaves_the_dataset_intact_and_a_rerun_finishes_it(labelled, tmp_path, monkeypatch):
    import alps_client.io.publish as publish_module
    import alps_client.io.writer as writer_module

    clean = Path(shutil.copytree(labelled.out, tmp_path / "clean" / "out"))  # same name: the page shows it
    (tmp_path / "classes.yaml").write_text(SPEC)
    assert alps(["relabel", str(clean), "--classes", str(tmp_path / "classes.yaml")]) == 0
    out = Path(shutil.copytree(labelled.out, tmp_path / "out"))
    before = tree_hashes(out)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing the report")

    with monkeypatch.context() as m:  # killed late in the staged write: nothing of it is in OUT
        m.setattr(writer_module, "write_review", killed)
        assert alps(["relabel", str(out), "--classes", str(tmp_path / "classes.yaml")]) == 130  # one line
    assert tree_hashes(out) == before
    with monkeypatch.context() as m:  # killed in the middle of the swap: the journal finishes it next time
        m.setattr(publish_module.os, "replace", killed_mid_swap(out, publish_module.os.replace))
        assert alps(["relabel", str(out), "--classes", str(tmp_path / "classes.yaml")]) == 130
    assert (out / ".alps" / "publish.json").is_file()
    assert alps(["relabel", str(out), "--classes", str(tmp_path / "classes.yaml")]) == 0
    assert tree_hashes(out) == tree_hashes(clean)


def test_a_half_done_swap_is_finished_by_a_dry_run_and_a_live_one_refuses_evaluate(labelled, tmp_path,
                                                                                   monkeypatch, capsys):
    """A dry run on an OUT whose swap a kill left half done finished it unlocked, then said a write had mixed its
    figures (its own). `alps evaluate` under a writer in the middle of its swap scored the new label maps with
    the old classes.json, exit 0; it is refused now, and a swap completed while it read refuses its figures."""
    import alps_client.evaluate.dataset as evaluate_module
    import alps_client.io.publish as publish_module
    from alps_client.io.rewrite import relabel_dataset

    clean = Path(shutil.copytree(labelled.out, tmp_path / "clean" / "out"))
    (tmp_path / "classes.yaml").write_text(SPEC)
    assert alps(["relabel", str(clean), "--classes", str(tmp_path / "classes.yaml")]) == 0
    out = Path(shutil.copytree(labelled.out, tmp_path / "out"))
    relabel = ["relabel", str(out), "--classes", str(tmp_path / "classes.yaml")]
    with monkeypatch.context() as m:
        m.setattr(publish_module.os, "replace", killed_mid_swap(out, publish_module.os.replace))
        assert alps(relabel) == 130
    assert (out / ".alps" / "publish.json").is_file()  # half swapped
    from alps_client.errors import AlpsError
    from alps_client.io import out_lock as out_lock_module

    def read_only(out, what, create=True):  # as out_lock is refused on a read-only mount
        raise AlpsError(f"{out} cannot be written (Read-only file system): ...") from OSError(30, "Read-only file system")

    with monkeypatch.context() as m:  # the dry run crashed (its dataset's load finished the swap unlocked)
        m.setattr(out_lock_module, "out_lock", read_only)
        for command in (["evaluate", str(out), str(labelled.data / "gt")], [*relabel, "--dry-run"]):
            capsys.readouterr()
            assert alps(command) == 2
            who = "alps evaluate" if command[0] == "evaluate" else "alps relabel --dry-run"
            line = (f"alps: error: {out} holds a dataset write that was killed while it swapped its files in (some "
                    f"of each dataset), and {who} cannot finish it (Read-only file system): make OUT writable, or "
                    "copy it to a disk you can write to, and run it on that")
            assert capsys.readouterr().err.strip().splitlines() == [line]  # evaluate said a write mixed its figures
    holding = tmp_path / "holding"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out), str(holding)], cwd=CWD)
    try:  # the journal under a live writer: a swap under way
        wait_until(holding.exists, "the other process holding the lock", proc=holder)
        capsys.readouterr()
        assert alps(["evaluate", str(out), str(labelled.data / "gt")]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [
            f"alps: error: {out} is being written by alps run (pid {holder.pid}); wait for it to finish"]
        assert not (out / "evaluation.json").exists()
    finally:
        holder.kill()
        holder.wait()
    capsys.readouterr()
    assert alps([*relabel, "--dry-run"]) == 0  # finishes the killed swap, then reads
    assert "was written" not in capsys.readouterr().err and not (out / ".alps" / "publish.json").exists()
    assert tree_hashes(out) == tree_hashes(clean)
    assert alps([*relabel, "--dry-run"]) == 0  # the same figures as on the finished dataset
    dry = capsys.readouterr().out
    assert alps(["relabel", str(clean), "--classes", str(tmp_path / "classes.yaml"), "--dry-run"]) == 0
    assert capsys.readouterr().out.replace(str(clean), str(out)) == dry

    scores = evaluate_module.scores

    def swapped_while_read(*args, **kwargs):  # another relabel swaps its dataset in as the evaluation reads
        relabel_dataset(out, tmp_path / "undo.yaml")
        return scores(*args, **kwargs)

    (tmp_path / "undo.yaml").write_text("classes: []\n")
    with monkeypatch.context() as m:
        m.setattr(evaluate_module, "scores", swapped_while_read)
        assert alps(["evaluate", str(out), str(labelled.data / "gt")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"alps: error: {out} was written while this evaluation read it: its figures could mix two datasets; run it "
        "again once that write is over")
    assert not (out / "evaluation.json").exists()
    assert alps(["evaluate", str(out), str(labelled.data / "gt")]) == 0


# `alps relabel` (argv[1:]) that receives SIGTERM while it writes its report, as `kill` or a scheduler would send it.
_TERMINATED_MID_WRITE = """
import os, signal, sys
import alps_client.io.writer as writer
from flows.cli import main

def write_review(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    raise AssertionError("SIGTERM did not stop alps relabel")

writer.write_review = write_review
sys.exit(main(sys.argv[1:]))
"""


def test_relabel_stopped_by_sigterm_says_so_and_changes_nothing(labelled, tmp_path):
    """Ctrl-C gave one line and exit 130; SIGTERM ended relabel, report and evaluate at once, silent, -15 (found by
    a helper's chaos audit)."""
    out = Path(shutil.copytree(labelled.out, tmp_path / "out"))
    before = tree_hashes(out)
    (tmp_path / "classes.yaml").write_text(SPEC)
    result = subprocess.run([sys.executable, "-c", _TERMINATED_MID_WRITE, "relabel", str(out), "--classes",
                             str(tmp_path / "classes.yaml")], check=False, capture_output=True, text=True, cwd=CWD,
                            env=cli_env(tmp_path / "ph"), timeout=300)
    assert result.returncode == 143, result.stderr[-3000:]
    assert result.stderr.splitlines() == ["alps: error: terminated (SIGTERM); its writes are staged, so nothing "
                                          "half-written is used: run `alps relabel` again to finish"]
    assert tree_hashes(out) == before


def test_a_run_after_a_relabel_killed_mid_swap_keeps_the_relabel(labelled, fake_repo, tmp_path, monkeypatch):
    """The run read the half-swapped dataset (the old manifest: no relabel) and its own write finished the swap
    only after: it wrote the dataset without the relabel, exit 0, unsaid (found by a helper's chaos audit). It
    finishes the swap before it plans now, and says so."""
    import alps_client.io.publish as publish_module

    (tmp_path / "classes.yaml").write_text(SPEC)
    clean = Path(shutil.copytree(labelled.out, tmp_path / "clean" / "out"))
    assert alps(["relabel", str(clean), "--classes", str(tmp_path / "classes.yaml")]) == 0
    out = Path(shutil.copytree(labelled.out, tmp_path / "out"))
    with monkeypatch.context() as m:
        m.setattr(publish_module.os, "replace", killed_mid_swap(out, publish_module.os.replace))
        assert alps(["relabel", str(out), "--classes", str(tmp_path / "classes.yaml")]) == 130
    assert (out / ".alps" / "publish.json").is_file()  # the swap was left half done
    with run_log() as logged:
        state = alps_flow(str(labelled.data / "images"), str(out), rerun_config(labelled, fake_repo),
                          progress_bar=False, return_state=True)
    assert state.is_completed()
    assert any("finished the dataset write that an interrupted run or `alps relabel` left half done" in line
               for line in logged)
    assert json.loads((out / "manifest.json").read_text())["relabel"] == \
        json.loads((clean / "manifest.json").read_text())["relabel"]
    ours, relabelled = label_maps(out), label_maps(clean)
    assert ours.keys() == relabelled.keys() and all(np.array_equal(ours[k], relabelled[k]) for k in ours)
    assert (out / "classes.json").read_bytes() == (clean / "classes.json").read_bytes()


def test_a_run_whose_swap_fails_part_way_says_out_holds_some_of_each_until_a_rerun(labelled, fake_repo, tmp_path,
                                                                                   monkeypatch, capsys):
    """A dataset output the swap cannot move (a read-only ``ann_dir/``: PermissionError) left ``img_dir/`` of the
    new split beside ``ann_dir/`` of the old, and the line said only "the run failed ...; run the same command again
    to resume". It says OUT holds some of each until then; the same command, once the swap can run, finishes it."""
    import argparse
    import dataclasses

    import alps_client.io.publish as publish_module
    from flows.run_cli import _outcome

    out = Path(shutil.copytree(labelled.out, tmp_path / "out"))
    config = rerun_config(labelled, fake_repo)
    config = dataclasses.replace(config, writer=dataclasses.replace(config.writer, seed=1))  # a new dataset to swap in
    calls = {"n": 0}

    def denied_at_the_third(src, dst, replace=publish_module.os.replace):
        if (out / ".alps" / "publish.json").is_file():
            calls["n"] += 1
            if calls["n"] == 3:
                raise PermissionError(13, "Permission denied", str(src), None, str(dst))
        replace(src, dst)

    with monkeypatch.context() as m:
        m.setattr(publish_module.os, "replace", denied_at_the_third)
        state = alps_flow(str(labelled.data / "images"), str(out), config, progress_bar=False, return_state=True)
    assert not state.is_completed() and (out / ".alps" / "publish.json").is_file()  # half swapped
    assert _outcome(state, argparse.Namespace(out=str(out))) == 3
    assert "OUT holds files of the previous dataset beside this run's (the swap of the new dataset into it stopped " \
           "part way) until the same command finishes it" in capsys.readouterr().err
    assert alps_flow(str(labelled.data / "images"), str(out), config, progress_bar=False, return_state=True
                     ).is_completed()
    assert not (out / ".alps" / "publish.json").exists()
    def pairs(folder: str) -> set[tuple[str, str]]:
        return {(p.parent.name, p.stem) for p in (out / folder).glob("*/*")}

    assert pairs("img_dir") == pairs("ann_dir") and len(pairs("ann_dir")) == 12  # each image beside its labels


def test_a_report_killed_mid_way_leaves_nothing_behind_and_the_page_stays(labelled, tmp_path, monkeypatch):
    """`alps report` killed between moving the old page aside and moving the new one in left OUT without a page
    and .alps/report-old behind; killed while writing, .alps/report-staging: no later command removed them
    (found by a helper's chaos audit)."""
    out = Path(shutil.copytree(labelled.out, tmp_path / "out"))
    page = {p.relative_to(out).as_posix(): p.read_bytes() for p in (out / "report").rglob("*") if p.is_file()}
    real_rename = Path.rename

    def rename_then_die(self, target):
        if Path(target).name == "report":  # the old page is aside, the new one written: killed before the swap
            raise KeyboardInterrupt("killed between the renames")
        return real_rename(self, target)

    with monkeypatch.context() as m:
        m.setattr(Path, "rename", rename_then_die)
        assert alps(["report", str(out)]) == 130
    assert not (out / "report").exists() and (out / ".alps" / "report-old").is_dir()
    assert (out / ".alps" / "report-staging").is_dir()
    assert alps(["evaluate", str(out), str(labelled.data / "gt")]) == 0  # any command holding OUT puts it back
    assert not (out / ".alps" / "report-old").exists() and not (out / ".alps" / "report-staging").exists()
    assert {p.relative_to(out).as_posix(): p.read_bytes() for p in (out / "report").rglob("*") if p.is_file()} == page


def test_a_bad_classes_file_is_one_line_and_exit_2_and_changes_nothing(labelled, tmp_path):
    out = labelled.out
    before = tree_hashes(out)
    bad = tmp_path / "classes.yaml"
    bad.write_text("classes:\n  - {name: a, clusters: [0, 9]}\n")
    result = subprocess.run([*ALPS, "relabel", str(out), "--classes", str(bad)], check=False, capture_output=True,
                            text=True, cwd=CWD, env=cli_env(tmp_path / "ph"), timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    expected = (f"alps: error: {bad}: class 'a' (line 2) clusters: cluster 9 does not exist (this dataset has "
                "clusters 0..3)")
    assert result.stderr.splitlines() == [expected]
    assert alps(["relabel", str(tmp_path / "nowhere"), "--classes", str(bad)]) == 2
    assert tree_hashes(out) == before


def test_a_dry_run_shows_the_relabels_own_figures_and_writes_nothing(labelled, tmp_path, capsys):
    """`alps relabel --dry-run`: the classes a file gives, each with its clusters, masks, pixels and the classes those
    clusters are in now, equal to what the relabel then writes; nothing is written, a bad file is refused as by the
    relabel itself."""
    out = Path(shutil.copytree(labelled.out, tmp_path / "out"))
    assert alps(["evaluate", str(out), str(labelled.data / "gt")]) == 0  # OUT/evaluation.json: a relabel drops it
    (tmp_path / "classes.yaml").write_text(SPEC)
    before, now = tree_hashes(out), json.loads((out / "manifest.json").read_text())["counts"]["labelled_pixel_fraction"]
    lock_before = lock_file(out)
    capsys.readouterr()
    assert alps(["relabel", str(out), "--classes", str(tmp_path / "classes.yaml"), "--dry-run"]) == 0
    dry = capsys.readouterr()
    assert tree_hashes(out) == before and not (out / ".alps" / "staging").exists()
    assert lock_file(out) == lock_before  # not even the lock file: it names the last writer, and a dry run writes not
    evaluation = "evaluation.json (it scored the earlier labels: run `alps evaluate` again)"
    assert f"alps: the relabel would remove {evaluation}\n" in dry.err
    assert alps(["relabel", str(out), "--classes", str(tmp_path / "classes.yaml")]) == 0
    assert f"alps: {evaluation} of the earlier dataset is not in the new one" in capsys.readouterr().err
    classes = json.loads((out / "classes.json").read_text())["classes"]
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    lines = dry.out.splitlines()
    assert lines[0] == f"Dry run (nothing written): with {tmp_path / 'classes.yaml'}, {out} would have 2 classes (now 4):"
    assert lines[1].split() == ["id", "class", "clusters", "masks", "pixels", "share", "now"]
    labelled_pixels = sum(c["n_pixels"] for c in classes)
    for line, c in zip(lines[2:4], classes):
        assert line.split() == [str(c["id"]), c["name"], *[f"{k}," for k in c["clusters"][:-1]], str(c["clusters"][-1]),
                                str(c["n_masks"]), str(c["n_pixels"]), f"{100 * c['n_pixels'] / labelled_pixels:.1f}%",
                                *[f"cluster_{k}," for k in c["clusters"][:-1]], f"cluster_{c['clusters'][-1]}"]
    dropped = lines[4].split()
    assert dropped[:5] == ["255", "(dropped:", "no", "label)", "2"]
    assert int(dropped[5]) == counts["n_masks_in_dropped_clusters"] and dropped[7] == "cluster_2"
    assert lines[5] == (f"labelled pixels: {100 * counts['labelled_pixel_fraction']:.1f}% of all (now "
                        f"{100 * now:.1f}%)")
    assert lines[6] == "vectors: gpkg (now gpkg); review page: written (now one)"
    # Applied: the "now" column names the file's classes; the dropped cluster is "(dropped)".
    assert alps(["relabel", str(out), "--classes", str(tmp_path / "classes.yaml"), "--dry-run"]) == 0
    again = capsys.readouterr().out.splitlines()
    assert again[2].split()[1:] == ["merged", "0,", "1", *lines[2].split()[4:7], "merged"]  # one class now
    assert again[4].split()[-1] == "(dropped)"
    # The same file again: the same label maps, which a new evaluation scored; the relabel keeps it, as said.
    assert alps(["evaluate", str(out), str(labelled.data / "gt")]) == 0
    evaluated = (out / "evaluation.json").read_bytes()
    capsys.readouterr()
    assert alps(["relabel", str(out), "--classes", str(tmp_path / "classes.yaml"), "--dry-run"]) == 0
    assert "would remove" not in capsys.readouterr().err
    assert alps(["relabel", str(out), "--classes", str(tmp_path / "classes.yaml")]) == 0
    assert "not in the new one" not in capsys.readouterr().err
    assert (out / "evaluation.json").read_bytes() == evaluated
    (tmp_path / "bad.yaml").write_text("classes:\n  - {name: a, clusters: [0, 9]}\n")
    assert alps(["relabel", str(out), "--classes", str(tmp_path / "bad.yaml"), "--dry-run"]) == 2
    assert "class 'a' (line 2) clusters: cluster 9 does not exist" in capsys.readouterr().err


def test_a_dry_run_says_what_the_relabel_with_its_flags_would_write_and_remove(labelled, tmp_path, capsys):
    """--vector, --no-vector and --no-report were ignored by a dry run: it now says which vectors and page the
    relabel with the same flags writes, and names the outputs it would remove as the relabel itself then does."""
    out = Path(shutil.copytree(labelled.out, tmp_path / "out"))
    (tmp_path / "classes.yaml").write_text(SPEC)
    relabel = ["relabel", str(out), "--classes", str(tmp_path / "classes.yaml")]
    before = tree_hashes(out)
    capsys.readouterr()
    assert alps([*relabel, "--vector", "geojson", "--dry-run"]) == 0
    dry = capsys.readouterr()
    assert dry.out.splitlines()[-1] == "vectors: geojson (now gpkg); review page: written (now one)"
    assert "would remove" not in dry.err
    assert alps([*relabel, "--no-vector", "--no-report", "--dry-run"]) == 0
    dry = capsys.readouterr()
    assert dry.out.splitlines()[-1] == "vectors: none (now gpkg); review page: none (now one)"
    gone = "vectors/ (not asked for this time: --vector), report/ (not asked for this time: --no-report)"
    assert f"alps: the relabel would remove {gone}\n" in dry.err
    assert tree_hashes(out) == before
    assert alps([*relabel, "--no-vector", "--no-report"]) == 0
    assert f"alps: {gone} of the earlier dataset are not in the new one" in capsys.readouterr().err
    assert not (out / "vectors").exists() and not (out / "report").exists()
    assert alps([*relabel, "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "vectors: none (now none); review page: none (now none)"


def lock_file(out: Path) -> tuple[bytes, int]:
    lock = out / ".alps" / "lock"
    return lock.read_bytes(), lock.stat().st_mtime_ns


def test_a_run_may_start_while_a_dry_run_reads_and_the_dry_run_then_says_its_figures_may_mix(labelled, tmp_path,
                                                                                              monkeypatch, capsys):
    """A dry run held the write lock while it read every shard: a run started meanwhile was refused (exit 2,
    "being written by alps relabel --dry-run"). It reads unlocked now; a write that began, or ended, during its
    read makes it refuse its figures instead."""
    from alps_client.io import atomic, rewrite
    from alps_client.io.out_lock import out_lock

    out = Path(shutil.copytree(labelled.out, tmp_path / "out"))
    (tmp_path / "classes.yaml").write_text(SPEC)
    read_shard = rewrite.read_shard
    for writer in ("holds the lock", "swapped a dataset in"):
        held, reads = contextlib.ExitStack(), []

        def a_run_starts(path, writer=writer, held=held, reads=reads):
            reads.append(path)
            if len(reads) == 1:
                with contextlib.ExitStack() as run:
                    run.enter_context(out_lock(out, "alps run"))  # taken at once: the dry run holds nothing
                    if writer == "holds the lock":
                        held.push(run.pop_all())  # still running when the dry run ends
                    else:  # a run that ends before the dry run: its dataset swapped in
                        atomic.write_bytes(out / "manifest.json", (out / "manifest.json").read_bytes())
            return read_shard(path)

        monkeypatch.setattr(rewrite, "read_shard", a_run_starts)
        with held:
            assert alps(["relabel", str(out), "--classes", str(tmp_path / "classes.yaml"), "--dry-run"]) == 2
        by = f" by alps run (pid {os.getpid()})" if writer == "holds the lock" else ""
        assert capsys.readouterr().err.strip() == (
            f"alps: error: {out} was written{by} while this dry run read it: its figures could mix two datasets; run "
            "it again once that write is over"), writer


def test_a_writer_waits_out_a_readers_check_of_the_lock_not_another_writer(tmp_path, monkeypatch):
    import fcntl

    import alps_client.io.out_lock as out_lock_module
    from alps_client.errors import OutputBusyError

    (tmp_path / ".alps").mkdir()
    calls = {"n": 0}
    flock = fcntl.flock

    def busy_twice(fd, operation):
        calls["n"] += 1
        if operation & fcntl.LOCK_EX and calls["n"] <= 2:  # a reader's instant check, twice
            raise BlockingIOError
        return flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", busy_twice)
    with out_lock_module.out_lock(tmp_path, "alps run"):
        assert calls["n"] == 3 and out_lock_module.writer_of(tmp_path) == f"alps run (pid {os.getpid()})"
    assert out_lock_module.writer_of(tmp_path) is None
    monkeypatch.setattr(fcntl, "flock", flock)
    fd = os.open(tmp_path / ".alps" / "lock", os.O_RDWR)
    try:
        os.pwrite(fd, b"alps relabel (pid 1)", 0)
        flock(fd, fcntl.LOCK_EX)
        with pytest.raises(OutputBusyError, match="being written by alps relabel"), \
                out_lock_module.out_lock(tmp_path, "alps run"):
            pass
    finally:
        os.close(fd)


def test_a_rerun_keeps_the_relabelled_classes_while_its_clusters_stay(labelled, fake_repo, tmp_path):
    from alps_client.io.rewrite import carried_relabel

    out = Path(shutil.copytree(labelled.out, tmp_path / "out"))
    (tmp_path / "classes.yaml").write_text(SPEC)
    assert alps(["relabel", str(out), "--classes", str(tmp_path / "classes.yaml")]) == 0
    relabelled = {k: v for k, v in tree_hashes(out).items() if not k.startswith(("manifest", "report/"))}
    record = json.loads((out / "manifest.json").read_text())["relabel"]
    cfg = rerun_config(labelled, fake_repo)
    # The same command again (every image already done, the same clusters): the user's classes stay, and it says so.
    with run_log("prefect.task_runs") as logged:
        state = alps_flow(str(labelled.data / "images"), str(out), cfg, progress_bar=False, return_state=True)
    assert state.is_completed()
    assert "the classes of this dataset's `alps relabel` are kept, its clusters being the same: 2 classes " \
           "(merged, named)" in logged
    assert {k: v for k, v in tree_hashes(out).items() if not k.startswith(("manifest", "report/"))} == relabelled
    assert json.loads((out / "manifest.json").read_text())["relabel"] == record

    # Other clusters: the old names would be wrong, so they go, with one line saying why; the clusters they
    # named are set aside, and a run with those as --centroids gets the classes back.
    named = np.load(out / "centroids.npy")
    warnings: list[str] = []
    assert carried_relabel(out, named[:3], warnings.append) is None
    assert len(warnings) == 1 and "run `alps relabel` again" in warnings[0]
    aside = Path(warnings[0].split("--centroids ")[1].split()[0])
    np.testing.assert_array_equal(np.load(aside), named)
    cfg3 = PipelineConfig(backend=cfg.backend, amg=cfg.amg, cluster=ClusterConfig(n_clusters=3), writer=cfg.writer)
    state = alps_flow(str(labelled.data / "images"), str(out), cfg3, progress_bar=False, return_state=True)
    assert state.is_completed()
    manifest = json.loads((out / "manifest.json").read_text())
    assert "relabel" not in manifest and manifest["classes"]["names"] == ["cluster_0", "cluster_1", "cluster_2"]
    assert [c["name"] for c in json.loads((out / "classes.json").read_text())["classes"]] == manifest["classes"]["names"]
    # These three clusters named too, then the first classes brought back: the second ones are set aside in turn
    # (they were dropped for good, unsaid, when the run's --centroids were those of an earlier set-aside relabel).
    (tmp_path / "three.yaml").write_text("classes:\n  - {name: three, clusters: [0, 1]}\n")
    assert alps(["relabel", str(out), "--classes", str(tmp_path / "three.yaml")]) == 0
    record3 = json.loads((out / "manifest.json").read_text())["relabel"]
    cfg_back = PipelineConfig(backend=cfg.backend, amg=cfg.amg, cluster=ClusterConfig(centroids=str(aside)),
                              writer=cfg.writer)
    with run_log("prefect.task_runs") as logged:
        state = alps_flow(str(labelled.data / "images"), str(out), cfg_back, progress_bar=False, return_state=True)
    assert state.is_completed()
    assert json.loads((out / "manifest.json").read_text())["relabel"] == record
    # One relabel's classes for another's, said as that: not "not carried over: run `alps relabel` again" beside
    # "the classes ... are kept"
    assert not [line for line in logged if "not carried over" in line]
    assert any("are set aside for the relabel made for these --centroids" in line for line in logged)
    assert {k: v for k, v in tree_hashes(out).items() if not k.startswith(("manifest", "report/"))} == relabelled
    state = alps_flow(str(labelled.data / "images"), str(out), cfg3, progress_bar=False, return_state=True)
    assert state.is_completed()
    assert json.loads((out / "manifest.json").read_text())["relabel"] == record3
    assert json.loads((out / "manifest.json").read_text())["classes"]["names"] == ["three", "cluster_2"]


def test_a_new_batch_labelled_with_a_relabelled_datasets_centroids_gets_its_classes(labelled, fake_repo, tmp_path):
    """`alps run NEW --centroids OUT/centroids.npy` after `alps relabel OUT`: the new batch was written with the raw
    clusters (cluster_0..3), so two batches labelled apart had different class ids for the same things."""
    out = Path(shutil.copytree(labelled.out, tmp_path / "out"))
    (tmp_path / "classes.yaml").write_text(SPEC)
    assert alps(["relabel", str(out), "--classes", str(tmp_path / "classes.yaml")]) == 0
    batch = tmp_path / "batch"
    batch.mkdir()
    for name in ("ring.png", "scene_0001.png", "scene_0002.png"):
        shutil.copy(labelled.data / "images" / name, batch / name)
    if not labelled.repo.exists():  # another test removed it to show that the report needs no model
        shutil.copytree(fake_repo, labelled.repo)
    cfg = PipelineConfig(backend=BackendConfig(model_repository=str(labelled.repo)), amg=AmgConfig(points_per_side=8),
                         cluster=ClusterConfig(centroids=str(out / "centroids.npy")))
    state = alps_flow(str(batch), str(tmp_path / "new"), cfg, progress_bar=False, return_state=True)
    assert state.is_completed()
    source, new = (json.loads((folder / "manifest.json").read_text()) for folder in (out, tmp_path / "new"))
    assert new["classes"] == source["classes"] and new["classes"]["names"] == ["merged", "named"]
    assert new["relabel"] == {**source["relabel"], "from": str(out)}
    before = {k.split("/")[1]: v for k, v in label_maps(out).items()}
    after = {k.split("/")[1]: v for k, v in label_maps(tmp_path / "new").items()}
    assert sorted(after) == ["ring", "scene_0001", "scene_0002"]
    for stem, label in after.items():  # the same image, the same clusters: the same class ids
        np.testing.assert_array_equal(label, before[stem])
    assert set(np.unique(np.concatenate([m.ravel() for m in after.values()]))) <= {0, 1, 255}

    # OUT relabelled again, then its relabel undone: the batch's same command took the classes OUT had at its first
    # run, and said they were OUT's (class review audit). It follows OUT now, and says so.
    (tmp_path / "again.yaml").write_text("classes:\n  - {name: all, clusters: [0, 1, 3]}\ndrop: [2]\n")
    said = f"{out} was relabelled since this dataset took its classes: its classes now are applied"
    for spec, names in (("again.yaml", ["all"]), ("undo.yaml", ["cluster_0", "cluster_1", "cluster_2", "cluster_3"])):
        if spec == "undo.yaml":
            (tmp_path / spec).write_text("classes: []\n")
        assert alps(["relabel", str(out), "--classes", str(tmp_path / spec)]) == 0
        with run_log("prefect.task_runs") as logs:
            assert alps_flow(str(batch), str(tmp_path / "new"), cfg, progress_bar=False, return_state=True).is_completed()
        new, source = (json.loads((folder / "manifest.json").read_text()) for folder in (tmp_path / "new", out))
        assert new["classes"]["names"] == source["classes"]["names"] == names
        assert any(said in line for line in logs), logs


def test_relabel_and_report_refuse_an_out_edited_by_hand_and_a_ctrl_c_is_one_line(labelled, tmp_path, monkeypatch,
                                                                                    capsys):
    """A label map deleted by hand: relabel wrote a dataset without its image (img_dir, COCO, vis), the manifest
    still listing it. An unreadable manifest.json, and Ctrl-C, ended relabel and report in a traceback."""
    (tmp_path / "classes.yaml").write_text(SPEC)
    relabel = ["relabel", None, "--classes", str(tmp_path / "classes.yaml")]
    for edit, said in (("label map", ("1 image(s) that {out}/manifest.json lists have no label map in "
                                      "{out}/ann_dir (first: scene_0003)")),
                       ("manifest", "{out}/manifest.json cannot be read (Expecting value"),
                       # a traceback naming no file (code review)
                       ("errors", "{out}/errors.jsonl cannot be read (line 2: Expecting property name"),
                       ("errors entry", "{out}/errors.jsonl cannot be read (line 1 holds a JSON list, not a record"),
                       ("centroids", "{out}/centroids.npy cannot be read (Object arrays cannot be loaded when allow_pickle=False"),
                       ("centroids shape", "{out}/centroids.npy cannot be read (holds (4,) float32, not one row of "
                                           "features per cluster")):
        out = Path(shutil.copytree(labelled.out, tmp_path / edit.replace(" ", "_")))
        if edit == "label map":
            next((out / "ann_dir").glob("*/scene_0003.png")).unlink()
        elif edit == "manifest":
            (out / "manifest.json").write_text("")
        elif edit.startswith("errors"):
            (out / "errors.jsonl").write_text('{"path": "a.png", "reason": "x"}\n{oops\n' if edit == "errors"
                                              else '["a.png"]\n')
        elif edit == "centroids":
            np.save(out / "centroids.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
        else:
            np.save(out / "centroids.npy", np.zeros(4, np.float32))
        before = tree_hashes(out)
        capsys.readouterr()
        for command in (["report", str(out)], [relabel[0], str(out), *relabel[2:]]):
            assert alps(command) == 2
            (line,) = capsys.readouterr().err.strip().splitlines()
            assert line.startswith(f"alps: error: {said.format(out=out)}") and "alps run" in line, line
        assert tree_hashes(out) == before

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("alps_client.io.rewrite.relabel_dataset", interrupted)
    assert alps([relabel[0], str(labelled.out), *relabel[2:]]) == 130
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == "alps: error: interrupted (Ctrl-C); its writes are staged, so nothing half-written is used: run " \
                   "`alps relabel` again to finish"


@pytest.mark.parametrize("crafted", ["scene", "split", "stem"])
def test_a_shard_naming_an_output_place_outside_out_is_refused(labelled, tmp_path, capsys, crafted):
    """In an OUT handed over, a shard whose metadata named the scene `/home/u/x` (or the stem `../../x`) had `alps
    relabel` write stitched maps or label maps there, over any file of those names (security audit)."""
    import dataclasses

    from alps_client.io.shards import read_shard, write_shard

    out = Path(shutil.copytree(labelled.out, tmp_path / "out"))
    outside = tmp_path / "outside" / "owned"
    path = out / ".alps" / "shards" / "scene_0003.npz"
    shard = read_shard(path)
    if crafted == "stem":  # named as its file, which holds no separator: only another name than the file's
        shard = dataclasses.replace(shard, stem=f"../../{outside.name}")
    else:
        shard = dataclasses.replace(shard, extra={**shard.extra, crafted: str(outside) if crafted == "scene"
                                                  else "../../outside"})
    write_shard(path, shard)
    (tmp_path / "classes.yaml").write_text(SPEC)
    before = tree_hashes(out)
    for command in (["report", str(out)], ["relabel", str(out), "--classes", str(tmp_path / "classes.yaml")]):
        assert alps(command) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith(f"alps: error: 1 shard(s) in {out / '.alps' / 'shards'} cannot be read whole (first: "
                               f"scene_0003.npz, {path}: its metadata names the {'image' if crafted == 'stem' else crafted}"), line
    assert tree_hashes(out) == before and not (tmp_path / "outside").exists()


def test_class_names_with_terminal_escapes_in_an_out_handed_over_are_never_printed_raw(labelled, tmp_path, capsys):
    """Class names read from an OUT's manifest.json and classes.json (alps relabel refuses such names) went raw to
    the console: a name holding `ESC[2J` cleared the screen in relabel --dry-run and evaluate (security audit)."""
    out = Path(shutil.copytree(labelled.out, tmp_path / "out"))
    manifest, classes = json.loads((out / "manifest.json").read_text()), json.loads((out / "classes.json").read_text())
    manifest["classes"]["names"][0] = classes["classes"][0]["name"] = "a\x1b[2Jb"
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "classes.json").write_text(json.dumps(classes))
    (tmp_path / "classes.yaml").write_text(SPEC)
    for command in (["report", str(out)], ["relabel", str(out), "--classes", str(tmp_path / "classes.yaml"),
                                           "--dry-run"]):
        assert alps(command) == 2
        said = capsys.readouterr()
        (line,) = said.err.strip().splitlines()
        assert line.startswith(f"alps: error: {out / 'manifest.json'}: class 0 name 'a\\x1b[2Jb' holds a control "
                               "character"), line
        assert "\x1b" not in said.out + said.err
    assert alps(["evaluate", str(out), str(labelled.data / "gt"), "--json", str(tmp_path / "e.json")]) == 0
    said = capsys.readouterr()
    assert "a\\x1b[2Jb" in said.out and "\x1b" not in said.out + said.err


def test_a_relabel_of_a_dataset_an_older_alps_wrote_says_its_records_are_missing(labelled, tmp_path):
    """A run of this alps says `centroids_from` and `labelled_on` "not recorded" of an older dataset; a relabel
    said the second and left the first out (upgrade audit)."""
    from alps_client.io.rewrite import relabel_dataset

    out = Path(shutil.copytree(labelled.out, tmp_path / "out"))
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["centroids_from"]  # as an older alps wrote it
    (out / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "classes.yaml").write_text(SPEC)
    relabel_dataset(out, tmp_path / "classes.yaml")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["centroids_from"] == "not recorded (fitted by an older alps)"
    assert sum(manifest["counts"]["labelled_on"].values()) == manifest["counts"]["n_images"]


def test_a_run_refused_for_its_backend_leaves_the_dataset_relabelable(labelled, fake_repo, tmp_path, capsys):
    """A rerun with a new image whose backend could not be opened (exit 2, nothing labelled: a Triton server or Dask
    scheduler that cannot be reached, here Triton asked to serve the numpy fake) wrote the record of a run that set
    out to label one image and wrote no dataset: `alps report` and `alps relabel` then refused the dataset it had
    not touched. The record is written once the backend is open."""
    import dataclasses

    out = Path(shutil.copytree(labelled.out, tmp_path / "out"))
    data = Path(shutil.copytree(labelled.data / "images", tmp_path / "images"))
    shutil.copyfile(data / "scene_0001.png", data / "new.png")
    cfg = rerun_config(labelled, fake_repo)
    cfg = dataclasses.replace(cfg, backend=dataclasses.replace(cfg.backend, kind="triton"))
    record = (out / ".alps" / "last_run.json").read_bytes()
    state = alps_flow(str(data), str(out), cfg, progress_bar=False, return_state=True)
    assert state.is_failed() and "only runs embedded" in state.message
    assert not (out / ".alps" / "shards" / "new.npz").exists()  # nothing labelled
    assert (out / ".alps" / "last_run.json").read_bytes() == record
    (tmp_path / "classes.yaml").write_text(SPEC)
    capsys.readouterr()
    assert alps(["relabel", str(out), "--classes", str(tmp_path / "classes.yaml"), "--dry-run"]) == 0, \
        capsys.readouterr().err


def test_relabel_and_report_refuse_shards_that_no_longer_match_the_dataset(labelled, fake_repo, tmp_path,
                                                                          monkeypatch, capsys):
    """A rerun that labelled a changed image and was killed before writing its dataset left that image's new shard
    beside the old dataset: a relabel paired the old image copy with the new image's label map. A damaged shard
    (its features' bytes altered) ended relabel and report in a traceback."""
    import flows.alps_flow as flow_module

    out = Path(shutil.copytree(labelled.out, tmp_path / "out"))
    data = Path(shutil.copytree(labelled.data / "images", tmp_path / "images"))  # times kept: nothing changed
    before = tree_hashes(out)
    changed = data / "scene_0004.png"
    changed.write_bytes((data / "scene_0007.png").read_bytes())  # another picture under the same name
    cfg = rerun_config(labelled, fake_repo)
    label_all = flow_module.label_all

    def label_then_die(*args, **kwargs):
        outcomes = label_all(*args, **kwargs)
        assert [o.stem for o in outcomes[0] if o.status == "labelled"] == ["scene_0004"]  # the kill lands after it
        raise KeyboardInterrupt("killed before the dataset was written")

    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(flow_module, "label_all", label_then_die)
        alps_flow(str(data), str(out), cfg, progress_bar=False)
    last_run = json.loads((out / ".alps" / "last_run.json").read_text())
    assert last_run["complete"] is False and last_run["to_label"] == 1  # not the previous run's "complete": true
    assert PipelineConfig.from_dict(last_run["config"]) == cfg  # the options to give the rerun
    (tmp_path / "classes.yaml").write_text(SPEC)
    capsys.readouterr()
    for command in (["report", str(out)], ["relabel", str(out), "--classes", str(tmp_path / "classes.yaml")]):
        assert alps(command) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert "set out to label 1 image(s) and wrote no dataset" in line and f"`alps run {data} --out {out}` " \
            f"again, with the options it was given (its settings: `config` in {out}/.alps/last_run.json)" in line
    assert tree_hashes(out) == before
    state = alps_flow(str(data), str(out), cfg, progress_bar=False, return_state=True)  # the rerun finishes it
    assert state.is_completed()
    assert alps(["relabel", str(out), "--classes", str(tmp_path / "classes.yaml")]) == 0
    assert (out / "img_dir" / "train" / "scene_0004.png").read_bytes() == changed.read_bytes() or \
        (out / "img_dir" / "val" / "scene_0004.png").read_bytes() == changed.read_bytes()

    shard = out / ".alps" / "shards" / "scene_0002.npz"
    damaged = bytearray(shard.read_bytes())
    damaged[-200] ^= 0xFF  # in the last entry's bytes (the zip's directory is 1 KB at most here: 11 entries)
    shard.write_bytes(bytes(damaged))
    written = tree_hashes(out)
    capsys.readouterr()
    for command in (["report", str(out)], ["relabel", str(out), "--classes", str(tmp_path / "classes.yaml")]):
        assert alps(command) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert "1 shard(s)" in line and "scene_0002.npz" in line and "labels those images again" in line
    assert tree_hashes(out) == written
    state = alps_flow(str(data), str(out), cfg, progress_bar=False, return_state=True)
    assert state.is_completed() and state.result()["n_labelled"] == 1  # the damaged one, labelled again


def test_relabel_copies_each_image_of_names_that_share_a_prefix_or_hold_glob_characters(fake_repo, tmp_path, capsys):
    """`a.png` beside `a.b.png`, `x[1].png` beside `x1.png`: a relabel copied `a.b.png` into img_dir as `a.png`
    (the copy was found by the pattern `a.*`, and `[1]` is a pattern too)."""
    images = tmp_path / "images"
    images.mkdir()
    names = ["a.png", "a.b.png", "x[1].png", "x1.png"]
    for i, name in enumerate(names):
        rgb, _ = ring_scene(seed=i)
        Image.fromarray(np.roll(rgb, 9 * i, axis=1)).save(images / name)
    out = tmp_path / "out"
    cfg = PipelineConfig(backend=BackendConfig(model_repository=str(fake_repo)), amg=AmgConfig(points_per_side=6),
                         cluster=ClusterConfig(n_clusters=2))
    assert alps_flow(str(images), str(out), cfg, progress_bar=False, return_state=True).is_completed()
    (tmp_path / "classes.yaml").write_text("classes:\n  - {name: one, clusters: [0]}\n")
    assert alps(["relabel", str(out), "--classes", str(tmp_path / "classes.yaml"), "--no-report"]) == 0
    assert "alps: report/ (not asked for this time: --no-report) of the earlier dataset is not in the new one" in \
        capsys.readouterr().err
    copies = {p.name: p.read_bytes() for p in (out / "img_dir").glob("*/*.png")}
    assert sorted(copies) == sorted(names)
    for name in names:
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(copies[name]))), np.asarray(Image.open(images / name)))
    # The page `alps report` adds to a dataset relabelled without one stays through the next relabel (deleted).
    assert not (out / "report").exists()
    assert json.loads((out / "manifest.json").read_text())["counts"]["report"] == {}
    assert alps(["report", str(out)]) == 0
    files = [p for p in (out / "report").rglob("*") if p.is_file()]
    assert json.loads((out / "manifest.json").read_text())["counts"]["report"] == {
        "files": len(files), "bytes": sum(p.stat().st_size for p in files)}  # it said {}: no page
    assert alps(["relabel", str(out), "--classes", str(tmp_path / "classes.yaml")]) == 0
    assert (out / "report" / "index.html").is_file()
    with pytest.raises(SystemExit) as usage:  # which would win was not said
        alps(["relabel", str(out), "--classes", str(tmp_path / "classes.yaml"), "--no-vector", "--vector", "gpkg"])
    assert usage.value.code == 2


def test_report_and_relabel_say_what_is_wrong_with_out(tmp_path, capsys):
    (tmp_path / "a_file").write_text("not a dataset folder")
    classes = tmp_path / "classes.yaml"
    classes.write_text("classes: [{name: a, clusters: [0]}]\n")
    for out, said in ((tmp_path / "absent", "does not exist"), (tmp_path / "a_file", "is a file, not a folder"),
                      (tmp_path, "holds no ALPS dataset")):
        for command in (["report", str(out)], ["relabel", str(out), "--classes", str(classes)]):
            assert alps(command) == 2
            (line,) = capsys.readouterr().err.strip().splitlines()
            assert line.startswith(f"alps: error: {out} {said}"), (command, line)
    # A folder of images given for OUT: `alps run IMAGES --out IMAGES` (what it said to do) mixes the dataset in.
    (tmp_path / "photo.JPG").write_bytes(b"")
    assert alps(["report", str(tmp_path)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (f"alps: error: {tmp_path} holds no ALPS dataset (no manifest.json / centroids.npy) but images: "
                    f"label them first with `alps run {tmp_path} --out OUT` (a new folder), then give OUT")


def test_report_and_relabel_of_a_read_only_out_say_so_in_one_line(labelled, tmp_path, monkeypatch, capsys):
    """A dataset on a read-only mount (an archive, a colleague's share): a traceback before (EROFS at the lock)."""
    import errno

    import alps_client.io.out_lock as lock_module

    out = Path(shutil.copytree(labelled.out, tmp_path / "out"))
    (tmp_path / "classes.yaml").write_text(SPEC)
    real_open = os.open

    def read_only(path, flags, *args):
        if flags & (os.O_RDWR | os.O_WRONLY):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(lock_module.os, "open", read_only)
    capsys.readouterr()
    for command in (["report", str(out)], ["relabel", str(out), "--classes", str(tmp_path / "classes.yaml")]):
        assert alps(command) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith(f"alps: error: {out} cannot be written (Read-only file system): alps "), line


def test_one_writer_per_out_and_a_killed_holder_leaves_no_lock(labelled, fake_repo, tmp_path, capsys):
    """Another process writing OUT (a run on a shared Prefect API, say) holds OUT/.alps/lock: a relabel, a
    report and a run into OUT are refused with one line and write nothing; once the holder is killed (-9) the
    kernel has released the lock and the same commands work."""
    out = Path(shutil.copytree(labelled.out, tmp_path / "out"))
    (tmp_path / "classes.yaml").write_text(SPEC)
    if not labelled.repo.exists():  # another test removed it to show that the report needs no model
        shutil.copytree(fake_repo, labelled.repo)
    before = tree_hashes(out)
    shards_before = sorted(p.name for p in (out / ".alps" / "shards").iterdir())
    holding = tmp_path / "holding"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out), str(holding)], cwd=CWD)
    try:
        wait_until(holding.exists, "the other process holding the lock", proc=holder)
        busy = f"alps: error: {out} is being written by alps run (pid {holder.pid}); wait for it to finish"
        run = ["run", str(labelled.data / "images"), "--out", str(out), "--model-repository", str(labelled.repo),
               "--n-clusters", "4", "--no-progress", "--points-per-side"]
        # a run of other settings was told that OUT holds another configuration's images (use --overwrite)
        for command in (["relabel", str(out), "--classes", str(tmp_path / "classes.yaml")], ["report", str(out)],
                        [*run, "8"], [*run, "6"],
                        ["relabel", str(out), "--classes", str(tmp_path / "classes.yaml"), "--dry-run"]):
            assert alps(command) == 2, command
            way_out = ", or use another --out" if command[0] == "run" else ""  # relabel and report have none
            assert capsys.readouterr().err.strip().splitlines()[-1] == busy + way_out, command
        assert tree_hashes(out) == before
        assert sorted(p.name for p in (out / ".alps" / "shards").iterdir()) == shards_before
    finally:
        holder.kill()
        holder.wait()
    assert alps(["relabel", str(out), "--classes", str(tmp_path / "classes.yaml")]) == 0
    assert json.loads((out / "manifest.json").read_text())["classes"]["names"] == ["merged", "named"]


def test_the_command_report_prints_pastes_into_a_shell(labelled, tmp_path, capsys):
    """`alps report 'my out #1'` printed `alps relabel my out #1 --classes ...`: pasted, bash reads `alps relabel my`."""
    import shlex

    out = Path(shutil.copytree(labelled.out, tmp_path / "my out #1%'s"))
    capsys.readouterr()
    assert alps(["report", str(out)]) == 0
    command = capsys.readouterr().out.split("`")[1]
    assert shlex.split(command) == ["alps", "relabel", str(out), "--classes", "classes.yaml"]
