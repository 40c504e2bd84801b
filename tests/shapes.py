"""Synthetic images of coloured shapes with known masks (test data made by the tests themselves)."""

from __future__ import annotations

import numpy as np

PALETTE = np.array(
    [(200, 40, 40), (40, 60, 200), (230, 220, 60), (160, 60, 200), (40, 200, 200), (240, 140, 30)], dtype=np.uint8
)
BACKGROUND = (90, 140, 80)


def make_shapes_scene(seed: int = 0, size: tuple[int, int] = (192, 256), n_shapes: int = 4, noise: int = 6):
    """An RGB image of non-overlapping rectangles and discs on a plain background, and their masks.

    Returns:
        ``(image (H, W, 3) uint8, masks (n_shapes, H, W) bool)``.
    """
    rng = np.random.RandomState(seed)
    h, w = size
    image = np.empty((h, w, 3), np.int16)
    image[:] = BACKGROUND
    occupied = np.zeros((h, w), bool)
    yy, xx = np.mgrid[:h, :w]
    masks = []
    for i in range(200):
        if len(masks) == n_shapes:
            break
        sh, sw = rng.randint(h // 8, h // 3), rng.randint(w // 8, w // 3)
        y0, x0 = rng.randint(4, h - sh - 4), rng.randint(4, w - sw - 4)
        if rng.rand() < 0.5:
            mask = (yy >= y0) & (yy < y0 + sh) & (xx >= x0) & (xx < x0 + sw)
        else:
            r = min(sh, sw) / 2
            mask = (yy - y0 - sh / 2) ** 2 + (xx - x0 - sw / 2) ** 2 < r * r
        grown = np.zeros_like(occupied)
        grown[max(y0 - 6, 0) : y0 + sh + 6, max(x0 - 6, 0) : x0 + sw + 6] = True
        if (grown & occupied).any():
            continue
        occupied |= mask
        image[mask] = PALETTE[len(masks) % len(PALETTE)]
        masks.append(mask)
    image += rng.randint(-noise, noise + 1, image.shape).astype(np.int16)
    return np.clip(image, 0, 255).astype(np.uint8), np.stack(masks)


def make_shapes_image(seed: int = 0, size: tuple[int, int] = (192, 256)) -> np.ndarray:
    """Just the ``(H, W, 3) uint8`` image of :func:`make_shapes_scene`."""
    return make_shapes_scene(seed, size)[0]


def make_checkerboard(cells: int, size: tuple[int, int] = (640, 640)) -> tuple[np.ndarray, tuple]:
    """A dense scene: ``cells x cells`` rectangles, neighbours always in strongly different colours.

    Returns:
        ``(image (H, W, 3) uint8, point_grid)``: the grid (normalised x, y) has one point at each cell centre, so
        each cell is prompted once (an AmgConfig ``point_grids`` entry).
    """
    colours = np.array([(230, 30, 30), (30, 200, 40), (40, 60, 230), (240, 220, 40),
                        (200, 40, 220), (30, 220, 220), (250, 250, 250), (20, 20, 20)], np.uint8)
    h, w = size
    rows = (np.arange(h) * cells // h)[:, None]
    cols = (np.arange(w) * cells // w)[None, :]
    index = (rows % 2) + 2 * (cols % 2) + 4 * ((rows // 2 + cols // 2) % 2)
    centres = (np.arange(cells) + 0.5) / cells
    return colours[index], (tuple((float(x), float(y)) for y in centres for x in centres),)
