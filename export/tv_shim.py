"""A minimal torchvision stand-in so that ``segment_anything`` and ``sam2`` import beside the CPU torch wheel.

PyPI's torchvision does not import next to the torch 2.13 CPU wheel we pin
(``operator torchvision::nms does not exist``), yet ``segment_anything`` imports four torchvision functions and
``sam2`` (1.1.0) five: ``torchvision.ops.boxes.batched_nms/box_area`` and
``torchvision.transforms.Normalize/Resize/ToTensor`` (``SAM2Transforms``, which TorchScripts
``Sequential(Resize, Normalize)``, so those two are scriptable modules here).
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


class ToTensor:
    """``(H, W, C) uint8`` array -> ``(C, H, W) float32`` in [0, 1], as ``torchvision.transforms.ToTensor``.

    torchvision: ``torch.from_numpy(pic.transpose((2, 0, 1))).contiguous()``, then ``.to(float32).div(255)``.
    """

    def __call__(self, pic: Any) -> torch.Tensor:
        """Convert one image (numpy array or PIL image)."""
        array = np.asarray(pic)
        if array.ndim == 2:
            array = array[:, :, None]
        img = torch.from_numpy(array.transpose((2, 0, 1))).contiguous()
        if img.dtype == torch.uint8:
            return img.to(dtype=torch.get_default_dtype()).div(255)
        return img


class Resize(torch.nn.Module):
    """Tensor resize to a fixed ``(h, w)``, as ``torchvision.transforms.Resize(size)`` on tensors.

    torchvision's defaults: bilinear, ``antialias=True``, ``align_corners=False``; an image already at the size
    is returned unchanged (``functional.resize``).
    """

    def __init__(self, size: list[int]) -> None:
        super().__init__()
        self.size = [int(size[0]), int(size[1])]

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """``(C, H, W)`` or ``(B, C, H, W)`` float tensor resized."""
        if img.shape[-2] == self.size[0] and img.shape[-1] == self.size[1]:
            return img
        squeeze = img.dim() == 3
        x = img.unsqueeze(0) if squeeze else img
        x = torch.nn.functional.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        return x.squeeze(0) if squeeze else x


class Normalize(torch.nn.Module):
    """``(x - mean) / std`` per channel, as ``torchvision.transforms.Normalize`` (mean/std in x's dtype)."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        """``(C, H, W)`` normalised per channel."""
        mean = torch.as_tensor(self.mean, dtype=tensor.dtype, device=tensor.device)
        std = torch.as_tensor(self.std, dtype=tensor.dtype, device=tensor.device)
        return (tensor - mean[:, None, None]) / std[:, None, None]


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
    transforms.Normalize = Normalize  # type: ignore[attr-defined]
    transforms.Resize = Resize  # type: ignore[attr-defined]
    transforms.ToTensor = ToTensor  # type: ignore[attr-defined]
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
