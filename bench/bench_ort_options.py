"""onnxruntime settings for the embedded backend, measured one at a time on one model repository.

    .venv/bin/python bench/bench_ort_options.py --model-repository bench/out/vit_b_repo \
        --int8-repository bench/out/vit_b_int8_repo

Every configuration runs in its own process (so its peak RSS is its own) on the same image and prompts:
the encoder on one 512x512 image (seconds per image, best of ``--repeats`` after a warm-up), the decoder on
``--prompts`` grid prompts (milliseconds per prompt after a warm-up call). Varied one at a time from the
backend's defaults (:func:`alps_client.backends.embedded.session_settings`): graph optimisation level, intra-op
threads, the CPU memory arena, spin-waiting of the intra-op threads, onnxruntime's SkipLayerNormFusion, prompts per
decoder call, precision, and the share of prompts the decoder upscales (``iou_threshold`` at quantiles of the
prompts' best predicted IoU: what skipping the upscaling of prompts that fail ``pred_iou_thresh`` saves at each pass rate). With ``--int8-repository`` it also measures int8 against fp32 masks, prompt by prompt, on the
exporter's parity image with a 32x32 grid (:func:`export.quantize.agreement`). Results go to ``bench/results.json``
under ``ort_options`` and to ``bench/RESULTS.md`` (``--results-dir`` elsewhere).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

THREADS = 2
FUSION = "SkipLayerNormFusion"
UPSCALED_SHARES = (0.75, 0.5, 0.25, 0.0)


def configurations() -> list[tuple[str, dict[str, Any]]]:
    """(model, settings) pairs: the backend's defaults, then one setting changed at a time."""
    from alps_client.backends.embedded import CPU_PROMPTS_PER_CALL, session_settings

    rows: list[tuple[str, dict[str, Any]]] = []
    for model in ("encoder", "decoder"):
        base = {**session_settings(model, THREADS, on_gpu=False), "chunk": CPU_PROMPTS_PER_CALL, "precision": "fp32",
                "upscaled": 1.0}
        rows.append((model, base))
        rows += [(model, {**base, "level": level}) for level in ("basic", "extended")]
        rows += [(model, {**base, "threads": 1}), (model, {**base, "arena": not base["arena"]}),
                 (model, {**base, "spinning": not base["spinning"]})]
        toggled = [d for d in base["disabled_optimizers"] if d != FUSION]
        if FUSION not in base["disabled_optimizers"]:
            toggled.append(FUSION)
        rows.append((model, {**base, "disabled_optimizers": toggled}))
        if model == "encoder":  # --quantize int8 leaves the decoder fp32 (export/quantize.py says why)
            rows.append((model, {**base, "precision": "int8"}))
        else:
            rows += [(model, {**base, "chunk": c}) for c in (4, 16, 32) if c != CPU_PROMPTS_PER_CALL]
            rows += [(model, {**base, "upscaled": share}) for share in UPSCALED_SHARES]
    return rows


def measure(model: str, settings: dict[str, Any], repository: Path, repeats: int, prompts: int) -> dict[str, float]:
    """Time one configuration in this process. Returns seconds per image or ms per prompt, and peak RSS (MiB)."""
    from alps_client.amg.grids import build_point_grid
    from alps_client.backends.embedded import make_session
    from alps_client.backends.manifest import load_manifest
    from alps_client.backends.preprocess import apply_coords, prepare_encoder_input
    from alps_client.synthetic import make_scene

    manifest = load_manifest(repository)
    spec = manifest.encoder if model == "encoder" else manifest.decoder
    session = make_session(spec.onnx_path, settings, ["CPUExecutionProvider"])
    image = make_scene(seed=0, size=(512, 512), n_classes=4)[0]
    padded, (h, w) = prepare_encoder_input(image)
    encoder_feeds = {"images": padded[None], "input_size": np.array([[h, w]], np.int64)}
    if model == "encoder":
        times = []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            session.run(None, encoder_feeds)
            times.append(time.perf_counter() - start)
        result = {"seconds_per_image": min(times[1:])}
    else:
        embedding = np.random.RandomState(0).randn(1, 256, 64, 64).astype(np.float32)
        side = int(np.ceil(np.sqrt(prompts)))
        coords = apply_coords(build_point_grid(side)[:prompts] * 512, (512, 512)).astype(np.float32)[:, None, :]
        labels = np.ones((len(coords), 1), np.float32)
        chunk = settings["chunk"]
        extra, share = {}, 1.0
        if settings["upscaled"] < 1.0:
            ious = np.concatenate([session.run(None, {"image_embeddings": embedding, "point_coords": coords[s : s + chunk],
                                                      "point_labels": labels[s : s + chunk]})[1]
                                   for s in range(0, len(coords), chunk)])
            # A prompt is upscaled when its best predicted IoU is above the threshold (above the max: none is).
            best = ious.max(axis=1)
            threshold = np.quantile(best, 1.0 - settings["upscaled"]) if settings["upscaled"] > 0 else best.max() + 1
            extra = {"iou_threshold": np.array([threshold], np.float32)}
            share = float((best > np.float32(threshold)).mean())
        feeds = lambda s: {"image_embeddings": embedding, "point_coords": coords[s : s + chunk],
                           "point_labels": labels[s : s + chunk], **extra}
        session.run(None, feeds(0))
        start = time.perf_counter()
        for s in range(0, len(coords), chunk):
            session.run(None, feeds(s))
        result = {"ms_per_prompt": 1000 * (time.perf_counter() - start) / len(coords)}
        result["upscaled_share"] = share
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def label(settings: dict[str, Any], base: dict[str, Any]) -> str:
    """What differs from the backend's defaults, e.g. ``threads=1`` or ``SkipLayerNormFusion=on``."""
    changed = []
    for key, value in settings.items():
        if value == base[key]:
            continue
        if key == "disabled_optimizers":
            changed.append(f"{FUSION}={'off' if FUSION in value else 'on'}")
        elif key == "upscaled":
            changed.append(f"upscaled={100 * value:.0f}%")
        else:
            changed.append(f"{key}={value}")
    return ", ".join(changed) or "backend defaults"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repository", required=True)
    parser.add_argument("--int8-repository", help="the same model exported with --quantize int8")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--results-dir", default=str(ROOT / "bench"), help="where results.json and RESULTS.md go")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        model, settings = json.loads(args.one)
        repository = Path(args.int8_repository if settings["precision"] == "int8" else args.model_repository)
        print(json.dumps(measure(model, settings, repository, args.repeats, args.prompts)))
        return
    rows = []
    bases = {}
    for model, settings in configurations():
        bases.setdefault(model, settings)
        if settings["precision"] == "int8" and not args.int8_repository:
            continue
        cmd = [sys.executable, __file__, *sys.argv[1:], "--one", json.dumps([model, settings])]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        row = {"model": model, "setting": label(settings, bases[model]), **json.loads(out)}
        print(row, flush=True)
        rows.append(row)
    manifest = json.loads((Path(args.model_repository) / "manifest.json").read_text())
    from bench.results import machine, model_label, record

    int8_agreement = None
    if args.int8_repository:
        from alps_client.backends.manifest import load_manifest
        from export.quantize import agreement

        fp32, int8 = load_manifest(args.model_repository), load_manifest(args.int8_repository)
        int8_agreement = agreement((fp32.encoder.onnx_path, fp32.decoder.onnx_path),
                                   (int8.encoder.onnx_path, int8.decoder.onnx_path), points_per_side=32, threads=2)
        print("int8 vs fp32:", int8_agreement, flush=True)

    record("ort_options", {"model": model_label(manifest), "prompts": args.prompts, "rows": rows, "machine": machine(),
                           "int8_agreement": int8_agreement}, Path(args.results_dir))


if __name__ == "__main__":
    main()
