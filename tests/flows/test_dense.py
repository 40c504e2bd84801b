"""A dense scene through the flow: an image with more than 1,000 masks is labelled, not rejected."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from alps_client.config import AmgConfig, BackendConfig, ClusterConfig, GateConfig, PipelineConfig
from flows.alps_flow import alps_flow
from tests.coco_checks import assert_coco_consistent
from tests.shapes import make_checkerboard


def test_more_than_a_thousand_masks_through_the_flow(fake_repo, tmp_path):
    image, grid = make_checkerboard(34, (340, 340))
    (tmp_path / "data").mkdir()
    Image.fromarray(image).save(tmp_path / "data" / "dense.png")
    Image.fromarray(image[:200, :300]).save(tmp_path / "data" / "small.png")
    cfg = PipelineConfig(backend=BackendConfig(model_repository=str(fake_repo)),
                         amg=AmgConfig(points_per_side=None, point_grids=grid), cluster=ClusterConfig(n_clusters=8))
    out = tmp_path / "out"
    result = alps_flow(str(tmp_path / "data"), str(out), cfg, progress_bar=False)
    assert not result["errors"] and result["summary"]["n_images"] == 2
    annotations = assert_coco_consistent(out)["dense"]
    assert len(annotations) > 1000


# 22-45 s on 2 cores, most of it Meta's generator; by hand with `make test-slow`. In `make test`, the parts are each
# checked: more than 1,000 masks through the flow (above), the generator against Meta's with crops
# (tests/amg/test_parity.py), the tiny SAM's ONNX decoder against Meta's predictor (tests/export/test_export.py).
@pytest.mark.slow
def test_flow_matches_meta_on_sams_own_architecture_with_many_masks(tiny_repo, tiny_checkpoint, tmp_path):
    """SAM's architecture (the tiny config through the real checkpoint path), crops on, a non-square image, and
    thresholds that let several hundred masks through: the flow's COCO masks are Meta's, one to one."""
    import torch

    from export.export_sam import TINY_TEST_ARGS
    from export.tv_shim import install_torchvision_shim
    from tests.shapes import make_shapes_scene

    install_torchvision_shim()
    from segment_anything import SamAutomaticMaskGenerator
    from segment_anything.build_sam import _build_sam

    image, _ = make_shapes_scene(seed=7, size=(150, 230))
    (tmp_path / "data").mkdir()
    Image.fromarray(image).save(tmp_path / "data" / "odd.png")
    # 100 prompts on the whole image, 2x2 in each of the 4 crops (their random masks touch crop edges and go).
    amg = {"points_per_side": 10, "crop_n_layers": 1, "crop_n_points_downscale_factor": 4, "pred_iou_thresh": 0.0,
           "stability_score_thresh": 0.0, "box_nms_thresh": 1.0, "crop_nms_thresh": 1.0}
    sam = _build_sam(checkpoint=str(tiny_checkpoint), **TINY_TEST_ARGS).eval()
    with torch.inference_mode():
        theirs = [r for r in SamAutomaticMaskGenerator(sam, **amg).generate(image) if r["area"] > 0]
    assert len(theirs) > 255  # past the count that used to drop the image
    cfg = PipelineConfig(backend=BackendConfig(model_repository=str(tiny_repo), num_threads=2), amg=AmgConfig(**amg),
                         gate=GateConfig(sigma=1.0), cluster=ClusterConfig(n_clusters=3))
    result = alps_flow(str(tmp_path / "data"), str(tmp_path / "out"), cfg, progress_bar=False)
    assert not result["errors"] and result["summary"]["n_masks_kept"] == len(theirs)
    ours = [a for p in (tmp_path / "out").glob("instances_*.json") for a in json.loads(p.read_text())["annotations"]]
    decoded = np.stack([mask_utils.decode({**a["segmentation"], "counts": a["segmentation"]["counts"].encode()})
                        for a in ours]).astype(bool)
    flat_ours = decoded.reshape(len(ours), -1).astype(np.float32)
    flat_theirs = np.stack([t["segmentation"] for t in theirs]).reshape(len(theirs), -1).astype(np.float32)
    inter = flat_ours @ flat_theirs.T
    union = flat_ours.sum(1)[:, None] + flat_theirs.sum(1)[None] - inter
    iou = inter / np.maximum(union, 1)
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(iou, maximize=True)
    assert len(rows) == len(theirs) and (iou[rows, cols] >= 0.99).all()
    scores = np.array([a["score"] for a in ours])[rows]
    assert np.abs(scores - np.array([t["predicted_iou"] for t in theirs])[cols]).max() <= 1e-3
