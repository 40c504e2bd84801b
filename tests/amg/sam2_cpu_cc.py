"""A CPU twin of ``sam2._C.get_connected_componnets`` (Meta's CUDA kernel) for the reference side of tests.

Meta's ``SAM2Transforms.postprocess_masks`` needs the CUDA extension for ``min_mask_region_area``; on a CPU
install it warns and skips the clean-up. Installing this module as ``sam2._C`` lets Meta's own code run the
clean-up on CPU, so our client can be compared with it. Same contract as the kernel: ``(N, 1, H, W) uint8`` in;
per-pixel component labels (> 0 on foreground, 0 on background) and component areas out, 8-connectivity.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import torch
from scipy import ndimage

EIGHT = np.ones((3, 3), dtype=bool)


def get_connected_componnets(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # Meta's spelling
    binary = mask.numpy().astype(bool)
    labels = np.zeros(binary.shape, np.int32)
    counts = np.zeros(binary.shape, np.int32)
    for i in range(binary.shape[0]):
        lab, _ = ndimage.label(binary[i, 0], structure=EIGHT)
        areas = np.bincount(lab.ravel())
        labels[i, 0] = lab
        counts[i, 0] = np.where(lab > 0, areas[lab], 0)
    return torch.from_numpy(labels), torch.from_numpy(counts)


def install() -> None:
    """Register this module as ``sam2._C`` (scipy's labelling, independent of the client's OpenCV)."""
    module = types.ModuleType("sam2._C")
    module.get_connected_componnets = get_connected_componnets  # type: ignore[attr-defined]
    sys.modules["sam2._C"] = module
