"""Gate boundaries and pseudo feature labels against a brute-force computation."""

from __future__ import annotations

import numpy as np
import pytest

from alps_client.backends.base import Embedding
from alps_client.config import FeatureConfig, GateConfig
from alps_client.labels.features import pool_mask_features
from alps_client.labels.gate import gate_keep, instance_proportion
from alps_client.masks import encode_coco_rle as rle


def test_gate_boundaries():
    areas = np.array([0, 29, 30, 31, 100])
    assert instance_proportion(areas, 100).tolist() == [0.0, 0.29, 0.30, 0.31, 1.0]
    assert gate_keep(areas, 100, 0.3).tolist() == [True, True, True, False, False]
    assert gate_keep(areas, 100, 1.0).all()
    for bad in (0.0, -0.1, 1.01):
        with pytest.raises(ValueError, match=r"sigma must lie in \(0, 1\]"):
            gate_keep(areas, 100, bad)
        with pytest.raises(ValueError, match=r"sigma must lie in \(0, 1\]"):
            GateConfig(sigma=bad)


def brute_force_pfl(embedding: Embedding, mask: np.ndarray, size: int) -> np.ndarray:
    """The paper's computation spelled out: upsample F's valid region, area-resize the mask, masked mean."""
    c, gh, gw = embedding.features.shape
    vh, vw = embedding.input_size[0] / 16, embedding.input_size[1] / 16
    last_y, last_x = min(int(np.ceil(vh)), gh) - 1, min(int(np.ceil(vw)), gw) - 1  # beyond: padding only
    up = np.zeros((c, size, size))
    for i in range(size):
        sy = min(max((i + 0.5) * vh / size - 0.5, 0.0), last_y)
        y0 = int(np.floor(sy)); y1 = min(y0 + 1, last_y); fy = sy - y0
        for j in range(size):
            sx = min(max((j + 0.5) * vw / size - 0.5, 0.0), last_x)
            x0 = int(np.floor(sx)); x1 = min(x0 + 1, last_x); fx = sx - x0
            f = embedding.features
            up[:, i, j] = ((1 - fy) * ((1 - fx) * f[:, y0, x0] + fx * f[:, y0, x1])
                           + fy * ((1 - fx) * f[:, y1, x0] + fx * f[:, y1, x1]))
    h, w = mask.shape
    cover = np.zeros((size, size))
    for y, x in zip(*np.nonzero(mask)):
        for i in range(size):
            oy = max(0.0, min(y + 1, (i + 1) * h / size) - max(y, i * h / size))
            if oy == 0:
                continue
            for j in range(size):
                ox = max(0.0, min(x + 1, (j + 1) * w / size) - max(x, j * w / size))
                cover[i, j] += oy * ox
    cover /= (h / size) * (w / size)
    return (up * cover).sum(axis=(1, 2)) / cover.sum()


def test_pfl_matches_brute_force():
    rng = np.random.RandomState(0)
    emb = Embedding(rng.randn(8, 64, 64).astype(np.float32), input_size=(700, 1024), original_size=(35, 51))
    masks = np.zeros((3, 35, 51), bool)
    masks[0, 5:20, 10:40] = True
    masks[1, 30:32, 3:4] = True  # tiny: 2 pixels, far smaller than an output cell
    masks[2] = rng.rand(35, 51) > 0.7
    ours = pool_mask_features(emb, rle(masks), FeatureConfig(feature_size=24, l2_normalize=False))
    for k in range(3):
        np.testing.assert_allclose(ours[k], brute_force_pfl(emb, masks[k], 24), rtol=1e-4, atol=1e-5)
    assert np.abs(ours[1]).sum() > 0  # the tiny mask still gets a vector
    normed = pool_mask_features(emb, rle(masks), FeatureConfig(feature_size=24, l2_normalize=True))
    np.testing.assert_allclose(np.linalg.norm(normed, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(normed[0], ours[0] / np.linalg.norm(ours[0]), rtol=1e-5)


@pytest.mark.parametrize("input_size", [(768, 1024), (1024, 600), (1000, 1024), (1024, 1024)])
def test_pfl_never_reads_the_padding(input_size):
    """Cells wholly in the padded part of the 1024 frame describe the padding: a mask at the image's bottom or
    right edge must pool the image's cells only (here all 1.0, the padding 1000.0)."""
    h, w = input_size
    rows, cols = int(np.ceil(h / 16)), int(np.ceil(w / 16))
    features = np.full((4, 64, 64), 1000.0, np.float32)
    features[:, :rows, :cols] = 1.0
    emb = Embedding(features, input_size=input_size, original_size=(h // 8, w // 8))
    masks = np.zeros((3, h // 8, w // 8), bool)
    masks[0, -3:, :] = True  # bottom edge
    masks[1, :, -3:] = True  # right edge
    masks[2, -2:, -2:] = True  # bottom-right corner
    pooled = pool_mask_features(emb, rle(masks), FeatureConfig(l2_normalize=False))
    np.testing.assert_allclose(pooled, 1.0, rtol=1e-6)


def test_pfl_shape_errors_and_empty():
    emb = Embedding(np.zeros((256, 64, 64), np.float32), (1024, 1024), (10, 10))
    assert pool_mask_features(emb, []).shape == (0, 256)
    assert not pool_mask_features(emb, rle(np.zeros((1, 10, 10), bool))).any()
    with pytest.raises(ValueError, match="original_size"):
        pool_mask_features(emb, rle(np.zeros((1, 5, 10), bool)))


def test_pfl_is_the_same_in_chunks():
    rng = np.random.RandomState(1)
    emb = Embedding(rng.randn(16, 64, 64).astype(np.float32), input_size=(1024, 683), original_size=(60, 40))
    masks = rng.rand(70, 60, 40) > 0.8  # more masks than one chunk
    together = pool_mask_features(emb, rle(masks), FeatureConfig(l2_normalize=False))
    alone = np.stack([pool_mask_features(emb, rle(m[None]), FeatureConfig(l2_normalize=False))[0] for m in masks])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)
