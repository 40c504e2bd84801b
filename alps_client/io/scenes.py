"""Outputs beside the dataset for georeferenced images, tiled scenes and volumes, fed label maps as they are painted.

The dataset writer paints each label map once and hands it to :class:`SceneOutputs`, which writes
``geo/<stem>.tif`` (georeferenced inputs), assembles ``stitched/<scene>.{tif,png}`` from the tiles of a scene
(with ``--stitch``) and ``volumes/<scene>.nii.gz`` from the slices of a volume (with ``--write-nifti-labels``).
Nothing is read back from disk. A scene is finished (and its memory released) as soon as its last tile arrives.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from alps_client.config import InputConfig
from alps_client.io.atomic import write_png
from alps_client.io.geotiff import LabelGeoTiff, write_geotiff_label
from alps_client.io.readers import image_size_of
from alps_client.io.tiling import stitch_windows
from alps_client.labels.painting import IGNORE

# Stitched scenes up to this many pixels are assembled in memory and also written as PNG.
MAX_STITCHED_PNG_PIXELS = 64_000_000


class _Scene:
    """One tiled scene being assembled: in memory when small (also written as PNG), else window by window."""

    def __init__(self, out: Path, scene: str, first_tile: Mapping[str, Any], config: InputConfig) -> None:
        if config.tile is None:
            raise ValueError("stitching needs the tile size the scene was cut with")
        self.h, self.w = image_size_of(first_tile["source"])
        self.owned = stitch_windows(self.h, self.w, config.tile, config.overlap)
        self.png = out / "stitched" / f"{scene}.png"
        geo = _scene_geo(first_tile["extra"])
        self.memory = np.full((self.h, self.w), IGNORE, np.uint8) if self.h * self.w <= MAX_STITCHED_PNG_PIXELS else None
        self.tif = LabelGeoTiff(out / "stitched" / f"{scene}.tif", (self.h, self.w), geo)

    def add(self, window: Sequence[int], label: npt.NDArray[np.uint8]) -> None:
        x0, y0 = int(window[0]), int(window[1])
        ox0, oy0, ox1, oy1 = self.owned[(x0, y0)]
        part = label[oy0 - y0 : oy1 - y0, ox0 - x0 : ox1 - x0]
        if self.memory is None:
            self.tif.write(ox0, oy0, part)
        else:
            self.memory[oy0:oy1, ox0:ox1] = part

    def close(self) -> None:
        # A scene in memory is written whole: window by window, GDAL recompresses the blocks a window shares with
        # the next, and the file's bytes hung on the order its tiles came in (a rerun wrote other bytes).
        if self.memory is not None:
            self.tif.write(0, 0, self.memory)
        self.tif.close()
        if self.memory is not None:
            write_png(self.png, self.memory)


class SceneOutputs:
    """Receives every painted label map (in any order) and writes the outputs its input calls for.

    Args:
        out: the dataset folder being written (the staging folder).
        metas: shard metadata of every image of the dataset (to know how many tiles/slices each scene has).
        config: input settings (``stitch``, ``tile``, ``overlap``, ``write_nifti_labels``, ``slice_axis``).
        earlier: the dataset folder as it is (``OUT``), whose label volumes lend their headers to volumes whose
            source cannot be read any more.
    """

    def __init__(self, out: str | Path, metas: Sequence[Mapping[str, Any]], config: InputConfig,
                 earlier: str | Path | None = None) -> None:
        self.out = Path(out)
        self.earlier = Path(earlier) if earlier is not None else None
        self.config = config
        self.counts = {"geotiff": 0, "stitched": 0, "volumes": 0}
        extras = [m.get("extra", {}) for m in metas]
        self._remaining = Counter(e.get("scene") for e in extras if e.get("kind") in ("tile", "slice"))
        self._scenes: dict[str, _Scene] = {}
        self._volumes: dict[str, dict[int, npt.NDArray[np.uint8]]] = {}

    def add(self, meta: Mapping[str, Any], label: npt.NDArray[np.uint8]) -> None:
        """One image's label map; ``meta`` is its shard metadata (stem, source, extra)."""
        extra = meta.get("extra", {})
        if extra.get("geo"):
            write_geotiff_label(self.out / "geo" / f"{meta['stem']}.tif", label, extra["geo"])
            self.counts["geotiff"] += 1
        kind, scene = extra.get("kind"), extra.get("scene")
        if kind == "tile" and self.config.stitch and self.config.tile:
            if scene not in self._scenes:
                self._scenes[scene] = _Scene(self.out, scene, meta, self.config)
            self._scenes[scene].add(extra["window"], label)
        elif kind == "slice" and self.config.write_nifti_labels:
            self._volumes.setdefault(scene, {})[int(extra["input"]["slice_index"])] = label
        if kind in ("tile", "slice"):
            self._remaining[scene] -= 1
            if self._remaining[scene] == 0:
                self._finish(scene, meta["source"])

    def _finish(self, scene: str, source: str) -> None:
        if scene in self._scenes:
            self._scenes.pop(scene).close()
            self.counts["stitched"] += 1
        if scene in self._volumes:
            from alps_client.io.nifti import write_label_volume

            name = f"{scene}.nii.gz"
            write_label_volume(self.out / "volumes" / name, source, self.config.slice_axis, self._volumes.pop(scene),
                               self.earlier / "volumes" / name if self.earlier else None)
            self.counts["volumes"] += 1

    def close(self) -> dict[str, int]:
        """Finish what is still open (scenes some of whose tiles were not labelled); returns counts written."""
        for scene in list(self._scenes):
            self._scenes.pop(scene).close()
            self.counts["stitched"] += 1
        return dict(self.counts)


def _scene_geo(extra: Mapping[str, Any]) -> dict[str, Any] | None:
    """The whole scene's CRS and transform or GCPs, from a tile's (its window's) and the window's origin."""
    geo = extra.get("geo")
    if not geo:
        return None
    x0, y0 = extra["window"][:2]
    if "gcps" in geo:
        return {"crs": geo["crs"], "gcps": [[row + y0, col + x0, x, y, z] for row, col, x, y, z in geo["gcps"]]}
    a, b, c, d, e, f = geo["transform"]
    return {"crs": geo["crs"], "transform": [a, b, c - a * x0 - b * y0, d, e, f - d * x0 - e * y0]}
