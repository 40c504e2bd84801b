"""onnxruntime settings for the embedded backend, measured one at a time on one model repository.

    .venv/bin/python bench/bench_ort_options.py --model-repository bench/out/vit_b_repo \
        --int8-repository bench/out/vit_b_int8_repo

Every configuration runs in its own process (so its peak RSS is its own) on the same image and prompts:
the encoder on one 512x512 image (seconds per image, best of ``--repeats`` after a warm-up), the decoder on
``--prompts`` grid prompts (milliseconds per prompt after a warm-up call). Varied one at a time from the
backend's defaults: graph optimisation level, intra-op threads, the CPU memory arena, prompts per decoder call,
and precision. With ``--int8-repository`` it also measures int8 against fp32 masks, prompt by prompt, on the
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

DEFAULTS = {"level": "all", "threads": 2, "arena": None, "chunk": None, "precision": "fp32"}
LEVELS = {"basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def configurations() -> list[tuple[str, dict[str, Any]]]:
    """(model, settings) pairs: the backend's defaults, then one setting changed at a time."""
    from alps_client.backends.embedded import CPU_PROMPTS_PER_CALL

    rows: list[tuple[str, dict[str, Any]]] = []
    for model in ("encoder", "decoder"):
        default_arena = model == "decoder"  # the backend runs the encoder without an arena
        base = {**DEFAULTS, "arena": default_arena, "chunk": CPU_PROMPTS_PER_CALL}
        rows.append((model, base))
        rows += [(model, {**base, "level": level}) for level in ("basic", "extended")]
        rows += [(model, {**base, "threads": 1}), (model, {**base, "arena": not default_arena})]
        rows.append((model, {**base, "precision": "int8"}))
        if model == "decoder":
            rows += [(model, {**base, "chunk": c}) for c in (4, 16, 32, 64) if c != CPU_PROMPTS_PER_CALL]
    return rows


def measure(model: str, settings: dict[str, Any], repository: Path, repeats: int, prompts: int) -> dict[str, float]:
    """Time one configuration in this process. Returns seconds per image or ms per prompt, and peak RSS (MiB)."""
    import onnxruntime as ort

    from alps_client.amg.grids import build_point_grid
    from alps_client.backends.manifest import load_manifest
    from alps_client.synthetic import make_scene
    from alps_client.backends.preprocess import apply_coords, prepare_encoder_input

    manifest = load_manifest(repository)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[settings["level"]])
    options.intra_op_num_threads = settings["threads"]
    options.enable_cpu_mem_arena = settings["arena"]
    spec = manifest.encoder if model == "encoder" else manifest.decoder
    session = ort.InferenceSession(str(spec.onnx_path), options, providers=["CPUExecutionProvider"])
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
        feeds = lambda s: {"image_embeddings": embedding, "point_coords": coords[s : s + chunk],  # noqa: E731
                           "point_labels": labels[s : s + chunk]}
        session.run(None, feeds(0))
        start = time.perf_counter()
        for s in range(0, len(coords), chunk):
            session.run(None, feeds(s))
        result = {"ms_per_prompt": 1000 * (time.perf_counter() - start) / len(coords)}
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def label(settings: dict[str, Any], base: dict[str, Any]) -> str:
    changed = [f"{k}={v}" for k, v in settings.items() if v != base[k]]
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
    from bench.bench_pipeline import machine, model_label, record

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
