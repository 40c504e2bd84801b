"""Triton row of the benchmark: images/second and per-stage seconds through Triton (gRPC, gRPC + shared memory,
HTTP) vs the embedded backend, same model and images, in one run.

    .venv/bin/python bench/bench_triton.py --model-repository bench/out/stand_in_repo   # exported with --cpu

Starts a real CPU tritonserver (tests/triton/server.py). Results go to bench/results.json ("triton") and
bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alps_client.amg.generator import MaskGenerator
from alps_client.backends.embedded import EmbeddedBackend
from alps_client.backends.triton import TritonBackend
from alps_client.config import AmgConfig, BackendConfig
from alps_client.synthetic import make_scene
from tests.triton.server import start_triton


def run(backend, images, amg: AmgConfig) -> dict:
    generator = MaskGenerator(backend, amg)
    generator.generate(images[0])  # warm-up
    stages = {"encoder": 0.0, "decoder": 0.0, "postprocess": 0.0}
    start = time.perf_counter()
    for image in images:
        for k, v in generator.generate_masks(image).timings.items():
            stages[k] += v
    total = time.perf_counter() - start
    return {"images_per_second": len(images) / total, **{f"{k}_s_per_image": v / len(images) for k, v in stages.items()}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-repository", required=True)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--points-per-side", type=int, default=16)
    args = parser.parse_args()
    repo = Path(args.model_repository).resolve()
    images = [make_scene(s, (256, 256))[0] for s in range(args.images)]
    amg = AmgConfig(points_per_side=args.points_per_side)
    rows = {"embedded": run(EmbeddedBackend(BackendConfig(model_repository=str(repo), num_threads=2)), images, amg)}
    server = start_triton(repo, Path(tempfile.mkdtemp(prefix="alps-triton-bench-")))
    try:
        for name, kw in {"triton gRPC": {"protocol": "grpc"}, "triton gRPC + shm": {"protocol": "grpc", "shared_memory": True},
                         "triton HTTP": {"protocol": "http"}}.items():
            url = server.grpc_url if kw["protocol"] == "grpc" else server.http_url
            backend = TritonBackend(BackendConfig(kind="triton", model_repository=str(repo), triton_urls=(url,), **kw))
            rows[name] = run(backend, images, amg)
            backend.close()
    finally:
        server.stop()
    from bench.results import record

    record("triton", {"rows": rows, "images": args.images, "points_per_side": args.points_per_side,
                      "note": "CPU tritonserver from nvidia-pytriton; ONNX models served by a Python backend named "
                              "onnxruntime (1 ORT thread per instance), same machine as the client"})
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
