"""The labelled dataset: mmsegmentation layout, COCO instances, centroids, manifest and errors.

Pure conversions (``records_to_coco``, ``split_of``) are kept apart from ``write_dataset``, which reads the
shards one at a time (memory flat in the number of images) and writes every file atomically. The same shards,
centroids and seed give byte-identical outputs.
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from PIL import Image

from alps_client import atomic
from alps_client.clustering import assign_clusters
from alps_client.config import PipelineConfig
from alps_client.painting import IGNORE, overlay, paint_label_map, palette
from alps_client.shards import ImageShard, read_shard

Split = Literal["train", "val"]


def split_of(stem: str, seed: int, val_fraction: float) -> Split:
    """Deterministic split by a stable hash (sha256) of the stem and the seed."""
    digest = hashlib.sha256(f"{seed}:{stem}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    return "val" if u < val_fraction else "train"


def records_to_coco(
    shards: Sequence[tuple[ImageShard, npt.NDArray[np.int64], str]], n_classes: int, start_image_id: int = 1
) -> dict[str, Any]:
    """COCO instances of kept masks: ``(shard, class id per kept mask, file name)`` -> COCO dict (RLE)."""
    images, annotations = [], []
    ann_id = 1
    for offset, (shard, class_ids, file_name) in enumerate(shards):
        image_id = start_image_id + offset
        h, w = shard.image_size
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
        kept = np.flatnonzero(shard.keep)
        for cls, i in zip(class_ids, kept):
            annotations.append({
                "id": ann_id,
                "image_id": image_id,
                "category_id": int(cls) + 1,
                "segmentation": shard.rles[i],
                "area": int(shard.areas[i]),
                "bbox": [float(v) for v in shard.bboxes[i]],
                "iscrowd": 0,
                "score": float(shard.predicted_iou[i]),
            })
            ann_id += 1
    categories = [{"id": k + 1, "name": f"cluster_{k}", "class_id": k, "supercategory": "pseudo"} for k in range(n_classes)]
    return {"images": images, "annotations": annotations, "categories": categories,
            "info": {"description": "ALPS pseudo-labels (category_id = class id + 1)"}}


@dataclass
class DatasetSummary:
    """Small summary of a written dataset (safe to return from a Prefect task)."""

    out_dir: str
    n_images: int
    n_train: int
    n_val: int
    n_classes: int
    n_masks_kept: int
    n_masks_gated: int
    n_errors: int
    labelled_pixel_fraction: float
    masks_per_class: list[int] = field(default_factory=list)
    pixels_per_class: list[int] = field(default_factory=list)


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("alps", "numpy", "onnxruntime", "scikit-learn", "pycocotools", "prefect"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def write_dataset(
    out_dir: str | Path,
    shard_paths: Sequence[str | Path],
    centroids: npt.NDArray[np.float32],
    config: PipelineConfig,
    model_manifest: Mapping[str, Any],
    errors: Sequence[Mapping[str, Any]],
    image_sources: Mapping[str, str | Path] | None = None,
) -> DatasetSummary:
    """Write the labelled dataset to ``out_dir`` (layout in the README / DESIGN.md "Output dataset").

    Args:
        out_dir: dataset root.
        shard_paths: one shard per labelled image.
        centroids: ``(N, 256)`` cluster centres; class id = nearest centre.
        config: the run's configuration (split, previews, recorded in the manifest).
        model_manifest: the model repository manifest (recorded in the manifest).
        errors: rejected inputs, each ``{"path", "reason"}``.
        image_sources: stem -> file copied to ``img_dir/<split>/<stem><suffix>`` (skipped when absent).

    Returns:
        A small summary with counts and the class histogram.
    """
    out = Path(out_dir)
    n_classes = int(len(centroids))
    colours = palette(n_classes)
    by_split: dict[str, list[tuple[ImageShard, npt.NDArray[np.int64], str]]] = {"train": [], "val": []}
    masks_per_class = np.zeros(n_classes, np.int64)
    pixels_per_class = np.zeros(n_classes, np.int64)
    kept_total = gated_total = labelled = pixels = 0
    image_sources = image_sources or {}
    for path in sorted((Path(p) for p in shard_paths), key=lambda p: p.name):
        shard = read_shard(path)
        class_ids = assign_clusters(shard.pfl, centroids)
        kept = np.flatnonzero(shard.keep)
        label = paint_label_map(shard.image_size, [shard.rles[i] for i in kept], shard.areas[kept], class_ids)
        split = split_of(shard.stem, config.writer.seed, config.writer.val_fraction)
        atomic.write_png(out / "ann_dir" / split / f"{shard.stem}.png", label)
        source = image_sources.get(shard.stem)
        file_name = f"{shard.stem}.png"
        if source is not None and config.writer.copy_images:
            suffix = Path(source).suffix.lower() or ".png"
            file_name = f"{shard.stem}{suffix}"
            atomic.copy_file(source, out / "img_dir" / split / file_name)
        if config.writer.write_vis and source is not None:
            with Image.open(source) as im:
                rgb = np.asarray(im.convert("RGB"))
            if rgb.shape[:2] == label.shape:
                atomic.write_png(out / "vis" / f"{shard.stem}.png", overlay(rgb, label, n_classes))
        by_split[split].append((shard, class_ids, file_name))
        np.add.at(masks_per_class, class_ids, 1)
        counts = np.bincount(label.ravel(), minlength=256)
        pixels_per_class += counts[:n_classes]
        labelled += int(counts[:IGNORE].sum())
        pixels += label.size
        kept_total += len(kept)
        gated_total += int((~shard.keep).sum())
        # The COCO entries keep no image arrays: drop the decoded PFLs from memory.
        shard.pfl = np.zeros((0, 256), np.float32)
    start = 1
    for split in ("train", "val"):
        atomic.write_json(out / f"instances_{split}.json", records_to_coco(by_split[split], n_classes, start))
        start += len(by_split[split])
    atomic.write_with(out / "centroids.npy", lambda f: np.save(f, centroids.astype(np.float32)))
    classes = [
        {"id": k, "name": f"cluster_{k}", "color": colours[k].tolist(), "n_masks": int(masks_per_class[k]),
         "n_pixels": int(pixels_per_class[k])}
        for k in range(n_classes)
    ]
    atomic.write_json(out / "classes.json", {"ignore_index": IGNORE, "classes": classes})
    atomic.write_text(out / "errors.jsonl", "".join(json.dumps(dict(e), sort_keys=True) + "\n" for e in errors))
    n_images = len(by_split["train"]) + len(by_split["val"])
    summary = DatasetSummary(
        out_dir=str(out), n_images=n_images, n_train=len(by_split["train"]), n_val=len(by_split["val"]),
        n_classes=n_classes, n_masks_kept=kept_total, n_masks_gated=gated_total, n_errors=len(errors),
        labelled_pixel_fraction=labelled / pixels if pixels else 0.0,
        masks_per_class=masks_per_class.tolist(), pixels_per_class=pixels_per_class.tolist(),
    )
    atomic.write_json(out / "manifest.json", {
        "format": "alps-dataset/1",
        "layout": "mmsegmentation custom dataset: img_dir/{train,val}, ann_dir/{train,val} (uint8, 255 = ignore)",
        "config": config.to_dict(),
        "seed": config.seed,
        "model": dict(model_manifest),
        "model_is_stand_in": bool(model_manifest.get("is_stand_in", False)),
        "versions": _versions(),
        "counts": {k: v for k, v in summary.__dict__.items() if k != "out_dir"},
    })
    return summary
