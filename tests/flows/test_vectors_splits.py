"""Vectors in the source CRS (GeoTIFFs, a stitched scene) or pixel coordinates, and a dataset's own split kept.

One flow run on a dataset laid out in train/val/test folders: a georeferenced GeoTIFF and a ring image in train/,
a larger GeoTIFF in another CRS and one placed by ground control points (as Sentinel-1 GRD) cut into tiles and
stitched in val/, a small PNG in test/.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.control import GroundControlPoint

from alps_client.config import (
    AmgConfig,
    BackendConfig,
    ClusterConfig,
    InputConfig,
    PipelineConfig,
    WriterConfig,
)
from alps_client.io.shards import read_shard
from alps_client.masks import decode_coco_rle
from alps_client.synthetic import make_scene
from flows.alps_flow import alps_flow
from tests.flows.test_placement import equal_area
from tests.flows.test_review import ring_scene
from tests.inputs.make_files import write_geotiff
from tests.runs import run_log

SAR_PLACEMENT = rasterio.Affine(1e-4, 2e-5, 10.0, 1e-5, -1e-4, 50.0)  # pixel -> lon/lat, its GCPs sampled from it


@pytest.fixture(scope="module")
def geo_run(tmp_path_factory, fake_repo):
    root = tmp_path_factory.mktemp("geo")
    data = root / "data"
    for split in ("train", "val", "test"):
        (data / split).mkdir(parents=True)
    write_geotiff(data / "train" / "geo_a.tif", np.moveaxis(make_scene(1, (112, 128))[0], -1, 0), "EPSG:32633",
                  (500000.0, 0.5, 4000000.0))
    Image.fromarray(ring_scene()[0]).save(data / "train" / "ring.png")
    write_geotiff(data / "val" / "scene_b.tif", np.moveaxis(make_scene(2, (160, 200))[0], -1, 0), "EPSG:3857",
                  (1000.0, 2.0, 5000.0))
    Image.fromarray(make_scene(3, (64, 64))[0]).save(data / "test" / "small.png")
    with rasterio.open(data / "val" / "sar_c.tif", "w", driver="GTiff", width=200, height=160, count=3, dtype="uint8",
                       crs="EPSG:4326", gcps=[GroundControlPoint(row, col, *(SAR_PLACEMENT @ (col, row)), 0.0)
                                              for row in (0, 80, 160) for col in (0, 100, 200)]) as dst:
        dst.write(np.moveaxis(make_scene(4, (160, 200))[0], -1, 0))
    cfg = PipelineConfig(backend=BackendConfig(model_repository=str(fake_repo)), amg=AmgConfig(points_per_side=8),
                         cluster=ClusterConfig(n_clusters=3), inputs=InputConfig(tile=128, overlap=32, stitch=True),
                         writer=WriterConfig(vector_format="gpkg", write_report=False))
    result = alps_flow(str(data), str(root / "out"), cfg, progress_bar=False)
    return root / "out", result


def test_existing_train_val_test_folders_are_kept(geo_run, capsys):
    from flows.run_cli import _print_summary

    out, result = geo_run
    assert not result["errors"]
    layout = {split: sorted(p.stem for p in (out / "ann_dir" / split).glob("*.png")) for split in ("train", "val", "test")}
    assert layout["train"] == ["geo_a", "ring"] and layout["test"] == ["small"]
    assert layout["val"] and all(stem.startswith(("scene_b__x", "sar_c__x")) for stem in layout["val"])  # tiles
    for split, stems in layout.items():
        assert sorted(p.stem for p in (out / "img_dir" / split).iterdir()) == stems
        images = json.loads((out / f"instances_{split}.json").read_text())["images"]
        assert sorted(i["file_name"].rsplit(".", 1)[0] for i in images) == stems
    _print_summary(result, str(out))  # what `alps run` says at the end: the test split was left out
    assert f"{len(layout['train'])} train / {len(layout['val'])} val / 1 test, " in capsys.readouterr().out


def test_vectors_in_the_source_crs_the_scene_crs_or_pixels_each_polygon_its_mask(geo_run):
    import geopandas as gpd
    import pyogrio
    import rasterio
    from rasterio.features import rasterize

    out, _ = geo_run
    layers = {name for name, _ in pyogrio.list_layers(out / "vectors" / "masks.gpkg")}
    assert layers == {"masks", "masks_epsg32633", "masks_epsg3857", "masks_epsg4326"}
    with rasterio.open(out / "stitched" / "scene_b.tif") as scene:
        scene_crs, scene_bounds = scene.crs, scene.bounds
    holes = 0
    for layer in sorted(layers):
        frame = gpd.read_file(out / "vectors" / "masks.gpkg", layer=layer)
        assert len(frame) > 0
        for stem, rows in frame.groupby("image"):
            shard = read_shard(out / ".alps" / "shards" / f"{stem}.npz")
            masks = decode_coco_rle(shard.kept_masks().rles)
            geo = shard.extra.get("geo") or {"transform": rasterio.Affine.identity()}
            transform = (rasterio.Affine(*geo["transform"]) if "transform" in geo else  # the tile's own GCPs:
                         SAR_PLACEMENT @ rasterio.Affine.translation(*shard.extra["window"][:2]))
            assert len(rows) == len(masks)
            for (_, row), mask in zip(rows.iterrows(), masks):  # back to the image's pixel grid: the mask exactly
                burnt = rasterize([row.geometry], out_shape=mask.shape, transform=transform, dtype=np.uint8) > 0
                assert burnt.tolist() == mask.tolist(), (layer, stem)
                holes += sum(len(p.interiors) for p in row.geometry.geoms)
        if layer == "masks":  # PNG inputs: pixel coordinates of the source file
            assert sorted(set(frame.image)) == ["ring", "small"] and frame.crs.name.startswith("image pixels")
            assert frame.area_m2.isna().all()  # pixels have no ground area
            assert frame.total_bounds[0] >= 0 and frame.total_bounds[2] <= 128 and frame.total_bounds[3] <= 96
        elif layer == "masks_epsg32633":  # a whole GeoTIFF: its own CRS
            assert frame.crs.to_epsg() == 32633 and set(frame.image) == {"geo_a"}
            assert np.allclose(frame.area_m2, frame["area"] * 0.5**2, rtol=2e-3)  # 0.5 m pixels, UTM's scale
            assert np.allclose(frame.area_m2, [equal_area(g, 32633) for g in frame.geometry], rtol=1e-6)
            x0, y0, x1, y1 = frame.total_bounds
            assert 500000 <= x0 < x1 <= 500000 + 64 and 4000000 - 56 <= y0 < y1 <= 4000000
        elif layer == "masks_epsg4326":  # placed by GCPs alone: through them, as QGIS places the image
            assert frame.crs.to_epsg() == 4326 and all(s.startswith("sar_c__x") for s in frame.image)
            # degrees have no area: on the ellipsoid, as the same polygons measured in their UTM zone (32N)
            assert np.allclose(frame.area_m2, [equal_area(g, 4326) for g in frame.geometry], rtol=1e-6)
        else:  # the tiles of a stitched scene: the scene's CRS, inside the stitched scene
            assert frame.crs == scene_crs and all(s.startswith("scene_b__x") for s in frame.image)
            x0, y0, x1, y1 = frame.total_bounds
            assert scene_bounds.left <= x0 and x1 <= scene_bounds.right
            assert scene_bounds.bottom <= y0 and y1 <= scene_bounds.top
            assert set(frame.split) == {"val"}
            assert np.allclose(frame.area_m2, [equal_area(g, 3857) for g in frame.geometry], rtol=1e-6)
    assert holes > 0


def test_a_raster_placed_by_ground_control_points_keeps_them_in_its_label_geotiffs(geo_run):
    """Sentinel-1 GRD, scanned maps: no geotransform, GCPs. Their label GeoTIFFs had no placement at all (neither
    transform nor GCPs: they did not overlay the source), and their vectors were in pixel coordinates."""
    out, _ = geo_run
    with rasterio.open(out.parent / "data" / "val" / "sar_c.tif") as src:
        source_gcps, _ = src.gcps
    with rasterio.open(out / "stitched" / "sar_c.tif") as scene:
        gcps, crs = scene.gcps
        assert crs.to_epsg() == 4326 and scene.crs is None and scene.shape == (160, 200)
        assert [(p.row, p.col, p.x, p.y) for p in gcps] == [(p.row, p.col, p.x, p.y) for p in source_gcps]
    tiles = sorted((out / "geo").glob("sar_c__x*.tif"))
    assert len(tiles) == len(list((out / "ann_dir" / "val").glob("sar_c__x*.png"))) > 1
    for tile in tiles:  # each tile's GCPs in its own pixels: the same ground point, shifted rows and columns
        x0, y0 = (int(v) for v in tile.stem.split("__x")[1].split("_y"))
        with rasterio.open(tile) as src:
            shifted, _ = src.gcps
        assert [(p.row + y0, p.col + x0, p.x, p.y) for p in shifted] == [(p.row, p.col, p.x, p.y) for p in source_gcps]


def test_split_group_keeps_a_subjects_sessions_in_one_split(fake_repo, tmp_path):
    """A BIDS-like tree: the split grouped by volume (here: image) put a subject's sessions in train and val, so val
    was not held out by patient (medical-imaging audit). --split-group names the group in the path."""
    from alps_client.io.registry import read_registry

    data = tmp_path / "data"
    for subject in range(1, 5):
        for session in (1, 2):
            folder = data / f"sub-0{subject}" / f"ses-{session}"
            folder.mkdir(parents=True)
            Image.fromarray(make_scene(10 * subject + session, (48, 64))[0]).save(folder / "slice.png")

    def run(out, split_group, warnings=None):
        cfg = PipelineConfig(backend=BackendConfig(model_repository=str(fake_repo)),
                             amg=AmgConfig(points_per_side=4), cluster=ClusterConfig(n_clusters=2),
                             writer=WriterConfig(val_fraction=0.5, split_group=split_group, write_report=False,
                                                 write_vis=False))
        with run_log("prefect.task_runs") as logged:
            assert alps_flow(str(data), str(out), cfg, progress_bar=False)["summary"]["n_images"] == 8
        return {subject: {p.parent.name for p in (out / "ann_dir").glob(f"*/sub-0{subject}*.png")}
                for subject in range(1, 5)}, logged

    by_image, _ = run(tmp_path / "by_image", None)
    assert any(len(splits) == 2 for splits in by_image.values())  # what the audit found: a subject in both
    by_subject, logged = run(tmp_path / "by_subject", "sub-[^/]+")
    assert all(len(splits) == 1 for splits in by_subject.values()) and {"train", "val"} == set().union(*by_subject.values())
    assert not [line for line in logged if "--split-group" in line]
    recorded = read_registry(tmp_path / "by_subject")
    assert len(recorded["splits"]) == 8 and recorded["split_by"] == [0, 0.5, "sub-[^/]+"]  # each input, not a group's one
    assert run(tmp_path / "by_subject", "sub-[^/]+")[0] == by_subject  # a rerun keeps it
    _, logged = run(tmp_path / "unmatched", "patient-[0-9]+")
    assert any("--split-group 'patient-[0-9]+' matched none of the input paths (8 without a match, e.g. "
               "'sub-01/ses-1/slice.png'" in line for line in logged), logged
    with pytest.raises(ValueError, match=r"split_group 'sub-\(' is not a regular expression: missing \)"):
        WriterConfig(split_group="sub-(")
