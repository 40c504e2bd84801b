"""GPU check: vit_h (random weights) in fp32 and fp16 through the embedded backend on CUDA (and TensorRT when the
onnxruntime wheel has it), AMG + ALPS end to end, cuML k-means; rows appended to ``bench/results.json``.

Run it through ``bench/gpu_check.sh`` (which prepares the GPU environment). ``--dry-run`` goes through every step
on this CPU machine instead: the tiny test SAM, the CPU provider, scikit-learn; its rows go to their own entry.

Random weights: the predicted IoUs carry no information and the mask logits lie within +-1, so the rows time
the GPU's work on Meta's full grid (the IoU filter is off: every prompt is decoded and upscaled) and the scoring
of every candidate mask, while stability 0.95 then drops them all (no RLE, gate or features to time).
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

AMG = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.95}
# onnxruntime-gpu 1.31's TensorRT provider is built against TensorRT 10 (its NEEDED entries)
TENSORRT_LIBRARY = "libnvinfer.so.10"


class Budget:
    """Seconds left of the check's time limit; steps that would start past it are skipped and recorded so."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds
        self.skipped: list[str] = []

    def allows(self, step: str, needs_s: float = 0.0) -> bool:
        if time.monotonic() + needs_s < self.deadline:
            return True
        self.skipped.append(step)
        print(f"[gpu-check] skipped (time limit): {step}", flush=True)
        return False


def provider_runs(dry_run: bool, trt_cache: Path, skipped: list[str]) -> list[tuple[str, list[Any]]]:
    """(label, providers) to run: CUDA, TensorRT when its libraries load; the CPU provider in a dry run.

    What cannot run here is appended to ``skipped``, with the reason.
    """
    import onnxruntime as ort

    available = ort.get_available_providers()
    if dry_run:
        return [("CPU", ["CPUExecutionProvider"])]
    if "CUDAExecutionProvider" not in available:
        raise SystemExit(f"gpu_check: onnxruntime has no CUDA provider (has {available}); run bench/gpu_check.sh, "
                         "which installs onnxruntime-gpu from bench/requirements-gpu.txt")
    runs = [("CUDA", ["CUDAExecutionProvider", "CPUExecutionProvider"])]
    if "TensorrtExecutionProvider" in available:
        # onnxruntime-gpu lists TensorRT whether or not TensorRT's own libraries are installed; without them a run
        # would fail (the backend refuses to fall back to CUDA unasked), so the row is skipped, and said so.
        missing = missing_library(TENSORRT_LIBRARY)
        if missing:
            skipped.append(f"TensorRT ({missing}: TensorRT 10's libraries are not installed)")
            print(f"[gpu-check] skipped: TensorRT ({missing})", flush=True)
        else:
            trt = {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(trt_cache), "trt_fp16_enable": True}
            runs.append(("TensorRT",
                         [["TensorrtExecutionProvider", trt], "CUDAExecutionProvider", "CPUExecutionProvider"]))
    return runs


def missing_library(name: str) -> str | None:
    """None when the shared library ``name`` loads, else why not (the loader's message)."""
    import ctypes

    try:
        ctypes.CDLL(name)
    except OSError as err:
        return str(err)
    return None


def run_ours(repository: Path, providers: list[Any], image_list: Path, work: Path, points_per_side: int,
             in_flight: int = 2) -> dict[str, Any]:
    """Our pipeline (bench_pipeline's side process) on one repository and provider list, ``in_flight`` images at
    once on one backend (``alps run --concurrency``)."""
    work.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(ROOT / "bench" / "bench_pipeline.py"), "--name", "gpu-check", "--side", "ours",
           "--threads", "0", "--points-per-side", str(points_per_side), "--concurrency", str(in_flight),
           "--pred-iou-thresh", str(AMG["pred_iou_thresh"]), "--stability-score-thresh",
           str(AMG["stability_score_thresh"]), "--side-repository", str(repository), "--image-list", str(image_list),
           "--work", str(work), "--result", str(work / "result.json"), "--providers", json.dumps(providers)]
    subprocess.run(cmd, check=True)
    r = json.loads((work / "result.json").read_text())
    n = r["n_images"]
    return {"per_image": {k: v / n for k, v in r["seconds"].items()}, "seconds_per_image": r["total_seconds"] / n,
            "images_per_hour": 3600.0 * n / r["total_seconds"], "peak_rss_mib": r["peak_rss_mib"],
            "providers_running": r["providers"], "images_in_flight": in_flight,
            "prompts_upscaled": r["upscaled"], "masks_kept_by_gate": r["n_kept"]}


def kmeans(dry_run: bool, points: int, clusters: int = 64) -> dict[str, Any]:
    """k-means on ``points`` random 256-d PFLs: cuML on a GPU (scikit-learn in a dry run), fit time in seconds."""
    x = np.random.RandomState(0).standard_normal((points, 256)).astype(np.float32)
    if dry_run:
        from sklearn.cluster import KMeans

        library, model = "scikit-learn", KMeans(n_clusters=clusters, n_init=1, random_state=0)
    else:
        try:
            import cuml
        except ImportError as err:  # the rows above are kept: the entry says what is missing
            return {"library": None, "error": f"cuML not importable ({err}); pip install -r bench/requirements-gpu.txt"}
        library, model = f"cuML {cuml.__version__}", cuml.KMeans(n_clusters=clusters, n_init=1, random_state=0)
    model.fit(x[: min(points, 1000)])  # warm-up: CUDA context and kernels
    start = time.perf_counter()
    model.fit(x)
    return {"library": library, "points": points, "clusters": clusters, "seconds": time.perf_counter() - start}


def device_name(dry_run: bool) -> str:
    if dry_run:
        return "dry run on the CPU (no GPU)"
    out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True, check=False)
    return out.stdout.strip() or "NVIDIA GPU (nvidia-smi gave no name)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU provider, tiny test SAM, scikit-learn")
    parser.add_argument("--images", type=int, help="synthetic 1024-px scenes (default 8; dry run 2 of 256 px)")
    parser.add_argument("--points-per-side", type=int, help="prompt grid (default Meta's 32; dry run 8)")
    parser.add_argument("--time-limit", type=float, default=480.0, help="seconds for the whole check")
    parser.add_argument("--kmeans-points", type=int, help="random PFLs to cluster (default 200,000; dry run 5,000)")
    parser.add_argument("--model-type", default="vit_h", help="SAM to export with random weights (default vit_h)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[2],
                        help="images in flight, as `alps run --concurrency`: a row for each (default 2)")
    parser.add_argument("--name", help="the results entry (default gpu-check, or gpu-check-dry-run)")
    parser.add_argument("--model-repository", help="an fp32 repository already exported (skips the export)")
    parser.add_argument("--workdir", default=str(ROOT / "bench" / "out" / "gpu_check"))
    parser.add_argument("--results-dir", default=str(ROOT / "bench"), help="where results.json and RESULTS.md go")
    args = parser.parse_args()
    budget = Budget(args.time_limit)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    from alps_client.synthetic import write_synthetic_dataset
    from bench.results import load_average, machine, model_label, record
    from export.quantize import half_repository

    load_start = load_average()
    runs = provider_runs(args.dry_run, work / "trt_cache", budget.skipped)
    steps: dict[str, float] = {}
    start = time.perf_counter()
    if args.model_repository:
        fp32 = Path(args.model_repository)
    else:
        from export.export_sam import run_export

        fp32 = work / "repo-fp32"
        run_export("tiny-test" if args.dry_run else args.model_type, fp32, random_init=True, cpu=args.dry_run)
    export_step = "export fp32 (given, not timed)" if args.model_repository else "export fp32"
    steps[export_step] = time.perf_counter() - start
    start = time.perf_counter()
    fp16 = work / "repo-fp16"
    half_repository(fp32, fp16)
    steps["convert fp16"] = time.perf_counter() - start
    n_images, size = (args.images or 2, 256) if args.dry_run else (args.images or 8, 1024)
    grid = args.points_per_side or (8 if args.dry_run else 32)
    amg = {"points_per_side": grid, **AMG}
    data = write_synthetic_dataset(work / "data", n_images, seed=0, size=(size, size), n_classes=4)
    image_list = work / "images.json"
    image_list.write_text(json.dumps([str(p.resolve()) for p in sorted((data / "images").glob("*.png"))]))
    rows = []
    for provider, providers in runs:
        for repo, in_flight in itertools.product((fp32, fp16), args.concurrency):
            manifest = json.loads((repo / "manifest.json").read_text())
            label = f"{model_label(manifest)} on {provider}, {in_flight} in flight"
            if not budget.allows(label, needs_s=30.0):
                continue
            print(f"[gpu-check] {label} ...", flush=True)
            row_start = time.perf_counter()
            try:
                result = run_ours(repo, providers, image_list,
                                  work / f"{provider}-{manifest['precision']}-{in_flight}", grid, in_flight)
            except subprocess.CalledProcessError as err:
                rows.append({"model": model_label(manifest), "provider": provider, "images_in_flight": in_flight,
                             "error": str(err)})
                continue
            steps[label] = time.perf_counter() - row_start
            rows.append({"model": model_label(manifest), "provider": provider, **result})
    points = args.kmeans_points or (5_000 if args.dry_run else 200_000)
    k = kmeans(args.dry_run, points, clusters=8 if args.dry_run else 64) if budget.allows("k-means", 20.0) else None
    entry = {
        "kind": "gpu",
        "note": (f"`bench/gpu_check.sh{' --dry-run' if args.dry_run else ''}`: {n_images} synthetic {size}-px scenes, "
                 f"AMG {amg}, random weights (see bench/gpu_check.py: the rows time the GPU work on the full grid, "
                 "not mask quality); steps took " + ", ".join(f"{s} {t:.0f} s" for s, t in steps.items())
                 + (f"; skipped: {', '.join(budget.skipped)}" if budget.skipped else "") + "."),
        "device": device_name(args.dry_run),
        "rows": [r for r in rows if "error" not in r],
        "errors": [r for r in rows if "error" in r],
        "kmeans": k,
        "load": [load_start, load_average()],
        "machine": machine(),
    }
    record(args.name or ("gpu-check-dry-run" if args.dry_run else "gpu-check"), entry, Path(args.results_dir))
    print(json.dumps({"rows": len(entry["rows"]), "errors": entry["errors"], "skipped": budget.skipped}))


if __name__ == "__main__":
    main()
