"""Dense scenes: seconds and peak RSS per image as the number of masks grows (1024 x 1024 images).

Two measurements, each point in its own process (peak RSS = VmHWM of that process):

- ``generator``: the whole per-image stage (automatic masks -> gate -> features -> shard) with the numpy FAKE SAM
  (not SAM: colour regions as masks) on checkerboards of 16x16, 32x32 and 48x48 cells, one prompt per cell.
- ``after masks``: everything after the generator — clipping, gate, pooled features, the shard, then the dataset
  writer (painting, COCO, previews) — on N synthetic masks (rectangles of 100-3,000 pixels), N up to 10,000, so the
  mask count is exact and not limited by what the fake can resolve.

Memory must stay flat in N beyond a fixed working set: masks are RLE-encoded and decoded a chunk at a time. For
comparison, holding the masks as one dense ``(N, 1024, 1024) bool`` array would take N MiB.

    python bench/bench_dense.py [--results-dir bench]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results import commit as commit_label
from bench.results import record
from bench.sides import peak_rss_mib

SIZE = 1024


def synthetic_masks(n: int, seed: int = 0):
    """N rectangles as a MaskSet, encoded one window at a time (never dense)."""
    from alps_client.masks import MaskSet, window_rle

    rng = np.random.default_rng(seed)
    rles = []
    for _ in range(n):
        h, w = rng.integers(10, 55, 2)
        y0, x0 = rng.integers(0, SIZE - h), rng.integers(0, SIZE - w)
        rles.append(window_rle(np.ones((h, w), bool), int(y0), int(x0), (SIZE, SIZE)))
    return MaskSet.from_rles((SIZE, SIZE), rles, predicted_iou=np.full(n, 0.95, np.float32))


def run_after_masks(n: int, work: Path) -> dict:
    from alps_client.backends.base import Embedding
    from alps_client.config import ClusterConfig, PipelineConfig
    from alps_client.io.shards import ImageShard, write_shard
    from alps_client.io.writer import write_dataset
    from alps_client.labels.features import pool_mask_features
    from alps_client.labels.gate import gate_keep

    masks = synthetic_masks(n)
    start = time.perf_counter()
    valid = np.ones((SIZE, SIZE), bool)
    valid[:, :8] = False
    masks = masks.clipped(valid)
    keep = gate_keep(masks.areas, int(valid.sum()), 0.3) & (masks.areas > 0)
    embedding = Embedding(np.random.default_rng(1).normal(size=(256, 64, 64)).astype(np.float32), (SIZE, SIZE),
                          (SIZE, SIZE))
    pfl = pool_mask_features(embedding, [masks.rles[i] for i in np.flatnonzero(keep)])
    shard_path = work / "shards" / "dense.npz"
    write_shard(shard_path, ImageShard("dense", "dense.png", "bench", masks, keep, pfl))
    label_seconds = time.perf_counter() - start
    from PIL import Image

    Image.fromarray(np.full((SIZE, SIZE, 3), 120, np.uint8)).save(work / "dense.png")
    centroids = pfl[:8].copy()
    start = time.perf_counter()
    cfg = PipelineConfig(cluster=ClusterConfig(n_clusters=len(centroids)))
    write_dataset(work / "out", [shard_path], centroids, cfg, {}, [], {"dense": work / "dense.png"})
    return {"masks": len(masks), "kept": int(keep.sum()), "label_seconds": label_seconds,
            "write_seconds": time.perf_counter() - start, "peak_rss_mib": peak_rss_mib()}


def run_generator(cells: int, work: Path) -> dict:
    from alps_client.amg.generator import MaskGenerator
    from alps_client.backends import make_backend
    from alps_client.backends.fake import write_fake_repository
    from alps_client.config import AmgConfig, BackendConfig, PipelineConfig
    from alps_client.pipeline import label_image
    from tests.shapes import make_checkerboard

    backend = make_backend(BackendConfig(model_repository=str(write_fake_repository(work / "fake"))))
    image, grid = make_checkerboard(cells, (SIZE, SIZE))
    cfg = PipelineConfig(amg=AmgConfig(points_per_side=None, point_grids=grid))
    start = time.perf_counter()
    summary = label_image(image, "dense", "dense.png", MaskGenerator(backend, cfg.amg), cfg, work / "dense.npz", "b")
    return {"cells": cells * cells, "masks": summary.n_masks, "kept": summary.n_kept,
            "seconds": time.perf_counter() - start, "peak_rss_mib": peak_rss_mib()}


def in_child(kind: str, value: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([sys.executable, __file__, "--child", kind, str(value), tmp], capture_output=True,
                             text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", default=str(ROOT / "bench"))
    parser.add_argument("--counts", type=int, nargs="+", default=[256, 1000, 5000, 10000])
    parser.add_argument("--cells", type=int, nargs="+", default=[16, 32, 48])
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, value, work = args.child
        run = run_generator if kind == "generator" else run_after_masks
        print(json.dumps(run(int(value), Path(work))))
        return
    generator = [in_child("generator", c) for c in args.cells]
    after = [in_child("after", n) for n in args.counts]
    for row in generator + after:
        print(json.dumps(row))
    record("dense", {"commit": commit_label(), "image": [SIZE, SIZE], "generator": generator, "after_masks": after,
                     "note": "numpy FAKE SAM for the generator rows (not SAM); synthetic rectangles for the rest"},
           Path(args.results_dir))


if __name__ == "__main__":
    main()
