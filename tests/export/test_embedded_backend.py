"""Embedded onnxruntime backend: chunked decoding, signature checks, clear errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from alps_client.backends.embedded import EmbeddedBackend
from alps_client.config import BackendConfig
from alps_client.errors import ModelRepositoryError, ModelSignatureError
from tests.shapes import make_shapes_image


def test_chunked_decode_equals_one_call(embedded_backend, monkeypatch):
    image = make_shapes_image(seed=2)
    (embedding,) = embedded_backend.encode([image])
    assert embedding.features.shape == (256, 64, 64) and embedding.features.dtype == np.float32
    rng = np.random.RandomState(0)
    coords = rng.uniform(0, 700, (10, 1, 2)).astype(np.float32)
    labels = np.ones((10, 1), np.float32)
    whole = embedded_backend.decode(embedding, coords, labels)
    monkeypatch.setattr(type(embedded_backend), "prompt_batch_size", property(lambda self: 3))
    chunked = embedded_backend.decode(embedding, coords, labels)
    assert whole.low_res_masks.shape == (10, 3, 256, 256) and whole.iou_predictions.shape == (10, 3)
    np.testing.assert_array_equal(whole.low_res_masks, chunked.low_res_masks)
    np.testing.assert_array_equal(whole.iou_predictions, chunked.iou_predictions)


def test_bad_prompt_shapes(embedded_backend):
    (embedding,) = embedded_backend.encode([make_shapes_image()])
    with pytest.raises(ValueError, match=r"point_coords must be \(B, N, 2\)"):
        embedded_backend.decode(embedding, np.zeros((4, 2), np.float32), np.zeros((4,), np.float32))


def test_missing_repository_says_how_to_build_one(tmp_path):
    with pytest.raises(ModelRepositoryError, match="export/export_sam.py --model-type stand-in"):
        EmbeddedBackend(BackendConfig(model_repository=str(tmp_path / "absent")))


def test_manifest_naming_a_tensor_the_model_lacks(stand_in_repo, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(stand_in_repo, repo)
    manifest = json.loads((repo / "manifest.json").read_text())
    manifest["models"]["decoder"]["inputs"]["point_coords"]["name"] = "coords"
    (repo / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelSignatureError, match="manifest input 'coords'"):
        EmbeddedBackend(BackendConfig(model_repository=str(repo)))
