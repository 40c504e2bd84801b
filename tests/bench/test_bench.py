"""The benchmark scripts run end to end at tiny sizes and report what they measured, checked against facts the
tests establish on their own (files on disk, prompts they chose, the git commit); speed is never asserted.

Results go to temporary folders, never over the committed ``bench/results.json``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from alps_client.io.shards import read_shard
from alps_client.masks import encode_coco_rle
from alps_client.synthetic import make_scene
from bench.agreement import label_confusion, label_miou, match_masks

ROOT = Path(__file__).resolve().parents[2]
STAGES_OURS = {"encoder", "decoder", "postprocess", "gate", "features", "clustering", "writing"}
STAGES_REFERENCE = {"encoder", "decoder", "postprocess", "features", "clustering", "writing", "write_masks"}


def _bench(script: str, *args: str, env: dict[str, str] | None = None) -> None:
    subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], cwd=ROOT, check=True, capture_output=True,
                   env=env)


def _results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


def _head() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()


def _box(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_mask_matching_is_one_to_one_and_counts_both_sides():
    a, b, c = _box(40, 40, 0, 10, 0, 10), _box(40, 40, 20, 40, 20, 40), _box(40, 40, 0, 40, 15, 18)
    b_shifted = _box(40, 40, 20, 40, 21, 40)  # IoU 0.95 with b: not a match at 0.99
    reference = encode_coco_rle(np.stack([a, b, c]))
    ours = encode_coco_rle(np.stack([a, a, b_shifted]))  # a twice: only one of them may take reference's a
    m = match_masks(ours, reference)
    assert (m.ours, m.reference, m.matched) == (3, 3, 1)
    assert match_masks([], reference).matched == 0 and match_masks(ours, []).reference == 0


def test_label_agreement_ignores_class_ids_and_counts_unlabelled_pixels():
    reference = np.array([[0, 0, 1, 1], [2, 2, 255, 255]], np.uint8)
    renamed = np.array([[7, 7, 3, 3], [5, 5, 255, 255]], np.uint8)
    assert label_miou(label_confusion(renamed, reference)) == (1.0, 3)
    # Class 2 left unlabelled by ours: IoU 0 for it; class 1 also claims two unlabelled pixels: IoU 2/4.
    partial = np.array([[7, 7, 3, 3], [255, 255, 3, 3]], np.uint8)
    miou, classes = label_miou(label_confusion(partial, reference))
    assert classes == 3 and miou == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    assert label_miou(label_confusion(reference, np.full_like(reference, 255))) == (None, 0)


@pytest.fixture(scope="module")
def own_images(tmp_path_factory) -> Path:
    """A user's folder: PNGs and JPEGs of different sizes, named as users name files (``scene0`` beside
    ``scene0_1``, ``scan[1]``, ``scene1.png`` beside ``scene1.jpg``), a 16-bit grey image in a sub-folder, a file
    that is not an image and one that claims to be a PNG."""
    folder = tmp_path_factory.mktemp("own_images")
    for i, (size, name) in enumerate([((160, 200), "scene0.png"), ((128, 128), "scene1.png"), ((120, 150), "scene2.jpg"),
                                      ((96, 96), "scene0_1.png"), ((96, 112), "scan[1].png"), ((112, 96), "scene1.jpg")]):
        Image.fromarray(make_scene(i, size, 4)[0]).save(folder / name)
    (folder / "deep").mkdir()
    grey = make_scene(7, (96, 128), 4)[0].mean(axis=2).astype(np.uint16) * 40 + 20000  # levels 20,000..30,200
    Image.fromarray(grey).save(folder / "deep" / "grey16.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.png").write_bytes(b"not a png at all")
    return folder


def test_pipeline_bench_on_own_images(stand_in_repo, own_images, tmp_path):
    _bench("bench_pipeline.py", "--name", "own", "--model-repository", str(stand_in_repo), "--images", str(own_images),
           "--points-per-side", "4", "--n-clusters", "2", "--workdir", str(tmp_path / "work"), "--results-dir", str(tmp_path))
    entry = _results(tmp_path)["own"]
    assert entry["commit"].split("-")[0] == _head()
    assert entry["images"]["source"] == str(own_images) and entry["images"]["count"] == 7
    assert [bad["path"] for bad in entry["images"]["left_out"]] == [str(own_images / "broken.png")]
    assert entry["variants"] == {"ours": "stand-in (STAND-IN, not SAM)"} and entry["order"] == ["ours", "reference"]
    for side, stages in (("ours", STAGES_OURS), ("reference", STAGES_REFERENCE)):
        row = entry["sides"][side]
        assert stages <= set(row["per_image"]), side
        assert row["n_images"] == 7 and row["peak_rss_mib"] > 0 and len(row["load"]) == 2
    work = tmp_path / "work" / "own"
    # Both sides read the pixels alps labels: the 16-bit image stretched over its levels, not one flat grey.
    decoded = sorted((work / "data" / "images").glob("*.png"))
    assert len(decoded) == 7 and all(len(np.unique(np.asarray(Image.open(p)))) > 2 for p in decoded)
    # What the sides wrote: the reference one PNG per mask, ours one shard per image with every mask's RLE.
    reference_pngs = len(list((work / "reference" / "masks").glob("*.png")))
    our_masks = sum(len(read_shard(p).masks) for p in (work / "ours" / "shards").glob("*.npz"))
    funnel, agreement = entry["funnel"], entry["agreement"]["ours"]
    assert funnel["prompts"] == 7 * 16 and funnel["candidates"] == 3 * 7 * 16
    assert funnel["candidates"] >= funnel["after_iou"] >= funnel["after_stability"] >= funnel["after_nms"] > 0
    assert entry["sides"]["reference"]["n_masks"] == reference_pngs == agreement["reference_masks"] == funnel["after_nms"]
    assert agreement["ours_masks"] == our_masks
    assert entry["sides"]["ours"]["upscaled"]["prompts"] == 7 * 16
    # The same stand-in, images and prompts on both sides: every mask has its partner, both ways, and labels agree.
    assert agreement["reference_matched_share"] == agreement["ours_matched_share"] == 1.0
    assert agreement["ours_kept"] == agreement["reference_kept"] > 0
    assert agreement["label_miou"] >= 0.99
    rendered = (tmp_path / "RESULTS.md").read_text()
    assert "## own" in rendered and "| **end to end** |" in rendered and "1 input(s) left out, e.g. " in rendered


def test_pipeline_bench_refuses_a_wrong_folder_or_checkpoint_in_one_line_before_exporting(own_images, tmp_path):
    """A typo in ``--images`` is said before minutes of export; a checkpoint that is no SAM's, in one line."""
    base = [sys.executable, str(ROOT / "bench" / "bench_pipeline.py"), "--name", "typo", "--workdir", str(tmp_path),
            "--results-dir", str(tmp_path)]
    missing = subprocess.run([*base, "--images", str(tmp_path / "nope"), "--random-init", "--model-type", "vit_b"],
                             cwd=ROOT, capture_output=True, text=True, check=False)
    assert missing.returncode != 0 and missing.stderr.strip().splitlines() == [
        f"bench_pipeline: error: --images {tmp_path / 'nope'} is not a folder"]
    assert not (tmp_path / "typo" / "repo-fp32").exists()
    torch.save({"state_dict": {"backbone.conv1.weight": torch.zeros(1)}}, tmp_path / "resnet.pth")
    other = subprocess.run([*base, "--images", str(own_images), "--max-images", "1", "--checkpoint",
                            str(tmp_path / "resnet.pth"), "--model-type", "tiny-test"],
                           cwd=ROOT, capture_output=True, text=True, check=False)
    assert other.returncode != 0 and "Traceback" not in other.stderr
    assert other.stderr.strip().splitlines()[-1].startswith(
        f"bench_pipeline: error: checkpoint {tmp_path / 'resnet.pth'} holds none of tiny-test's weights")
    assert not (tmp_path / "results.json").exists()


@pytest.fixture(scope="module")
def checkpoint_bench(tiny_checkpoint, tiny_repo, tiny_int8_repo, tmp_path_factory) -> tuple[Path, Path, dict]:
    """``bench_pipeline.py --checkpoint --int8`` on a tiny SAM checkpoint, as the README tells a user with weights:
    fp32 and int8 measured in one run against one reference. The exports are the session's of the same checkpoint
    (``tiny_repo``, the same ``run_export`` call, and ``tiny_int8_repo``, the same ``quantize_repository`` call the
    bench makes), reused through ``--keep-export``."""
    folder = tmp_path_factory.mktemp("checkpoint_bench")
    shutil.copytree(tiny_repo, folder / "work" / "tiny" / "repo-fp32")
    shutil.copytree(tiny_int8_repo, folder / "work" / "tiny" / "repo-int8")
    _bench("bench_pipeline.py", "--name", "tiny", "--checkpoint", str(tiny_checkpoint), "--model-type", "tiny-test",
           "--keep-export", "--int8", "--synthetic", "1", "--size", "128", "--points-per-side", "4",
           "--pred-iou-pass-share", "0.25", "--stability-score-thresh", "0", "--sigma", "1", "--n-clusters", "1",
           "--workdir", str(folder / "work"), "--results-dir", str(folder))
    return tiny_checkpoint, folder / "work" / "tiny", _results(folder)["tiny"]


def test_keep_export_reuses_only_an_export_of_the_same_model(tiny_repo, tiny_checkpoint, tmp_path):
    from bench.bench_pipeline import holds_model

    assert holds_model(tiny_repo, "tiny-test", str(tiny_checkpoint), random_init=False)
    other = tmp_path / "other.pth"
    other.write_bytes(tiny_checkpoint.read_bytes() + b"\0")  # other weights, same name elsewhere
    assert not holds_model(tiny_repo, "tiny-test", str(other), random_init=False)
    assert not holds_model(tiny_repo, "tiny-test", None, random_init=True)
    assert not holds_model(tiny_repo, "vit_b", str(tiny_checkpoint), random_init=False)
    assert not holds_model(tmp_path, "tiny-test", str(tiny_checkpoint), random_init=False)  # no export there


def test_pipeline_bench_on_a_checkpoint_measures_its_int8_in_one_run(checkpoint_bench, tiny_repo, tiny_int8_repo):
    import hashlib

    checkpoint, work, entry = checkpoint_bench
    fp32 = json.loads((work / "repo-fp32" / "manifest.json").read_text())
    assert fp32["checkpoint"]["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    # Reused, not made again (a new export or quantisation records other timings).
    assert (work / "repo-fp32" / "manifest.json").read_bytes() == (tiny_repo / "manifest.json").read_bytes()
    assert (work / "repo-int8" / "manifest.json").read_bytes() == (tiny_int8_repo / "manifest.json").read_bytes()
    int8 = json.loads((work / "repo-int8" / "manifest.json").read_text())
    assert int8["precision"] == "int8-dynamic" and int8["checkpoint"] == fp32["checkpoint"]
    assert entry["variants"]["ours-int8"].endswith("encoder int8 dynamic quantisation")
    # fp32 and int8 measured in the same run as the one reference they are compared with.
    assert entry["order"] == ["ours", "reference", "ours-int8"]
    assert set(entry["speedup"]) == {"ours", "ours-int8"} == set(entry["agreement"])
    # pred_iou_thresh was set so that a quarter of the 48 candidate masks pass; the reference's IoU filter saw that.
    assert entry["pred_iou_pass_share"] == 0.25 and entry["amg"]["pred_iou_thresh"] > 0
    assert entry["funnel"]["candidates"] == 48 and 11 <= entry["funnel"]["after_iou"] <= 13
    upscaled = entry["sides"]["ours"]["upscaled"]
    assert upscaled["prompts"] == 16 and entry["funnel"]["after_iou"] / 3 <= upscaled["prompts_upscaled"] <= 16


def test_gpu_check_dry_run(checkpoint_bench, tmp_path):
    _, work, _ = checkpoint_bench
    subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run", "--model-repository",
                    str(work / "repo-fp32"), "--images", "1", "--points-per-side", "4", "--kmeans-points", "500",
                    "--concurrency", "1", "2", "--workdir", str(tmp_path / "work"), "--results-dir", str(tmp_path)],
                   cwd=ROOT, check=True, capture_output=True)
    entry = _results(tmp_path)["gpu-check-dry-run"]
    assert entry["kind"] == "gpu" and entry["errors"] == [] and "no GPU" in entry["device"]
    assert [(r["model"], r["provider"], r["images_in_flight"]) for r in entry["rows"]] == [
        ("tiny-test", "CPU", 1), ("tiny-test", "CPU", 2), ("tiny-test, fp16", "CPU", 1), ("tiny-test, fp16", "CPU", 2)]
    assert "| tiny-test, fp16 | CPU, 2 in flight |" in (tmp_path / "RESULTS.md").read_text()
    fp16 = json.loads((tmp_path / "work" / "repo-fp16" / "manifest.json").read_text())
    decoder = onnx.load(str(tmp_path / "work" / "repo-fp16" / fp16["models"]["decoder"]["path"]))
    assert {i.data_type for i in decoder.graph.initializer if i.name.startswith("mask_decoder")} == {
        onnx.TensorProto.FLOAT16}
    assert [i.type.tensor_type.elem_type for i in decoder.graph.input] == [onnx.TensorProto.FLOAT] * 4
    assert entry["kmeans"]["library"] == "scikit-learn" and entry["kmeans"]["points"] == 500
    assert all(r["prompts_upscaled"]["prompts"] == 16 for r in entry["rows"])
    assert all(r["providers_running"] == ["CPUExecutionProvider"] for r in entry["rows"])


def test_gpu_check_runs_in_the_environment_gpu_python_names(tmp_path):
    """GPU_PYTHON: no .venv-gpu is made; that Python runs the check (here it has no CUDA provider, and says so)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: a stand-in nvidia-smi'\n")
    (fake / "nvidia-smi").chmod(0o755)
    out = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--workdir", str(tmp_path / "work"),
                          "--results-dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, check=False,
                         env={"PATH": f"{fake}:/usr/bin:/bin", "GPU_PYTHON": sys.executable})
    assert out.returncode == 1 and "onnxruntime has no CUDA provider" in out.stderr, out.stderr[-2000:]
    assert "[gpu-check] onnxruntime" in out.stdout and "preparing" not in out.stdout
    assert not (tmp_path / "results.json").exists()


def test_gpu_check_skips_tensorrt_without_its_libraries_and_says_why(monkeypatch, tmp_path):
    """onnxruntime-gpu lists TensorRT whether or not TensorRT is installed (none is here): no row, a reason."""
    import onnxruntime as ort

    from bench.gpu_check import TENSORRT_LIBRARY, missing_library, provider_runs

    assert missing_library(TENSORRT_LIBRARY) and missing_library("libc.so.6") is None
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    skipped: list[str] = []
    runs = provider_runs(False, tmp_path, skipped)
    assert [label for label, _ in runs] == ["CUDA"]
    assert len(skipped) == 1 and skipped[0].startswith("TensorRT (") and TENSORRT_LIBRARY in skipped[0]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(SystemExit, match="no CUDA provider"):
        provider_runs(False, tmp_path, skipped)


def test_a_results_entry_names_the_commit_it_was_given_before_the_copys_own_git(monkeypatch):
    from bench import results

    monkeypatch.setenv("ALPS_BENCH_COMMIT", "abc1234")
    assert results.commit() == "abc1234"  # a copy's git history may be older than the code it holds
    monkeypatch.delenv("ALPS_BENCH_COMMIT")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout
    assert results.commit().startswith(head.strip())

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(results.subprocess, "run", no_git)
    assert results.commit() == "unknown"


def test_gpu_check_without_a_gpu_says_so(tmp_path):
    out = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh")], cwd=ROOT, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin"}, check=False)
    assert out.returncode == 2 and "no NVIDIA GPU visible" in out.stderr


def test_scaling_bench_writes_points_and_plot(tmp_path):
    _bench("bench_scaling.py", "--sizes", "3", "12", "--results-dir", str(tmp_path))
    points = _results(tmp_path)["scaling"]["points"]
    assert [p["images"] for p in points] == [3, 12]
    assert [p["pfls"] for p in points] == [60, 240]  # 20 synthetic PFLs per image
    assert all(p["seconds"] > 0 and p["peak_rss_mib"] > 0 for p in points)
    assert (tmp_path / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Scaling of clustering + writing" in (tmp_path / "RESULTS.md").read_text()


def test_ort_options_bench_varies_one_setting_at_a_time(stand_in_repo, tmp_path):
    _bench("bench_ort_options.py", "--model-repository", str(stand_in_repo), "--prompts", "16", "--repeats", "1",
           "--results-dir", str(tmp_path))
    entry = _results(tmp_path)["ort_options"]
    settings = [(r["model"], r["setting"]) for r in entry["rows"]]
    assert len(settings) == len(set(settings))
    for model in ("encoder", "decoder"):
        assert {"backend defaults", "level=basic", "level=extended", "threads=1"} <= {s for m, s in settings if m == model}
        assert sum(m == model for m, s in settings if "," in s) == 0  # never two changes at once
    assert ("encoder", "arena=True") in settings and ("decoder", "arena=False") in settings
    assert ("encoder", "spinning=True") in settings and ("decoder", "spinning=True") in settings
    assert ("decoder", "SkipLayerNormFusion=on") in settings and ("encoder", "SkipLayerNormFusion=off") in settings
    # The stand-in's predicted IoUs tie (many are 1.0), so the shares reached are at most the ones asked for.
    shares = {r["setting"]: r["upscaled_share"] for r in entry["rows"] if r["setting"].startswith("upscaled=")}
    assert list(shares) == ["upscaled=75%", "upscaled=50%", "upscaled=25%", "upscaled=0%"]
    assert all(shares[f"upscaled={p}%"] <= p / 100 for p in (75, 50, 25)) and shares["upscaled=0%"] == 0.0
    assert not any("precision" in s for _, s in settings)  # no int8 repository given
    assert entry["prompts"] == 16 and entry["int8_agreement"] is None


def test_a_results_row_names_the_family_a_stand_in_is_not():
    from bench.results import model_label

    sam2 = {"model_type": "sam2-stand-in", "model_family": "sam2", "random_init": False, "is_stand_in": True}
    assert model_label(sam2) == "sam2-stand-in (STAND-IN, not SAM 2.1)"  # was "not SAM"
    assert model_label({**sam2, "model_type": "stand-in", "model_family": "sam"}) == "stand-in (STAND-IN, not SAM)"


def test_long_run_bench_samples_the_real_run_and_its_api_server(stand_in_repo, tmp_path):
    from tests.runs import cli_env

    # Its runs start their own API server: in a Prefect home of the test's (never the user's ~/.prefect), given the
    # session's migrated database as a user's second run has it.
    home = tmp_path / "prefect-home"
    _bench("bench_long_run.py", "--images", "6", "--size", "64", "--points-per-side", "2", "--n-clusters", "2",
           "--interval", "0.2", "--model-repository", str(stand_in_repo), "--workdir", str(tmp_path / "work"),
           "--results-dir", str(tmp_path), "--compare-glibc-malloc", env=cli_env(home))
    with contextlib.closing(sqlite3.connect(home / "prefect.db")) as db:  # both runs were recorded there
        assert db.execute("SELECT count(*) FROM flow_run").fetchone()[0] == 2
    entry = _results(tmp_path)["long-run"]
    assert entry["commit"].split("-")[0] == _head() and entry["images"] == 6
    shards = list((tmp_path / "work" / "labelled" / ".alps" / "shards").glob("*.npz"))
    assert len(shards) == 6  # the run labelled every image, into the folder the samples counted
    with (tmp_path / "work" / "samples.csv").open() as f:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    done = [r["done"] for r in rows]
    assert done == sorted(done) and done[0] < 6 == done[-1] and len(set(done)) >= 2
    assert all(r["rss"] > 0 and r["uss"] > 0 and r["hwm"] > 0 for r in rows)
    assert max(r["api_rss"] for r in rows) > 0  # the run's own Prefect API server, a child, was sampled
    at = entry["at"]
    reached = [at[k]["images"] for k in ("10%", "50%", "90%", "100%")]  # the first sample at or past each share
    assert reached == sorted(reached) and reached[0] >= 1 and reached[1] >= 3 and reached[2:] == [6, 6]
    assert at["100%"]["rss_mib"] > 0 and at["10%"]["seconds"] <= at["100%"]["seconds"]
    assert math.isfinite(entry["slope_mib_per_1000_images"]["rss_after_20%"])
    assert entry["peak_rss_mib"]["run"] >= round(max(r["rss"] for r in rows), 1) >= at["100%"]["rss_mib"]
    assert entry["peak_rss_mib"]["api_server"] > 0
    assert entry["series"][-1]["done"] == 6 and entry["samples"] == len(rows)
    rendered = (tmp_path / "RESULTS.md").read_text()
    assert "Long run: resident memory" in rendered and "malloc: alps: 2 arenas, malloc_trim every" in rendered
    glibc = entry["glibc_malloc"]  # the same run again, with glibc's malloc as it is
    assert "malloc: glibc's defaults (ALPS_GLIBC_MALLOC=1), the same run just after" in rendered
    assert glibc["at"]["100%"]["images"] == 6 and glibc["peak_rss_mib"]["run"] > 0
    with (tmp_path / "work" / "samples-glibc-malloc.csv").open() as f:
        assert max(float(row["done"]) for row in csv.DictReader(f)) == 6
