"""Automatic mask generation: Meta's SamAutomaticMaskGenerator (PyTorch) vs ours (embedded onnxruntime).

    .venv/bin/python bench/bench_amg.py --model-repository /tmp/stand_in --out bench/out/amg_stand_in.json
    .venv/bin/python bench/bench_amg.py --model-repository /tmp/vit_b_random --pred-iou-thresh 0 \
        --stability-score-thresh 0 --images 2 --out bench/out/amg_vit_b.json

Both generators run in one process on the same model (the torch model the repository was exported from, rebuilt
from its manifest: the stand-in, a seeded ``--random-init`` SAM, or ``--checkpoint``), the same images and the same
parameters, with the same number of threads. Seconds per image per stage:
``encoder`` (Meta: ``set_image``), ``decoder`` (Meta: prompt encoder + mask decoder forward passes) and
``postprocess`` (everything else: upsampling, scores, NMS, RLE). Each image's masks are also compared
(count, and how many of ours match one of Meta's with IoU >= 0.99), so the speed-up is for the same output.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from export.tv_shim import install_torchvision_shim

install_torchvision_shim()

import torch
from segment_anything import SamAutomaticMaskGenerator

from alps_client.amg.generator import MaskGenerator
from alps_client.backends.embedded import EmbeddedBackend
from alps_client.backends.manifest import load_manifest
from alps_client.config import AmgConfig, BackendConfig
from export.export_sam import load_model
from tests.shapes import make_shapes_image

STAGES = ("encoder", "decoder", "postprocess")


class _StageClock:
    """Accumulates the seconds spent inside the given torch modules' forward passes."""

    def __init__(self, *modules: torch.nn.Module) -> None:
        self.seconds = 0.0
        self._start = 0.0
        self._handles = [
            handle
            for module in modules
            for handle in (module.register_forward_pre_hook(self._enter), module.register_forward_hook(self._leave))
        ]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    def _enter(self, *_: Any) -> None:
        self._start = time.perf_counter()

    def _leave(self, *_: Any) -> None:
        self.seconds += time.perf_counter() - self._start


def time_meta(generator: SamAutomaticMaskGenerator, image: np.ndarray) -> tuple[list[dict], dict[str, float]]:
    """Meta's generator on one image, with its seconds per stage."""
    predictor = generator.predictor
    decoder_clock = _StageClock(predictor.model.prompt_encoder, predictor.model.mask_decoder)
    encoder_seconds = 0.0
    set_image = predictor.set_image

    def timed_set_image(*args: Any, **kwargs: Any) -> None:
        nonlocal encoder_seconds
        start = time.perf_counter()
        set_image(*args, **kwargs)
        encoder_seconds += time.perf_counter() - start

    predictor.set_image = timed_set_image  # type: ignore[method-assign]
    try:
        start = time.perf_counter()
        records = generator.generate(image)
        total = time.perf_counter() - start
    finally:
        del predictor.set_image  # back to the class method
        decoder_clock.remove()
    timings = {"encoder": encoder_seconds, "decoder": decoder_clock.seconds}
    timings["postprocess"] = total - timings["encoder"] - timings["decoder"]
    timings["total"] = total
    return records, timings


def compare(ours: list[dict], theirs: list[dict]) -> dict[str, int]:
    """Mask counts and how many of ours match a distinct one of Meta's (IoU >= 0.99, same bbox)."""
    matched: set[int] = set()
    for record in ours:
        a = record["segmentation"]
        best, best_iou = -1, -1.0
        for k, t in enumerate(theirs):
            if k in matched or t["bbox"] != record["bbox"]:
                continue
            b = t["segmentation"]
            iou = (a & b).sum() / max((a | b).sum(), 1)
            if iou > best_iou:
                best, best_iou = k, iou
        if best_iou >= 0.99:
            matched.add(best)
    return {"masks_meta": len(theirs), "masks_ours": len(ours), "matched": len(matched)}


def summarise(rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean seconds per image per stage."""
    return {key: float(np.mean([row[key] for row in rows])) for key in (*STAGES, "total")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-repository", required=True)
    parser.add_argument("--checkpoint", help="Meta's checkpoint the repository was exported from (not for stand-in)")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--image-size", type=int, nargs=2, default=(768, 1024), metavar=("H", "W"))
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--points-per-batch", type=int, default=64, help="Meta's default; ours uses the same")
    parser.add_argument("--pred-iou-thresh", type=float, default=0.88)
    parser.add_argument("--stability-score-thresh", type=float, default=0.95)
    parser.add_argument("--crop-n-layers", type=int, default=0)
    parser.add_argument("--min-mask-region-area", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", default="bench/out/amg.json")
    args = parser.parse_args()

    manifest = load_manifest(args.model_repository)
    torch.set_num_threads(args.threads)
    sam = load_model(manifest.model_type, args.checkpoint, manifest.random_init)
    backend = EmbeddedBackend(BackendConfig(model_repository=args.model_repository, num_threads=args.threads))
    params = {
        "points_per_side": args.points_per_side,
        "points_per_batch": args.points_per_batch,
        "pred_iou_thresh": args.pred_iou_thresh,
        "stability_score_thresh": args.stability_score_thresh,
        "crop_n_layers": args.crop_n_layers,
        "min_mask_region_area": args.min_mask_region_area,
    }
    meta = SamAutomaticMaskGenerator(sam, **params)
    ours = MaskGenerator(backend, AmgConfig(**params))
    ours.generate(make_shapes_image(seed=99, size=(64, 64)))  # warm-up: onnxruntime's first-run allocations

    rows = []
    for seed in range(args.images):
        image = make_shapes_image(seed=seed, size=tuple(args.image_size))
        with torch.inference_mode():
            theirs, meta_t = time_meta(meta, image)
        start = time.perf_counter()
        result = ours.generate_masks(image)
        ours_t = {**result.timings, "total": time.perf_counter() - start}
        row = {"seed": seed, "meta": meta_t, "ours": ours_t, **compare(ours.generate(image), theirs)}
        rows.append(row)
        print(json.dumps(row))

    meta_mean = summarise([r["meta"] for r in rows])
    ours_mean = summarise([r["ours"] for r in rows])
    result_doc = {
        "model_type": manifest.model_type,
        "is_stand_in": manifest.is_stand_in,
        "random_init": manifest.random_init,
        "params": params,
        "image_size": list(args.image_size),
        "images": args.images,
        "seconds_per_image": {"meta": meta_mean, "ours": ours_mean},
        "speedup": {k: meta_mean[k] / ours_mean[k] if ours_mean[k] > 0 else None for k in meta_mean},
        "per_image": rows,
        "peak_rss_gib": psutil.Process().memory_info().rss / 2**30,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "threads": args.threads},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result_doc, indent=2))
    print(json.dumps({k: result_doc[k] for k in ("seconds_per_image", "speedup")}, indent=2))


if __name__ == "__main__":
    main()
