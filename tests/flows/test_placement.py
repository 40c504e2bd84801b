"""Where the outputs of georeferenced inputs land, as a GIS user checks them (a geospatial audit's findings).

CRSs that rasterio names by one EPSG code but are not that code's CRS (a user-defined datum shifted to WGS 84), a
CRS with no EPSG code at all (Lambert conformal conic), a raster placed by a world file (transform, no CRS), and
the files GDAL reads beside an input, changed after it was labelled.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin

from alps_client.config import (
    AmgConfig,
    BackendConfig,
    ClusterConfig,
    InputConfig,
    PipelineConfig,
    WriterConfig,
)
from alps_client.errors import AlpsError
from alps_client.io.items import gdal_sidecars
from alps_client.io.shards import read_shard
from alps_client.io.vectors import VectorOutput, exact_epsg
from alps_client.labels.classes import ClassMap
from alps_client.masks import decode_coco_rle
from alps_client.synthetic import make_scene
from flows.alps_flow import alps_flow
from tests.inputs.make_files import write_nifti
from tests.runs import run_log

UTM33 = CRS.from_epsg(32633)
# rasterio's to_epsg() says 32633 for it (at its default confidence), but GDAL holds it for another CRS.
UTM33_SHIFTED = CRS.from_proj4("+proj=utm +zone=33 +ellps=WGS84 +towgs84=0,0,0,0,0,0,0 +units=m +no_defs")
LCC = CRS.from_proj4("+proj=lcc +lat_1=43 +lat_2=62 +lat_0=30 +lon_0=10 +x_0=0 +y_0=0 +ellps=intl +units=m +no_defs")
PLACEMENTS = {"a_utm": (UTM33, (500000.0, 0.5, 4640000.0)), "b_shifted": (UTM33_SHIFTED, (500000.0, 0.5, 4640000.0)),
              "c_lcc": (LCC, (100000.0, 2.0, 2000000.0))}


def equal_area(geometry, crs, ellipsoid=None) -> float:
    """The area of ``geometry`` (in ``crs``) in an equal-area projection centred on it, in m²: its ground area,
    found another way than alps finds it (an equal-area projection keeps areas on the ellipsoid)."""
    import geopandas as gpd

    shape = gpd.GeoSeries([geometry], crs=crs)
    lon, lat = shape.to_crs(4326).iloc[0].centroid.coords[0]
    return float(shape.to_crs(f"+proj=laea +lat_0={lat} +lon_0={lon} +ellps={ellipsoid or 'WGS84'}").area.iloc[0])


def _write_tif(path: Path, seed: int, crs: CRS | None, origin: tuple[float, float, float] | None,
               size: tuple[int, int] = (64, 80)) -> None:
    bands = np.moveaxis(make_scene(seed, size)[0], -1, 0)
    profile = {"driver": "GTiff", "width": size[1], "height": size[0], "count": 3, "dtype": "uint8"}
    if crs is not None:
        x, res, y = origin
        profile.update(crs=crs, transform=from_origin(x, y, res, res))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(bands)


def _run(data: Path, out: Path, fake_repo: Path, vector_format: str | None, **inputs) -> dict:
    cfg = PipelineConfig(backend=BackendConfig(model_repository=str(fake_repo)), amg=AmgConfig(points_per_side=8),
                         cluster=ClusterConfig(n_clusters=3), inputs=InputConfig(**inputs),
                         writer=WriterConfig(vector_format=vector_format, write_report=False))
    return alps_flow(str(data), str(out), cfg, progress_bar=False)


def _features_per_image(out: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for split in ("train", "val"):
        coco = json.loads((out / f"instances_{split}.json").read_text())
        names = {i["id"]: i["file_name"].rsplit(".", 1)[0] for i in coco["images"]}
        for annotation in coco["annotations"]:
            counts[names[annotation["image_id"]]] = counts.get(names[annotation["image_id"]], 0) + 1
    return counts


def _assert_each_polygon_is_its_mask(out: Path, frame, transform_of) -> None:
    """Rasterised back onto its image's grid (through ``transform_of(shard)``), each feature is its mask exactly."""
    from rasterio.features import rasterize

    for stem, rows in frame.groupby("image"):
        shard = read_shard(out / ".alps" / "shards" / f"{stem}.npz")
        masks = decode_coco_rle(shard.kept_masks().rles)
        assert len(rows) == len(masks), stem
        for geometry, mask in zip(rows.geometry, masks):
            burnt = rasterize([geometry], out_shape=mask.shape, transform=transform_of(shard), dtype=np.uint8) > 0
            assert (burnt == mask).all(), stem


@pytest.fixture(scope="module")
def three_crss(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("crs") / "data"
    data.mkdir()
    for seed, (stem, (crs, origin)) in enumerate(PLACEMENTS.items()):
        _write_tif(data / f"{stem}.tif", seed, crs, origin)
    return data


@pytest.mark.parametrize("vector_format", ["gpkg", "geojson"])
def test_crss_near_one_epsg_code_keep_layers_of_their_own_and_geojson_gets_what_it_can_name(
        three_crss, fake_repo, tmp_path, vector_format):
    """Both UTM CRSs were named masks_epsg32633 and the second layer replaced the first: its features lost without a
    word. A CRS GeoJSON cannot name (no EPSG code) was written in metres with no `crs` member, which every reader
    takes for degrees; it is written in WGS 84 now, as RFC 7946 defines GeoJSON."""
    import geopandas as gpd

    out = tmp_path / "out"
    _run(three_crss, out, fake_repo, vector_format)
    expected = _features_per_image(out)
    assert set(expected) == set(PLACEMENTS) and all(expected.values())
    if vector_format == "gpkg":
        import pyogrio

        layers = {name: gpd.read_file(out / "vectors" / "masks.gpkg", layer=name)
                  for name, _ in pyogrio.list_layers(out / "vectors" / "masks.gpkg")}
    else:
        layers = {path.stem: gpd.read_file(path) for path in (out / "vectors").glob("*.geojson")}
    assert sorted(layers) == ["masks_crs1", "masks_crs2", "masks_epsg32633"]
    by_image = {stem: name for name, frame in layers.items() for stem in set(frame.image)}
    assert by_image == {"a_utm": "masks_epsg32633", "b_shifted": "masks_crs1", "c_lcc": "masks_crs2"}
    assert {stem: int((layers[name].image == stem).sum()) for stem, name in by_image.items()} == expected
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["vectors"] == {name: len(frame) for name, frame in layers.items()}

    assert CRS.from_user_input(layers["masks_epsg32633"].crs) == UTM33
    for stem, name in (("b_shifted", "masks_crs1"), ("c_lcc", "masks_crs2")):
        frame, (source_crs, _) = layers[name], PLACEMENTS[stem]
        if vector_format == "gpkg":
            assert CRS.from_user_input(frame.crs) == source_crs
        else:  # lon/lat, placed where the source is: taken back to its CRS, each polygon covers its mask
            assert frame.crs.to_epsg() == 4326 and -180 <= frame.total_bounds[0] <= frame.total_bounds[2] <= 180
            frame = frame.to_crs(source_crs.to_wkt())
        _assert_each_polygon_is_its_mask(out, frame, lambda shard: rasterio.Affine(*shard.extra["geo"]["transform"]))
    for name, frame in layers.items():  # on the ground: in an equal-area projection, near the pixels' own area
        stem = frame.image.iloc[0]
        crs, (_, pixel_size, _) = PLACEMENTS[stem]
        rounded = vector_format == "geojson" and name != "masks_epsg32633"  # in WGS 84 to 7 decimals: ~1 cm
        if rounded:
            frame = frame.to_crs(crs.to_wkt())
        ellipsoid = "intl" if stem == "c_lcc" else "WGS84"
        expected = np.array([equal_area(g, crs.to_wkt(), ellipsoid) for g in frame.geometry])
        # a vertex rounded by up to 0.56 cm moves the area by at most that times the outline's length
        slack = frame.length.to_numpy() * 0.0056 if rounded else 1e-6 * expected
        assert (np.abs(frame.area_m2.to_numpy() - expected) <= slack).all(), name
        # the projections' own scale: UTM's 0.9996, the conic's ~0.99 between its parallels
        assert np.allclose(frame.area_m2, frame["area"] * pixel_size**2, rtol=0.05), name


def test_crss_gdal_holds_for_the_same_share_one_layer(tmp_path):
    """One CRS written two ways (EPSG's WKT, and PROJ's from a +proj string) is one layer, not two of one name."""
    import shapely

    same = CRS.from_proj4("+proj=utm +zone=33 +datum=WGS84 +units=m +no_defs")
    assert same.to_wkt() != UTM33.to_wkt() and same == UTM33
    vectors = VectorOutput(tmp_path, "gpkg", ClassMap.identity(1))
    assert vectors._layer(UTM33.to_wkt()) is vectors._layer(same.to_wkt())
    assert vectors._layer(UTM33_SHIFTED.to_wkt()) is not vectors._layer(UTM33.to_wkt())
    assert [layer.name for layer in vectors._unique_layers()] == ["masks_epsg32633", "masks_crs1"]
    layer = vectors._layer(same.to_wkt())
    layer.rows.append((shapely.to_wkb(shapely.geometry.MultiPolygon([shapely.geometry.box(0, 0, 1, 1)])),
                       (0, "c", 0, 1.0, 1.0, 1, 1.0, "x", "x.tif", "train")))
    assert vectors.close() == {"masks_epsg32633": 1, "masks_crs1": 0}
    # GeoJSON names a CRS by its EPSG code only, which GDAL found in neither WKT without AUTHORITY (a GeoTIFF's own
    # keys for EPSG:2227): the layer had no `crs` member, its feet read as degrees (audit)
    for wkt in (same.to_wkt(), CRS.from_epsg(2227).to_wkt().replace('AUTHORITY["EPSG","2227"]', "")):
        vectors = VectorOutput(tmp_path / "geojson", "geojson", ClassMap.identity(1))
        layer = vectors._layer(wkt)
        layer.rows.append((shapely.to_wkb(shapely.geometry.MultiPolygon([shapely.geometry.box(0, 0, 1, 1)])),
                           (0, "c", 0, 1.0, 1.0, 1, 1.0, "x", "x.tif", "train")))
        vectors.close()
        written = json.loads(layer.path.read_text())
        assert written["crs"]["properties"]["name"] == f"urn:ogc:def:crs:EPSG::{exact_epsg(wkt)}", wkt[:40]


def test_a_raster_placed_by_a_world_file_keeps_its_placement(fake_repo, tmp_path):
    """GDAL and QGIS place a TIFF by its .tfw; alps took it for unplaced: identity transforms in geo/ and stitched/,
    vectors in pixels. Now the transform is kept, without a CRS, as GIS tools keep it."""
    import geopandas as gpd

    data = tmp_path / "data"
    data.mkdir()
    _write_tif(data / "scan.tif", 5, None, None, (96, 112))
    (data / "scan.tfw").write_text("0.5\n0\n0\n-0.5\n802000.25\n5199999.75\n")  # centre of the top-left pixel
    placed = rasterio.Affine(0.5, 0.0, 802000.0, 0.0, -0.5, 5200000.0)
    out = tmp_path / "out"
    _run(data, out, fake_repo, "gpkg", tile=64, overlap=16, stitch=True)
    with rasterio.open(out / "stitched" / "scan.tif") as stitched:
        assert stitched.crs is None and stitched.transform == placed and stitched.shape == (96, 112)
    tiles = sorted((out / "geo").glob("scan__x*.tif"))
    assert len(tiles) == len(list(out.glob("ann_dir/*/scan__x*.png"))) > 1
    for tile in tiles:
        x0, y0 = (int(v) for v in tile.stem.split("__x")[1].split("_y"))
        with rasterio.open(tile) as src:
            assert src.crs is None and src.transform == placed * rasterio.Affine.translation(x0, y0)
    frame = gpd.read_file(out / "vectors" / "masks.gpkg", layer="masks_no_crs")
    assert frame.crs is None and len(frame) == sum(_features_per_image(out).values())
    assert frame.area_m2.isna().all()  # map units of no CRS: metres or feet, nobody knows
    left, bottom, right, top = frame.total_bounds
    assert 802000 <= left < right <= 802056 and 5199952 <= bottom < top <= 5200000
    _assert_each_polygon_is_its_mask(out, frame, lambda shard: rasterio.Affine(*shard.extra["geo"]["transform"]))
    with run_log("prefect.task_runs") as logged:  # GeoJSON cannot say "no CRS": readers would take metres for degrees
        _run(data, tmp_path / "geojson", fake_repo, "geojson", tile=64, overlap=16)
    said = ("vectors/masks_no_crs.geojson: rasters placed by a world file have map coordinates of no CRS, which "
            "GeoJSON cannot say: readers take them for WGS 84 degrees; --vector gpkg keeps them without a CRS, which "
            "GIS tools ask for, as they do for the source")
    assert [line for line in logged if "masks_no_crs.geojson" in line] == [said]


def test_a_georeference_or_mask_added_beside_an_input_labels_it_again(fake_repo, tmp_path):
    """A CRS given to a TIFF in its .aux.xml after it was labelled (QGIS, gdal_edit.py) kept the old placement and
    no geo/ label at every rerun, --overwrite too: the files GDAL reads beside an input are now in its signature."""
    data = tmp_path / "data"
    data.mkdir()
    _write_tif(data / "plain.tif", 1, None, None)
    _write_tif(data / "placed.tif", 2, UTM33, (500000.0, 0.5, 4640000.0))
    out = tmp_path / "out"
    first = _run(data, out, fake_repo, "gpkg")
    assert first["n_labelled"] == 2 and sorted(p.name for p in (out / "geo").iterdir()) == ["placed.tif"]
    assert sorted(os.listdir(data)) == ["placed.tif", "plain.tif"]  # alps wrote nothing beside its inputs

    again = _run(data, out, fake_repo, "gpkg")
    assert again["n_labelled"] == 0 and again["n_skipped"] == 2

    _write_aux_xml(data / "plain.tif", UTM33, (500100.0, 0.5, 4640000.0))
    assert gdal_sidecars(str(data / "plain.tif")) == [str(data / "plain.tif.aux.xml")]
    with rasterio.open(data / "plain.tif") as src:
        assert src.crs == UTM33  # as GDAL (and QGIS) now read it
    rerun = _run(data, out, fake_repo, "gpkg")
    assert rerun["n_labelled"] == 1 and rerun["n_skipped"] == 1
    with rasterio.open(out / "geo" / "plain.tif") as label:
        assert label.crs == UTM33 and label.transform == from_origin(500100.0, 4640000.0, 0.5, 0.5)
    assert _run(data, out, fake_repo, "gpkg")["n_labelled"] == 0


def _write_aux_xml(path: Path, crs: CRS, origin: tuple[float, float, float]) -> None:
    """GDAL's PAM sidecar with a CRS and a geotransform, as QGIS's "Assign projection" or gdal_edit.py leave it."""
    x, res, y = origin
    Path(f"{path}.aux.xml").write_text(
        f"<PAMDataset>\n  <SRS>{crs.to_wkt()}</SRS>\n  <GeoTransform>{x}, {res}, 0, {y}, 0, {-res}</GeoTransform>\n"
        "</PAMDataset>\n")


def test_the_sidecars_gdal_reads_are_found_in_either_case(tmp_path):
    for name in ("a.tif", "a.tif.aux.xml", "a.tif.msk", "a.TFW", "a.wld", "a.png", "a.pgw", "b.tif", "b.tifw"):
        (tmp_path / name).write_bytes(b"x")
    assert [Path(p).name for p in gdal_sidecars(str(tmp_path / "a.tif"))] == [
        "a.tif.aux.xml", "a.tif.msk", "a.TFW", "a.wld"]
    assert [Path(p).name for p in gdal_sidecars(str(tmp_path / "a.png"))] == ["a.pgw", "a.wld"]
    assert [Path(p).name for p in gdal_sidecars(str(tmp_path / "b.tif"))] == ["b.tifw"]


def test_label_volumes_say_they_hold_labels_and_a_relabel_needs_no_source_volume(fake_repo, tmp_path):
    """A CT's -1000..1000 HU display window, its intent ("estimate, HU") and description were copied into the label
    volume (viewers showed ids 0..4 as one grey); and `alps relabel` of a dataset whose volumes had moved (another
    machine, an archive) failed with a traceback, as it reopened each source for its header (medical audit)."""
    import nibabel

    from alps_client.io.rewrite import relabel_dataset

    data = tmp_path / "data"
    data.mkdir()
    write_nifti(data / "ct.nii.gz")
    source = nibabel.load(str(data / "ct.nii.gz"))
    source.header["cal_min"], source.header["cal_max"] = -1000, 1000
    source.header.set_intent("estimate", name="HU")
    source.header["descrip"] = b"CT ABDOMEN"
    nibabel.save(source, str(data / "ct.nii.gz"))
    out = tmp_path / "out"
    _run(data, out, fake_repo, None, write_nifti_labels=True)
    written = nibabel.load(str(out / "volumes" / "ct.nii.gz"))
    header = written.header
    assert (float(header["cal_min"]), float(header["cal_max"])) == (0.0, 0.0)
    assert header.get_intent()[0] == "label" and header["descrip"].item().startswith(b"alps pseudo-labels")
    assert np.array_equal(written.affine, source.affine) and header.get_zooms() == source.header.get_zooms()
    assert header.get_qform_quaternion().tolist() == source.header.get_qform_quaternion().tolist()
    labels = np.asarray(written.dataobj)

    clusters = [c for k in json.loads((out / "classes.json").read_text())["classes"] for c in k["clusters"]]
    (out / "classes.yaml").write_text(f"classes:\n  - name: everything\n    clusters: {clusters}\n")
    moved = tmp_path / "archived"
    data.rename(moved)
    relabel_dataset(out, out / "classes.yaml")
    relabelled = nibabel.load(str(out / "volumes" / "ct.nii.gz"))
    assert np.array_equal(relabelled.affine, source.affine) and relabelled.shape == source.shape
    assert np.array_equal(np.asarray(relabelled.dataobj), np.where(labels == 255, 255, 0))

    shutil.rmtree(out / "volumes")  # neither the source nor an earlier label volume: one line naming the source
    with pytest.raises(AlpsError, match=r"ct\.nii\.gz: its source volume .*data/ct\.nii\.gz cannot be read .* "
                                        r"put the source back at that path"):
        relabel_dataset(out, out / "classes.yaml")
