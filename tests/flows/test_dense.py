"""A dense scene through the flow: an image with more than 1,000 masks is labelled, not rejected."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from alps_client.config import AmgConfig, BackendConfig, ClusterConfig, PipelineConfig
from flows.alps_flow import alps_flow
from tests.shapes import make_checkerboard


def test_more_than_a_thousand_masks_through_the_flow(fake_repo, tmp_path):
    image, grid = make_checkerboard(34, (640, 640))
    (tmp_path / "data").mkdir()
    Image.fromarray(image).save(tmp_path / "data" / "dense.png")
    Image.fromarray(image[:200, :300]).save(tmp_path / "data" / "small.png")
    cfg = PipelineConfig(backend=BackendConfig(model_repository=str(fake_repo)),
                         amg=AmgConfig(points_per_side=None, point_grids=grid), cluster=ClusterConfig(n_clusters=8))
    out = tmp_path / "out"
    result = alps_flow(str(tmp_path / "data"), str(out), cfg, progress_bar=False)
    assert not result["errors"] and result["summary"]["n_images"] == 2
    coco = {}
    for path in out.glob("instances_*.json"):
        data = json.loads(path.read_text())
        coco.update({img["file_name"]: [a for a in data["annotations"] if a["image_id"] == img["id"]]
                     for img in data["images"]})
    annotations = coco["dense.png"]
    assert len(annotations) > 1000
    label = np.asarray(Image.open(next(out.glob("ann_dir/*/dense.png"))))
    masks = [mask_utils.decode({**a["segmentation"], "counts": a["segmentation"]["counts"].encode()}).astype(bool)
             for a in annotations]
    smallest = np.full(label.shape, np.inf)  # area of the smallest mask over each pixel: it is painted last
    for a, m in zip(annotations, masks):
        assert a["area"] == m.sum() and a["bbox"] == mask_utils.toBbox(
            {**a["segmentation"], "counts": a["segmentation"]["counts"].encode()}).tolist()
        smallest[m] = np.minimum(smallest[m], a["area"])
    ties = np.zeros(label.shape, int)
    for a, m in zip(annotations, masks):
        ties[m & (smallest == a["area"])] += 1
    for a, m in zip(annotations, masks):
        on_top = m & (smallest == a["area"]) & (ties == 1)
        assert (label[on_top] == a["category_id"] - 1).all()
    assert (label[np.isinf(smallest)] == 255).all()
