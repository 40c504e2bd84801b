"""Vector output: one polygon per kept mask (holes kept), in the source CRS or in pixel coordinates.

``--vector gpkg|geojson`` writes ``OUT/vectors/``. Each kept mask of a named class becomes one feature (a
MultiPolygon: a mask may have several parts) with its class id and name, cluster id, the decoder's score, its
stability, its area in pixels and in square metres on the ground (:func:`square_metres`, on the ellipsoid; null
where the coordinates have no known place on the Earth), the image (stem), the source file and the split; masks
of dropped clusters are left out, as in the COCO files. Geometries come from ``rasterio.features.shapes`` on the
mask (pixel-exact outlines, interior rings for holes) and are written by pyogrio (GDAL).

Coordinates: a georeferenced input (GeoTIFF with a CRS) is in its CRS through its (window) transform, so the
tiles of a stitched scene land in the scene's CRS; one placed by ground control points alone (Sentinel-1 GRD) is
in its GCPs' CRS through GDAL's GCP transformer (the polynomial QGIS and gdalwarp fit to them); any other input is in pixel coordinates of its source file
(x right, y down; a tile is offset by its window), declared in GeoPackage as an engineering CRS named
"image pixels" so GIS tools do not take them for degrees (GeoJSON cannot say so: readers assume WGS 84 there).
Features are grouped by CRS (CRSs GDAL holds for the same are one): one layer per CRS, named ``masks`` (pixel
coordinates), ``masks_epsg<code>`` (a CRS that is EPSG's ``<code>`` exactly), ``masks_crs<n>`` (any other: a
user-defined datum, an ESRI code, a CRS only close to an EPSG one) or ``masks_no_crs`` (rasters placed by a world
file: map coordinates, the CRS unknown, as GIS tools place them); GeoPackage keeps every layer in ``masks.gpkg``,
GeoJSON writes one ``<layer>.geojson`` per layer. GeoJSON can name no CRS but an EPSG code (GDAL writes the legacy
``crs`` member for those), so a ``masks_crs<n>`` layer is written in WGS 84 longitude and latitude as RFC 7946
defines GeoJSON (GDAL reprojects each vertex); without that, readers took its metres for degrees. Features are
written in chunks, so memory does not grow with the dataset, and the output is byte-identical for the same input
(GDAL's GeoPackage timestamp is pinned).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from alps_client._imports import lazy_import
from alps_client.io.items import printable
from alps_client.io.shards import ImageShard
from alps_client.labels.classes import ClassMap
from alps_client.labels.painting import IGNORE
from alps_client.masks import iter_decoded

DRIVERS = {"gpkg": ("GPKG", ".gpkg"), "geojson": ("GeoJSON", ".geojson")}
FIELDS = ("class_id", "class_name", "cluster_id", "score", "stability", "area", "area_m2", "image", "source", "split")
_KINDS = (np.int64, object, np.int64, np.float64, np.float64, np.int64, np.float64, object, object, object)
FLUSH_FEATURES = 5000
# GDAL stamps GeoPackages with the current time unless told otherwise: pinned so reruns are byte-identical.
GPKG_TIMESTAMP = "2000-01-01T00:00:00.000Z"
PIXEL_CRS = ('ENGCRS["image pixels (x right, y down)",EDATUM["image"],CS[Cartesian,2],'
             'AXIS["x",east,ORDER[1],LENGTHUNIT["pixel",1]],AXIS["y",south,ORDER[2],LENGTHUNIT["pixel",1]]]')

NO_CRS = ""  # the layer key of rasters placed by a geotransform without a CRS (a world file): map coordinates


# What writing vectors imports (the `geo` extra), checked before a run labels anything.
VECTOR_MODULES = ("rasterio.features", "shapely.geometry", "pyogrio.raw", "pyproj")


def check_vector_dependencies() -> None:
    """Raises DependencyNotFoundError (the pip line) if a module :data:`VECTOR_MODULES` names is missing."""
    for name in VECTOR_MODULES:
        lazy_import(name)


def mask_polygons(mask: npt.NDArray[np.bool_], transform: Any) -> Any:
    """The ``(h, w) bool`` mask as one shapely MultiPolygon (holes as interior rings) through an affine transform.

    Pixel edges become polygon edges (4-connected parts), so rasterising the result back gives the mask exactly.
    """
    features = lazy_import("rasterio.features")
    geometry = lazy_import("shapely.geometry")
    parts = [geometry.shape(g) for g, _ in features.shapes(mask.astype(np.uint8), mask=mask, connectivity=4,
                                                           transform=transform)]
    return geometry.MultiPolygon(parts)


def image_transform(extra: Mapping[str, Any]) -> tuple[Any, str | None, Callable[[Any], Any] | None]:
    """``(affine, crs_wkt, warp)`` from image pixels to output coordinates, for a shard's ``extra`` metadata.

    ``crs_wkt`` is None for pixel coordinates and :data:`NO_CRS` for map coordinates of an unknown CRS (a raster
    placed by a world file).

    Polygons are traced through ``affine``; ``warp`` (None for an affine placement) then takes them on from pixel
    coordinates, for an image placed by ground control points (GDAL's GCP transformer, as QGIS places it).
    """
    rasterio = lazy_import("rasterio")
    geo = extra.get("geo")
    if geo and "gcps" in geo:  # the window's own GCPs for tiles
        from rasterio.control import GroundControlPoint
        from rasterio.transform import GCPTransformer

        transformer = GCPTransformer([GroundControlPoint(*gcp) for gcp in geo["gcps"]])

        def warp(geometry: Any) -> Any:
            def through(xy: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
                xs, ys = transformer.xy(xy[:, 1], xy[:, 0], offset="ul")
                return np.column_stack([xs, ys])

            return lazy_import("shapely").transform(geometry, through)

        return rasterio.Affine.identity(), str(geo["crs"]), warp
    if geo:  # already the window's transform for tiles
        return rasterio.Affine(*geo["transform"]), str(geo["crs"]) if geo["crs"] else NO_CRS, None
    window = extra.get("window")
    x0, y0 = (int(window[0]), int(window[1])) if window else (0, 0)
    return rasterio.Affine.translation(x0, y0), None, None


@contextmanager
def _pinned_gpkg_timestamp() -> Iterator[None]:
    pyogrio = lazy_import("pyogrio")
    before = pyogrio.get_gdal_config_option("OGR_CURRENT_DATE")
    pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": GPKG_TIMESTAMP})
    try:
        yield
    finally:
        pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": before})


class _Layer:
    """Features of one CRS, buffered and appended to their file in chunks.

    ``wgs84``: written in WGS 84 (GeoJSON's RFC 7946 option, GDAL reprojecting) instead of ``crs``.
    """

    def __init__(self, path: Path, name: str, driver: str, crs: str | None, wgs84: bool = False,
                 epsg: int | None = None) -> None:
        self.path, self.name, self.driver, self.crs, self.wgs84, self.epsg = path, name, driver, crs, wgs84, epsg
        self.rows: list[tuple[bytes, tuple[Any, ...]]] = []
        self.written = 0
        self.area_m2 = square_metres(crs)

    def flush(self) -> None:
        if not self.rows and self.written:
            return
        raw = lazy_import("pyogrio.raw")
        geoms = np.array([g for g, _ in self.rows], dtype=object)
        columns = list(zip(*(values for _, values in self.rows))) if self.rows else [()] * len(FIELDS)
        data = [np.asarray(col, dtype=kind) for col, kind in zip(columns, _KINDS)]
        crs = PIXEL_CRS if self.crs is None and self.driver == "GPKG" else self.crs or None
        if self.driver == "GeoJSON" and self.epsg is not None:  # GDAL names in GeoJSON only a CRS given by its code:
            crs = f"EPSG:{self.epsg}"  # the same CRS as WKT without AUTHORITY (a GeoTIFF's own keys) got no `crs`
        with _pinned_gpkg_timestamp(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="'crs' was not provided")  # pixels, NO_CRS: on purpose
            raw.write(str(self.path), geoms, data, list(FIELDS), layer=self.name, driver=self.driver, crs=crs,
                      geometry_type="MultiPolygon", append=self.written > 0,
                      layer_options={"RFC7946": "YES"} if self.wgs84 else None)
        self.written += len(self.rows)
        self.rows.clear()


def square_metres(crs_wkt: str | None) -> Callable[[Any], float]:
    """How a geometry in the CRS ``crs_wkt`` is measured in square metres on the ground (the ``area_m2`` field).

    On the ellipsoid of the CRS's datum (pyproj's geodesic polygon area, as GIS tools measure "ellipsoidal" area):
    a projected CRS's coordinates are taken back to longitude and latitude first, so that a projection's scale
    (Web Mercator's: 4x the area at 60 degrees north) or unit (US survey feet) changes nothing. NaN (written as null)
    for pixel coordinates, map coordinates of no CRS (a world file) and a CRS tied to no datum, whose place on
    the Earth nobody knows.
    """
    if not crs_wkt:
        return lambda geometry: float("nan")
    pyproj = lazy_import("pyproj")
    crs = pyproj.CRS.from_wkt(crs_wkt)
    geodetic = crs.geodetic_crs
    if geodetic is None:
        return lambda geometry: float("nan")
    shapely = lazy_import("shapely")
    orient = lazy_import("shapely.geometry.polygon").orient
    geod = geodetic.get_geod()
    to_degrees = None if crs.is_geographic else pyproj.Transformer.from_crs(crs, geodetic, always_xy=True)

    def lon_lat(xy: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return np.column_stack(to_degrees.transform(xy[:, 0], xy[:, 1]))

    def area(geometry: Any) -> float:
        if to_degrees is not None:
            geometry = shapely.transform(geometry, lon_lat)
        # pyproj signs each ring by its direction: a hole turning as its outline would add instead of cut
        return float(sum(geod.geometry_area_perimeter(orient(part, 1.0))[0]
                         for part in getattr(geometry, "geoms", [geometry])))

    return area


def exact_epsg(crs_wkt: str) -> int | None:
    """The EPSG code of a CRS that is that code's CRS exactly (GDAL's comparison); None for any other CRS.

    rasterio's ``to_epsg()`` also names CRSs only close to a code (a user-defined datum shifted to WGS 84 is
    "32633"): two such CRSs gave one layer name, and the second layer replaced the first.
    """
    crs_module = lazy_import("rasterio.crs")
    crs = crs_module.CRS.from_wkt(crs_wkt)
    code = crs.to_epsg()
    return code if code is not None and crs_module.CRS.from_epsg(code) == crs else None


class VectorOutput:
    """Receives each image's kept masks and classes (in any order) and writes ``vectors/``.

    Args:
        out: the ``vectors`` folder to write (inside the staging folder).
        vector_format: ``gpkg`` or ``geojson``.
        class_map: the dataset's classes (names of the class ids).
        warn: told, once, that a GeoJSON layer holds map coordinates of no CRS (rasters placed by a world file),
            which readers take for degrees.
    """

    def __init__(self, out: str | Path, vector_format: str, class_map: ClassMap,
                 warn: Callable[[str], None] | None = None) -> None:
        if vector_format not in DRIVERS:
            raise ValueError(f"vector format must be one of {sorted(DRIVERS)}, got {vector_format!r}")
        self.out = Path(out)
        self.driver, self.suffix = DRIVERS[vector_format]
        self.class_map = class_map
        self.warn = warn
        self.layers: dict[str | None, _Layer] = {}
        self.pending = 0

    def _layer(self, crs: str | None) -> _Layer:
        """The layer of ``crs`` (WKT; None: pixel coordinates): one layer for CRSs GDAL holds for the same."""
        if crs not in self.layers:
            self.layers[crs] = self._same_crs_layer(crs) or self._new_layer(crs)
        return self.layers[crs]

    def _same_crs_layer(self, crs: str | None) -> _Layer | None:
        if not crs:
            return None
        crs_type = lazy_import("rasterio.crs").CRS
        ours = crs_type.from_wkt(crs)
        return next((layer for layer in self._unique_layers() if layer.crs and crs_type.from_wkt(layer.crs) == ours),
                    None)

    def _new_layer(self, crs: str | None) -> _Layer:
        names = {layer.name for layer in self._unique_layers()}
        epsg = exact_epsg(crs) if crs else None
        if crs is None:
            name = "masks"
        elif crs == NO_CRS:
            name = "masks_no_crs"
        elif epsg is not None and f"masks_epsg{epsg}" not in names:
            name = f"masks_epsg{epsg}"
        else:
            name = next(f"masks_crs{n}" for n in range(1, len(names) + 2) if f"masks_crs{n}" not in names)
        file = "masks" if self.driver == "GPKG" else name
        self.out.mkdir(parents=True, exist_ok=True)
        wgs84 = self.driver == "GeoJSON" and bool(crs) and epsg is None
        if self.driver == "GeoJSON" and crs == NO_CRS and self.warn is not None:
            self.warn(f"vectors/{file}{self.suffix}: rasters placed by a world file have map coordinates of no CRS, "
                      "which GeoJSON cannot say: readers take them for WGS 84 degrees; --vector gpkg keeps them "
                      "without a CRS, which GIS tools ask for, as they do for the source")
        elif self.driver == "GeoJSON" and crs is None and self.warn is not None:
            self.warn(f"vectors/{file}{self.suffix}: images with no map placement have pixel coordinates, which "
                      "GeoJSON cannot say: GIS tools take them for WGS 84 degrees; --vector gpkg declares them as "
                      "image pixels")
        return _Layer(self.out / f"{file}{self.suffix}", name, self.driver, crs, wgs84, epsg)

    def _unique_layers(self) -> list[_Layer]:
        """Each layer once (several CRS strings may share one)."""
        return list({id(layer): layer for layer in self.layers.values()}.values())

    def add(self, shard: ImageShard, cluster_ids: npt.NDArray[np.int64], class_ids: npt.NDArray[np.int64],
            split: str) -> None:
        """One image: its shard and the ``(K,)`` cluster and class ids of its kept masks."""
        shapely = lazy_import("shapely")
        kept = shard.kept_masks()
        named = np.flatnonzero(np.asarray(class_ids) != IGNORE)
        transform, crs, warp = image_transform(shard.extra)
        layer = self._layer(crs)
        rles = [kept.rles[i] for i in named]
        for start, masks in iter_decoded(rles):
            for offset, mask in enumerate(masks):
                i = int(named[start + offset])
                x, y, w, h = (int(v) for v in kept.bboxes[i])
                window = mask[y : y + h + 1, x : x + w + 1]  # the mask's box: outlines cost its size only
                geometry = mask_polygons(window, transform @ type(transform).translation(x, y))
                geometry = warp(geometry) if warp else geometry
                c = int(class_ids[i])
                layer.rows.append((shapely.to_wkb(geometry), (
                    c, self.class_map.names[c], int(cluster_ids[i]), float(kept.predicted_iou[i]),
                    float(kept.stability_score[i]), int(kept.areas[i]), layer.area_m2(geometry), shard.stem,
                    printable(shard.source), split)))
                self.pending += 1
        if self.pending >= FLUSH_FEATURES:
            for layer in self._unique_layers():
                layer.flush()
            self.pending = 0

    def close(self) -> dict[str, int]:
        """Write what is buffered; returns features per layer (an empty ``masks`` layer when there was nothing)."""
        if not self.layers:
            self._layer(None)
        for layer in self._unique_layers():
            layer.flush()
        return {layer.name: layer.written for layer in self._unique_layers()}
