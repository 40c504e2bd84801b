"""The filtering gate G of ALPS: drop masks covering more than sigma of the image (or tile)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def instance_proportion(areas: npt.ArrayLike, image_area: int) -> npt.NDArray[np.float64]:
    """PI(M) = mask pixels / image pixels, for ``(N,)`` mask areas in pixels; ``(N,) float64``."""
    if image_area <= 0:
        raise ValueError(f"image_area must be > 0 pixels, got {image_area!r}")
    return np.asarray(areas, dtype=np.float64) / float(image_area)


def gate_keep(areas: npt.ArrayLike, image_area: int, sigma: float) -> npt.NDArray[np.bool_]:
    """``(N,) bool``: True for masks kept by the gate, i.e. ``PI(M) <= sigma``; sigma must lie in (0, 1]."""
    if not 0.0 < sigma <= 1.0:
        raise ValueError(f"sigma must lie in (0, 1], got {sigma!r}")
    return instance_proportion(areas, image_area) <= sigma
