"""Checks of a written dataset's COCO files against their own RLEs and against the label maps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils


def _rle(segmentation: dict) -> dict:
    return {**segmentation, "counts": segmentation["counts"].encode()}


def coco_by_image(out: Path) -> dict[str, list[dict]]:
    """Annotations per image stem, over every ``instances_*.json``; image and annotation ids unique in each file
    (pycocotools indexes both by id: a repeated one overwrites the other, unsaid)."""
    found: dict[str, list[dict]] = {}
    for path in sorted(out.glob("instances_*.json")):
        data = json.loads(path.read_text())
        for key in ("images", "annotations"):
            ids = [entry["id"] for entry in data[key]]
            assert len(set(ids)) == len(ids), (path.name, key, sorted(ids))
        stems = {img["id"]: Path(img["file_name"]).stem for img in data["images"]}
        for stem in stems.values():
            found.setdefault(stem, [])
        for ann in data["annotations"]:
            found[stems[ann["image_id"]]].append(ann)
    return found


def assert_coco_consistent(out: Path) -> dict[str, list[dict]]:
    """For every annotation: ``bbox == toBbox(rle)``, ``area == area(rle)``, and wherever it is the smallest mask
    (painted last) its pixels carry its class in ``ann_dir``; pixels under no mask are 255. Returns the annotations
    per image stem."""
    by_image = coco_by_image(out)
    for stem, image_annotations in by_image.items():
        label = np.asarray(Image.open(next(out.glob(f"ann_dir/*/{stem}.png"))))
        smallest = np.full(label.shape, np.inf)
        masks = []
        for ann in image_annotations:
            rle = _rle(ann["segmentation"])
            assert ann["bbox"] == mask_utils.toBbox(rle).tolist(), (stem, ann["id"])
            assert ann["area"] == int(mask_utils.area(rle)), (stem, ann["id"])
            mask = mask_utils.decode(rle).astype(bool)
            assert mask.shape == label.shape
            smallest[mask] = np.minimum(smallest[mask], ann["area"])
            masks.append(mask)
        ties = np.zeros(label.shape, int)
        for ann, mask in zip(image_annotations, masks):
            ties[mask & (smallest == ann["area"])] += 1
        for ann, mask in zip(image_annotations, masks):
            on_top = mask & (smallest == ann["area"]) & (ties == 1)
            assert (label[on_top] == ann["category_id"] - 1).all(), (stem, ann["id"])
        assert (label[np.isinf(smallest)] == 255).all(), stem
    return by_image
