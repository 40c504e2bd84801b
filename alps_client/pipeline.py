"""Per-image ALPS: automatic masks -> gate -> pseudo feature labels -> one shard on disk."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from alps_client.amg.generator import MaskGenerator
from alps_client.config import PipelineConfig
from alps_client.io.shards import ImageShard, write_shard
from alps_client.labels.features import pool_mask_features
from alps_client.labels.gate import gate_keep


@dataclass
class ImageSummary:
    """What a labelled image reports (small: safe as a Prefect task result)."""

    stem: str
    shard_path: str
    n_masks: int
    n_kept: int
    n_gated: int
    timings: dict[str, float] = field(default_factory=dict)


def label_image(
    image: npt.NDArray[np.uint8],
    stem: str,
    source: str,
    generator: MaskGenerator,
    config: PipelineConfig,
    shard_path: str | Path,
    fingerprint: str,
    valid_mask: npt.NDArray[np.bool_] | None = None,
    extra: dict | None = None,
) -> ImageSummary:
    """Label one RGB image and write its shard.

    Masks stay run-length encoded throughout (see :mod:`alps_client.masks`): memory is bounded whatever their
    number.

    Args:
        image: ``(H, W, 3) uint8`` RGB.
        stem: unique output name.
        source: the input file it came from.
        generator: the automatic mask generator (its backend computes the one embedding used for PFLs too).
        config: gate and feature settings.
        shard_path: where to write the shard.
        fingerprint: shard fingerprint of the model and labelling configuration.
        valid_mask: ``(H, W) bool`` pixels that belong to the image (e.g. alpha > 0); PI(M) is taken over
            them and masks are clipped to them. None: every pixel.
        extra: small metadata stored in the shard.

    Returns:
        Counts and per-stage timings (seconds).
    """
    result = generator.generate_masks(image)
    start = time.perf_counter()
    h, w = image.shape[:2]
    masks = result.masks.clipped(valid_mask)
    # A mask lying wholly in transparent or nodata pixels holds nothing of the image: not a mask of it, nor one
    # the gate dropped (it was counted "covering more than sigma").
    masks = masks.select(masks.areas > 0) if valid_mask is not None else masks
    image_area = int(valid_mask.sum()) if valid_mask is not None else h * w
    keep = gate_keep(masks.areas, max(image_area, 1), config.gate.sigma) & (masks.areas > 0)  # no valid pixel
    timings = dict(result.timings)
    timings["gate"] = time.perf_counter() - start
    start = time.perf_counter()
    pfl = pool_mask_features(result.embedding, [masks.rles[i] for i in np.flatnonzero(keep)], config.features)
    timings["features"] = time.perf_counter() - start
    start = time.perf_counter()
    shard = ImageShard(stem=stem, source=source, fingerprint=fingerprint, masks=masks, keep=keep, pfl=pfl,
                       extra={"n_prompts": result.n_prompts, "image_area": image_area, **(extra or {})})
    write_shard(shard_path, shard)
    timings["write_shard"] = time.perf_counter() - start
    return ImageSummary(stem, str(shard_path), len(masks), int(keep.sum()), int((~keep).sum()), timings)
