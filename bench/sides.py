"""The two sides of ``bench_pipeline.py``, each run in its own process: ours and the reference ALPS pipeline.

Each side labels the same images with the same model and AMG settings and writes ``result.json`` (per-stage
seconds, peak RSS, counts) into its work folder, with its masks and label maps beside it for the agreement.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def peak_rss_mib() -> float:
    """Peak resident memory of this process (VmHWM), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def load_images(paths: list[Path]) -> dict[str, np.ndarray]:
    """``stem -> (H, W, 3) uint8 RGB`` for each path: the 8-bit RGB PNGs ``bench_pipeline.py`` prepared."""
    return {p.stem: np.asarray(Image.open(p).convert("RGB")) for p in paths}


def torch_model(manifest: dict[str, Any]) -> Any:
    """The PyTorch model the repository was exported from: its checkpoint, a seeded --random-init, or the stand-in."""
    from export.export_sam import load_model

    checkpoint = (manifest.get("checkpoint") or {}).get("path")
    return load_model(manifest["model_type"], checkpoint, manifest["random_init"])


def side_ours(args: Any, images: dict[str, np.ndarray], work: Path, repository: str) -> dict[str, Any]:
    """Our pipeline on ``images``: per-image labelling into shards, clustering, the dataset writer.

    ``args.concurrency`` images are labelled at once on one shared backend, as the flow does (``alps run
    --concurrency``, default 2): one image's single-threaded post-processing then overlaps another's encoder and
    decoder. Per-stage seconds are summed over images, so with overlap they add up to more than the wall time.
    """
    from concurrent.futures import ThreadPoolExecutor

    from alps_client.amg.generator import MaskGenerator
    from alps_client.backends.embedded import EmbeddedBackend
    from alps_client.config import (
        AmgConfig,
        BackendConfig,
        ClusterConfig,
        GateConfig,
        PipelineConfig,
        WriterConfig,
    )
    from alps_client.io.shards import shard_fingerprint
    from alps_client.labels.clustering import fit_centroids
    from alps_client.pipeline import label_image

    cfg = PipelineConfig(
        backend=BackendConfig(model_repository=repository, num_threads=args.threads),
        amg=AmgConfig(**args.amg), gate=GateConfig(sigma=args.sigma),
        cluster=ClusterConfig(n_clusters=args.n_clusters), writer=WriterConfig(write_vis=False, copy_images=False),
    )
    providers = [p if isinstance(p, str) else tuple(p) for p in json.loads(args.providers)] if args.providers else None
    backend = EmbeddedBackend(cfg.backend, providers=providers)
    upscaled = _count_upscaled(backend, cfg.amg.pred_iou_thresh)
    generator = MaskGenerator(backend, cfg.amg)
    fp = shard_fingerprint(backend.manifest.fingerprint, cfg.labelling_dict())
    seconds: dict[str, float] = {}
    shards, kept = [], 0
    with ThreadPoolExecutor(max_workers=max(1, args.concurrency)) as pool:
        summaries = list(pool.map(
            lambda item: label_image(item[1], item[0], item[0], generator, cfg, work / "shards" / f"{item[0]}.npz", fp),
            images.items()))
    for summary in summaries:
        for k, v in summary.timings.items():
            seconds[k] = seconds.get(k, 0.0) + v
        shards.append(summary.shard_path)
        kept += summary.n_kept
    if kept == 0:  # nothing reached the gate (random weights at Meta's stability threshold): nothing to cluster
        return {"seconds": seconds, "upscaled": upscaled, "n_kept": 0, "providers": backend.providers}
    import sklearn.cluster  # noqa: F401  -- imported before timing, as the reference imports it at module level

    start = time.perf_counter()
    centroids = fit_centroids(shards, cfg.cluster)
    seconds["clustering"] = time.perf_counter() - start
    from alps_client.io.writer import write_dataset

    start = time.perf_counter()
    write_dataset(work / "out", shards, centroids, cfg, backend.manifest.raw, [])
    seconds["writing"] = time.perf_counter() - start
    return {"seconds": seconds, "upscaled": upscaled, "n_kept": kept, "providers": backend.providers}


def _count_upscaled(backend: Any, pred_iou_thresh: float) -> dict[str, int]:
    """Count prompts and those the decoder upscaled (any predicted IoU above the threshold it was given)."""
    import threading

    counts = {"prompts": 0, "prompts_upscaled": 0}
    decode = backend.decode
    skips = "iou_threshold" in backend.manifest.decoder.inputs
    lock = threading.Lock()

    def counting_decode(*a: Any, **k: Any) -> Any:
        out = decode(*a, **k)
        threshold = k.get("iou_threshold")
        upscaled = (out.iou_predictions > np.float32(threshold)).any(axis=1).sum() if skips and threshold else len(
            out.iou_predictions)
        with lock:
            counts["prompts"] += len(out.iou_predictions)
            counts["prompts_upscaled"] += int(upscaled)
        return out

    backend.decode = counting_decode
    return counts


def _funnel_probes(timings: dict[str, float], funnel: dict[str, int]) -> None:
    """Time Meta's encoder and decoder calls and count the masks left after each of its generator's filters.

    Meta's ``_process_batch`` computes stability on the masks that passed the IoU filter, boxes on those that passed
    stability, RLEs on those off the crop edges, and ``_process_crop`` keeps what box NMS returns: wrapping those
    module-level helpers counts each step without changing it.
    """
    from segment_anything import SamPredictor
    from segment_anything import automatic_mask_generator as amg

    def timed(name: str, fn: Any) -> Any:
        def wrapper(*a: Any, **k: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                timings[name] += time.perf_counter() - start
        return wrapper

    def counted(name: str, fn: Any, of_result: bool = False) -> Any:
        def wrapper(*a: Any, **k: Any) -> Any:
            out = fn(*a, **k)
            funnel[name] += len(out if of_result else a[0])
            return out
        return wrapper

    SamPredictor.set_image = timed("encoder", SamPredictor.set_image)
    SamPredictor.predict_torch = timed("decoder", SamPredictor.predict_torch)
    amg.calculate_stability_score = counted("after_iou", amg.calculate_stability_score)
    amg.batched_mask_to_box = counted("after_stability", amg.batched_mask_to_box)
    amg.mask_to_rle_pytorch = counted("after_edge", amg.mask_to_rle_pytorch)
    amg.batched_nms = counted("after_nms", amg.batched_nms, of_result=True)


def side_reference(args: Any, images: dict[str, np.ndarray], work: Path, repository: str) -> dict[str, Any]:
    """The reference ALPS pipeline (:mod:`bench.reference_alps`) in PyTorch on ``images``."""
    from export.tv_shim import install_torchvision_shim

    install_torchvision_shim()
    import torch

    from bench.reference_alps import run_reference

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    manifest = json.loads((Path(repository) / "manifest.json").read_text())
    sam = torch_model(manifest)
    timings = {"encoder": 0.0, "decoder": 0.0}
    funnel = {"after_iou": 0, "after_stability": 0, "after_edge": 0, "after_nms": 0}
    _funnel_probes(timings, funnel)
    result = run_reference(sam, images, work, args.amg, args.sigma, args.n_clusters)
    s = result.pop("seconds")
    seconds = {"encoder": timings["encoder"], "decoder": timings["decoder"],
               "postprocess": s["amg"] - timings["encoder"] - timings["decoder"],
               "write_masks": s["write_masks"], "features": s["features"], "clustering": s["clustering"],
               "writing": s["painting"]}
    grid = (args.amg["points_per_side"] ** 2) * len(images)
    funnel = {"prompts": grid, "candidates": 3 * grid, **funnel}
    return {"seconds": seconds, "n_masks": result["n_masks"], "n_kept": result["n_features"], "funnel": funnel}


def run_side(args: Any) -> None:
    """Entry point of a side's process: label, then write ``result.json``."""
    from bench.results import load_average

    paths = [Path(p) for p in json.loads(Path(args.image_list).read_text())]
    images = load_images(paths)
    work = Path(args.work)
    load_before = load_average()
    cpu_start = time.process_time()
    start = time.perf_counter()
    side = side_reference if args.side == "reference" else side_ours
    result = side(args, images, work, args.side_repository)
    result["total_seconds"] = time.perf_counter() - start
    result["cpu_seconds"] = time.process_time() - cpu_start
    result["peak_rss_mib"] = peak_rss_mib()
    result["n_images"] = len(images)
    result["load"] = [load_before, load_average()]
    Path(args.result).write_text(json.dumps(result))
