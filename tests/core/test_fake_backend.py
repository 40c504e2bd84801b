"""The numpy fake SAM: selected by its repository's manifest, SAM's frames, masks of the shapes it is shown."""

from __future__ import annotations

import numpy as np
import pytest

from alps_client.amg.generator import MaskGenerator
from alps_client.backends import make_backend
from alps_client.backends.fake import FakeSamBackend, write_fake_repository
from alps_client.config import AmgConfig, BackendConfig
from alps_client.errors import ModelRepositoryError
from tests.shapes import make_shapes_scene


def test_fake_repository_selects_the_fake_and_only_embedded(tmp_path):
    repo = write_fake_repository(tmp_path / "fake", prompt_batch_size=16)
    backend = make_backend(BackendConfig(model_repository=str(repo)))
    assert isinstance(backend, FakeSamBackend) and backend.prompt_batch_size == 16
    assert backend.manifest.is_stand_in and backend.manifest.model_type == "fake"
    with pytest.raises(ModelRepositoryError, match="FAKE"):
        make_backend(BackendConfig(kind="triton", model_repository=str(repo)))


def test_fake_finds_each_shape_as_one_confident_mask(fake_backend):
    image, shapes = make_shapes_scene(seed=1, size=(160, 224))
    records = MaskGenerator(fake_backend, AmgConfig(points_per_side=16)).generate(image)
    masks = np.stack([r["segmentation"] for r in records])
    for shape in shapes:
        iou = (masks & shape).sum(axis=(1, 2)) / (masks | shape).sum(axis=(1, 2))
        assert iou.max() >= 0.85  # boundaries are off by about a pixel (edges split between regions)
    again = MaskGenerator(fake_backend, AmgConfig(points_per_side=16)).generate(image)
    assert [r["bbox"] for r in again] == [r["bbox"] for r in records]


def test_fake_embedding_frames_match_sam(fake_backend):
    image, _ = make_shapes_scene(seed=2, size=(100, 300))
    (embedding,) = fake_backend.encode([image])
    assert embedding.features.shape == (256, 64, 64) and embedding.features.dtype == np.float32
    assert embedding.input_size == (341, 1024) and embedding.original_size == (100, 300)
    out = fake_backend.decode(embedding, np.array([[[500.0, 100.0]]], np.float32), np.ones((1, 1), np.float32))
    assert out.low_res_masks.shape == (1, 3, 256, 256) and out.iou_predictions.shape == (1, 3)
    assert (out.low_res_masks[:, :, 86:] < 0).all()  # nothing below the valid (resized) region: padding is black
