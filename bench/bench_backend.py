"""Latency of the embedded backend's encoder and decoder on this machine.

    .venv/bin/python bench/bench_backend.py --model-repository /tmp/repo --out bench/out/backend.json

Encoder: seconds per image; decoder: seconds per call and per prompt for several prompt chunk sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alps_client.backends.onnx import EmbeddedBackend  # noqa: E402
from alps_client.config import BackendConfig  # noqa: E402
from tests.shapes import make_shapes_image  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-repository", required=True)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunks", default="1,8,32,64")
    parser.add_argument("--out", default="bench/out/backend.json")
    args = parser.parse_args()
    backend = EmbeddedBackend(BackendConfig(model_repository=args.model_repository, num_threads=args.threads))
    image = make_shapes_image(seed=0, size=(768, 1024))
    backend.encode([image])  # warm-up
    enc = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        (embedding,) = backend.encode([image])
        enc.append(time.perf_counter() - t)
    rng = np.random.RandomState(0)
    dec = {}
    for chunk in (int(c) for c in args.chunks.split(",")):
        coords = rng.uniform(0, 1000, (chunk, 1, 2)).astype(np.float32)
        labels = np.ones((chunk, 1), np.float32)
        backend.decode(embedding, coords, labels)
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            backend.decode(embedding, coords, labels)
            times.append(time.perf_counter() - t)
        dec[chunk] = {"seconds_per_call": float(np.median(times)), "seconds_per_prompt": float(np.median(times) / chunk)}
    result = {
        "model_type": backend.manifest.model_type,
        "random_init": backend.manifest.random_init,
        "is_stand_in": backend.manifest.is_stand_in,
        "encoder_seconds_per_image": float(np.median(enc)),
        "decoder": dec,
        "peak_rss_gib": psutil.Process().memory_info().rss / 2**30,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "threads": args.threads or "ort default"},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
