"""The flow in this process (the session's Prefect server, numpy fake SAM): outputs, records, artifacts, reruns,
faults."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alps_client.backends.fake import write_fake_repository
from alps_client.config import (
    AmgConfig,
    BackendConfig,
    ClusterConfig,
    GateConfig,
    PipelineConfig,
    WriterConfig,
)
from alps_client.errors import AlpsError, ConfigMismatchError, IncompleteRunError
from alps_client.io.registry import read_registry
from flows.alps_flow import alps_flow
from flows.cli import main as alps
from tests.runs import error_lines, labels, run_log, wait_until


def small_config(repo, **writer) -> PipelineConfig:
    return PipelineConfig(backend=BackendConfig(model_repository=str(repo), retry_delay_s=0.05),
                          amg=AmgConfig(points_per_side=8), cluster=ClusterConfig(n_clusters=4),
                          writer=WriterConfig(**writer))


def faulty_repo(tmp_path: Path, **faults) -> Path:
    return write_fake_repository(tmp_path / "faulty_repo", faults={"dir": str(tmp_path / "faults"), **faults})


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def copies_of_scenes(scenes: Path, data: Path, files: int | dict[str, int]) -> Path:
    """``data``, holding copies of scenes: how many of the first, under their names; or path -> scene index."""
    for relative, i in (files.items() if isinstance(files, dict) else
                        ((f"scene_{i:04d}.png", i) for i in range(files))):
        (data / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(scenes / "images" / f"scene_{i:04d}.png", data / relative)
    return data


def label_copies(tmp_path: Path, scenes: Path, cfg: PipelineConfig, files: int | dict[str, int]) -> tuple[Path, Path]:
    """Label copies of scenes (:func:`copies_of_scenes`): ``(tmp_path/data, tmp_path/out)``."""
    data, out = copies_of_scenes(scenes, tmp_path / "data", files), tmp_path / "out"
    alps_flow(str(data), str(out), cfg, progress_bar=False)
    return data, out


def label_a_strip(tmp_path: Path, scenes: Path, cfg: PipelineConfig) -> tuple[Path, Path, PipelineConfig]:
    """Label ``tmp_path/scene_data/strip.png`` (three scenes side by side: three tiles of 64) into
    ``tmp_path/scene_out``: ``(scene_data, scene_out, the tiled configuration)``."""
    from alps_client.config import InputConfig

    scene_data, scene_out = tmp_path / "scene_data", tmp_path / "scene_out"
    scene_data.mkdir()
    strip = np.concatenate([np.asarray(Image.open(scenes / "images" / f"scene_{i:04d}.png").convert("RGB"))[:64, :64]
                            for i in range(3)], axis=1)  # (64, 192, 3)
    Image.fromarray(strip).save(scene_data / "strip.png")
    tiled = dataclasses.replace(cfg, inputs=InputConfig(tile=64, overlap=0))
    alps_flow(str(scene_data), str(scene_out), tiled, progress_bar=False)
    return scene_data, scene_out, tiled


def test_flow_writes_dataset_and_records_runs_and_artifacts(fake_repo, scenes, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    out = tmp_path / "out"
    with run_log("prefect.task_runs") as task_lines, run_log() as flow_lines:
        result = alps_flow(str(scenes / "images"), str(out), small_config(fake_repo), progress_bar=False)
    assert result["summary"]["n_images"] == 6 and result["n_labelled"] == 6 and result["complete"]
    assert json.loads((out / "centroids.json").read_text())["l2_normalized"] is True  # --centroids checks it
    from alps_client.versions import source_commit

    recorded = json.loads((out / "manifest.json").read_text())["versions"]  # what decides the labels, to reproduce
    assert {"pillow", "scipy", "rasterio", "nibabel"} <= recorded.keys() and "opencv-python-headless" in recorded
    assert recorded["alps_commit"] == source_commit() and recorded["alps_commit"]  # every commit is alps 0.1.0
    # Rejected at discovery: said at the start too, not only after every image (hours later on a large run).
    early = next(i for i, line in enumerate(flow_lines) if "rejected before labelling" in line)
    assert "1 input(s) rejected before labelling (1 zero-byte file)" in flow_lines[early]
    clustering = next(i for i, line in enumerate(flow_lines) if line.startswith("Clustering the masks of 6 image"))
    assert early < clustering
    # which k-means ran: "auto" is cuML's on a sample on a GPU machine, scikit-learn's over every mask elsewhere
    assert "(k-means: scikit-learn MiniBatchKMeans over every mask, on the CPU)" in flow_lines[clustering]
    # One "Finished in state Completed()" per task run but the images' (a line per image buried big runs' logs).
    assert sum(line.startswith("Finished in state Completed(") for line in task_lines) == 2, task_lines
    assert [e["reason"] for e in result["errors"]] == ["zero-byte file"] and result["missing"] == []
    anns = sorted((out / "ann_dir").glob("*/*.png"))
    assert sorted(p.stem for p in anns) == sorted(f"scene_{i:04d}" for i in range(6))
    for p in anns:
        label = np.asarray(Image.open(p))
        assert label.dtype == np.uint8 and set(np.unique(label)) <= set(range(4)) | {255}
        assert (out / "img_dir" / p.parent.name / f"{p.stem}.png").is_file() and (out / "vis" / p.name).is_file()
    errors = read_jsonl(out / "errors.jsonl")
    assert errors[0]["path"].endswith("broken.png")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model_is_stand_in"] and manifest["complete"] and manifest["missing"] == []
    # where the model ran and which k-means fitted the classes: the log said it, the dataset did not ("auto")
    assert manifest["counts"]["labelled_on"] == {"numpy FAKE test model": 6}
    assert manifest["centroids_from"] == "k-means: scikit-learn MiniBatchKMeans over every mask, on the CPU"
    assert "model ran on</th><td>numpy FAKE test model (6 images)" in (out / "report" / "index.html").read_text()

    async def recorded():
        async with get_client() as client:
            runs = await client.read_flow_runs(sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=200)
            run = next(r for r in runs if r.state and r.state.is_completed() and r.parameters.get("out") == str(out))
            tasks = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
            arts = await client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
            return tasks, arts

    def all_recorded():  # task runs and artifacts are recorded asynchronously
        tasks, arts = asyncio.run(recorded())
        done = sum(t.name.startswith("label-image") for t in tasks) >= 6 and \
            {"alps-summary", "alps-errors"} <= {a.key for a in arts}
        return (tasks, arts) if done else None

    tasks, arts = wait_until(all_recorded, "the run's task runs and artifacts to be recorded", timeout=60)
    names = [t.name for t in tasks]
    keys = {a.key for a in arts}
    # The zero-byte file is rejected at discovery; each task run is named after its image.
    assert sorted(n for n in names if n.startswith("label-image")) == [f"label-image: {p.stem}" for p in
                                                                       sorted(anns, key=lambda p: p.stem)]
    assert any(n.startswith("cluster") for n in names) and any(n.startswith("write-dataset") for n in names)
    # The tasks after the images get no input per image: Prefect puts every upstream value found in a task's
    # arguments into its events (capped at 1.5 MB), and per-image lists made a run of 8,000 images fail at its end.
    for t in tasks:
        if not t.name.startswith("label-image"):
            upstream = {name: len(refs) for name, refs in t.task_inputs.items() if refs}
            assert sum(upstream.values()) <= 1, (t.name, upstream)  # write-dataset: the centroids' path
    assert {"alps-summary", "alps-class-histogram", "alps-previews", "alps-errors", "alps-progress"} <= keys
    missing = next(a for a in arts if a.key == "alps-missing")  # said, so that a retry's stands over its failure's
    assert "none missing" in json.dumps(missing.data)
    # it reaches 100 % on a run whose images failed too: it says what it counts (accounting audit)
    assert "rejected or failed" in next(a for a in arts if a.key == "alps-progress").description
    summary = next(a for a in arts if a.key == "alps-summary")
    assert "STAND-IN" in json.dumps(summary.data) and "numpy FAKE test model: 6" in json.dumps(summary.data)
    # The class histogram named no class: after `alps relabel` a user saw ids 0, 1 without "building", "water".
    histogram = next(a for a in arts if a.key == "alps-class-histogram").data
    assert "| 0 | cluster_0 |" in histogram
    # A rerun says its finished images skipped without a task run each: they grew Prefect's database by ~20 KB
    # an image at every rerun (38 MB for a rerun of 2,000 finished images).
    again = alps_flow(str(scenes / "images"), str(out), small_config(fake_repo), progress_bar=False)
    assert again["n_skipped"] == 6 and again["n_labelled"] == 0 and labels(out) == {
        p.relative_to(out / "ann_dir").as_posix(): p.read_bytes() for p in anns}
    def rerun_recorded():  # the rerun's, now the latest
        names = [t.name for t in asyncio.run(recorded())[0]]
        return names if any(n.startswith("write-dataset") for n in names) else None

    rerun_names = wait_until(rerun_recorded, "the rerun's task runs to be recorded", timeout=60)
    assert not [n for n in rerun_names if n.startswith("label-image")] and any(
        n.startswith("cluster") for n in rerun_names), rerun_names


def test_rerun_skips_finished_images_refuses_mixed_configs_and_overwrite_relabels(fake_repo, scenes, tmp_path):
    out = tmp_path / "out"
    cfg = small_config(fake_repo)
    first = alps_flow(str(scenes / "images"), str(out), cfg, progress_bar=False)
    before = labels(out)
    with run_log() as logged, run_log("prefect.task_runs") as task_logged:
        second = alps_flow(str(scenes / "images"), str(out), cfg, progress_bar=False)
    assert first["n_labelled"] == 6 and second["n_labelled"] == 0 and second["n_skipped"] == 6
    assert "6 image(s): 0 to label, 6 already labelled (skipped); 1 rejected input(s)" in logged  # was "6 to label"
    assert not [line for line in task_logged if "clusters differ" in line]  # the same clusters
    assert before == labels(out)
    # SAM's default typed out is the same labelling (was "amg.pred_iou_thresh None there, 0.88 now"), both ways
    typed_cfg = dataclasses.replace(cfg, amg=dataclasses.replace(cfg.amg, pred_iou_thresh=0.88))
    typed = alps_flow(str(scenes / "images"), str(out), typed_cfg, progress_bar=False)
    assert typed["n_labelled"] == 0 and typed["n_skipped"] == 6 and before == labels(out)
    typed_out = tmp_path / "typed"  # the value typed is what its dataset records; a rerun without it takes that form
    alps_flow(str(scenes / "images"), str(typed_out), typed_cfg, progress_bar=False)
    assert json.loads((typed_out / "manifest.json").read_text())["config"]["amg"]["pred_iou_thresh"] == 0.88
    untyped = alps_flow(str(scenes / "images"), str(typed_out), cfg, progress_bar=False)
    assert untyped["n_labelled"] == 0 and untyped["n_skipped"] == 6 and labels(typed_out) == before
    # --points-per-batch changes memory, never a mask (lowered after a run ran out of memory): it was refused as
    # "another labelling configuration (amg.points_per_batch None there, 7 now)", every image to encode again
    from alps_client.io.shards import read_shard_meta

    smaller = dataclasses.replace(cfg, amg=dataclasses.replace(cfg.amg, points_per_batch=7))
    (out / ".alps" / "shards" / "scene_0002.npz").unlink()  # labelled again, with the smaller batch
    batched = alps_flow(str(scenes / "images"), str(out), smaller, progress_bar=False)
    assert batched["n_labelled"] == 1 and batched["n_skipped"] == 5 and before == labels(out)
    metas = [read_shard_meta(p) for p in sorted((out / ".alps" / "shards").glob("*.npz"))]
    assert len({m["fingerprint"] for m in metas}) == 1  # OUT keeps one fingerprint: the next rerun skips them all
    assert {m["extra"]["labelling"]["config"]["amg"]["points_per_batch"] for m in metas} == {None}
    # the records' form of Meta's generator (its output_mode) never reaches a shard either: it was refused as
    # another labelling configuration, set in a deployment's config (code review)
    coco_form = dataclasses.replace(cfg, amg=dataclasses.replace(cfg.amg, output_mode="coco_rle"))
    assert alps_flow(str(scenes / "images"), str(out), coco_form, progress_bar=False)["n_skipped"] == 6
    assert before == labels(out)
    other = PipelineConfig(backend=cfg.backend, amg=AmgConfig(points_per_side=6), cluster=cfg.cluster)
    # the settings that never change a shard are not said to differ (docs audit: "inputs.stitch False there")
    with_neutral = dataclasses.replace(other, amg=dataclasses.replace(other.amg, points_per_batch=7),
                                       inputs=dataclasses.replace(other.inputs, write_nifti_labels=True))
    for refused_config in (other, with_neutral):
        with pytest.raises(ConfigMismatchError, match="--overwrite") as refused:
            alps_flow(str(scenes / "images"), str(out), refused_config, progress_bar=False)
        assert "6 image(s) labelled with another model or labelling configuration (amg.points_per_side 8 there, 6 " \
               "now)" in str(refused.value)  # which setting, so that the user can run again with it
    other_model = write_fake_repository(tmp_path / "other_model", prompt_batch_size=32)
    with pytest.raises(ConfigMismatchError, match=r"configuration \(model \S+ there, \S+ now\); use"):
        alps_flow(str(scenes / "images"), str(out), small_config(other_model), progress_bar=False)
    third = alps_flow(str(scenes / "images"), str(out), other, overwrite=True, progress_bar=False)
    assert third["n_labelled"] == 6 and third["n_skipped"] == 0


def _dataset_files(out: Path) -> dict[str, tuple[int, int, int]]:
    """Every file of the dataset in ``out`` (its work folder aside): ``(inode, size, mtime_ns)`` by relative path."""
    return {p.relative_to(out).as_posix(): (p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(out.rglob("*")) if p.is_file() and ".alps" not in p.relative_to(out).parts}


def test_a_rerun_with_nothing_new_leaves_the_dataset_as_it_was_and_anything_changed_writes_it(fake_repo, scenes,
                                                                                            tmp_path, capsys):
    """A rerun of a finished run painted, copied and swapped in every file again: new inodes and times, minutes on
    a large dataset, every file new to a backup."""
    out, images = tmp_path / "out", str(scenes / "images")
    cfg = small_config(fake_repo)
    alps_flow(images, str(out), cfg, progress_bar=False)
    assert alps(["evaluate", str(out), str(scenes / "gt"), "--json", str(out / "evaluation.json")]) == 0
    written = _dataset_files(out)
    assert "manifest.json" in written and "evaluation.json" in written and any(n.startswith("vis/") for n in written)
    # What a write killed after its swap, before its clean-up, left (the previous dataset parked), and one killed
    # before its swap (the staged dataset): only the next write removed them, and this rerun writes nothing.
    shutil.copytree(out / "ann_dir", out / ".alps" / "previous" / "ann_dir")
    shutil.copytree(out / "img_dir", out / ".alps" / "staging" / "img_dir")
    with run_log() as logged, run_log("prefect.task_runs") as task_logged:
        again = alps_flow(images, str(out), cfg, progress_bar=False)
    assert _dataset_files(out) == written  # not a file written again, nor one gone
    assert not (out / ".alps" / "previous").exists() and not (out / ".alps" / "staging").exists()
    assert any("left by a dataset write that was interrupted" in line for line in logged), logged
    assert again["n_skipped"] == 6 and again["dataset_unchanged"] and again["summary"]["n_images"] == 6
    assert f"{out} holds the dataset these shards, centroids, classes and settings give, as it was written: not " \
           "written again" in task_logged
    assert any(line.startswith(f"Labelled dataset unchanged in {out}: 6 image(s), ") for line in logged), logged
    record = json.loads((out / ".alps" / "last_run.json").read_text())
    assert record["dataset_written"] and record["dataset_unchanged"] and record["summary"] == again["summary"]
    assert alps(["run", images, "--out", str(out), "--config", str(out), "--no-progress"]) == 0  # its own settings
    assert "6 already done; unchanged, not written again)" in capsys.readouterr().out
    assert _dataset_files(out) == written

    def rewritten(change, config=cfg) -> dict[str, tuple[int, int, int]]:
        """Run again after ``change()``: the files the rerun wrote anew (another inode)."""
        before = _dataset_files(out)
        change()
        result = alps_flow(images, str(out), config, progress_bar=False)
        assert not result["dataset_unchanged"]
        after = _dataset_files(out)
        return {name: v for name, v in after.items() if before.get(name, (None,))[0] != v[0]}

    vis = min(out.glob("vis/*.png"))
    assert vis.relative_to(out).as_posix() in rewritten(vis.unlink)  # a deleted output comes back
    ann = min(out.glob("ann_dir/*/*.png"))
    mangled = ann.read_bytes()[::-1]
    assert "classes.json" in rewritten(lambda: ann.write_bytes(mangled))  # an output altered is written whole
    assert ann.read_bytes() != mangled
    shard = min((out / ".alps" / "shards").glob("*.npz"))
    assert rewritten(lambda: os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10**9)))
    no_vis = small_config(fake_repo, write_vis=False)  # another setting of the write
    assert "manifest.json" in rewritten(lambda: None, no_vis) and not (out / "vis").exists()
    assert alps_flow(images, str(out), no_vis, progress_bar=False)["dataset_unchanged"]
    (tmp_path / "classes.yaml").write_text("classes:\n  - {name: merged, clusters: [0, 1]}\ndrop: [2, 3]\n")
    assert alps(["relabel", str(out), "--classes", str(tmp_path / "classes.yaml")]) == 0  # another writer's swap
    relabelled = _dataset_files(out)
    result = alps_flow(images, str(out), no_vis, progress_bar=False)
    assert not result["dataset_unchanged"] and _dataset_files(out) != relabelled
    assert [c["name"] for c in json.loads((out / "classes.json").read_text())["classes"]] == ["merged"]
    assert alps_flow(images, str(out), no_vis, progress_bar=False)["dataset_unchanged"]
    manifest = json.loads((out / "manifest.json").read_text())  # edited: `--config OUT` would read other settings
    manifest["config"]["gate"]["sigma"] = 0.99
    assert "manifest.json" in rewritten(lambda: (out / "manifest.json").write_text(json.dumps(manifest)), no_vis)
    assert json.loads((out / "manifest.json").read_text())["config"]["gate"]["sigma"] == cfg.gate.sigma
    renamed = tmp_path / "renamed"  # OUT's name is the review page's title
    os.replace(out, renamed)
    assert not alps_flow(images, str(renamed), no_vis, progress_bar=False)["dataset_unchanged"]
    assert "renamed" in (renamed / "report" / "index.html").read_text()


def test_a_rejected_input_deleted_or_fixed_before_a_rerun_leaves_the_datasets_errors(fake_repo, scenes, tmp_path):
    """The rejected inputs are an input of the write: a rerun with the same images but no rejected file must not keep
    the dataset that lists it (mutation audit: they could drop out of the write's key with every test passing)."""
    cfg = small_config(fake_repo)
    data = copies_of_scenes(scenes, tmp_path / "data", 2)
    (data / "broken.png").write_bytes(b"")
    out = tmp_path / "out"
    alps_flow(str(data), str(out), cfg, progress_bar=False)
    assert [Path(e["path"]).name for e in read_jsonl(out / "errors.jsonl")] == ["broken.png"]
    (data / "broken.png").unlink()
    again = alps_flow(str(data), str(out), cfg, progress_bar=False)
    assert again["n_skipped"] == 2 and not again["dataset_unchanged"]
    assert read_jsonl(out / "errors.jsonl") == [] and json.loads((out / "manifest.json").read_text())[
        "counts"]["n_errors"] == 0
    assert alps_flow(str(data), str(out), cfg, progress_bar=False)["dataset_unchanged"]


def _as_an_earlier_alps_wrote(shard: Path) -> None:
    """Rewrite ``shard`` as alps wrote it before its features' pooling was recorded (no ``extra["pooling"]``)."""
    with np.load(shard) as data:
        arrays = {name: data[name] for name in data.files}
    meta = json.loads(arrays["meta"].tobytes())
    del meta["extra"]["pooling"]
    arrays["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8)
    with open(shard, "wb") as f:
        np.savez(f, **arrays)


def test_images_whose_features_an_earlier_alps_pooled_from_padding_are_labelled_again(fake_repo, scenes, tmp_path):
    """Before pooling stopped at the image's last cell, masks at the bottom or right edge of an image whose side
    fills a whole number of cells (192 x 256 px: 768 x 1024 in SAM's frame) pooled part of their features from
    padding. Their shards are labelled again, moved, retimed or not, so that a resumed dataset never mixes the two
    poolings; the shards of other sizes are kept."""
    from PIL import Image

    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    for i, (h, w) in enumerate([(192, 256), (256, 256), (250, 256), (256, 192), (192, 256)]):
        Image.open(scenes / "images" / f"scene_{i:04d}.png").convert("RGB").crop((0, 0, w, h)).save(data / f"s{i}.png")
    cfg = small_config(fake_repo)
    alps_flow(str(data), str(out), cfg, progress_bar=False)
    shards = out / ".alps" / "shards"
    assert {json.loads(np.load(p)["meta"].tobytes())["extra"]["pooling"] for p in shards.glob("*.npz")} == {2}
    features = {p.stem: np.load(p)["pfl"] for p in shards.glob("*.npz")}
    for shard in shards.glob("*.npz"):
        _as_an_earlier_alps_wrote(shard)
    os.utime(data / "s3.png", ns=(0, (data / "s3.png").stat().st_mtime_ns + 10**9))  # retimed: the same bytes
    (data / "moved").mkdir()
    os.replace(data / "s4.png", data / "moved" / "s4.png")
    with run_log() as logged:
        again = alps_flow(str(data), str(out), cfg, progress_bar=False)
    assert again["n_labelled"] == 3 and again["n_skipped"] == 2  # s0, s3 (retimed) and s4 (moved) again
    assert any(line.startswith("1 image(s) were labelled by an earlier alps, which pooled the features of masks at "
                               "their bottom or right edge partly from SAM's padding") for line in logged), logged
    assert any(line.startswith("1 image(s) changed since they were labelled") for line in logged), logged  # s3
    metas = {p.stem: json.loads(np.load(p)["meta"].tobytes()) for p in shards.glob("*.npz")}
    assert {stem for stem, meta in metas.items() if meta["extra"].get("pooling") == 2} == {"s0", "s3", "moved__s4"}
    assert {stem: np.array_equal(np.load(shards / f"{stem}.npz")["pfl"], features[stem])
            for stem in ("s1", "s2")} == {"s1": True, "s2": True}
    assert alps_flow(str(data), str(out), cfg, progress_bar=False)["n_skipped"] == 5


@pytest.mark.parametrize("other", ["png", "bmp"])  # img_dir of PNGs of their pixels, or of copies of the files
def test_an_input_edited_in_place_keeping_its_size_and_time_is_not_written_beside_its_old_labels(fake_repo, scenes,
                                                                                                   tmp_path, other):
    """Changes are found by size, time and three 64 KiB samples of the bytes: an edit elsewhere with the time kept
    (``touch -r``) went unseen, and the write copied its new pixels into img_dir beside its old labels. The write
    checks each copied input against the sha256 its shard records: the run is incomplete, and the next labels it."""
    from PIL import Image

    from alps_client.io.items import SAMPLE_BYTES

    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    big = data / "big.bmp"  # 768 KiB: most of it between the samples
    Image.open(scenes / "images" / "scene_0000.png").convert("RGB").resize((512, 512)).save(big)
    Image.open(scenes / "images" / "scene_0001.png").convert("RGB").save(data / f"other.{other}")
    cfg = small_config(fake_repo)
    alps_flow(str(data), str(out), cfg, progress_bar=False)
    written = _dataset_files(out)
    stat, size = big.stat(), big.stat().st_size
    with open(big, "r+b") as f:  # rows 100..149 painted red, outside the samples
        f.seek(size // 4)
        assert size // 4 > SAMPLE_BYTES and size // 4 + 50 * 1536 < size // 2 - SAMPLE_BYTES // 2
        f.write(bytes([0, 0, 255]) * (50 * 512))
    os.utime(big, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert big.stat().st_size == size
    with pytest.raises(IncompleteRunError, match=r"1 input\(s\) hold other bytes than when they were labelled, their "
                                                 r"size and modification time kept .*big.bmp.*run the same command "
                                                 r"again, which labels them anew") as err:
        alps_flow(str(data), str(out), cfg, progress_bar=False)
    assert [row["stem"] for row in err.value.failed] == ["big"]
    assert _dataset_files(out) == written  # the dataset as it was: its labels and its images agree
    assert not (out / ".alps" / "shards" / "big.npz").exists()
    again = alps_flow(str(data), str(out), cfg, progress_bar=False)
    assert again["n_labelled"] == 1 and again["n_skipped"] == 1
    copied = next(out.glob(f"img_dir/*/big.{other}"))
    assert np.array_equal(np.asarray(Image.open(copied)), np.asarray(Image.open(big)))


def test_a_moved_scene_with_one_damaged_tile_shard_keeps_its_other_tiles(fake_repo, scenes, tmp_path):
    """The move of a tiled scene is found from its shards: one of them cut short lost the move of them all (every
    tile labelled again, the scene said gone)."""
    from PIL import Image

    from alps_client.config import InputConfig
    from alps_client.runs.plan import plan_run

    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    Image.open(scenes / "images" / "scene_0000.png").convert("RGB").resize((512, 512)).save(data / "big.png")
    cfg = dataclasses.replace(small_config(fake_repo), inputs=InputConfig(tile=256, overlap=0))
    alps_flow(str(data), str(out), cfg, progress_bar=False)
    last = sorted((out / ".alps" / "shards").glob("*.npz"))[-1]
    last.write_bytes(last.read_bytes()[:100])
    (data / "moved").mkdir()
    os.replace(data / "big.png", data / "moved" / "big.png")
    plan = plan_run(str(data), str(out), cfg, False)
    assert [(m.old, m.new) for m in plan.moved] == [("big.png", "moved/big.png")] and not plan.gone


def test_a_dataset_labelled_with_config_of_another_is_labelled_as_it_was(fake_repo, scenes, tmp_path):
    """``--config OUT``: the settings a dataset records, settings without a flag among them, label another dataset."""
    first, again = tmp_path / "first", tmp_path / "again"
    cfg = dataclasses.replace(small_config(fake_repo, val_fraction=0.5, seed=5),
                              cluster=ClusterConfig(n_clusters=3, batch_size=64, seed=5), gate=GateConfig(sigma=0.4))
    alps_flow(str(scenes / "images"), str(first), cfg, progress_bar=False)
    recorded = json.loads((first / "manifest.json").read_text())["config"]
    assert alps(["run", str(scenes / "images"), "--out", str(again), "--config", str(first), "--no-progress"]) == 0
    assert json.loads((again / "manifest.json").read_text())["config"] == recorded
    assert labels(again) == labels(first)
    flagged = tmp_path / "flagged"  # a flag given wins over the dataset's setting
    assert alps(["run", str(scenes / "images"), "--out", str(flagged), "--config", str(first / "manifest.json"),
                 "--n-clusters", "2", "--no-progress"]) == 0
    config = json.loads((flagged / "manifest.json").read_text())["config"]
    assert config["cluster"] == {**recorded["cluster"], "n_clusters": 2} and config["gate"] == recorded["gate"]
    classes = tmp_path / "classes"  # its settings and its classes (README's recipe)
    assert alps(["run", str(scenes / "images"), "--out", str(classes), "--config", str(first), "--centroids",
                 str(first / "centroids.npy"), "--no-progress"]) == 0
    assert labels(classes) == labels(first)


def test_a_refusal_for_shards_from_before_labelling_was_recorded_names_the_setting_from_the_manifest(tmp_path):
    from alps_client.runs.plan import _what_differs, labelling_identity

    then, now = small_config("repo"), PipelineConfig(gate=GateConfig(sigma=0.5))
    (tmp_path / "manifest.json").write_text(json.dumps({"config": then.to_dict()}))
    no_record = {"extra": {"source_signature": {}}}
    assert _what_differs(tmp_path, no_record, labelling_identity("m", now)) == \
        "amg.points_per_side 8 there, 32 now; gate.sigma 0.3 there, 0.5 now"
    (tmp_path / "manifest.json").unlink()  # an interrupted first run: nothing says
    assert _what_differs(tmp_path, no_record, labelling_identity("m", now)) == ""


def test_outputs_written_inside_the_dataset_are_never_labelled(fake_repo, scenes, tmp_path, capsys):
    """``--out DATASET/labels``: the next runs label the same images, not the first one's copies, label maps and
    previews (an output folder holds its ``.alps``, the run's own ``--out`` too once its request is checked).
    ``--out`` the dataset folder itself is refused: the dataset would be written among the images."""
    import shutil

    from alps_client.errors import NoInputsError
    from alps_client.runs.plan import check_request, plan_run

    data = tmp_path / "data"
    shutil.copytree(scenes / "images", data)
    cfg = small_config(fake_repo)
    first = alps_flow(str(data), str(data / "labels"), cfg, progress_bar=False)
    before = labels(data / "labels")
    assert list((data / "labels").rglob("*.png"))  # the output holds images: copies, label maps, previews
    shutil.copytree(data / "labels", data / "more" / "labels")  # another run's output, elsewhere in the dataset
    again = alps_flow(str(data), str(data / "labels"), cfg, progress_bar=False)
    for result in (first, again):
        assert result["summary"]["n_images"] == 6 and len(result["errors"]) == 1  # broken.png, nothing else
    assert again["n_labelled"] == 0 and again["n_skipped"] == 6 and labels(data / "labels") == before
    # Each output left out, and said so; the run's own too (the request's check has made its work folder).
    plan = plan_run(data, data / "fresh", cfg)
    assert plan.left_out == tuple(str(data / p) for p in ("fresh", "labels", "more/labels"))
    assert len(plan.items) == 6
    only_outputs = tmp_path / "only_outputs"
    shutil.copytree(data / "labels", only_outputs / "labels")
    with pytest.raises(NoInputsError, match="left out 1 folder"):
        check_request(only_outputs, cfg)
    # Every file rejected: one was named, and the others and their reasons nowhere (no errors.jsonl is written)
    all_bad = tmp_path / "all_bad"
    all_bad.mkdir()
    (all_bad / "empty.png").write_bytes(b"")
    (all_bad / "text.png").write_text("not an image")
    (all_bad / "zero.jpg").write_bytes(b"")
    with pytest.raises(NoInputsError) as refused:
        plan_run(all_bad, tmp_path / "all_bad_out", cfg)
    assert f"3 file(s) rejected: 2 zero-byte file, 1 not an image (PIL cannot identify it)): {all_bad / 'empty.png'}: " \
           f"zero-byte file; {all_bad / 'text.png'}: not an image" in str(refused.value)
    assert str(all_bad / "zero.jpg") in str(refused.value)

    assert alps(["run", str(data), "--out", str(data), "--model-repository", str(fake_repo)]) == 2
    assert "is the dataset folder itself" in capsys.readouterr().err
    image = next(data.glob("*.png"))  # one image given, its own folder as --out: the same outputs among the images
    assert alps(["run", str(image), "--out", str(data), "--model-repository", str(fake_repo)]) == 2
    assert f"--out {data} is the folder of the image {image}" in capsys.readouterr().err
    assert not (data / ".alps").exists()


def test_a_dataset_in_an_outputs_own_folders_or_an_alps_output_is_refused(fake_repo, scenes, tmp_path, capsys):
    """``alps run OUT/vis --out OUT`` labelled the previews, then the swap replaced them (its input folder) with new
    files; ``alps run OUT/img_dir --out OUT`` rewrote every input. ``alps run OUT --out OTHER`` labelled an output's
    copies, label maps and previews as images. Each refused before anything is read or written."""
    import hashlib
    import shutil

    out = tmp_path / "out"
    alps_flow(str(scenes / "images"), str(out), small_config(fake_repo), progress_bar=False)

    def digests(folder: Path) -> dict[str, tuple[str, int]]:
        return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_ino)
                for p in sorted(folder.rglob("*")) if p.is_file()}

    before = digests(out)
    same = ["--model-repository", str(fake_repo), "--points-per-side", "8", "--n-clusters", "4", "--no-progress"]
    for dataset, entry in ((out / "vis", out / "vis"), (out / "img_dir" / "train", out / "img_dir"),
                           (out / ".alps" / "shards", out / ".alps")):
        assert alps(["run", str(dataset), "--out", str(out), *same]) == 2
        assert f"the dataset {dataset} lies in {entry}, which a run into --out {out} replaces" in capsys.readouterr().err
    (tmp_path / "alias").symlink_to(out / "vis")
    assert alps(["run", str(tmp_path / "alias"), "--out", str(out), *same]) == 2
    assert f"lies in {out / 'vis'}" in capsys.readouterr().err
    assert digests(out) == before  # not one file rewritten (same bytes under a new inode counts as rewritten)
    shutil.copytree(out, tmp_path / "no_work_folder", ignore=shutil.ignore_patterns(".alps"))
    for dataset in (out, tmp_path / "no_work_folder"):
        assert alps(["run", str(dataset), "--out", str(tmp_path / "other"), *same]) == 2
        assert f"the dataset {dataset} is an alps output" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()
    # A folder of the user's own beside the outputs in OUT is a dataset like any other.
    from alps_client.runs.plan import check_request

    shutil.copytree(scenes / "images", out / "mine")
    assert check_request(out / "mine", small_config(fake_repo), out).fingerprint


def test_an_out_holding_files_alps_did_not_write_is_refused_and_left_as_it_was(fake_repo, scenes, tmp_path, capsys):
    """``--out`` a user's own MMSegmentation dataset or project folder: the run's swap replaced its ``ann_dir/`` and
    ``manifest.json`` with the run's, deleting the user's files. Refused before anything is written, by the command
    and by the flow; empty folders, and an alps dataset whose ``.alps`` was deleted to save space, are fine."""
    from alps_client.io.writer import DATASET_FORMAT
    from alps_client.runs.plan import check_request

    mine = tmp_path / "mine"
    (mine / "ann_dir" / "train").mkdir(parents=True)
    (mine / "ann_dir" / "train" / "drawn_by_hand.png").write_bytes(b"a human's labels")
    (mine / "manifest.json").write_text('{"project": "mine"}')
    (mine / "img_dir").mkdir()  # empty: nothing to lose
    (mine / "notes.txt").write_text("not named like an output")

    def contents() -> dict[str, bytes | None]:
        return {str(p.relative_to(mine)): p.read_bytes() if p.is_file() else None for p in mine.rglob("*")}

    before = contents()
    images = str(scenes / "images")
    assert alps(["run", images, "--out", str(mine), "--model-repository", str(fake_repo)]) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert f"--out {mine} holds ann_dir/, manifest.json, not written by alps" in line and "give a new or empty --out" in line
    with pytest.raises(AlpsError, match="not written by alps"):
        alps_flow(images, str(mine), small_config(fake_repo), progress_bar=False)
    assert contents() == before  # nothing deleted, nothing added (no .alps either)

    (mine / "ann_dir" / "train" / "drawn_by_hand.png").unlink()
    (mine / "manifest.json").unlink()
    check_request(images, small_config(fake_repo), mine)  # only empty folders left: accepted
    dataset = tmp_path / "dataset"
    (dataset / "ann_dir" / "train").mkdir(parents=True)
    (dataset / "ann_dir" / "train" / "scene_0000.png").write_bytes(b"an earlier run's label map")
    (dataset / "manifest.json").write_text(json.dumps({"format": DATASET_FORMAT}))
    check_request(images, small_config(fake_repo), dataset)  # an alps dataset without its .alps: accepted


def test_a_rerun_labels_changed_images_again_and_finds_a_moved_dataset(fake_repo, scenes, tmp_path):
    """An image rewritten in place, or replaced by another file under the same stem, is labelled again (it kept
    the old image's label map, beside the new image in img_dir); a dataset moved elsewhere is resumed as it is
    (its copies in img_dir came from the path of the first run: the writer failed)."""
    import os

    cfg = small_config(fake_repo)
    data, out = label_copies(tmp_path, scenes, cfg, 4)
    first = labels(out)
    flipped = np.asarray(Image.open(data / "scene_0001.png"))[:, ::-1]
    Image.fromarray(flipped).save(data / "scene_0001.png")  # rewritten in place
    moved_in = np.asarray(Image.open(data / "scene_0002.png"))[::-1]
    (data / "scene_0002.png").unlink()
    Image.fromarray(moved_in).save(data / "scene_0002.jpg", quality=95)  # another file, the same stem
    again = alps_flow(str(data), str(out), cfg, progress_bar=False)
    assert again["n_labelled"] == 2 and again["n_skipped"] == 2
    fresh = tmp_path / "fresh"
    alps_flow(str(data), str(fresh), cfg, progress_bar=False)
    assert labels(out) == labels(fresh) and labels(out) != first
    (copy,) = (out / "img_dir").glob("*/scene_0001.png")
    assert copy.read_bytes() == (data / "scene_0001.png").read_bytes()
    (copy,) = (out / "img_dir").glob("*/scene_0002.png")  # one format in img_dir: the JPEG's pixels as a PNG
    np.testing.assert_array_equal(np.asarray(Image.open(copy)), np.asarray(Image.open(data / "scene_0002.jpg")))
    moved = tmp_path / "moved"
    os.rename(data, moved)  # mv: names, sizes and modification times kept
    resumed = alps_flow(str(moved), str(out), cfg, progress_bar=False)
    assert resumed["n_labelled"] == 0 and resumed["n_skipped"] == 4 and labels(out) == labels(fresh)
    assert sorted(p.name for p in (out / "img_dir").glob("*/*")) == sorted(f"{p.stem}.png" for p in moved.iterdir())


def test_a_file_added_beside_a_labelled_one_of_the_same_name_takes_another_name(fake_repo, scenes, tmp_path):
    """``a.jpg`` added beside a labelled ``a.png`` sorts first and took ``a``: ``a.png`` was renamed ``a_png`` and
    labelled again. Names the dataset gave are kept (any case: ``A.png`` added too)."""
    cfg = small_config(fake_repo)
    data, out = label_copies(tmp_path, scenes, cfg, {"a.png": 0, "b.png": 1})
    first = json.loads((out / "manifest.json").read_text())["sources"]
    Image.open(scenes / "images" / "scene_0002.png").convert("RGB").save(data / "a.jpg", quality=95)
    shutil.copy2(scenes / "images" / "scene_0003.png", data / "A.png")
    again = alps_flow(str(data), str(out), cfg, progress_bar=False)
    assert (again["n_labelled"], again["n_skipped"]) == (2, 2)
    sources = json.loads((out / "manifest.json").read_text())["sources"]
    assert first == {"a": "a.png", "b": "b.png"} and sources == {**first, "a_jpg": "a.jpg", "A_png": "A.png"}
    (copy,) = (out / "img_dir").glob("*/a.png")
    assert copy.read_bytes() == (data / "a.png").read_bytes()


def test_a_rerun_says_which_images_of_the_dataset_are_gone_from_the_inputs(fake_repo, scenes, tmp_path):
    """The dataset shrank unsaid when images were deleted or moved away (a wrong rsync, a folder renamed)."""
    cfg = small_config(fake_repo)
    data, out = label_copies(tmp_path, scenes, cfg, {"scene_0000.png": 0, "scene_0001.png": 1, "scene_0002.png": 2,
                                                     "sub/scene_0003.png": 3})
    (data / "scene_0001.png").unlink()
    (data / "sub" / "scene_0003.png").rename(tmp_path / "scene_0003.png")
    (data / "scene_0002.png").write_bytes(b"")  # rejected, and said so as such: not gone
    for rerun in range(2):
        with run_log() as logged:
            result = alps_flow(str(data), str(out), cfg, progress_bar=False)
        assert result["summary"]["n_images"] == 1
        gone = [line for line in logged if "no longer under" in line]
        said = (f"2 input(s) of the dataset in {out} are no longer under {data}, and the dataset this run writes "
                f"leaves them out: scene_0001.png, sub/scene_0003.png (their shards stay in "
                f"{out / '.alps' / 'shards'}: put the files back and run again to have them)")
        assert gone == ([said] if rerun == 0 else [])


def test_images_added_later_leave_the_earlier_splits_as_they_were(fake_repo, scenes, tmp_path):
    """Each rerun ranked every image again, and adding images moved some of the earlier val images to train (also
    once OUT/.alps/names.json was gone or unreadable). Another --val-fraction (or --seed) asks for a new split, as
    before."""
    import itertools

    from alps_client.io.splits import assign_splits

    def ranked(stems) -> dict[str, str]:
        return assign_splits([(stem, stem, None) for stem in stems], seed=0, val_fraction=0.5)

    stems = [f"scene_{i:04d}" for i in range(6)]
    first_three = next(part for part in itertools.combinations(stems, 3)  # some a ranking of all six would move
                       if any(split != ranked(stems)[stem] for stem, split in ranked(part).items()))
    cfg = small_config(fake_repo, val_fraction=0.5)
    data, out = label_copies(tmp_path, scenes, cfg, {f"{stem}.png": stems.index(stem) for stem in first_three})

    def splits(dataset: Path) -> dict[str, str]:
        return {p.stem: p.parent.name for p in (dataset / "ann_dir").glob("*/*.png")}

    first = splits(out)
    assert {Path(path).stem: split for path, split in read_registry(out)["splits"].items()} == first
    (out / ".alps" / "names.json").write_text("{")  # cut short or deleted: the dataset itself says the splits
    for stem in set(stems) - set(first_three):
        shutil.copy2(scenes / "images" / f"{stem}.png", data)
    with run_log("prefect.task_runs") as logged:
        alps_flow(str(data), str(out), cfg, progress_bar=False)
    assert not [line for line in logged if "moved between splits" in line]
    alps_flow(str(data), str(tmp_path / "fresh"), cfg, progress_bar=False)
    grown, fresh = splits(out), splits(tmp_path / "fresh")
    assert {stem: grown[stem] for stem in first} == first and list(grown.values()).count("val") == 3
    assert grown != fresh  # a fresh ranking of the six moves an earlier image: what a rerun did
    away = next(stem for stem, split in first.items() if split == "val")  # away for a run: it came back in train
    (data / f"{away}.png").rename(tmp_path / f"{away}.png")
    alps_flow(str(data), str(out), cfg, progress_bar=False)
    (tmp_path / f"{away}.png").rename(data / f"{away}.png")
    back = alps_flow(str(data), str(out), cfg, progress_bar=False)
    assert back["n_labelled"] == 0 and splits(out) == grown
    resplit = small_config(fake_repo, val_fraction=0.3)
    with run_log("prefect.task_runs") as logged:  # the split drawn anew was said in no word
        alps_flow(str(data), str(out), resplit, progress_bar=False)
    alps_flow(str(data), str(tmp_path / "fresh_resplit"), resplit, progress_bar=False)
    assert splits(out) == splits(tmp_path / "fresh_resplit")
    moved = sorted(stem for stem, split in splits(out).items() if grown[stem] != split)
    assert moved and f"{len(moved)} image(s) moved between splits ({', '.join(moved)}): another --seed" in "\n".join(logged)


def test_a_val_image_away_for_a_while_comes_back_in_val_and_a_killed_run_keeps_its_names(fake_repo, scenes,
                                                                                         tmp_path, monkeypatch):
    """A val image away for a run came back in train (and one whose name another file took meanwhile: it was
    split as a new image), its pixels now trained on; after a first run killed before its dataset, m.jpg took the
    name of the labelled m.png, labelled over its shard. Splits are kept by input path; the names a run gives are
    recorded when it starts."""
    from flows import alps_flow as flow_module

    cfg = small_config(fake_repo, val_fraction=0.5)
    data, out = label_copies(tmp_path, scenes, cfg, {f"{name}.png": i for i, name in enumerate("abcd")})
    in_val = [path for path, split in read_registry(out)["splits"].items() if split == "val"]
    assert len(in_val) == 2
    for path in in_val:
        (data / path).rename(tmp_path / path)
    Image.open(scenes / "images" / "scene_0004.png").convert("RGB").save(data / in_val[0].replace(".png", ".jpg"))
    alps_flow(str(data), str(out), cfg, progress_bar=False)  # the .jpg takes the name of the .png away
    for path in in_val:
        (tmp_path / path).rename(data / path)
    alps_flow(str(data), str(out), cfg, progress_bar=False)
    sources = json.loads((out / "manifest.json").read_text())["sources"]
    split_of = {sources[p.stem]: p.parent.name for p in (out / "ann_dir").glob("*/*.png")}
    assert [split_of[path] for path in in_val] == ["val", "val"]

    killed = tmp_path / "killed"
    label_all = flow_module.label_all
    shutil.copy2(scenes / "images" / "scene_0005.png", data / "z.png")

    def label_then_die(*args, **kwargs):
        label_all(*args, **kwargs)
        raise KeyboardInterrupt("killed before the dataset was written")

    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(flow_module, "label_all", label_then_die)
        alps_flow(str(data), str(killed), cfg, progress_bar=False)
    assert not (killed / "manifest.json").exists()
    Image.open(scenes / "images" / "scene_0001.png").convert("RGB").save(data / "z.jpg")  # sorted before z.png
    with run_log() as logged:
        grown = alps_flow(str(data), str(killed), cfg, progress_bar=False)
    assert grown["n_labelled"] == 1 and not [line for line in logged if "changed since" in line]
    assert json.loads((killed / "manifest.json").read_text())["sources"]["z_jpg"] == "z.jpg"


def test_temp_files_of_writes_killed_mid_way_are_removed_by_the_next_run(fake_repo, scenes, tmp_path):
    import subprocess
    import sys

    cfg = small_config(fake_repo)
    data, out = label_copies(tmp_path, scenes, cfg, 1)
    work = out / ".alps"
    for target in (work / "shards" / "scene_0001.npz", work / "images" / "scene_0001.png", work / "last_run.json",
                   work / "relabelled" / "0123abcd" / "centroids.npy", out / "evaluation.json"):
        killed_mid_write = ("import os, sys\nfrom alps_client.io.atomic import atomic_path\n"
                            "with atomic_path(sys.argv[1]) as tmp:\n    tmp.write_bytes(b'half')\n    os._exit(9)")
        killed = subprocess.run([sys.executable, "-c", killed_mid_write, str(target)], check=False)
        assert killed.returncode == 9
    left = sorted(p.name for p in out.rglob(".*") if p.is_file())
    assert len(left) == 5, left
    (work / "shards" / ".keep").write_text("a user's file: not alps's to remove")
    for name in (".notes.20241201.md", ".backup.old_copy.tar.gz"):  # were taken for temp files and removed
        (out / name).write_text("a user's file")
    with run_log() as logged:
        alps_flow(str(data), str(out), cfg, progress_bar=False)
    assert f"Removed 5 temporary file(s) that an interrupted run left in {out}" in logged
    assert sorted(p.name for p in out.rglob(".*") if p.is_file()) == [
        ".backup.old_copy.tar.gz", ".keep", ".notes.20241201.md"]

    # Every output has the mode any file made here gets (0644 under umask 022), not mkstemp's 0600: another
    # user (a training job, a web server) could not read the dataset.
    made_here = tmp_path / "made_here"
    made_here.write_text("")
    modes = {p.relative_to(out).as_posix(): oct(p.stat().st_mode & 0o777) for p in out.rglob("*") if p.is_file()}
    assert len(modes) > 10 and set(modes.values()) == {oct(made_here.stat().st_mode & 0o777)}, modes


def test_tiles_wholly_in_a_scenes_nodata_are_left_out_and_a_scene_of_nodata_alone_is_rejected_once(fake_repo, scenes,
                                                                                                   tmp_path):
    """Each such tile was a rejected input ("every pixel is transparent or nodata", once per tile, the same file
    labelled meanwhile) and was read again by every rerun."""
    import rasterio

    from alps_client.config import InputConfig
    from tests.inputs.make_files import write_geotiff

    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    bands = np.concatenate([np.asarray(Image.open(scenes / "images" / f"scene_{i:04d}.png").convert("RGB"))[:64, :64]
                            for i in range(3)], axis=1).transpose(2, 0, 1).copy()  # (3, 64, 192)
    bands[bands == 0] = 1
    bands[:, :, :128] = 0  # a collar of nodata: two of the three tiles
    write_geotiff(data / "collar.tif", bands, "EPSG:32633", (500000.0, 0.5, 4600000.0), nodata=0)
    write_geotiff(data / "void.tif", np.zeros((3, 64, 128), np.uint8), "EPSG:32633", (0.0, 0.5, 0.0), nodata=0)
    cfg = dataclasses.replace(small_config(fake_repo), inputs=InputConfig(tile=64, overlap=0, stitch=True))
    for rerun in range(2):
        with run_log() as logged:
            result = alps_flow(str(data), str(out), cfg, progress_bar=False)
        assert [(e["path"], e["reason"]) for e in result["errors"]] == [
            (str(data / "void.tif"), "every pixel is transparent or nodata")]
        # the void scene's two tiles are its rejection, not labelled (or skipped) too (accounting audit)
        assert (result["n_labelled"], result["n_skipped"]) == ((3, 0) if rerun == 0 else (0, 3))
        assert result["n_empty_tiles"] == 2
        assert "2 tile(s) lie wholly in their scene's nodata or transparency: nothing to label there, left out of " \
               "the dataset (255 in stitched maps)" in logged
        assert sorted(name.split("/")[1] for name in labels(out)) == ["collar__x128_y0.png"]
        # The rejected scene was recorded as the source of label maps it has none of (found by an input audit).
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["sources"] == {"collar": "collar.tif"} and manifest["scene_sizes"] == {"collar": [64, 192]}
    with rasterio.open(out / "stitched" / "collar.tif") as stitched:
        label = stitched.read(1)
    assert label.shape == (64, 192) and (label[:, :128] == 255).all() and (label[:, 128:] != 255).any()
    # --stitch left out, then given again: the same shards, no image labelled again (it was refused as another
    # labelling configuration, and --overwrite ran SAM again over every tile; option audit)
    for stitch in (False, True):
        again = alps_flow(str(data), str(out), dataclasses.replace(cfg, inputs=dataclasses.replace(
            cfg.inputs, stitch=stitch)), progress_bar=False)
        assert (again["n_labelled"], again["n_skipped"]) == (0, 3)
        assert (out / "stitched" / "collar.tif").is_file() is stitch
    # An OUT whose shards hold both values (an older alps's --overwrite to add --stitch, stopped part way): refused
    # until --overwrite, which labelled the others again (upgrade audit). Each is judged as the run's, then stamped.
    from alps_client.io.shards import read_shard, read_shard_meta, write_shard
    from alps_client.runs.plan import shard_fingerprint

    shards = sorted((out / ".alps" / "shards").glob("*.npz"))
    first = read_shard(shards[0])
    labelling = first.extra["labelling"]
    other = {**labelling, "config": {**labelling["config"], "inputs": {**labelling["config"]["inputs"],
                                                                     "stitch": False}}}
    write_shard(shards[0], dataclasses.replace(first, fingerprint=shard_fingerprint(other["model"], other["config"]),
                                               extra={**first.extra, "labelling": other}))
    assert len({read_shard_meta(path)["fingerprint"] for path in shards}) == 2
    said = []
    for stitch in (True, False):
        with run_log() as logged:
            again = alps_flow(str(data), str(out), dataclasses.replace(cfg, inputs=dataclasses.replace(
                cfg.inputs, stitch=stitch)), progress_bar=False)
        assert (again["n_labelled"], again["n_skipped"]) == (0, 3)
        assert len({read_shard_meta(path)["fingerprint"] for path in shards}) == 1  # stamped: one again
        said.append([line for line in logged if "labelled with another --stitch or --write-nifti-labels" in line])
    assert [len(lines) for lines in said] == [1, 0] and said[0][0].startswith("4 image(s) were labelled")


def test_an_image_that_became_unreadable_after_labelling_is_rejected_and_not_said_changed_again(fake_repo, scenes,
                                                                                                tmp_path):
    """Its earlier shard is dropped with it: kept, every rerun warned again that the image changed since it was
    labelled, and said it would label it again."""
    cfg = small_config(fake_repo)
    data, out = label_copies(tmp_path, scenes, cfg, 3)
    broken = data / "scene_0001.png"
    broken.write_bytes(broken.read_bytes()[:300])  # a copy cut short
    for rerun in range(2):
        with run_log() as logged:
            result = alps_flow(str(data), str(out), cfg, progress_bar=False)
        assert (result["n_labelled"], result["n_skipped"], result["summary"]["n_images"]) == (0, 2, 2)
        assert [e["path"] for e in result["errors"]] == [str(broken)]
        said_changed = [line for line in logged if "changed since they were labelled" in line]
        assert len(said_changed) == (1 if rerun == 0 else 0), logged
        assert not list((out / ".alps").rglob("scene_0001*"))
    assert sorted(name.split("/")[1] for name in labels(out)) == ["scene_0000.png", "scene_0002.png"]


def test_a_name_passed_to_another_file_is_labelled_again_and_an_image_moved_to_another_split_goes_there(
        fake_repo, scenes, tmp_path):
    """train/0001.bmp and val/0001.bmp of one size and one time (unpacked from an archive): val's is labelled as
    val__0001_bmp. Once train's was gone, val's took the name 0001, and the rerun kept train's labels and split,
    unsaid (val's now keeps its name while OUT records it; without a record it takes 0001, and is labelled
    again); an image moved from train/ to val/ (mv keeps its time) stayed in train (it now goes to val, its labels
    with it: the same bytes)."""
    import os

    data, out = tmp_path / "data", tmp_path / "out"
    for i, relative in enumerate(("train/0001.bmp", "val/0001.bmp", "train/a.bmp", "val/b.bmp")):
        (data / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.open(scenes / "images" / f"scene_{i:04d}.png").convert("RGB").save(data / relative)
        os.utime(data / relative, ns=(1_700_000_000 * 10**9,) * 2)
    cfg = small_config(fake_repo)
    alps_flow(str(data), str(out), cfg, progress_bar=False)
    first = labels(out)
    (data / "train" / "0001.bmp").unlink()
    again = alps_flow(str(data), str(out), cfg, progress_bar=False)
    assert (again["n_labelled"], again["n_skipped"]) == (0, 3)  # val's keeps the name the dataset gave it
    assert set(labels(out)) == set(first) - {"train/0001.png"}
    (out / "manifest.json").unlink()  # as alps before the names were recorded leaves it: nothing says them
    (out / ".alps" / "names.json").unlink()
    again = alps_flow(str(data), str(out), cfg, progress_bar=False)
    assert (again["n_labelled"], again["n_skipped"]) == (1, 2)  # val's took 0001, whose shard is train's
    alps_flow(str(data), str(tmp_path / "fresh"), cfg, progress_bar=False)
    assert labels(out) == labels(tmp_path / "fresh")
    os.rename(data / "train" / "a.bmp", data / "val" / "a.bmp")
    moved = alps_flow(str(data), str(out), cfg, progress_bar=False)
    assert (moved["n_labelled"], moved["n_skipped"]) == (0, 3)
    alps_flow(str(data), str(tmp_path / "fresh2"), cfg, progress_bar=False)
    assert labels(out) == labels(tmp_path / "fresh2")
    assert "val/a.png" in labels(out)


def test_an_image_moved_to_another_split_folder_takes_its_split_in_the_record_too(fake_repo, scenes, tmp_path):
    """Moved from val/ to test/, then from train/ to val/: each was said "in the other split this time ... the images
    of this run left no train image otherwise" (two train images were there), and the record kept its earlier split
    under its new path, against ann_dir and the manifest (accounting audit)."""
    data, out = tmp_path / "data", tmp_path / "out"
    for i, relative in enumerate(("train/t0.png", "train/t1.png", "train/t2.png", "val/v0.png", "val/v1.png",
                                  "test/c0.png")):
        (data / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(scenes / "images" / f"scene_{i:04d}.png", data / relative)
    cfg = small_config(fake_repo)
    alps_flow(str(data), str(out), cfg, progress_bar=False)
    for source, destination in (("val/v1.png", "test/v1.png"), ("train/t2.png", "val/t2.png")):
        os.rename(data / source, data / destination)
        with run_log("prefect.task_runs") as logged:
            alps_flow(str(data), str(out), cfg, progress_bar=False)
        assert not [line for line in logged if "in the other split this time" in line], logged
        assert any(line.startswith(f"1 image(s) moved between splits ({Path(source).stem})") for line in logged)
    assert read_registry(out)["splits"] == {"test/c0.png": "test", "test/v1.png": "test", "train/t0.png": "train",
                                            "train/t1.png": "train", "val/t2.png": "val", "val/v0.png": "val"}
    assert sorted(labels(out)) == ["test/c0.png", "test/v1.png", "train/t0.png", "train/t1.png", "val/t2.png",
                                   "val/v0.png"]


def test_another_dataset_labelled_into_out_is_said_to_replace_its_dataset(fake_repo, scenes, tmp_path):
    """Its inputs were said "no longer under" the new folder, "put the files back", though they never were there."""
    cfg = small_config(fake_repo)
    first, out = label_copies(tmp_path, scenes, cfg, 3)
    other = copies_of_scenes(scenes, tmp_path / "other", {"x.png": 4, "y.png": 5})
    with run_log() as logged:
        alps_flow(str(other), str(out), cfg, progress_bar=False)
    (line,) = [line for line in logged if "no longer under" in line]
    assert f"was last labelled from {first}, which is still there" in line and "another --out" in line
    moved = tmp_path / "moved"
    other.rename(moved)  # a dataset moved: resumed, nothing said of another dataset
    with run_log() as logged:
        alps_flow(str(moved), str(out), cfg, progress_bar=False)
    assert not [line for line in logged if "last labelled from" in line]


def test_a_file_renamed_onto_a_deleted_ones_name_with_its_size_and_time_is_labelled_again(fake_repo, scenes,
                                                                                          tmp_path):
    """Uncompressed images of one size and time (BMPs unpacked from an archive): f3.bmp deleted and f4.bmp renamed
    f3.bmp (mv keeps the time) kept f3's labels beside f4's pixels; the signature now samples the bytes too."""
    import os

    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    for i in range(4):
        Image.open(scenes / "images" / f"scene_{i:04d}.png").convert("RGB").save(data / f"f{i}.bmp")
        os.utime(data / f"f{i}.bmp", ns=(1_700_000_000 * 10**9,) * 2)
    assert len({(data / f"f{i}.bmp").stat().st_size for i in range(4)}) == 1
    cfg = small_config(fake_repo)
    alps_flow(str(data), str(out), cfg, progress_bar=False)
    (data / "f2.bmp").unlink()
    os.rename(data / "f3.bmp", data / "f2.bmp")
    again = alps_flow(str(data), str(out), cfg, progress_bar=False)
    assert (again["n_labelled"], again["n_skipped"]) == (1, 2)
    alps_flow(str(data), str(tmp_path / "fresh"), cfg, progress_bar=False)
    assert labels(out) == labels(tmp_path / "fresh")


def test_a_copy_that_reset_modification_times_keeps_its_labels_where_the_bytes_are_the_same(fake_repo, scenes,
                                                                                              tmp_path):
    """A dataset copied without its times (``cp -r``, a download, an archive unpacked without them) was labelled
    again whole, though each shard records the sha256 of its file. A file of the same size and sampled bytes whose
    sha256 differs (a byte changed between the samples) is labelled again."""
    import os

    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    for i in range(4):  # uncompressed, > 3 x 64 KiB: a byte between the sampled blocks goes unsampled
        Image.open(scenes / "images" / f"scene_{i:04d}.png").convert("RGB").resize((300, 300)).save(data / f"f{i}.bmp")
    cfg = small_config(fake_repo)
    alps_flow(str(data), str(out), cfg, progress_bar=False)
    before = labels(out)
    copied = tmp_path / "copied"
    shutil.copytree(data, copied, copy_function=shutil.copy)  # new modification times
    for path in copied.iterdir():
        os.utime(path, ns=(1_800_000_000 * 10**9,) * 2)
    size = (copied / "f3.bmp").stat().st_size
    assert size > 3 * 65536
    with open(copied / "f3.bmp", "r+b") as f:  # the same size and samples, other bytes
        f.seek(65536 + 1000)
        byte = f.read(1)
        f.seek(65536 + 1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(copied / "f3.bmp", ns=(1_800_000_000 * 10**9,) * 2)
    with run_log() as logged:
        again = alps_flow(str(copied), str(out), cfg, progress_bar=False)
    assert (again["n_labelled"], again["n_skipped"]) == (1, 3)
    assert ("3 input(s) have other modification times than when they were labelled, the same bytes (sha256): their "
            "labels stand: f0.bmp, f1.bmp, f2.bmp") in logged
    assert any("1 image(s) changed since they were labelled" in line for line in logged)
    assert not [line for line in logged if "moved or renamed" in line or "no longer under" in line]
    alps_flow(str(copied), str(tmp_path / "fresh"), cfg, progress_bar=False)
    assert labels(out) == labels(tmp_path / "fresh") and labels(out).keys() == before.keys()
    with run_log() as logged:  # the shards now record the new times: nothing read whole again
        assert alps_flow(str(copied), str(out), cfg, progress_bar=False)["n_skipped"] == 4
    assert not [line for line in logged if "modification times" in line]
    assert sorted(read_registry(out)["names"]) == [f"f{i}.bmp" for i in range(4)]

    scene_data, scene_out, tiled = label_a_strip(tmp_path, scenes, cfg)
    os.utime(scene_data / "strip.png", ns=(1_800_000_000 * 10**9,) * 2)
    with run_log() as logged:
        retimed = alps_flow(str(scene_data), str(scene_out), tiled, progress_bar=False)
    assert (retimed["n_labelled"], retimed["n_skipped"]) == (0, 3) and any("strip.png" in line and "labels stand"
                                                                            in line for line in logged)


def test_a_dry_run_says_what_a_run_would_do_and_writes_nothing(fake_repo, scenes, tmp_path, capsys):
    """Before hours of SAM: how many images a run labels, skips, labels again, rejects, and which are gone."""
    data = copies_of_scenes(scenes, tmp_path / "data", 4)
    out = tmp_path / "new" / "out"
    flags = ["--out", str(out), "--model-repository", str(fake_repo), "--points-per-side", "8", "--n-clusters", "4",
             "--dry-run"]
    assert alps(["run", str(data), *flags]) == 0
    said = capsys.readouterr().out
    assert "--dry-run: nothing written" in said and "4 image(s)" in said and "to label: 4" in said
    assert "STAND-IN" in said and not (tmp_path / "new").exists()
    out = tmp_path / "out"
    flags[1] = str(out)
    Image.fromarray(np.asarray(Image.open(data / "scene_0000.png"))[::-1]).save(data / "gone\nforged.png")
    alps_flow(str(data), str(out), small_config(fake_repo), progress_bar=False)
    Image.fromarray(np.asarray(Image.open(data / "scene_0001.png"))[:, ::-1]).save(data / "scene_0001.png")
    (data / "scene_0002.png").unlink()
    (data / "gone\nforged.png").unlink()
    shutil.copy2(scenes / "images" / "scene_0004.png", data / "added.png")
    (data / "broken\x1b[2J.png").write_bytes(b"not a png")  # names said as they are: a cleared screen, a forged line

    def contents() -> dict[str, tuple[bytes, int]]:
        return {str(p.relative_to(out)): (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}

    before = contents()
    assert alps(["run", str(data), *flags]) == 0
    said = capsys.readouterr().out
    assert contents() == before
    assert "to label: 2 (1 changed since it was labelled" in said and "already labelled (skipped): 2" in said
    assert "rejected: 1" in said and "broken\\x1b[2J.png" in said and "no longer under" in said and "scene_0002.png" in said
    assert "gone\\x0aforged.png" in said and "\x1b" not in said and "\nforged" not in said
    again = alps_flow(str(data), str(out), small_config(fake_repo), progress_bar=False)
    assert (again["n_labelled"], again["n_skipped"]) == (2, 2)
    assert alps(["run", str(data), *flags[:-2], "5", "--dry-run"]) == 0  # k-means only: nothing to label
    assert "to label: 0" in capsys.readouterr().out
    # A file found bad only when decoded was counted to label at every dry run, and rejected at every run
    whole = (data / "added.png").read_bytes()
    (data / "cut.png").write_bytes(whole[: len(whole) // 2])
    alps_flow(str(data), str(out), small_config(fake_repo), progress_bar=False)
    assert alps(["run", str(data), *flags[:-2], "5", "--dry-run"]) == 0
    assert "to label: 1 (1 input(s) the last run rejected, read again)" in capsys.readouterr().out
    assert alps(["run", str(data), *flags[:-4], "16", "--n-clusters", "4", "--dry-run"]) == 2  # as the run refuses
    assert "another model or labelling configuration" in capsys.readouterr().err


def test_the_run_caps_its_malloc_arenas_and_releases_freed_memory(monkeypatch, fake_repo, scenes, tmp_path):
    """Every way of running a flow (``alps run``, a served run's process, a notebook's call) goes through it."""
    from alps_client.runs import allocator

    calls = []

    def recorded(name: str):  # glibc's own call still made (tests/core/test_allocator.py shows what it does)
        real = getattr(allocator, name)
        return lambda: calls.append(name) or real()

    monkeypatch.setattr(allocator, "cap_malloc_arenas", recorded("cap_malloc_arenas"))
    monkeypatch.setattr(allocator, "release_freed_memory", recorded("release_freed_memory"))
    monkeypatch.setattr(allocator, "RELEASE_EVERY", 2)
    assert alps_flow(str(scenes / "images"), str(tmp_path / "out"), small_config(fake_repo),
                     progress_bar=False)["n_labelled"] == 6
    # every 2 images, then before k-means
    assert calls == ["cap_malloc_arenas"] + ["release_freed_memory"] * 3 + ["release_freed_memory"]


def test_a_stop_after_the_dataset_write_leaves_a_dataset_the_record_owns(fake_repo, scenes, tmp_path, monkeypatch):
    """Ctrl-C after the swap, before the run's record said the dataset was written: `alps report` and `alps relabel`
    refused the complete dataset ("the last alps run ... wrote no dataset"), and the run said to resume."""
    from datetime import datetime, timezone

    import flows.alps_flow as flow_module
    from flows.run_cli import _stopped_after_the_write

    out = tmp_path / "out"
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")

    def stopped(*_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(flow_module.artifacts, "stage_totals", stopped)  # just after the write, before the record
    with pytest.raises(KeyboardInterrupt):
        alps_flow(str(scenes / "images"), str(out), small_config(fake_repo), progress_bar=False)
    monkeypatch.undo()
    record = json.loads((out / ".alps" / "last_run.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert record["dataset_written"] is False and record["run_id"] == manifest["run_id"]
    assert alps(["report", str(out)]) == 0  # this run's dataset, complete
    assert _stopped_after_the_write(str(out), started)  # what `alps run` says then: complete, nothing to resume
    assert json.loads((out / ".alps" / "last_run.json").read_text())["dataset_written"] is True
    # A later run stopped before it began labelling: the record is the earlier run's, its own images not labelled
    assert not _stopped_after_the_write(str(out), "9999-12-31T00:00:00+00:00")
    later = {**record, "run_id": "a later run", "labelled": ["scene_0000"]}  # stopped mid-labelling
    (out / ".alps" / "last_run.json").write_text(json.dumps(later))
    assert alps(["report", str(out)]) == 2 and not _stopped_after_the_write(str(out), started)


def test_a_run_that_sees_only_val_images_keeps_their_split_for_when_the_others_are_back(fake_repo, scenes,
                                                                                        tmp_path):
    """A run over the val images alone puts them in train (something to train on): that split was recorded, and
    with the other images back the earlier val image stayed in train, the held-out set lost."""
    cfg = small_config(fake_repo, val_fraction=0.34)
    data, out = label_copies(tmp_path, scenes, cfg, 6)
    first = dict(read_registry(out)["splits"])
    in_val = sorted(path for path, split in first.items() if split == "val")
    assert in_val and len(in_val) < 6
    away = tmp_path / "away"
    away.mkdir()
    for path in first:
        if path not in in_val:
            (data / path).rename(away / path)
    with run_log("prefect.task_runs") as logged:
        alps_flow(str(data), str(out), cfg, progress_bar=False)
    assert any(f"train/{path}" in labels(out) for path in in_val)  # this dataset: something to train on
    assert any("left no train image" in line for line in logged)
    assert not [line for line in logged if "moved between splits" in line]
    for path in away.iterdir():
        path.rename(data / path.name)
    with run_log("prefect.task_runs") as logged:
        alps_flow(str(data), str(out), cfg, progress_bar=False)
    assert read_registry(out)["splits"] == first and not [line for line in logged if "moved between" in line]
    assert any("back in the split the dataset recorded for them" in line for line in logged)
    assert sorted(name for name in labels(out) if name.startswith("val/")) == [f"val/{path}" for path in in_val]


def test_a_tiled_scene_that_cannot_be_read_is_one_rejected_input(fake_repo, scenes, tmp_path):
    """A TIFF whose header is whole and its pixels cut off was one rejected input per tile: 64 lines, n_errors 64
    and "64 input(s) rejected" for one file."""
    import rasterio

    from alps_client.config import InputConfig

    data = copies_of_scenes(scenes, tmp_path / "data", 2)
    pixels = np.tile(np.asarray(Image.open(scenes / "images" / "scene_0002.png").convert("RGB"))[:64, :64], (2, 2, 1))
    with rasterio.open(data / "cut.tif", "w", driver="GTiff", width=128, height=128, count=3, dtype="uint8") as dst:
        dst.write(pixels.transpose(2, 0, 1))
    whole = (data / "cut.tif").read_bytes()
    (data / "cut.tif").write_bytes(whole[:400])  # its header, not its pixels
    cfg = dataclasses.replace(small_config(fake_repo), inputs=InputConfig(tile=64, overlap=0))
    result = alps_flow(str(data), str(tmp_path / "out"), cfg, progress_bar=False)
    errors = read_jsonl(tmp_path / "out" / "errors.jsonl")
    assert [error["path"] for error in errors] == [str(data / "cut.tif")] and "(all 4 tiles)" in errors[0]["reason"]
    assert "IReadBlock failed" in errors[0]["reason"]  # GDAL's reason, not "See previous exception for details"
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"]["n_errors"] == 1 and result["n_labelled"] == 8  # the two PNGs' tiles


def test_an_image_moved_or_renamed_keeps_its_labels_and_its_split(fake_repo, scenes, tmp_path):
    """A file moved to another folder or renamed was a deleted image and a new one: labelled again and split anew,
    so a val image could come back in train. Its shards and split now go with its bytes; a copy whose original
    stays is a new image; a tiled scene's tiles move with it."""
    cfg = small_config(fake_repo, val_fraction=0.5)
    data, out = label_copies(tmp_path, scenes, cfg, {f"{name}.png": i for i, name in enumerate("abcd")})
    in_val = next(path for path, split in read_registry(out)["splits"].items() if split == "val")
    centroids, before = (out / "centroids.npy").read_bytes(), labels(out)
    (data / "sub").mkdir()
    (data / in_val).rename(data / "sub" / "renamed.png")
    with run_log() as logged, run_log("prefect.task_runs") as task_logged:
        assert alps_flow(str(data), str(out), cfg, progress_bar=False)["n_skipped"] == 4
    assert (f"1 input(s) moved or renamed since they were labelled, the same bytes: their labels and split go with "
            f"them: {in_val} -> sub/renamed.png") in logged
    assert not [line for line in logged if "no longer under" in line]
    # The same features under another name: the same clusters, every label map as it was (k-means took the shards
    # in name order, and the class ids of the images not renamed changed).
    assert (out / "centroids.npy").read_bytes() == centroids and not [line for line in task_logged if "differ" in line]
    assert any(line.startswith("k-means not run again: the masks and clustering settings") for line in task_logged)
    stem = in_val.removesuffix(".png")
    assert labels(out) == {name.replace(f"/{stem}.png", "/sub__renamed.png"): label for name, label in before.items()}
    shutil.copy2(data / "a.png" if in_val != "a.png" else data / "b.png", data / "copy.png")  # its original stays
    with run_log("prefect.task_runs") as task_logged:
        again = alps_flow(str(data), str(out), cfg, progress_bar=False)
    assert (again["n_labelled"], again["n_skipped"]) == (1, 4)
    assert not any(line.startswith("k-means not run again") for line in task_logged)  # a new image: fitted anew
    assert read_registry(out)["splits"]["sub/renamed.png"] == "val" and "val/sub__renamed.png" in labels(out)
    assert not (out / ".alps" / "shards" / in_val.replace(".png", ".npz")).exists()
    alps_flow(str(data), str(tmp_path / "fresh"), cfg, progress_bar=False)

    def by_name(dataset: Path) -> dict[str, bytes]:
        return {path.split("/")[1]: label for path, label in labels(dataset).items()}

    assert by_name(out) == by_name(tmp_path / "fresh")

    scene_data, scene_out, tiled = label_a_strip(tmp_path, scenes, cfg)
    (scene_data / "strip.png").rename(scene_data / "moved_strip.png")
    moved = alps_flow(str(scene_data), str(scene_out), tiled, progress_bar=False)
    assert (moved["n_labelled"], moved["n_skipped"]) == (0, 3)
    assert sorted(name.split("/")[1] for name in labels(scene_out)) == [
        f"moved_strip__x{x}_y0.png" for x in (0, 128, 64)]


def test_reruns_with_another_split_or_without_previews_leave_only_the_current_files(fake_repo, scenes, tmp_path):
    out = tmp_path / "out"
    images = str(scenes / "images")
    alps_flow(images, str(out), small_config(fake_repo, val_fraction=0.5, seed=0), progress_bar=False)
    with run_log("prefect.task_runs") as logged:
        alps_flow(images, str(out), small_config(fake_repo, val_fraction=0.3, seed=7, write_vis=False),
                  progress_bar=False)
    assert any(line.startswith("vis/ (not asked for this time: --no-vis) of the earlier dataset is not in the new")
               for line in logged), logged  # said of report/ alone, vis/ named without why (option audit)
    stems = [p.stem for p in (out / "ann_dir").glob("*/*.png")]
    assert sorted(stems) == sorted(f"scene_{i:04d}" for i in range(6))  # each image once, in one split
    splits = {p.stem: p.parent.name for p in (out / "ann_dir").glob("*/*.png")}
    assert {p.stem: p.parent.name for p in (out / "img_dir").glob("*/*")} == splits
    assert not (out / "vis").exists()
    assert alps(["evaluate", str(out), str(scenes / "gt"), "--json", str(tmp_path / "eval.json")]) == 0
    assert json.loads((tmp_path / "eval.json").read_text())["n_images"] == 6


def test_centroids_of_an_earlier_run_give_its_classes(fake_repo, scenes, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    alps_flow(str(scenes / "images"), str(first), small_config(fake_repo), progress_bar=False)
    cfg = small_config(fake_repo)
    cfg = PipelineConfig(backend=cfg.backend, amg=cfg.amg,
                         cluster=ClusterConfig(n_clusters=4, centroids=str(first / "centroids.npy")))
    alps_flow(str(scenes / "images"), str(second), cfg, progress_bar=False)
    np.testing.assert_array_equal(np.load(second / "centroids.npy"), np.load(first / "centroids.npy"))
    assert labels(second) == labels(first)
    assert json.loads((second / "manifest.json").read_text())["centroids_from"] == \
        f"no k-means: the centroids of --centroids {first / 'centroids.npy'}"


def test_a_rerun_whose_clusters_differ_says_so_and_keeps_the_earlier_ones(fake_repo, scenes, tmp_path):
    """Images added re-cluster the whole dataset: class ids changed in nearly every label map, unsaid (a class a
    user noted, or trained on, then means something else)."""
    cfg = small_config(fake_repo)
    data, out = label_copies(tmp_path, scenes, cfg, 3)
    first, first_centroids = labels(out), np.load(out / "centroids.npy")
    for i in range(3, 6):
        shutil.copy2(scenes / "images" / f"scene_{i:04d}.png", data)
    with run_log("prefect.task_runs") as logged:
        alps_flow(str(data), str(out), cfg, progress_bar=False)
    said = [line for line in logged if "this run's clusters differ from those of the dataset it replaces" in line]
    assert len(said) == 1 and not np.array_equal(np.load(out / "centroids.npy"), first_centroids)
    kept = said[0].split("--centroids ")[1].split(" to label")[0]
    np.testing.assert_array_equal(np.load(kept), first_centroids)
    # The dataset says so too (it was on the console alone): one reading OUT later sees the ids moved, and from what
    renumbered = json.loads((out / "manifest.json").read_text())["classes_renumbered"]
    assert renumbered["earlier_centroids"] == kept and "class ids" in renumbered["why"]
    # Written again with the same clusters (a run resumed after a stop that came once its dataset was swapped in,
    # which leaves no record of the write): the record was dropped, and with it where the earlier clusters are
    (out / ".alps" / "written.json").unlink()
    again = alps_flow(str(data), str(out), cfg, progress_bar=False)
    assert not again["dataset_unchanged"]
    assert json.loads((out / "manifest.json").read_text())["classes_renumbered"] == renumbered
    moved = out.rename(tmp_path / "moved")  # the earlier clusters moved with OUT: named where they are now
    (moved / ".alps" / "written.json").unlink()
    alps_flow(str(data), str(moved), cfg, progress_bar=False)
    carried = json.loads((moved / "manifest.json").read_text())["classes_renumbered"]
    assert carried["earlier_centroids"] == str(moved / Path(kept).relative_to(out)) and Path(
        carried["earlier_centroids"]).is_file()
    out, kept = moved, carried["earlier_centroids"]
    # Those earlier clusters deleted (OUT/.alps tidied by hand): the dataset no longer names them as kept
    saved = Path(kept).read_bytes()
    Path(kept).unlink()
    (out / ".alps" / "written.json").unlink()
    alps_flow(str(data), str(out), cfg, progress_bar=False)
    assert "classes_renumbered" not in json.loads((out / "manifest.json").read_text())
    Path(kept).write_bytes(saved)
    with run_log("prefect.task_runs") as logged:
        alps_flow(str(data), str(out), dataclasses.replace(cfg, cluster=ClusterConfig(n_clusters=4, centroids=kept)),
                  progress_bar=False)
    assert not [line for line in logged if "clusters differ" in line]
    assert "classes_renumbered" not in json.loads((out / "manifest.json").read_text())  # as the earlier dataset's
    assert {name: label for name, label in labels(out).items() if name in first} == first


def test_clusters_an_older_alps_numbered_otherwise_keep_their_ids_and_relabel_on_a_rerun(fake_repo, scenes, tmp_path,
                                                                                         monkeypatch):
    """k-means reads the masks in another order since an upgrade: the first rerun of a dataset an older alps wrote
    (no centroids.key) found the same centres numbered otherwise, so every class id moved and the user's relabel
    was dropped as "clusters differ"; and again after each run with --centroids (upgrade audit)."""
    from alps_client.io.rewrite import relabel_dataset

    cfg = small_config(fake_repo)
    data, out = label_copies(tmp_path, scenes, cfg, 3)
    # The dataset as an older alps left it: the same clusters in another order, relabelled, no key.
    older = np.load(out / "centroids.npy")[::-1].copy()
    for path in (out / "centroids.npy", out / ".alps" / "centroids.npy"):
        np.save(path, older)
    (out / ".alps" / "centroids.key").unlink()
    (tmp_path / "classes.yaml").write_text("classes: [{name: shapes, clusters: [0, 1]}, {name: rest, clusters: [2]}]\n")
    relabel_dataset(out, tmp_path / "classes.yaml")
    before = labels(out)
    with run_log("prefect.task_runs") as logged:
        alps_flow(str(data), str(out), cfg, progress_bar=False)
    assert any(line.startswith("k-means found the dataset's clusters again, numbered in another order") for line in
               logged) and not [line for line in logged if "clusters differ" in line]
    np.testing.assert_array_equal(np.load(out / "centroids.npy"), older)
    assert labels(out) == before and json.loads((out / "manifest.json").read_text())["relabel"]
    # its key now written: kept without k-means, on a machine whose "auto" would now be cuML's
    monkeypatch.setattr("alps_client.labels.clustering._gpu_available", lambda: True)
    with run_log("prefect.task_runs") as logged:
        alps_flow(str(data), str(out), cfg, progress_bar=False)
    assert any(line.startswith("k-means not run again") for line in logged) and labels(out) == before
    # the k-means that fitted them, not the one this machine would run
    assert json.loads((out / "manifest.json").read_text())["centroids_from"] == \
        "k-means: scikit-learn MiniBatchKMeans over every mask, on the CPU"
    # Centroids an older alps fitted again since (a downgrade and back), its key the same: the record beside them
    # is not theirs, and named another source (upgrade audit)
    np.save(out / ".alps" / "centroids.npy", np.load(out / ".alps" / "centroids.npy")[::-1].copy())
    alps_flow(str(data), str(out), cfg, progress_bar=False)
    assert json.loads((out / "manifest.json").read_text())["centroids_from"] == "not recorded (fitted by an older alps)"


def test_a_run_with_no_mask_to_cluster_names_the_setting_to_change(fake_repo, scenes, tmp_path):
    """Nothing kept by the generator's filters (lower them) and everything dropped by the gate (raise sigma) are
    told apart, before the cluster step; the shards stay for the rerun."""
    from dataclasses import replace

    from alps_client.config import GateConfig
    from alps_client.errors import AlpsError

    image = str(scenes / "images" / "scene_0000.png")
    cfg = small_config(fake_repo)
    with pytest.raises(AlpsError, match=r"all \d+ mask\(s\) found in the 1 image\(s\) .* raise --sigma"):
        alps_flow(image, str(tmp_path / "gated"), replace(cfg, gate=GateConfig(sigma=1e-6)), progress_bar=False)
    assert len(list((tmp_path / "gated" / ".alps" / "shards").glob("*.npz"))) == 1
    assert not (tmp_path / "gated" / ".alps" / "centroids.npy").exists()
    centroids = np.random.default_rng(0).random((4, 256), np.float32)
    np.save(tmp_path / "centroids.npy", centroids / np.linalg.norm(centroids, axis=1, keepdims=True))  # as fitted
    with_centroids = replace(cfg, gate=GateConfig(sigma=1e-6),
                             cluster=replace(cfg.cluster, centroids=str(tmp_path / "centroids.npy")))
    with pytest.raises(AlpsError, match=r"raise --sigma"):  # it wrote a dataset of 255 alone, and exited 0
        alps_flow(image, str(tmp_path / "gated_centroids"), with_centroids, progress_bar=False)
    assert not (tmp_path / "gated_centroids" / "manifest.json").exists()
    no_masks = replace(cfg, amg=replace(cfg.amg, pred_iou_thresh=1.0))
    with pytest.raises(AlpsError, match=r"kept no mask in any of the 1 image.*--pred-iou-thresh.*lower those settings"):
        alps_flow(image, str(tmp_path / "none"), no_masks, progress_bar=False)
    emptied = replace(cfg, amg=replace(cfg.amg, mask_threshold=50.0))  # every logit below it: every mask empty
    with pytest.raises(AlpsError, match=r"kept no mask .* emptied by --mask-threshold or --min-mask-region-area"):
        alps_flow(image, str(tmp_path / "emptied"), emptied, progress_bar=False)
    # Holes under an area larger than the image: every mask filled up to the whole image, and the line said "raise
    # --sigma", which then kept one whole-image mask per image (option audit)
    filled = replace(cfg, amg=replace(cfg.amg, min_mask_region_area=10**6))
    with pytest.raises(AlpsError, match=r"--min-mask-region-area 1000000 is at least the area of every one of the 1 "
                                        r"image\(s\) \(the largest: \d+ px\): it fills each mask's holes"):
        alps_flow(image, str(tmp_path / "filled"), filled, progress_bar=False)


def test_transient_backend_failures_are_retried_to_an_identical_dataset(fake_repo, scenes, tmp_path):
    reference = tmp_path / "reference"
    alps_flow(str(scenes / "images"), str(reference), small_config(fake_repo), progress_bar=False)
    repo = faulty_repo(tmp_path, transient=4)
    result = alps_flow(str(scenes / "images"), str(tmp_path / "out"), small_config(repo), progress_bar=False)
    assert len(list((tmp_path / "faults").glob("transient-*"))) == 4  # every injected failure happened
    assert result["n_labelled"] == 6 and result["missing"] == [] and len(result["errors"]) == 1
    assert labels(tmp_path / "out") == labels(reference)


def test_a_processing_failure_is_a_missing_image_never_a_rejected_input(scenes, prefect_server, tmp_path):
    """The run's rejected inputs are in its alps-errors artifact also when it ends without a dataset (they were in
    its log and last_run.json only)."""
    repo = faulty_repo(tmp_path, unexpected_shapes=[[96, 128]])  # every scene: RuntimeError() without a message
    out = tmp_path / "out"
    with pytest.raises(IncompleteRunError, match=r"6 of 6 image\(s\) not labelled: RuntimeError \(6x\)") as err:
        alps_flow(str(scenes / "images"), str(out), small_config(repo), progress_bar=False)
    assert len(err.value.failed) == 6
    last = json.loads((out / ".alps" / "last_run.json").read_text())
    assert [e["reason"] for e in last["errors"]] == ["zero-byte file"]  # only the bad file is a rejected input
    assert len(last["missing"]) == 6 and not last["complete"]
    assert not (out / "manifest.json").exists() and not (out / "errors.jsonl").exists()  # no dataset written
    assert (out / ".alps" / "failures.log").read_text().count("Traceback") == 6  # the bug's details, kept
    table = errors_artifact(prefect_server, out)
    assert [row["reason"] for row in json.loads(table["data"])] == ["zero-byte file"]
    assert table["description"] == "Rejected inputs (all in .alps/last_run.json)"


def test_an_input_changed_or_removed_after_it_was_labelled_during_the_run_is_missing_not_mismatched(
        fake_repo, scenes, tmp_path, monkeypatch):
    """Changed once its shard was written, before the dataset: img_dir took the new pixels beside the old labels,
    exit 0 (96 px beside a 128 px label map); removed or cut short, the write failed with a traceback."""
    from flows import alps_flow as flow_module

    cfg = small_config(fake_repo)
    data, out = copies_of_scenes(scenes, tmp_path / "data", 4), tmp_path / "out"
    label_all = flow_module.label_all

    def label_then_change(*args, **kwargs):
        labelled = label_all(*args, **kwargs)
        Image.open(data / "scene_0001.png").resize((64, 48)).save(data / "scene_0001.png")
        (data / "scene_0002.png").unlink()
        return labelled

    with monkeypatch.context() as m, pytest.raises(IncompleteRunError, match=r"2 of 4 image\(s\) not labelled: "
                                                                               r"its file changed or went away") as err:
        m.setattr(flow_module, "label_all", label_then_change)
        alps_flow(str(data), str(out), cfg, progress_bar=False)
    assert sorted(Path(row["path"]).name for row in err.value.failed) == ["scene_0001.png", "scene_0002.png"]
    assert not (out / "manifest.json").exists()
    record = json.loads((out / ".alps" / "last_run.json").read_text())  # each image in one list (accounting audit)
    assert sorted(record["labelled"]) == ["scene_0000", "scene_0003"]
    assert sorted(m["stem"] for m in record["missing"]) == ["scene_0001", "scene_0002"]
    again = alps_flow(str(data), str(out), cfg, progress_bar=False)  # labels the changed one anew
    assert (again["n_labelled"], again["n_skipped"]) == (1, 2)
    alps_flow(str(data), str(tmp_path / "fresh"), cfg, progress_bar=False)
    assert labels(out) == labels(tmp_path / "fresh")

    def label_then_lose_a_shard(*args, **kwargs):  # OUT (its .alps) deleted or moved during the run
        labelled = label_all(*args, **kwargs)
        (out / ".alps" / "shards" / "scene_0003.npz").unlink()
        return labelled

    with monkeypatch.context() as m, pytest.raises(IncompleteRunError) as err:
        m.setattr(flow_module, "label_all", label_then_lose_a_shard)
        alps_flow(str(data), str(out), cfg, progress_bar=False)
    (row,) = err.value.failed  # blamed on the input, untouched: "its file changed or went away"
    assert row["path"].endswith("scene_0003.png") and "its shard" in row["reason"] and "file changed" not in row["reason"]


def test_an_input_gone_before_it_was_read_is_said_gone_not_unreadable(fake_repo, scenes, tmp_path, monkeypatch):
    """A folder renamed during a run: its images were rejected as "unreadable (No such file or directory)"."""
    from flows import alps_flow as flow_module

    data = copies_of_scenes(scenes, tmp_path / "data", 3)
    plan_run = flow_module.plan_run

    def plan_then_move(*args, **kwargs):
        plan = plan_run(*args, **kwargs)
        (data / "scene_0001.png").rename(tmp_path / "scene_0001.png")
        return plan

    monkeypatch.setattr(flow_module, "plan_run", plan_then_move)
    result = alps_flow(str(data), str(tmp_path / "out"), small_config(fake_repo), progress_bar=False)
    assert result["errors"] == [{"path": str(data / "scene_0001.png"),
                                 "reason": "gone since the run started (moved or deleted meanwhile)"}]


def test_labelling_on_an_existing_dask_cluster_matches_threads(fake_repo, scenes, tmp_path):
    distributed = pytest.importorskip("distributed")
    reference = tmp_path / "reference"
    alps_flow(str(scenes / "images"), str(reference), small_config(fake_repo), progress_bar=False)
    repo = faulty_repo(tmp_path, transient=2)  # counted across the worker processes
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        result = alps_flow(str(scenes / "images"), str(tmp_path / "out"), small_config(repo), progress_bar=False,
                           dask_address=cluster.scheduler_address)
        with distributed.Client(cluster) as client:  # the run removed its plugin (and backends) from the workers
            plugins = client.run(lambda dask_worker: sorted(dask_worker.plugins))
            assert all("alps-backend" not in names for names in plugins.values()), plugins
        # Workers that do not see the model repository (another machine, another mount): every image failed in
        # turn, "build one with export", and the run ended as a failure to run again.
        from alps_client.runs.dask_labeller import DaskLabeller
        from alps_client.runs.work import LabelJob

        unseen = small_config(tmp_path / "not_on_the_workers")
        with pytest.raises(AlpsError, match=r"2 of the Dask workers find no model repository at .*not_on_the_workers "
                                            r"\(no manifest.json there\) \(e.g. tcp://.*\): the model repository and "
                                            r"--out must lie on a path every worker reaches"):
            DaskLabeller(LabelJob(str(tmp_path / "out"), unseen, "fp"), cluster.scheduler_address)
        # A worker builds its backend when it first labels (and again when it is replaced): after a re-export into
        # the repository, its images were labelled with the new model and stamped with the run's.
        from alps_client.backends.fake import write_fake_repository
        from alps_client.backends.manifest import load_manifest
        from alps_client.errors import ModelChangedError
        from alps_client.io.discovery import discover_inputs

        exported = write_fake_repository(tmp_path / "exported_again")
        (tmp_path / "mixed").mkdir()
        job = LabelJob(str(tmp_path / "mixed"), small_config(exported), "fp", load_manifest(exported).fingerprint)
        write_fake_repository(exported, prompt_batch_size=32)  # another model, before any worker built its backend
        labeller = DaskLabeller(job, cluster.scheduler_address)
        try:
            with pytest.raises(ModelChangedError, match=r"the model in .*exported_again is now fake:.*, not the "
                                                        r"fake:.* this run started with \(exported again during"):
                labeller.label(discover_inputs(scenes / "images")[0][0])
        finally:
            labeller.close()
        assert ModelChangedError.ends_run and not list((tmp_path / "mixed").rglob("*.npz"))
    assert len(list((tmp_path / "faults").glob("transient-*"))) == 2
    assert result["n_labelled"] == 6 and result["missing"] == []
    assert labels(tmp_path / "out") == labels(reference)


def test_a_run_whose_backend_is_down_stops_starting_images_and_resumes(fake_repo, scenes, tmp_path):
    """Every encode fails (a dead server): after --stop-after-failures images in a row the run starts no other
    image (each would wait out its retries), writes no dataset even with --allow-partial, and a rerun finishes."""
    from dataclasses import replace

    repo = faulty_repo(tmp_path, transient=10**6)
    cfg = small_config(repo)
    cfg = replace(cfg, backend=replace(cfg.backend, retries=1, stop_after_failures=2))
    out = tmp_path / "out"
    with run_log("prefect.task_runs") as task_lines, pytest.raises(
            IncompleteRunError, match=r"stopped starting images after 2 in a row failed \(last: fake backend "
                                      r"unavailable.*looks down; 4 of 6 image\(s\) not started"):
        alps_flow(str(scenes / "images"), str(out), cfg, concurrency=1, progress_bar=False, allow_partial=True)
    # Each failed image says so as it ends; the images not started are counted once, by the flow, not one by one.
    finished = [line for line in task_lines if line.startswith("Finished in state")]
    assert len(finished) == 2 and all(line.startswith("Finished in state Failed(") for line in finished), finished
    last = json.loads((out / ".alps" / "last_run.json").read_text())
    tried = [m for m in last["missing"] if not m["reason"].startswith("not started")]
    assert last["stopped"] and len(last["missing"]) == 6 and len(last["errors"]) == 1  # none lost, none rejected
    # The streak alone: its thread took up the image queued behind before the run saw the streak, which then
    # waited out its retries too (its end is now recorded before the thread takes another).
    assert len(tried) == 2
    assert len(list((tmp_path / "faults").glob("transient-*"))) == 2 * len(tried)  # the others never reached it
    assert not (out / "manifest.json").exists()
    result = alps_flow(str(scenes / "images"), str(out), small_config(fake_repo), progress_bar=False)
    assert result["n_labelled"] == 6 and result["complete"]
    # The same with images already done: --allow-partial writes no dataset from a run that stopped (the test above
    # had none done, which kept any dataset from being written on its own: mutation audit)
    before = (out / "manifest.json").read_bytes()
    for shard in sorted((out / ".alps" / "shards").glob("*.npz"))[2:]:
        shard.unlink()
    with pytest.raises(IncompleteRunError, match="stopped starting images after 2 in a row failed"):
        alps_flow(str(scenes / "images"), str(out), cfg, concurrency=1, progress_bar=False, allow_partial=True)
    assert (out / "manifest.json").read_bytes() == before  # the dataset stays as it was


def test_a_disk_that_fails_while_reading_is_retried_and_never_makes_a_bad_input(fake_repo, scenes, tmp_path,
                                                                               monkeypatch):
    """EIO (a failing disk or network mount; it cannot be produced here, so PIL's open raises it) is the
    machinery's failure: while labelling, retried, then missing if it lasts; while finding the images, one line
    and nothing started. A truncated file (PIL's OSError without an errno) stays a rejected input."""
    import errno

    from alps_client.io import readers

    real_open, opened, fail = readers.Image.open, {"n": 0}, {"from": 1, "to": 3}  # open 0 reads the header

    def failing_open(path, *args, **kwargs):
        if Path(path).name == "scene_0003.png":
            opened["n"] += 1
            if fail["from"] < opened["n"] <= fail["to"]:
                raise OSError(errno.EIO, "Input/output error")
        return real_open(path, *args, **kwargs)

    images = tmp_path / "images"
    shutil.copytree(scenes / "images", images)
    (images / "truncated.png").write_bytes((images / "scene_0000.png").read_bytes()[:300])
    monkeypatch.setattr(readers.Image, "open", failing_open)
    result = alps_flow(str(images), str(tmp_path / "out"), small_config(fake_repo), progress_bar=False)
    assert opened["n"] > 3 and result["n_labelled"] == 6 and result["missing"] == []  # two failures, retried
    assert sorted(Path(e["path"]).name for e in result["errors"]) == ["broken.png", "truncated.png"]
    opened["n"], fail["to"] = 0, 10**6  # the disk stays broken: missing (exit 3, resumable), not rejected
    with pytest.raises(IncompleteRunError, match=r"1 of 7 image\(s\) not labelled: reading .*scene_0003.png failed "
                                                 r"\(Input/output error\): the disk or the network mount failed"):
        alps_flow(str(images), str(tmp_path / "out2"), small_config(fake_repo), progress_bar=False)
    last = json.loads((tmp_path / "out2" / ".alps" / "last_run.json").read_text())
    assert [m["stem"] for m in last["missing"]] == ["scene_0003"] and "scene_0003" not in json.dumps(last["errors"])
    opened["n"], fail["from"] = 0, 0  # broken from the start: the run cannot know the image, and starts nothing
    with pytest.raises(AlpsError, match=r"reading .*scene_0003.png failed \(Input/output error\)"):
        alps_flow(str(images), str(tmp_path / "out3"), small_config(fake_repo), progress_bar=False)
    assert not (tmp_path / "out3" / ".alps" / "shards").exists()


def fill_disk(monkeypatch, folder: Path, after: int) -> None:
    """Make the disk under ``folder`` full once ``after`` files were written there: creating the next file fails
    with ENOSPC, where the kernel says it first (no small file system can be mounted here without root)."""
    import errno
    import os
    import tempfile

    real_mkstemp, made = tempfile.mkstemp, []

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).is_relative_to(folder):
            if len(made) >= after:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            made.append(dir)
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def test_a_full_output_disk_stops_the_run_at_once_and_loses_nothing(fake_repo, scenes, tmp_path, monkeypatch, capsys):
    """The output disk fills while images are labelled: the image that met it fails naming the file and the space
    left, no other image is started (each would fail alike), and no input becomes a rejected one. It fills while
    the dataset is written: `alps run` (resuming the images left) exits 3 with one line and removes the part of the
    dataset it wrote; the same command then finishes."""
    images, out = str(scenes / "images"), tmp_path / "out"
    with monkeypatch.context() as m:
        fill_disk(m, out / ".alps" / "shards", after=2)
        with pytest.raises(IncompleteRunError, match=r"^the run stopped starting images: no space left on the disk "
                                                     r"while writing .*/shards/scene_000\d\.npz, .* free there: "
                                                     r"free space on that disk; [2-9] of 6 image\(s\) not started"):
            alps_flow(images, str(out), small_config(fake_repo), concurrency=1, progress_bar=False)
    last = json.loads((out / ".alps" / "last_run.json").read_text())
    tried = [m["reason"] for m in last["missing"] if not m["reason"].startswith("not started")]
    assert len(last["labelled"]) == 2 and len(last["missing"]) == 4 and len(last["errors"]) == 1  # broken.png
    # Only the image that met it: the next one queued on its thread began after it and did nothing.
    assert len(tried) == 1 and tried[0].startswith("no space left on the disk")
    assert sorted(p.name for p in (out / ".alps" / "shards").iterdir()) == sorted(f"{s}.npz" for s in last["labelled"])

    args = ["run", images, "--out", str(out), "--model-repository", str(fake_repo), "--points-per-side", "8",
            "--n-clusters", "4", "--retry-delay-s", "0.05", "--no-progress"]
    capsys.readouterr()
    with monkeypatch.context() as m:
        fill_disk(m, out / ".alps" / "staging", after=5)
        assert alps(args) == 3
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("alps: error:")]
    assert len(errors) == 1 and "no space left on the disk while writing" in errors[0], errors
    assert "of the new dataset written so far are removed" in errors[0] and "run the same command again" in errors[0]
    last = json.loads((out / ".alps" / "last_run.json").read_text())
    assert len(last["labelled"]) == 4 and len(last["skipped"]) == 2 and not last["missing"]
    assert last["complete"] and not last["dataset_written"]  # every image labelled, no dataset
    assert not (out / ".alps" / "staging").exists() and not (out / "manifest.json").exists()
    assert alps(args) == 0 and json.loads((out / "manifest.json").read_text())["complete"]
    assert json.loads((out / ".alps" / "last_run.json").read_text())["dataset_written"]


def test_a_disk_too_full_for_the_runs_record_still_names_what_filled_it(fake_repo, scenes, tmp_path, monkeypatch):
    """The run's record (last_run.json) met the full disk after the shard that filled it: the run ended with
    the record's error, naming neither the shard nor the images not started."""
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        fill_disk(m, out / ".alps", after=4)  # the names the run gives, its first record, two shards
        with run_log() as logged, pytest.raises(IncompleteRunError, match=r"^the run stopped starting images: no "
                                                r"space left on the disk while writing .*/shards/scene_000\d\.npz, "
                                                r".*; 3 of 6 image\(s\) not started, 1 failed"):
            alps_flow(str(scenes / "images"), str(out), small_config(fake_repo), concurrency=1, progress_bar=False)
    assert any(line.startswith("The run's record was not written: no space left on the disk while writing "
                               f"{out / '.alps' / 'last_run.json'}") for line in logged), logged
    result = alps_flow(str(scenes / "images"), str(out), small_config(fake_repo), progress_bar=False)
    assert (result["n_labelled"], result["n_skipped"]) == (4, 2) and result["complete"]


def test_an_image_in_flight_when_the_run_stops_is_not_reported_as_its_failure(stand_in_repo, scenes, tmp_path):
    """Ctrl-C or SIGTERM releases the labeller (the real embedded backend here) under the images in flight: they
    end cancelled, saying the run stopped, never failed with the error the closed backend raised (it said
    ``scene_0004: KeyError: 'decoder'`` in red, as if the image were at fault)."""
    import threading

    from prefect import flow

    from alps_client.io.discovery import discover_inputs
    from alps_client.runs.labellers import LocalLabeller
    from alps_client.runs.retry import FailureStreak
    from alps_client.runs.work import LabelJob
    from flows.in_flight import TaskRunsInFlight
    from flows.labelling import STOPPED_UNDER_IT, label_image_task

    item = discover_inputs(scenes / "images")[0][0]
    cfg = small_config(stand_in_repo)
    labeller = LocalLabeller(LabelJob(str(tmp_path / "out"), cfg, "fingerprint"), slots=1)

    states = []

    @flow
    def label_one(labeller):
        states.append(label_image_task(item, labeller, [30.0], FailureStreak(10), TaskRunsInFlight(),
                                       return_state=True))

    with labeller.backend._encode_lock:  # the image cannot reach the encoder before the run has released it
        worker = threading.Thread(target=lambda: label_one(labeller, return_state=True))
        worker.start()
        labeller.close()
    worker.join(timeout=120)
    (state,) = states
    assert state.is_cancelled() and state.message == f"{item.stem}: {STOPPED_UNDER_IT}", state
    assert not (tmp_path / "out").exists()  # nothing written for it: the rerun labels it


def test_many_rejected_inputs_are_logged_up_to_a_limit_and_every_cut_list_says_so(fake_repo, scenes, prefect_server,
                                                                                  tmp_path, monkeypatch, capsys):
    """A folder of thousands of broken files: the run logged a line for each (burying its log and its page in the
    UI), and the listings it cut (the console's ten, the artifact's first rows) did not say they were cut."""
    from flows import alps_flow as flow_module
    from flows import artifacts
    from flows.run_cli import _print_summary

    monkeypatch.setattr(flow_module, "LOGGED_REJECTED", 3)
    monkeypatch.setattr(artifacts, "TABLE_ROWS", 4)
    images = tmp_path / "images"
    images.mkdir()
    for stem in ("scene_0000", "scene_0001"):
        shutil.copy(scenes / "images" / f"{stem}.png", images)
    for i in range(8):  # the files the cut lists show have one reason: the count by reason says the other
        (images / f"broken_{i:02d}.png").write_text("not an image")
    for i in range(4):
        (images / f"z{i}.png").touch()
    with run_log() as logged:
        result = alps_flow(str(images), str(tmp_path / "out"), small_config(fake_repo), progress_bar=False)
    assert len(result["errors"]) == 12 and len(read_jsonl(tmp_path / "out" / "errors.jsonl")) == 12
    (not_an_image,) = {e["reason"] for e in result["errors"]} - {"zero-byte file"}
    rejected = [line for line in logged if line.startswith(("rejected input", "... and"))]
    assert len(rejected) == 4 and rejected[-1].startswith("... and 9 more rejected input(s)"), rejected
    assert rejected[-1].endswith(f"(all 12 by reason: 8 {not_an_image}, 4 zero-byte file)"), rejected
    _print_summary(result, str(tmp_path / "out"))
    printed = capsys.readouterr().out.splitlines()
    listed = printed[printed.index(next(ln for ln in printed if ln.startswith("12 input(s) rejected"))) + 1:]
    assert len(listed) == 11 and listed[-1] == f"  ... and 2 more (all by reason: 8 {not_an_image}, 4 zero-byte " \
        "file)", listed
    mmseg = (tmp_path / "out" / "mmseg_dataset.py").resolve()
    assert f"Train on it with mmsegmentation: _base_ = [\"{mmseg}\", ...]" in printed
    mmseg.unlink()  # as a run with writer.copy_images false writes it: not pointed to
    _print_summary(result, str(tmp_path / "out"))
    assert "Train on it" not in capsys.readouterr().out
    table = errors_artifact(prefect_server, tmp_path / "out")
    assert len(json.loads(table["data"])) == 4 and "the first 4 of 12" in table["description"]


def test_a_dataset_of_bad_files_only_lists_each_in_the_runs_artifact(fake_repo, prefect_server, tmp_path):
    """Every file rejected: the run's one line names a few and nothing is written; its page in the UI had no
    table of them (the alps-errors artifact of a run that labels)."""
    images = tmp_path / "images"
    images.mkdir()
    for i in range(5):
        (images / f"broken_{i}.png").write_text("not an image")
    # The UI renders cells as Markdown: this name's image was fetched by every browser that opened the run
    beacon = "![b](http:\\\\127.0.0.1:9\\beacon.png) <img src=x>.png"
    (images / beacon).write_text("not an image")
    state = alps_flow(str(images), str(tmp_path / "out"), small_config(fake_repo), progress_bar=False,
                      return_state=True)
    assert state.is_failed() and "no readable images" in state.message
    table = errors_artifact(prefect_server, tmp_path / "out")
    names = sorted(Path(row["path"]).name for row in json.loads(table["data"]))
    escaped = "!\\[b\\](http:\\\\\\\\127.0.0.1:9\\\\beacon.png) \\<img src=x\\>.png"
    assert names == sorted([*(f"broken_{i}.png" for i in range(5)), escaped])
    assert table["description"] == "Rejected inputs (every file found: no input could be read, nothing is written)"


def errors_artifact(prefect_server: str, out: Path) -> dict:
    """The alps-errors artifact (REST form) of the flow run into ``out``, once the server has recorded it."""
    from tests.runs import flow_run_of, prefect_api, wait_until

    with prefect_api(prefect_server) as api:
        run = flow_run_of(api, out)

        def artifact():
            arts = api.post("/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run["id"]]},
                                                                     "key": {"any_": ["alps-errors"]}}}).json()
            return arts[0] if arts else None

        return wait_until(artifact, "the run's alps-errors artifact (recorded asynchronously)", timeout=120)


def test_the_python_recipe_of_docs_flow_md_writes_the_flows_dataset(fake_repo, scenes, tmp_path):
    """docs/flow.md's "From Python": the library's stages, without Prefect, as a user would copy them."""
    import re

    text = (Path(__file__).parents[2] / "docs" / "flow.md").read_text()
    recipe = re.search(r"## From Python\n.*?```python\n(.*?)```", text, re.DOTALL).group(1)
    yours = '"model_repository", "data/images", "out", "work"  # yours'
    assert recipe.count(yours) == 1
    data = copies_of_scenes(scenes, tmp_path / "data", 4)
    recipe = recipe.replace(yours, repr((str(fake_repo), str(data), str(tmp_path / "out"), str(tmp_path / "work"))))
    namespace: dict = {}
    exec(compile(recipe, "docs/flow.md", "exec"), namespace)  # noqa: S102  (the documented recipe itself)
    assert namespace["written"].n_images == 4
    cfg = PipelineConfig(backend=BackendConfig(model_repository=str(fake_repo)), amg=AmgConfig(points_per_side=16),
                         cluster=ClusterConfig(n_clusters=4))
    alps_flow(str(data), str(tmp_path / "flow_out"), cfg, progress_bar=False)
    assert labels(tmp_path / "out") == labels(tmp_path / "flow_out") and len(labels(tmp_path / "out")) == 4
    assert sorted(p.name for p in (tmp_path / "out" / "img_dir").glob("*/*")) == [f"scene_{i:04d}.png" for i in range(4)]


def test_the_progress_bar_counts_the_image_it_has_reached(capsys):
    """Its counts lagged one image behind its own counter all run ("1557/2000 ... labelled=1556")."""
    import re

    from prefect import flow

    from flows.artifacts import Progress

    @flow(name="progress-bar")
    def three_images() -> None:
        progress = Progress(3, terminal=True)
        progress.bar.mininterval, progress.bar.miniters = 0, 1  # every update drawn
        for status in ("labelled", "skipped", "labelled"):
            progress.advance(status)
        progress.close()

    three_images()
    drawn = [line for line in re.split(r"[\r\n]", capsys.readouterr().err) if re.search(r"\b[1-3]/3\b", line)]
    assert len(drawn) >= 3
    for line in drawn:
        reached = int(re.search(r"\b([1-3])/3\b", line).group(1))
        assert sum(int(n) for n in re.findall(r"(?:labelled|skipped)=(\d+)", line)) == reached, line


def test_progress_off_a_terminal_is_a_line_now_and_then_not_a_bar(capsys):
    """Piped to a file (CI, nohup), the bar's carriage returns made one line of ~90 bytes per image, the run's own
    log lines glued to it. There: whole lines, each with the counts it reached, the rate and the time left."""
    import re

    from prefect import flow

    from flows.artifacts import Progress

    @flow(name="progress-lines")
    def four_images() -> None:
        progress = Progress(4, terminal=False, line_every_s=0.0)  # a line for every image
        for status in ("labelled", "skipped", "labelled", "rejected"):
            progress.advance(status)
        progress.close()
        quiet = Progress(4, terminal=False)  # the default interval: only the last image's line
        for _ in range(4):
            quiet.advance("labelled")
        quiet.close()

    four_images()
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("labelling: ")]
    assert [line.split(" images")[0] for line in lines] == ["labelling: 1/4", "labelling: 2/4", "labelling: 3/4",
                                                           "labelling: 4/4", "labelling: 4/4"]
    assert lines[2].startswith("labelling: 3/4 images (75 %: labelled 2, skipped 1), ") and " left" in lines[2]
    assert re.fullmatch(r"labelling: 4/4 images \(100 %: labelled 2, rejected 1, skipped 1\), \d+ images/hour",
                        lines[3])


def test_the_sam2_stand_in_is_said_to_be_no_sam2(sam2_stand_in_repo, tmp_path, capsys):
    """The SAM 2 stand-in was "not SAM" on the console, in the log and on the review page, and the line said
    "Export SAM" to someone labelling with SAM 2.1."""
    from alps_client.synthetic import write_synthetic_dataset

    images = write_synthetic_dataset(tmp_path / "data", 2, seed=1, size=(64, 80)) / "images"
    with run_log() as logged:
        assert alps(["run", str(images), "--out", str(tmp_path / "out"), "--model-repository", str(sam2_stand_in_repo),
                     "--points-per-side", "4", "--n-clusters", "2", "--sigma", "1", "--no-progress"]) == 0
    said = capsys.readouterr().out
    from export.export_sam import MODEL_TYPES

    hint = ("Model: a STAND-IN, not SAM 2.1. For real labels, export SAM 2.1 from its checkpoint, e.g. python "
            "export/export_sam.py --model-type sam2.1_hiera_b+ --checkpoint sam2.1_hiera_base_plus.pt --out DIR")
    assert hint in said and "sam2.1_hiera_b+" in MODEL_TYPES  # a command that runs (--model-type was missing)
    assert any("is a STAND-IN (not SAM 2.1)" in line for line in logged), logged
    page = (tmp_path / "out" / "report" / "index.html").read_text()
    assert "STAND-IN, not SAM 2.1" in page and "(segments by colour), not SAM 2.1:" in page


def test_the_librarys_warnings_reach_the_flow_runs_log_in_the_api(fake_repo, scenes, tmp_path):
    """alps_client's warnings (k clusters for fewer masks, a Triton server leaving the rotation, the GPU missing so
    the run goes on the CPU) went to the process's console only: a run watched in the Prefect UI never showed them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    from flows.prefect_api import drain_prefect_workers

    config = dataclasses.replace(small_config(fake_repo), cluster=ClusterConfig(n_clusters=254))
    state = alps_flow(str(scenes / "images"), str(tmp_path / "out"), config, progress_bar=False, return_state=True)
    assert state.is_completed()
    drain_prefect_workers()  # the logs go to the API in the background
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    (warned,) = [log for log in logs if "masks for 254 clusters" in log.message]
    assert warned.level == 30 and warned.message.startswith("only ") and warned.name == "alps_client.labels.clustering"


def test_a_run_given_a_relative_or_home_path_says_and_writes_where_it_is(fake_repo, scenes, tmp_path, monkeypatch):
    """A served run (or a notebook's call) given `out: "~/labelled"` wrote a folder literally named `~` under the
    process's folder, and logged `Labelled dataset written to ~/labelled`: read as $HOME, where nothing was."""
    home, here = tmp_path / "home", tmp_path / "here"
    home.mkdir()
    here.mkdir()
    shutil.copytree(scenes / "images", here / "images")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(here)
    with run_log() as logged:
        alps_flow("images", "~/labelled", small_config(fake_repo), progress_bar=False)
    assert (home / "labelled" / "manifest.json").is_file() and not (here / "~").exists()
    assert any(line.startswith(f"Labelled dataset written to {home / 'labelled'}:") for line in logged), logged
    assert json.loads((home / "labelled" / ".alps" / "last_run.json").read_text())["dataset"] == str(here / "images")


def test_progress_updates_never_hold_the_labelling(monkeypatch):
    """Each progress update was sent from the labelling loop: with a user's API gone, each one waited out Prefect's
    retries (minutes) and no image was started meanwhile. The loop hands the value over and goes on; the latest
    value is sent once the API answers, and closing gives up on an API that does not."""
    import threading

    from flows import artifacts

    answering, sent = threading.Event(), []

    def update(artifact_id, progress):
        answering.wait()  # the API does not answer until it is set
        sent.append((artifact_id, progress))

    monkeypatch.setattr(artifacts, "update_progress_artifact", update)
    sender = artifacts.ProgressSender("id", close_wait_s=60)
    for percent in (10.0, 20.0, 30.0):
        sender.send(percent)  # had it waited for the API, this test would hang here
    assert not sent
    answering.set()
    sender.send(40.0)
    sender.close()
    assert sent[-1] == ("id", 40.0) and len(sent) <= 2  # one taken while the API hung, then the latest only
    answering.clear()
    stuck = artifacts.ProgressSender("id", close_wait_s=0.2)
    stuck.send(50.0)
    closing = threading.Thread(target=stuck.close)
    closing.start()
    closing.join(60)
    assert not closing.is_alive()  # it gave up on the API
    answering.set()  # lets the sender's thread end


def test_a_run_stopped_while_labelling_leaves_no_progress_thread_behind(fake_repo, scenes, tmp_path, monkeypatch):
    """The progress sender's thread waited for the next update of a run that Ctrl-C had stopped: one thread left
    per stopped run in a notebook, or in a process that goes on."""

    from flows import artifacts

    advanced = artifacts.Progress.advance

    def stopped_at_the_second(progress, status):
        if progress.done == 1:
            raise KeyboardInterrupt
        advanced(progress, status)

    monkeypatch.setattr(artifacts.Progress, "advance", stopped_at_the_second)
    senders = []
    started = artifacts.ProgressSender.__init__

    def recorded(sender, *args, **kwargs):
        started(sender, *args, **kwargs)
        senders.append(sender._thread)

    monkeypatch.setattr(artifacts.ProgressSender, "__init__", recorded)
    with pytest.raises(KeyboardInterrupt):
        alps_flow(str(scenes / "images"), str(tmp_path / "out"), small_config(fake_repo), progress_bar=False)
    for thread in senders:
        thread.join(30)
    assert len(senders) == 1 and not senders[0].is_alive()  # the run's one sender was started, and has ended


def test_a_neutral_setting_is_said_where_it_alone_makes_shards_of_an_older_alps_stale(tmp_path):
    """Shards from before they recorded their labelling are judged by OUT's manifest, whose --points-per-batch then
    differs: hiding the settings that never change a shard left that refusal without a reason (review)."""
    from alps_client.runs.plan import _what_differs

    now = {"model": "m", "config": PipelineConfig().labelling_dict()}
    for written, said in ((AmgConfig(points_per_batch=16), "amg.points_per_batch 16 there, None now"),
                          (AmgConfig(points_per_batch=16, points_per_side=8), "amg.points_per_side 8 there, 32 now")):
        (tmp_path / "manifest.json").write_text(json.dumps({"config": PipelineConfig(amg=written).to_dict()}))
        assert _what_differs(tmp_path, {"extra": {}}, now) == said
