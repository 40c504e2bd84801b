"""Outputs beside the dataset for scenes and volumes: stitched scenes, GeoTIFF labels, NIfTI label volumes."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from alps_client.config import PipelineConfig
from alps_client.io.geotiff import write_geotiff_label, write_geotiff_windows
from alps_client.io.readers import image_size_of
from alps_client.io.shards import read_shard_meta
from alps_client.io.tiling import stitch_windows
from alps_client.io.writer import split_of

# Stitched scenes up to this many pixels are also written as PNG (a PNG is written from memory).
MAX_STITCHED_PNG_PIXELS = 64_000_000


def _label_path(out: Path, stem: str, config: PipelineConfig) -> Path:
    return out / "ann_dir" / split_of(stem, config.writer.seed, config.writer.val_fraction) / f"{stem}.png"


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def write_scene_outputs(out: str | Path, shard_paths: Sequence[str | Path], config: PipelineConfig) -> dict[str, int]:
    """Write the outputs beside the dataset that the inputs call for.

    ``geo/<stem>.tif`` for georeferenced inputs, ``stitched/<scene>.{tif,png}`` for tiled scenes (with
    ``--stitch``) and ``volumes/<scene>.nii.gz`` for sliced volumes (with ``--write-nifti-labels``).
    Reads one label map at a time. Returns counts of what was written.
    """
    out = Path(out)
    metas = [read_shard_meta(p) for p in shard_paths]
    counts = {"geotiff": 0, "stitched": 0, "volumes": 0}
    scenes: dict[str, list[dict[str, Any]]] = defaultdict(list)
    volumes: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for meta in metas:
        extra = meta.get("extra", {})
        if extra.get("geo"):
            write_geotiff_label(out / "geo" / f"{meta['stem']}.tif", _read(_label_path(out, meta["stem"], config)), extra["geo"])
            counts["geotiff"] += 1
        if extra.get("kind") == "tile":
            scenes[extra["scene"]].append(meta)
        elif extra.get("kind") == "slice":
            volumes[extra["scene"]].append(meta)
    if config.inputs.stitch and config.inputs.tile:
        for scene, tiles in sorted(scenes.items()):
            source = tiles[0]["source"]
            h, w = image_size_of(source)
            owned = stitch_windows(h, w, config.inputs.tile, config.inputs.overlap)
            geo = _scene_geo(tiles)

            def region(meta: dict[str, Any], owned: dict = owned) -> tuple[tuple[int, int, int, int], Any]:
                x0, y0 = meta["extra"]["window"][:2]
                ox0, oy0, ox1, oy1 = owned[(x0, y0)]
                path = _label_path(out, meta["stem"], config)
                return (ox0, oy0, ox1, oy1), lambda: _read(path)[oy0 - y0 : oy1 - y0, ox0 - x0 : ox1 - x0]

            write_geotiff_windows(out / "stitched" / f"{scene}.tif", (h, w), geo, [region(t) for t in tiles])
            if h * w <= MAX_STITCHED_PNG_PIXELS:
                import rasterio

                with rasterio.open(out / "stitched" / f"{scene}.tif") as src:
                    from alps_client.io.atomic import write_png

                    write_png(out / "stitched" / f"{scene}.png", src.read(1))
            counts["stitched"] += 1
    if config.inputs.write_nifti_labels:
        from alps_client.io.nifti import write_label_volume

        for scene, slices in sorted(volumes.items()):
            labels = {int(m["extra"]["input"]["slice_index"]): _read(_label_path(out, m["stem"], config)) for m in slices}
            write_label_volume(out / "volumes" / f"{scene}.nii.gz", slices[0]["source"], config.inputs.slice_axis, labels)
            counts["volumes"] += 1
    return counts


def _scene_geo(tiles: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The whole scene's CRS/transform, from a tile's window transform and origin."""
    for meta in tiles:
        geo = meta["extra"].get("geo")
        if geo:
            a, b, c, d, e, f = geo["transform"]
            x0, y0 = meta["extra"]["window"][:2]
            return {"crs": geo["crs"], "transform": [a, b, c - a * x0 - b * y0, d, e, f - d * x0 - e * y0]}
    return None
