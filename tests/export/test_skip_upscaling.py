"""The decoder's optional ``iou_threshold``: prompts that cannot yield a mask are not upscaled, and nothing the
automatic mask generator keeps changes (tiny SAM exported to ONNX, run by the embedded backend)."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnxruntime as ort
import pytest

from alps_client.amg.generator import MaskGenerator
from alps_client.amg.grids import build_point_grid
from alps_client.backends.embedded import EmbeddedBackend
from alps_client.backends.manifest import load_manifest
from alps_client.backends.preprocess import apply_coords
from alps_client.config import AmgConfig, BackendConfig
from export.shared_embedding_decoder import SKIPPED_MASK_LOGIT
from tests.shapes import make_shapes_image


@pytest.fixture(scope="module")
def decoded(tiny_repo):
    backend = EmbeddedBackend(BackendConfig(model_repository=str(tiny_repo), num_threads=2))
    image = make_shapes_image(seed=2)
    (embedding,) = backend.encode([image])
    points = build_point_grid(8) * np.array([image.shape[1], image.shape[0]])
    coords = apply_coords(points, image.shape[:2]).astype(np.float32)[:, None, :]
    labels = np.ones((len(coords), 1), np.float32)
    return backend, image, embedding, coords, labels, backend.decode(embedding, coords, labels)


def test_threshold_is_an_optional_input_declared_in_the_manifest(tiny_repo):
    manifest = load_manifest(tiny_repo)
    assert manifest.decoder.inputs["iou_threshold"].shape == (1,)
    session = ort.InferenceSession(str(manifest.decoder.onnx_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_overridable_initializers()] == ["iou_threshold"]
    assert "iou_threshold" not in {i.name for i in session.get_inputs()}  # callers may leave it out
    config = (tiny_repo / "sam_decoder" / "config.pbtxt").read_text()
    block = config[config.index('name: "iou_threshold"'):].split("}")[0]
    assert "optional: true" in block and "TYPE_FP32" in block


def test_prompts_at_or_below_the_threshold_are_not_upscaled(decoded):
    backend, _, embedding, coords, labels, full = decoded
    best = full.iou_predictions.max(axis=1)
    threshold = float(np.median(best))
    part = backend.decode(embedding, coords, labels, iou_threshold=threshold)
    upscaled = best > np.float32(threshold)
    assert 0 < upscaled.sum() < len(upscaled)
    np.testing.assert_array_equal(part.iou_predictions, full.iou_predictions)
    np.testing.assert_array_equal(part.low_res_masks[upscaled], full.low_res_masks[upscaled])
    assert np.all(part.low_res_masks[~upscaled] == SKIPPED_MASK_LOGIT)


def test_automatic_masks_are_the_same_with_and_without_skipping(decoded):
    backend, image, _, _, _, full = decoded
    # Tiny random SAM: predicted IoUs around 0, logits within +-0.4 (every stability score is 0).
    threshold = float(np.quantile(full.iou_predictions, 0.75))
    assert threshold > 0  # the generator passes only a positive pred_iou_thresh on
    config = AmgConfig(points_per_side=8, pred_iou_thresh=threshold, stability_score_thresh=0.0, box_nms_thresh=1.0)
    calls = []
    decode = backend.decode
    backend.decode = lambda *a, **k: calls.append(k.get("iou_threshold")) or decode(*a, **k)
    try:
        skipping = MaskGenerator(backend, config).generate(image)
    finally:
        del backend.decode
    assert calls and all(c == threshold for c in calls)
    old_manifest = dataclasses.replace(
        backend.manifest, decoder=dataclasses.replace(
            backend.manifest.decoder, inputs={k: v for k, v in backend.manifest.decoder.inputs.items()
                                              if k != "iou_threshold"}))
    old_repository = EmbeddedBackend(BackendConfig(model_repository=str(backend.manifest.root), num_threads=2),
                                     manifest=old_manifest)
    everything = MaskGenerator(old_repository, config).generate(image)
    assert len(skipping) == len(everything) > 1
    for ours, theirs in zip(skipping, everything):
        np.testing.assert_array_equal(ours["segmentation"], theirs["segmentation"])
        assert ours["predicted_iou"] == theirs["predicted_iou"] and ours["bbox"] == theirs["bbox"]
