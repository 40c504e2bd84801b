"""A minimal torchvision stand-in so that ``segment_anything`` imports beside the CPU torch wheel.

PyPI's torchvision does not import next to the torch 2.13 CPU wheel we pin
(``operator torchvision::nms does not exist``), yet ``segment_anything`` imports four torchvision functions.
This shim provides them with torchvision's exact semantics. It is used by the exporter, tests and
benchmarks only; ``alps_client`` never imports torch or torchvision.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types
from typing import Any

import numpy as np
import torch
from PIL import Image


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Area of ``(N, 4)`` XYXY boxes, as ``torchvision.ops.box_area``."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS with torchvision's CPU kernel semantics.

    Boxes are visited in order of decreasing score (stable sort); a box is suppressed when its IoU with a
    kept box is strictly greater than ``iou_threshold``; IoU uses areas without the +1 convention.

    Returns:
        ``(K,) int64`` indices of kept boxes, in decreasing score order.
    """
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64)
    order = torch.sort(scores, descending=True, stable=True).indices
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    suppressed = torch.zeros(boxes.shape[0], dtype=torch.bool)
    keep: list[int] = []
    for rank in range(order.numel()):
        i = int(order[rank])
        if suppressed[i]:
            continue
        keep.append(i)
        rest = order[rank + 1 :]
        xx1 = torch.maximum(x1[i], x1[rest])
        yy1 = torch.maximum(y1[i], y1[rest])
        xx2 = torch.minimum(x2[i], x2[rest])
        yy2 = torch.minimum(y2[i], y2[rest])
        inter = (xx2 - xx1).clamp(min=0) * (yy2 - yy1).clamp(min=0)
        iou = inter / (areas[i] + areas[rest] - inter)
        suppressed[rest[iou.double() > iou_threshold]] = True  # the C++ kernel compares in double
    return torch.tensor(keep, dtype=torch.int64)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Per-category NMS by the coordinate trick, as ``torchvision.ops.batched_nms``."""
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64)
    offsets = idxs.to(boxes) * (boxes.max() + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def to_pil_image(pic: Any) -> Image.Image:
    """``(H, W, 3) uint8`` array to a PIL image, as ``torchvision.transforms.functional.to_pil_image``."""
    return Image.fromarray(np.asarray(pic))


def resize(img: Image.Image, size: Any, interpolation: Any = None, max_size: Any = None, antialias: Any = True) -> Image.Image:
    """Resize a PIL image to ``size = (h, w)`` with PIL BILINEAR, as torchvision does for PIL inputs."""
    h, w = int(size[0]), int(size[1])
    return img.resize((w, h), Image.BILINEAR)


def install_torchvision_shim() -> None:
    """Register the shim as ``torchvision`` unless a working torchvision is importable."""
    if "torchvision" in sys.modules:
        return
    if importlib.util.find_spec("torchvision") is not None:
        try:
            import torchvision.ops  # noqa: F401

            return
        except Exception:  # a broken torchvision (wrong torch build): fall through to the shim
            for name in [m for m in sys.modules if m.startswith("torchvision")]:
                del sys.modules[name]
    root = types.ModuleType("torchvision")
    ops = types.ModuleType("torchvision.ops")
    ops_boxes = types.ModuleType("torchvision.ops.boxes")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    for mod in (ops, ops_boxes):
        mod.batched_nms = batched_nms  # type: ignore[attr-defined]
        mod.box_area = box_area  # type: ignore[attr-defined]
        mod.nms = nms  # type: ignore[attr-defined]
    functional.resize = resize  # type: ignore[attr-defined]
    functional.to_pil_image = to_pil_image  # type: ignore[attr-defined]
    root.ops = ops  # type: ignore[attr-defined]
    root.transforms = transforms  # type: ignore[attr-defined]
    ops.boxes = ops_boxes  # type: ignore[attr-defined]
    transforms.functional = functional  # type: ignore[attr-defined]
    root.__stand_in__ = True  # type: ignore[attr-defined]
    for name, mod in (("torchvision", root), ("torchvision.ops", ops), ("torchvision.ops.boxes", ops_boxes),
                      ("torchvision.transforms", transforms), ("torchvision.transforms.functional", functional)):
        # A spec lets importlib.util.find_spec (called by torch.onnx's registry) answer instead of raising.
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
    sys.modules.update({
        "torchvision": root,
        "torchvision.ops": ops,
        "torchvision.ops.boxes": ops_boxes,
        "torchvision.transforms": transforms,
        "torchvision.transforms.functional": functional,
    })
