"""Clustering + writing over 10 .. 10,000 images' worth of synthetic PFLs: time (linear) and peak RSS (flat).

    .venv/bin/python bench/bench_scaling.py            # results into bench/results.json ("scaling"), bench/scaling.png
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MASKS_PER_IMAGE = 20
SIZE = (64, 64)


def make_shards(folder: Path, n_images: int, seed: int = 0) -> list[Path]:
    """Synthetic shards: 20 small masks per 64x64 image, PFLs drawn around 8 centres."""
    from alps_client.io.shards import ImageShard, write_shard
    from alps_client.masks import MaskSet, encode_coco_rle

    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (8, 256))
    masks = np.zeros((MASKS_PER_IMAGE, *SIZE), bool)
    for i in range(MASKS_PER_IMAGE):
        y, x = divmod(i, 5)
        masks[i, y * 16 : y * 16 + 12, x * 12 : x * 12 + 10] = True
    mask_set = MaskSet.from_rles(SIZE, encode_coco_rle(masks))
    paths = []
    for k in range(n_images):
        pfl = (centres[rng.integers(0, 8, MASKS_PER_IMAGE)] + rng.normal(0, 0.1, (MASKS_PER_IMAGE, 256))).astype(np.float32)
        shard = ImageShard(f"img_{k:05d}", "synthetic", "f", mask_set, np.ones(MASKS_PER_IMAGE, bool), pfl)
        path = folder / f"img_{k:05d}.npz"
        write_shard(path, shard)
        paths.append(path)
    return paths


def measure(folder: Path) -> dict[str, float]:
    """Run in a child process: cluster + write the shards in ``folder``; seconds and peak RSS."""
    from alps_client.config import ClusterConfig, PipelineConfig, WriterConfig
    from alps_client.io.writer import write_dataset
    from alps_client.labels.clustering import fit_centroids

    paths = sorted(folder.glob("*.npz"))
    cfg = PipelineConfig(cluster=ClusterConfig(n_clusters=8), writer=WriterConfig(write_vis=False, copy_images=False))
    start = time.perf_counter()
    centroids = fit_centroids(paths, cfg.cluster)
    clustering = time.perf_counter() - start
    write_dataset(folder.parent / "out", paths, centroids, cfg, {}, [])
    total = time.perf_counter() - start
    rss = next(int(l.split()[1]) for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM"))
    return {"seconds": total, "clustering_seconds": clustering, "peak_rss_mib": rss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000, 10000], help="images per run")
    parser.add_argument("--results-dir", default=str(ROOT / "bench"),
                        help="where results.json, RESULTS.md and scaling.png go")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.measure))))
        return
    import shutil
    import tempfile

    points = []
    for n in args.sizes:
        work = Path(tempfile.mkdtemp(prefix="alps-scaling-"))
        (work / "shards").mkdir()
        make_shards(work / "shards", n)
        out = subprocess.run([sys.executable, __file__, "--measure", str(work / "shards")], check=True,
                             capture_output=True, text=True).stdout
        point = {"images": n, "pfls": n * MASKS_PER_IMAGE, **json.loads(out.splitlines()[-1])}
        print(point, flush=True)
        points.append(point)
        shutil.rmtree(work)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    n = [p["images"] for p in points]
    a.loglog(n, [p["seconds"] for p in points], "o-", label="cluster + write")
    a.loglog(n, points[-1]["seconds"] * np.array(n, dtype=float) / n[-1], "--", label="linear (through the largest run)")
    a.set_xlabel("images (20 PFLs each)")
    a.set_ylabel("seconds")
    a.legend()
    a.grid(True, which="both", alpha=0.3)
    b.semilogx(n, [p["peak_rss_mib"] for p in points], "o-")
    b.set_xlabel("images")
    b.set_ylabel("peak RSS (MiB)")
    b.set_ylim(0, max(p["peak_rss_mib"] for p in points) * 1.3)
    b.grid(True, which="both", alpha=0.3)
    fig.suptitle("alps: clustering + writing scale linearly in time, flat in memory")
    fig.tight_layout()
    fig.savefig(Path(args.results_dir) / "scaling.png", dpi=100)
    from bench.results import record

    record("scaling", {"points": points}, Path(args.results_dir))


if __name__ == "__main__":
    main()
