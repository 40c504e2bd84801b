"""Ours vs the reference ALPS pipeline, side by side on the same model, images and prompts, in one run.

    make bench        # stand-in model, 4 synthetic scenes
    make bench-full   # vit_b --random-init, thresholds lowered equally on both sides so that masks survive

Each side runs in its own process (so peak RSS is its own). Per-stage seconds per image, images/hour, peak RSS,
the ours/reference ratio, and the agreement of masks and labels are merged into ``bench/results.json`` under
``--name`` and rendered to ``bench/RESULTS.md``. Ratios, not absolute times, compare across machines.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def peak_rss_mib() -> float:
    """Peak resident memory of this process (VmHWM), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def commit_label() -> str:
    """The commit a result was measured at (``-dirty`` when the work tree has uncommitted changes)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def load_images(folder: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.png"))}


def torch_model(manifest: dict[str, Any]) -> Any:
    """The PyTorch model the repository was exported from (stand-in, or a seeded --random-init SAM)."""
    from export.export_sam import load_model

    return load_model(manifest["model_type"], None, manifest["random_init"])


def side_ours(args: argparse.Namespace, images: dict[str, np.ndarray], work: Path) -> dict[str, Any]:
    from alps_client.backends.embedded import EmbeddedBackend
    from alps_client.labels.clustering import fit_centroids
    from alps_client.config import AmgConfig, BackendConfig, ClusterConfig, GateConfig, PipelineConfig, WriterConfig
    from alps_client.amg.generator import MaskGenerator
    from alps_client.pipeline import label_image
    from alps_client.io.shards import shard_fingerprint

    cfg = PipelineConfig(
        backend=BackendConfig(model_repository=args.model_repository, num_threads=args.threads),
        amg=AmgConfig(**args.amg), gate=GateConfig(sigma=args.sigma),
        cluster=ClusterConfig(n_clusters=args.n_clusters), writer=WriterConfig(write_vis=False, copy_images=False),
    )
    backend = EmbeddedBackend(cfg.backend)
    generator = MaskGenerator(backend, cfg.amg)
    fp = shard_fingerprint(backend.manifest.fingerprint, cfg.labelling_dict())
    seconds: dict[str, float] = {}
    shards = []
    for stem, rgb in images.items():
        summary = label_image(rgb, stem, stem, generator, cfg, work / "shards" / f"{stem}.npz", fp)
        for k, v in summary.timings.items():
            seconds[k] = seconds.get(k, 0.0) + v
        shards.append(summary.shard_path)
    import sklearn.cluster  # noqa: F401  -- imported before timing, as the reference imports it at module level

    start = time.perf_counter()
    centroids = fit_centroids(shards, cfg.cluster)
    seconds["clustering"] = time.perf_counter() - start
    from alps_client.io.writer import write_dataset

    start = time.perf_counter()
    write_dataset(work / "out", shards, centroids, cfg, backend.manifest.raw, [])
    seconds["writing"] = time.perf_counter() - start
    return {"seconds": seconds}


def side_reference(args: argparse.Namespace, images: dict[str, np.ndarray], work: Path) -> dict[str, Any]:
    from export.tv_shim import install_torchvision_shim

    install_torchvision_shim()
    import torch

    from bench.reference_alps import run_reference

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    manifest = json.loads((Path(args.model_repository) / "manifest.json").read_text())
    sam = torch_model(manifest)
    timings = {"encoder": 0.0, "decoder": 0.0}
    from segment_anything import SamPredictor

    def timed(name: str, fn: Any) -> Any:
        def wrapper(*a: Any, **k: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                timings[name] += time.perf_counter() - start
        return wrapper

    SamPredictor.set_image = timed("encoder", SamPredictor.set_image)
    SamPredictor.predict_torch = timed("decoder", SamPredictor.predict_torch)
    result = run_reference(sam, images, work, args.amg, args.sigma, args.n_clusters)
    s = result.pop("seconds")
    seconds = {"encoder": timings["encoder"], "decoder": timings["decoder"],
               "postprocess": s["amg"] - timings["encoder"] - timings["decoder"],
               "write_masks": s["write_masks"], "features": s["features"], "clustering": s["clustering"],
               "writing": s["painting"]}
    return {"seconds": seconds, "n_masks": result["n_masks"]}


def run_side(args: argparse.Namespace) -> None:
    images = load_images(Path(args.images_dir))
    work = Path(args.work)
    start = time.perf_counter()
    result = side_ours(args, images, work) if args.side == "ours" else side_reference(args, images, work)
    result["total_seconds"] = time.perf_counter() - start
    result["peak_rss_mib"] = peak_rss_mib()
    result["n_images"] = len(images)
    Path(args.result).write_text(json.dumps(result))


def agreement(work: Path, images: dict[str, np.ndarray]) -> dict[str, float]:
    """Mask agreement (our masks matching a reference mask with IoU >= 0.99) and label agreement (mIoU of our
    label maps vs the reference's after Hungarian matching, on pixels both labelled)."""
    from alps_client.evaluate import confusion, match_clusters, scores
    from alps_client.masks import decode_coco_rle
    from alps_client.io.shards import read_shard

    matched = total = 0
    conf = np.zeros((256, 256), np.int64)
    for stem in images:
        shard = read_shard(work / "ours" / "shards" / f"{stem}.npz")
        ours = decode_coco_rle(shard.masks.rles) if len(shard.masks) else np.zeros((0, 1, 1), bool)
        theirs = [np.asarray(Image.open(p)) > 0 for p in sorted((work / "reference" / "masks").glob(f"{stem}_*.png"))]
        for m in ours:
            total += 1
            matched += any((m & t).sum() / max((m | t).sum(), 1) >= 0.99 for t in theirs)
        ours_label = np.asarray(Image.open(next((work / "ours" / "out" / "ann_dir").glob(f"*/{stem}.png"))))
        ref = np.asarray(Image.open(work / "reference" / "labels" / f"{stem}.png")).astype(np.int64) - 1
        ref = np.where(ref < 0, 255, ref).astype(np.uint8)
        conf += confusion(ours_label, ref)
    report = scores(conf, match_clusters(conf))
    return {"mask_agreement": matched / total if total else float("nan"), "label_miou_vs_reference": report.miou}


def machine() -> dict[str, Any]:
    import onnxruntime
    import torch

    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}


def model_label(manifest: dict[str, Any]) -> str:
    """How a results row names a model repository's model: type, random weights, stand-in, int8."""
    return (f"{manifest['model_type']}{' (random weights)' if manifest['random_init'] else ''}"
            f"{' (STAND-IN, not SAM)' if manifest['is_stand_in'] else ''}"
            f"{', int8 dynamic quantisation' if manifest.get('precision') == 'int8-dynamic' else ''}")


def record(key: str, entry: dict[str, Any], results_dir: Path = ROOT / "bench") -> dict[str, Any]:
    """Merge ``entry`` into ``results_dir/results.json`` under ``key`` and re-render ``RESULTS.md`` beside it."""
    results_path = Path(results_dir) / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results[key] = entry
    results_path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    (Path(results_dir) / "RESULTS.md").write_text(render(results))
    return results


def render(results: dict[str, Any]) -> str:
    lines = ["# Benchmark results", "", "Written by `bench/bench_pipeline.py` and `bench/bench_scaling.py`; "
             "compare ratios across machines, not absolute times.", ""]
    for name, r in results.items():
        if name == "dask":
            lines += ["## Per-image stage: threads vs Dask workers", "", f"{r['note']}; {r['images']} images, {r['cores']} cores.",
                      "", "| runner | labelling s | images/hour |", "|---|---:|---:|"]
            lines += [f"| {k} | {v['label_seconds']:.1f} | {v['images_per_hour']:.0f} |" for k, v in r["rows"].items()]
            lines.append("")
            continue
        if name == "triton":
            lines += ["## Triton vs embedded (AMG, stand-in, CPU)", "", r["note"], "",
                      "| backend | images/s | encoder s/img | decoder s/img | postprocess s/img |", "|---|---:|---:|---:|---:|"]
            lines += [f"| {k} | {v['images_per_second']:.3f} | {v['encoder_s_per_image']:.3f} | "
                      f"{v['decoder_s_per_image']:.3f} | {v['postprocess_s_per_image']:.3f} |" for k, v in r["rows"].items()]
            lines.append("")
            continue
        if name == "ort_options":
            lines += [f"## onnxruntime settings ({r['model']}, one change at a time)", "",
                      f"`bench/bench_ort_options.py`; encoder: one 512x512 image; decoder: {r['prompts']} prompts; "
                      f"{r['machine']['cpu']}, {r['machine']['cores']} cores.", "",
                      "| model | setting | encoder s/image | decoder ms/prompt | peak RSS MiB |", "|---|---|---:|---:|---:|"]
            for row in r["rows"]:
                enc, dec = row.get("seconds_per_image"), row.get("ms_per_prompt")
                lines.append(f"| {row['model']} | {row['setting']} | {'' if enc is None else f'{enc:.2f}'} | "
                             f"{'' if dec is None else f'{dec:.1f}'} | {row['peak_rss_mib']:.0f} |")
            a = r.get("int8_agreement")
            if a:
                lines += ["", f"int8 vs fp32, prompt by prompt ({a['prompts']} prompts x 3 masks on the exporter's parity "
                          f"image, low-res masks): IoU mean {a['mask_iou_mean']:.3f}, min {a['mask_iou_min']:.3f}, "
                          f"{100 * a['masks_iou_at_least_0.9']:.1f} % of masks at IoU >= 0.9; predicted IoU max abs "
                          f"difference {a['iou_prediction_max_abs_diff']:.4f}; embedding max relative difference "
                          f"{a['encoder_max_rel_diff']:.3f}."]
            lines.append("")
            continue
        if name == "model_families":
            lines += ["## SAM 2.1 (Hiera) vs SAM (ViT): speed and memory", "",
                      f"`bench/bench_families.py` at commit {r['commit']}; {r['note']}; one {r['image'][0]}x{r['image'][1]} "
                      f"image, {r['prompts']} decoder prompts, AMG {r['points_per_side']}x{r['points_per_side']} grid, "
                      f"{r['threads']} threads, {r['machine']['cpu']}.", "",
                      "| model | family | encoder s/image | decoder ms/prompt | AMG s/image | peak RSS MiB |",
                      "|---|---|---:|---:|---:|---:|"]
            lines += [f"| {k} | {v['family']} | {v['encoder_s_per_image']:.2f} | {v['decoder_ms_per_prompt']:.1f} | "
                      f"{v['amg_s_per_image']:.1f} | {v['peak_rss_mib']:.0f} |" for k, v in r["rows"].items()]
            lines.append("")
            continue
        if name == "dense":
            lines += ["## Dense scenes: masks per image vs time and peak RSS", "",
                      f"`bench/bench_dense.py` at commit {r['commit']}; {r['image'][0]}x{r['image'][1]} images; "
                      f"{r['note']}. A dense `(N, H, W) bool` array of the masks alone would take N MiB.", "",
                      "| stage | masks | kept | seconds | peak RSS MiB |", "|---|---:|---:|---:|---:|"]
            lines += [f"| per-image stage, {g['cells']} cells (fake) | {g['masks']} | {g['kept']} | {g['seconds']:.1f} | "
                      f"{g['peak_rss_mib']:.0f} |" for g in r["generator"]]
            lines += [f"| after masks (gate, features, shard, writer) | {a['masks']} | {a['kept']} | "
                      f"{a['label_seconds'] + a['write_seconds']:.1f} | {a['peak_rss_mib']:.0f} |" for a in r["after_masks"]]
            lines.append("")
            continue
        if name == "scaling":
            lines += ["## Scaling of clustering + writing (synthetic PFLs)", "", "| images | PFLs | seconds | peak RSS MiB |",
                      "|---:|---:|---:|---:|"]
            lines += [f"| {p['images']} | {p['pfls']} | {p['seconds']:.2f} | {p['peak_rss_mib']:.0f} |" for p in r["points"]]
            lines += ["", "![scaling](scaling.png)", ""]
            continue
        lines += [f"## {name}", "", f"Model: {r['model']}; {r['n_images']} images; AMG {r['amg']}; machine: "
                  f"{r['machine']['cpu']}, {r['machine']['cores']} cores, {r['machine']['memory_gib']} GiB.", "",
                  "| stage (s/image) | ours | reference | ours / reference |", "|---|---:|---:|---:|"]
        stages = sorted(set(r["ours"]["per_image"]) | set(r["reference"]["per_image"]))
        for stage in stages:
            o, f = r["ours"]["per_image"].get(stage), r["reference"]["per_image"].get(stage)
            ratio = f"{o / f:.2f}" if o is not None and f else ""
            lines.append(f"| {stage} | {'' if o is None else f'{o:.3f}'} | {'' if f is None else f'{f:.3f}'} | {ratio} |")
        lines += [f"| **total** | {r['ours']['seconds_per_image']:.2f} | {r['reference']['seconds_per_image']:.2f} | "
                  f"{r['ours']['seconds_per_image'] / r['reference']['seconds_per_image']:.2f} |", "",
                  f"- images/hour: ours {r['ours']['images_per_hour']:.0f}, reference {r['reference']['images_per_hour']:.0f} "
                  f"(speed-up x{r['speedup']:.2f})",
                  f"- peak RSS: ours {r['ours']['peak_rss_mib']:.0f} MiB, reference {r['reference']['peak_rss_mib']:.0f} MiB",
                  f"- mask agreement {r['agreement']['mask_agreement']:.3f}, label mIoU vs reference "
                  f"{r['agreement']['label_miou_vs_reference']:.3f}", ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-repository", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--pred-iou-thresh", type=float, default=0.88)
    parser.add_argument("--stability-score-thresh", type=float, default=0.95)
    parser.add_argument("--sigma", type=float, default=0.3)
    parser.add_argument("--n-clusters", type=int, default=4)
    parser.add_argument("--workdir", default="bench/out")
    parser.add_argument("--results-dir", default=str(ROOT / "bench"), help="where results.json and RESULTS.md go")
    parser.add_argument("--reuse-reference", nargs="?", const="", metavar="NAME",
                        help="keep the reference side's last result (it is slow and does not change with our code); "
                        "with NAME, use run NAME's reference (same model, images and prompts: e.g. an int8 export "
                        "against the fp32 reference)")
    parser.add_argument("--side", choices=["ours", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--images-dir", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--amg-json", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.amg = {"points_per_side": args.points_per_side, "pred_iou_thresh": args.pred_iou_thresh,
                "stability_score_thresh": args.stability_score_thresh}
    if args.side:
        run_side(args)
        return
    from alps_client.synthetic import write_synthetic_dataset

    import shutil

    work = Path(args.workdir) / args.name
    reference_run = Path(args.workdir) / (args.reuse_reference or args.name)
    reuse = args.reuse_reference is not None and (reference_run / "reference" / "result.json").is_file()
    for stale in [work] if not reuse else [work / "ours", work / "data"]:
        shutil.rmtree(stale, ignore_errors=True)
    if reuse and reference_run != work:
        shutil.rmtree(work / "reference", ignore_errors=True)
        shutil.copytree(reference_run / "reference", work / "reference")
    data = write_synthetic_dataset(work / "data", args.images, seed=0, size=(args.size, args.size), n_classes=4)
    sides = {}
    for side in ("ours", "reference"):
        out = work / side
        if side == "reference" and reuse:
            sides[side] = json.loads((out / "result.json").read_text())
            continue
        out.mkdir(parents=True)
        cmd = [sys.executable, __file__, *sys.argv[1:], "--side", side, "--images-dir", str(data / "images"),
               "--work", str(out), "--result", str(out / "result.json")]
        print(f"[bench] {args.name}: running {side} ...", flush=True)
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
        sides[side] = json.loads((out / "result.json").read_text())
    manifest = json.loads((Path(args.model_repository) / "manifest.json").read_text())
    for r in sides.values():
        n = r["n_images"]
        r["per_image"] = {k: v / n for k, v in r["seconds"].items()}
        r["seconds_per_image"] = r["total_seconds"] / n
        r["images_per_hour"] = 3600.0 / r["seconds_per_image"]
    entry = {
        "model": model_label(manifest),
        "n_images": args.images, "image_size": args.size, "amg": args.amg, "threads": args.threads,
        "ours": sides["ours"], "reference": sides["reference"],
        "speedup": sides["reference"]["seconds_per_image"] / sides["ours"]["seconds_per_image"],
        "agreement": agreement(work, load_images(data / "images")), "machine": machine(),
    }
    record(args.name, entry, Path(args.results_dir))
    print(render({args.name: entry}))


if __name__ == "__main__":
    main()
