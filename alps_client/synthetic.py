"""Synthetic remote-sensing-like scenes with known classes, for the demo, tests and benchmarks.

Each scene has large background regions (bare ground, vegetation) and objects of several classes with a
class-specific colour, texture and size range (buildings, vehicles, pools, ...). Ground truth is the class of
every pixel. Class ids: 0 ground, 1 vegetation, then the object classes in ``OBJECT_CLASSES`` order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from alps_client.io.atomic import write_png

BACKGROUND_CLASSES = (("ground", (150, 130, 100), 8), ("vegetation", (60, 120, 55), 10))
# name, base colour, texture amplitude, size range (fraction of the short side), shape
OBJECT_CLASSES = (
    ("building", (205, 70, 60), 4, (0.10, 0.22), "rect"),
    ("vehicle", (60, 90, 210), 3, (0.04, 0.08), "rect"),
    ("pool", (70, 210, 225), 2, (0.06, 0.12), "disc"),
    ("roof-light", (225, 220, 205), 3, (0.08, 0.18), "rect"),
    ("tank", (240, 170, 40), 3, (0.05, 0.10), "disc"),
)
CLASS_NAMES = tuple(c[0] for c in BACKGROUND_CLASSES) + tuple(c[0] for c in OBJECT_CLASSES)
GT_CLASSES_FILE = "gt_classes.yaml"


def make_scene(seed: int, size: tuple[int, int] = (256, 256), n_classes: int = 4) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """One scene: ``(rgb (H, W, 3) uint8, gt (H, W) uint8)`` with classes ``0..n_classes-1``.

    Args:
        seed: scene seed (same seed, same scene).
        size: ``(H, W)`` in pixels.
        n_classes: 3..7 (ground, vegetation and ``n_classes - 2`` object classes).
    """
    if not 3 <= n_classes <= len(CLASS_NAMES):
        raise ValueError(f"n_classes must lie in 3..{len(CLASS_NAMES)}, got {n_classes!r}")
    rng = np.random.default_rng(seed)
    h, w = size
    gt = np.zeros((h, w), np.uint8)
    yy, xx = np.mgrid[:h, :w]
    # Vegetation: a few large smooth blobs.
    field = np.zeros((h, w))
    for _ in range(3):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        r = rng.uniform(0.2, 0.4) * min(h, w)
        field += np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)))
    gt[field > np.quantile(field, 0.6)] = 1
    short = min(h, w)
    objects = OBJECT_CLASSES[: n_classes - 2]
    occupied = np.zeros((h, w), bool)
    for _ in range(rng.integers(6, 11)):
        k = int(rng.integers(len(objects)))
        _, _, _, (lo, hi), shape = objects[k]
        for _attempt in range(20):
            sh, sw = (rng.uniform(lo, hi, 2) * short).astype(int) + 3
            y0, x0 = rng.integers(2, max(h - sh - 2, 3)), rng.integers(2, max(w - sw - 2, 3))
            if shape == "rect":
                mask = (yy >= y0) & (yy < y0 + sh) & (xx >= x0) & (xx < x0 + sw)
            else:
                r = min(sh, sw) / 2
                mask = (yy - y0 - r) ** 2 + (xx - x0 - r) ** 2 < r * r
            margin = np.zeros_like(occupied)
            margin[max(y0 - 3, 0) : y0 + sh + 3, max(x0 - 3, 0) : x0 + sw + 3] = True
            if not (margin & occupied).any():
                occupied |= mask
                gt[mask] = 2 + k
                break
    colours = [c[1] for c in BACKGROUND_CLASSES] + [c[1] for c in objects]
    textures = [c[2] for c in BACKGROUND_CLASSES] + [c[2] for c in objects]
    rgb = np.zeros((h, w, 3), np.float32)
    for cls in range(n_classes):
        sel = gt == cls
        rgb[sel] = colours[cls]
        rgb[sel] += rng.normal(0.0, textures[cls], (int(sel.sum()), 3))
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8), gt


def write_synthetic_dataset(
    root: str | Path, n_images: int, seed: int = 0, size: tuple[int, int] = (256, 256), n_classes: int = 4
) -> Path:
    """Write ``root/images/scene_XXXX.png``, ``root/gt/scene_XXXX.png`` (class ids) and their names; returns ``root``.

    The names go to ``root/gt_classes.yaml``, for ``alps evaluate --gt-classes``.
    """
    root = Path(root)
    for i in range(n_images):
        rgb, gt = make_scene(seed * 100_003 + i, size, n_classes)
        write_png(root / "images" / f"scene_{i:04d}.png", rgb)
        write_png(root / "gt" / f"scene_{i:04d}.png", gt)
    (root / GT_CLASSES_FILE).write_text(f"classes: [{', '.join(CLASS_NAMES[:n_classes])}]  # ids 0, 1, ...\n")
    return root
