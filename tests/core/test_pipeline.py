"""One image through masks -> gate -> features -> shard, on the numpy fake SAM; dense scenes of 1,000+ masks."""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

from alps_client.amg.generator import MaskGenerator
from alps_client.config import AmgConfig, PipelineConfig
from alps_client.io.shards import read_shard
from alps_client.masks import decode_coco_rle, rle_boxes
from alps_client.pipeline import label_image
from alps_client.synthetic import make_scene
from tests.shapes import make_checkerboard


def test_label_image_clips_to_valid_pixels_and_measures_on_the_rles(fake_backend, tmp_path):
    image, _ = make_scene(3, (128, 160))
    image[:, 60:100] = (250, 10, 10)  # one region of 5,120 px: more than sigma of the valid pixels, not of the frame
    cfg = PipelineConfig(amg=AmgConfig(points_per_side=8))
    valid = np.ones(image.shape[:2], bool)
    valid[:, :60] = False  # e.g. transparent pixels: never labelled, not counted in PI(M)
    unclipped = decode_coco_rle(MaskGenerator(fake_backend, cfg.amg).generate_masks(image).masks.rles)
    outside = int((~(unclipped & valid).any(axis=(1, 2))).sum())
    assert outside > 0  # masks wholly in the transparent pixels
    summary = label_image(image, "scene", "scene.png", MaskGenerator(fake_backend, cfg.amg), cfg,
                          tmp_path / "scene.npz", "fp", valid_mask=valid)
    shard = read_shard(tmp_path / "scene.npz")
    assert summary.n_masks == len(shard.masks) == summary.n_kept + summary.n_gated == len(unclipped) - outside
    # Gated means covering more than sigma: those emptied by the transparency were counted so.
    assert (shard.masks.areas > 0).all() and summary.n_gated == int((shard.masks.areas > 0.3 * valid.sum()).sum())
    assert shard.pfl.shape == (summary.n_kept, 256)
    assert not decode_coco_rle(shard.masks.rles)[:, :, :20].any()
    assert (shard.masks.bboxes == rle_boxes(shard.masks.rles)).all()
    # The gate's PI(M) is taken over valid pixels: every kept mask covers at most sigma of them, and one covering
    # more, though not sigma of the whole frame, is gated (mutation audit: no mask lay in between)
    between = (shard.masks.areas > 0.3 * valid.sum()) & (shard.masks.areas <= 0.3 * valid.size)
    assert between.any() and not shard.keep[between].any()
    assert (shard.masks.areas[shard.keep] <= 0.3 * valid.sum()).all() and shard.extra["image_area"] == valid.sum()
    assert {"encoder", "decoder", "postprocess", "gate", "features", "write_shard"} <= set(summary.timings)


def test_a_dense_scene_keeps_every_mask(fake_backend, tmp_path):
    """More than 1,000 masks in one image (pycocotools' area() fails from 256): all found, kept and consistent."""
    image, grid = make_checkerboard(34, (640, 640))
    cfg = PipelineConfig(amg=AmgConfig(points_per_side=None, point_grids=grid))
    summary = label_image(image, "dense", "dense.png", MaskGenerator(fake_backend, cfg.amg), cfg,
                          tmp_path / "dense.npz", "fp")
    shard = read_shard(tmp_path / "dense.npz")
    assert summary.n_kept > 1000 and shard.pfl.shape == (summary.n_kept, 256)
    rles = [{**r, "counts": r["counts"].encode()} for r in shard.masks.rles]
    areas = np.concatenate([mask_utils.area(rles[i : i + 200]) for i in range(0, len(rles), 200)])
    assert shard.masks.areas.tolist() == areas.tolist()
    cell = 640 / 34  # each checkerboard cell is one kept mask
    assert abs(np.median(shard.masks.areas[shard.keep]) - cell**2) < 3 * cell


def test_slivers_are_labelled_with_crop_layers(fake_backend, tmp_path):
    """A 1 x 400 scanline and a 2 x 3 thumbnail with --crop-n-layers 2: Meta's arithmetic gave them crops of no
    pixel, and the generator divided by zero (the image failed the run)."""
    cfg = PipelineConfig(amg=AmgConfig(points_per_side=4, crop_n_layers=2, min_mask_region_area=2))
    for shape in ((1, 400), (2, 3)):
        image, _ = make_scene(1, (max(shape), max(shape)))
        image = np.ascontiguousarray(image[: shape[0], : shape[1]])
        summary = label_image(image, "sliver", "sliver.png", MaskGenerator(fake_backend, cfg.amg), cfg,
                              tmp_path / "sliver.npz", "fp")
        shard = read_shard(tmp_path / "sliver.npz")
        assert summary.n_masks == len(shard.masks) and decode_coco_rle(shard.masks.rles).shape[1:] == shape
