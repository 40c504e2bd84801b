"""Label maps as GeoTIFF with the source's CRS and transform or GCPs (they overlay the source in QGIS)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from alps_client.io.atomic import atomic_path
from alps_client.io.readers import raster_io  # a scene without a CRS is written in pixel coordinates, unwarned

_PROFILE = {"driver": "GTiff", "dtype": "uint8", "count": 1, "nodata": 255, "compress": "deflate"}


def _profile(height: int, width: int, geo: dict[str, Any] | None) -> dict[str, Any]:
    rasterio = raster_io()
    profile: dict[str, Any] = {**_PROFILE, "height": height, "width": width}
    if height >= 256 and width >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    if geo:
        if geo["crs"]:  # None: a geotransform alone (a world file), kept without a CRS
            profile["crs"] = rasterio.crs.CRS.from_wkt(geo["crs"])
        if "gcps" in geo:  # placed by ground control points, as its source
            from rasterio.control import GroundControlPoint

            profile["gcps"] = [GroundControlPoint(row, col, x, y, z) for row, col, x, y, z in geo["gcps"]]
        else:
            profile["transform"] = rasterio.Affine(*geo["transform"])
    return profile


def write_geotiff_label(path: str | Path, label: npt.NDArray[np.uint8], geo: dict[str, Any] | None) -> None:
    """Write ``(H, W) uint8`` class ids (255 = no mask = nodata) as a GeoTIFF, atomically."""
    rasterio = raster_io()
    with atomic_path(path, suffix=".tif") as tmp, rasterio.open(tmp, "w", **_profile(*label.shape, geo)) as dst:
        dst.write(label, 1)


class LabelGeoTiff:
    """A large label map written window by window (memory: one window at a time), renamed into place on close.

    Args:
        path: output ``.tif``.
        size: ``(H, W)`` of the whole map.
        geo: CRS/transform of the whole scene, or None.
    """

    def __init__(self, path: str | Path, size: tuple[int, int], geo: dict[str, Any] | None) -> None:
        rasterio = raster_io()
        self._target = atomic_path(path, suffix=".tif")
        tmp = self._target.__enter__()
        self._dst = rasterio.open(tmp, "w", **_profile(*size, geo))

    def write(self, x0: int, y0: int, labels: npt.NDArray[np.uint8]) -> None:
        """Write ``(h, w) uint8`` labels with their top-left corner at column ``x0``, row ``y0``."""
        from rasterio.windows import Window

        self._dst.write(labels, 1, window=Window(x0, y0, labels.shape[1], labels.shape[0]))

    def close(self) -> None:
        """Finish the file and move it into place."""
        self._dst.close()
        self._target.__exit__(None, None, None)
