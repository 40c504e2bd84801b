"""SAM 2.1 (Hiera) vs SAM (ViT) on this machine: encoder s/image, decoder ms/prompt, AMG s/image, peak RSS.

Each model is exported (``export/export_sam.py --random-init``: RANDOM weights, so shapes and speed only) and then
measured in a fresh subprocess (embedded onnxruntime backend), so peak RSS is that model's alone. AMG thresholds are
opened (pred_iou_thresh 0, stability 0) because random weights give no masks otherwise; the decoder and upsampling
work then is what a real model pays at most. Results go to ``results.json`` / ``RESULTS.md`` (``record()``).

    python bench/bench_families.py --models sam2.1_hiera_s sam2.1_hiera_b+ vit_b
    python bench/bench_families.py --models sam2-stand-in stand-in --points-per-side 8   # quick check

Runs on a GPU machine too (onnxruntime picks CUDA when available; the row records the providers).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results import record


def measure(repo: str, size: int, prompts: int, points_per_side: int, threads: int) -> dict:
    """In this process: time encoder, decoder and AMG on one ``size x (1.5 size)`` synthetic image."""
    import numpy as np

    from alps_client.amg import make_mask_generator
    from alps_client.backends.embedded import EmbeddedBackend
    from alps_client.config import AmgConfig, BackendConfig
    from tests.shapes import make_shapes_image

    backend = EmbeddedBackend(BackendConfig(model_repository=repo, num_threads=threads))
    image = make_shapes_image(seed=0, size=(size, size * 3 // 2))
    backend.encode([image])  # warm-up
    start = time.perf_counter()
    (emb,) = backend.encode([image])
    encoder_s = time.perf_counter() - start
    rng = np.random.RandomState(0)
    coords = (rng.rand(prompts, 1, 2) * 1024).astype(np.float32)
    labels = np.ones((prompts, 1), np.float32)
    backend.decode(emb, coords[: backend.prompt_batch_size], labels[: backend.prompt_batch_size])
    start = time.perf_counter()
    backend.decode(emb, coords, labels)
    decoder_ms = 1000 * (time.perf_counter() - start) / prompts
    amg = AmgConfig(points_per_side=points_per_side, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    start = time.perf_counter()
    result = make_mask_generator(backend, amg).generate_masks(image)
    amg_s = time.perf_counter() - start
    import onnxruntime as ort

    return {"encoder_s_per_image": encoder_s, "decoder_ms_per_prompt": decoder_ms, "amg_s_per_image": amg_s,
            "amg_masks": len(result.masks), "amg_timings": result.timings,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "family": backend.manifest.model_family, "providers": ort.get_available_providers()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["sam2.1_hiera_s", "sam2.1_hiera_b+", "vit_b"])
    parser.add_argument("--size", type=int, default=512, help="image height (width 1.5x)")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--points-per-side", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", default=str(ROOT / "bench" / "out"))
    parser.add_argument("--reuse-exports", action="store_true", help="keep repositories already exported")
    parser.add_argument("--results-dir", default=str(ROOT / "bench"))
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.size, args.prompts, args.points_per_side, args.threads)))
        return
    rows = {}
    for model in args.models:
        repo = Path(args.workdir) / f"{model}_repo"
        if not (args.reuse_exports and (repo / "manifest.json").exists()):
            weights = [] if "stand-in" in model else ["--random-init"]
            subprocess.run([sys.executable, str(ROOT / "export" / "export_sam.py"), "--model-type", model, *weights,
                            "--cpu", "--out", str(repo)], check=True)
        out = subprocess.run([sys.executable, __file__, "--measure", str(repo), "--size", str(args.size), "--prompts",
                              str(args.prompts), "--points-per-side", str(args.points_per_side), "--threads",
                              str(args.threads)], check=True, capture_output=True, text=True)
        manifest = json.loads((repo / "manifest.json").read_text())
        rows[model] = {**json.loads(out.stdout.strip().splitlines()[-1]), "note": manifest["note"],
                       "encoder_export_s": manifest["export"]["seconds"]["encoder"]}
        print(model, {k: v for k, v in rows[model].items() if k != "amg_timings"}, flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                            check=False).stdout.strip()
    record("model_families", {
        "rows": rows, "commit": commit, "image": [args.size, args.size * 3 // 2], "prompts": args.prompts,
        "points_per_side": args.points_per_side, "threads": args.threads,
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
        "note": "RANDOM weights (export --random-init) except stand-ins: speed and memory only; AMG thresholds "
                "opened (pred_iou_thresh 0, stability_score_thresh 0)",
    }, Path(args.results_dir))


if __name__ == "__main__":
    main()
