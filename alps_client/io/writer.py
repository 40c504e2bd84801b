"""The labelled dataset: mmsegmentation layout, COCO instances, centroids, manifest and errors.

Pure conversions (``shard_to_coco``, ``split_of``) are kept apart from ``write_dataset``, which reads the
shards one at a time (memory flat in the number of images) and writes every file atomically. The same shards,
centroids and seed give byte-identical outputs.
"""

from __future__ import annotations

import hashlib
import json
import platform
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from PIL import Image

from alps_client.io import atomic
from alps_client.labels.clustering import assign_clusters, centroids_sidecar
from alps_client.config import PipelineConfig
from alps_client.labels.painting import IGNORE, overlay, paint_label_map, palette
from alps_client.io.shards import ImageShard, read_shard

Split = Literal["train", "val"]


def split_of(stem: str, seed: int, val_fraction: float) -> Split:
    """Deterministic split by a stable hash (sha256) of the stem and the seed."""
    digest = hashlib.sha256(f"{seed}:{stem}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    return "val" if u < val_fraction else "train"


def shard_to_coco(
    shard: ImageShard, class_ids: npt.NDArray[np.int64], file_name: str, image_id: int, first_annotation_id: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """COCO image entry and annotations (RLE) of one shard's kept masks; ``category_id = class id + 1``."""
    h, w = shard.image_size
    image = {"id": image_id, "file_name": file_name, "height": h, "width": w}
    annotations = []
    for offset, (cls, i) in enumerate(zip(class_ids, np.flatnonzero(shard.keep))):
        annotations.append({
            "id": first_annotation_id + offset,
            "image_id": image_id,
            "category_id": int(cls) + 1,
            "segmentation": shard.rles[i],
            "area": int(shard.areas[i]),
            "bbox": [float(v) for v in shard.bboxes[i]],
            "iscrowd": 0,
            "score": float(shard.predicted_iou[i]),
        })
    return image, annotations


def coco_categories(n_classes: int) -> list[dict[str, Any]]:
    """One COCO category per cluster."""
    return [{"id": k + 1, "name": f"cluster_{k}", "class_id": k, "supercategory": "pseudo"} for k in range(n_classes)]


class _CocoStream:
    """Writes one COCO file incrementally (images and annotations spooled to temp files): memory stays flat."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.parts = {k: tempfile.TemporaryFile("w+", encoding="utf-8") for k in ("images", "annotations")}
        self.count = {"images": 0, "annotations": 0}

    def add(self, key: str, entries: Sequence[dict[str, Any]]) -> None:
        for entry in entries:
            self.parts[key].write(("," if self.count[key] else "") + json.dumps(entry, sort_keys=True))
            self.count[key] += 1

    def close(self, n_classes: int) -> None:
        def write(f: Any) -> None:
            head = {"info": {"description": "ALPS pseudo-labels (category_id = class id + 1)"},
                    "categories": coco_categories(n_classes)}
            f.write(json.dumps(head, sort_keys=True)[:-1].encode("utf-8"))
            for key in ("images", "annotations"):
                f.write(f', "{key}": ['.encode("utf-8"))
                part = self.parts[key]
                part.seek(0)
                for chunk in iter(lambda: part.read(1 << 20), ""):
                    f.write(chunk.encode("utf-8"))
                f.write(b"]")
                part.close()
            f.write(b"}\n")

        atomic.write_with(self.path, write)


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
    coco = {split: _CocoStream(out / f"instances_{split}.json") for split in ("train", "val")}
    n_split = {"train": 0, "val": 0}
    image_id = annotation_id = 1
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
        image, annotations = shard_to_coco(shard, class_ids, file_name, image_id, annotation_id)
        coco[split].add("images", [image])
        coco[split].add("annotations", annotations)
        image_id += 1
        annotation_id += len(annotations)
        n_split[split] += 1
        np.add.at(masks_per_class, class_ids, 1)
        counts = np.bincount(label.ravel(), minlength=256)
        pixels_per_class += counts[:n_classes]
        labelled += int(counts[:IGNORE].sum())
        pixels += label.size
        kept_total += len(kept)
        gated_total += int((~shard.keep).sum())
    for stream in coco.values():
        stream.close(n_classes)
    atomic.write_with(out / "centroids.npy", lambda f: np.save(f, centroids.astype(np.float32)))
    atomic.write_json(out / "centroids.json", centroids_sidecar(dict(model_manifest)))
    classes = [
        {"id": k, "name": f"cluster_{k}", "color": colours[k].tolist(), "n_masks": int(masks_per_class[k]),
         "n_pixels": int(pixels_per_class[k])}
        for k in range(n_classes)
    ]
    atomic.write_json(out / "classes.json", {"ignore_index": IGNORE, "classes": classes})
    atomic.write_text(out / "errors.jsonl", "".join(json.dumps(dict(e), sort_keys=True) + "\n" for e in errors))
    summary = DatasetSummary(
        out_dir=str(out), n_images=n_split["train"] + n_split["val"], n_train=n_split["train"], n_val=n_split["val"],
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
