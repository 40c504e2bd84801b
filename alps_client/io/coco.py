"""COCO instance files of the labelled dataset: pure conversion per image, streamed writing per split.

Each kept mask of a class becomes one annotation whose ``segmentation`` is its COCO RLE and whose ``area`` and
``bbox`` are pycocotools' ``area``/``toBbox`` of that same RLE (the shard measured them on it), so they always
agree. ``category_id = class id + 1`` (COCO reserves 0).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from alps_client.io import atomic
from alps_client.labels.painting import IGNORE
from alps_client.masks import MaskSet


def coco_categories(names: Sequence[str]) -> list[dict[str, Any]]:
    """One COCO category per class."""
    return [{"id": k + 1, "name": name, "class_id": k, "supercategory": "pseudo"} for k, name in enumerate(names)]


def coco_image_entry(image_id: int, file_name: str, image_size: tuple[int, int]) -> dict[str, Any]:
    """The ``images`` entry of one image."""
    return {"id": image_id, "file_name": file_name, "height": int(image_size[0]), "width": int(image_size[1])}


def coco_annotations(
    masks: MaskSet, class_ids: npt.NDArray[np.int64], image_id: int, first_annotation_id: int
) -> list[dict[str, Any]]:
    """Annotations of one image's kept masks; masks of dropped classes (255) are left out."""
    annotations = []
    for i in np.flatnonzero(np.asarray(class_ids) != IGNORE):
        annotations.append({
            "id": first_annotation_id + len(annotations),
            "image_id": image_id,
            "category_id": int(class_ids[i]) + 1,
            "segmentation": masks.rles[i],
            "area": int(masks.areas[i]),
            "bbox": [float(v) for v in masks.bboxes[i]],
            "iscrowd": 0,
            "score": float(masks.predicted_iou[i]),
        })
    return annotations


class CocoStream:
    """Writes one COCO file incrementally (entries spooled to temp files): memory stays flat in the dataset size."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.parts = {k: tempfile.TemporaryFile("w+", encoding="utf-8") for k in ("images", "annotations")}
        self.count = {"images": 0, "annotations": 0}

    def add(self, key: str, entries: Sequence[dict[str, Any]]) -> None:
        """Append ``images`` or ``annotations`` entries."""
        for entry in entries:
            self.parts[key].write(("," if self.count[key] else "") + json.dumps(entry, sort_keys=True))
            self.count[key] += 1

    def close(self, names: Sequence[str]) -> None:
        """Write the file atomically with its categories, and drop the spool."""

        def write(f: Any) -> None:
            head = {"info": {"description": "ALPS pseudo-labels (category_id = class id + 1)"},
                    "categories": coco_categories(names)}
            f.write(json.dumps(head, sort_keys=True)[:-1].encode("utf-8"))
            for key in ("images", "annotations"):
                f.write(f', "{key}": ['.encode())
                part = self.parts[key]
                part.seek(0)
                while chunk := part.read(1 << 20):
                    f.write(chunk.encode("utf-8"))
                f.write(b"]")
            f.write(b"}\n")

        try:
            atomic.write_with(self.path, write)
        finally:
            for part in self.parts.values():
                part.close()
