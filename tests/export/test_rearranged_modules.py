"""The export's rearranged modules compute what Meta's modules compute (PyTorch only, seeded random weights)."""

from __future__ import annotations

import pytest
import torch

from export.tv_shim import install_torchvision_shim

install_torchvision_shim()
from segment_anything.build_sam import _build_sam
from segment_anything.modeling.image_encoder import Attention

from export import chunked_attention
from export.export_sam import TINY_TEST_ARGS
from export.shared_embedding_decoder import predict_masks_shared_embedding


@pytest.mark.parametrize("rows_per_band", [1, 3, 10])
def test_banded_global_attention_equals_meta(monkeypatch, rows_per_band):
    """Bands of query rows (the last one shorter when 10 % rows != 0) with relative positions and batch 2."""
    monkeypatch.setattr(chunked_attention, "ROWS_PER_BAND", rows_per_band)
    monkeypatch.setattr(chunked_attention, "MIN_TOKENS_TO_BAND", 50)
    torch.manual_seed(0)
    attention = Attention(32, num_heads=2, use_rel_pos=True, rel_pos_zero_init=False, input_size=(10, 10)).eval()
    torch.nn.init.normal_(attention.rel_pos_h, std=0.5)
    torch.nn.init.normal_(attention.rel_pos_w, std=0.5)
    x = torch.randn(2, 10, 10, 32)
    original_forward = Attention.forward
    with torch.no_grad():
        expected = attention(x)
        with chunked_attention.query_chunked_attention():
            assert Attention.forward is not original_forward
            banded = attention(x)
    assert Attention.forward is original_forward
    torch.testing.assert_close(banded, expected, rtol=1e-5, atol=1e-6)


def test_small_windows_keep_meta_forward(monkeypatch):
    calls = []
    monkeypatch.setattr(chunked_attention, "_banded_forward", lambda self, x: calls.append(x.shape))
    attention = Attention(32, num_heads=2).eval()
    with torch.no_grad(), chunked_attention.query_chunked_attention():
        attention(torch.randn(1, 14, 14, 32))  # a window: 196 tokens
        attention(torch.randn(1, 64, 64, 32))  # a global block
    assert calls == [torch.Size([1, 64, 64, 32])]


def _meta_and_shared(seed: int, coords: torch.Tensor, labels: torch.Tensor, iou_threshold=None):
    """Meta's mask decoder and ours on the same random decoder weights, embedding and prompts."""
    torch.manual_seed(seed)
    sam = _build_sam(checkpoint=None, **TINY_TEST_ARGS).eval()
    for p in sam.mask_decoder.parameters():  # Meta's zero/one inits would hide a wrong bias or layer norm
        torch.nn.init.normal_(p, std=0.2)
    embedding = torch.randn(1, 256, 64, 64)
    pe = sam.prompt_encoder
    with torch.no_grad():
        sparse, dense = pe(points=(coords, labels), boxes=None, masks=None)
        expected = sam.mask_decoder(
            image_embeddings=embedding, image_pe=pe.get_dense_pe(), sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense, multimask_output=True,
        )
        threshold = None if iou_threshold is None else iou_threshold(expected[1])
        ours = predict_masks_shared_embedding(
            sam.mask_decoder, embedding, pe.get_dense_pe(), sparse, pe.no_mask_embed.weight.reshape(1, -1, 1, 1),
            iou_threshold=threshold,
        )
    return expected, ours, threshold


def test_shared_embedding_decoder_equals_meta_mask_decoder():
    """Several prompts of two points each (foreground and background labels), multimask output."""
    torch.manual_seed(7)
    coords = torch.rand(5, 2, 2) * 1024
    labels = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    (expected_masks, expected_iou), (masks, iou), _ = _meta_and_shared(7, coords, labels)
    assert masks.shape == expected_masks.shape == (5, 3, 256, 256) and iou.shape == (5, 3)
    torch.testing.assert_close(masks, expected_masks, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(iou, expected_iou, rtol=1e-5, atol=1e-5)


def test_only_prompts_above_the_iou_threshold_are_upscaled():
    """With ``iou_threshold`` the rows Meta's decoder would keep are its masks; the rest are empty, not computed."""
    from export.shared_embedding_decoder import SKIPPED_MASK_LOGIT

    torch.manual_seed(3)
    coords, labels = torch.rand(9, 1, 2) * 1024, torch.ones(9, 1)
    # Halfway between two prompts' best IoUs: no prompt sits on the threshold, where float rounding could decide.
    median_best = lambda iou: iou.max(dim=1).values.sort().values[4:6].mean().reshape(1)
    (expected_masks, expected_iou), (masks, iou), threshold = _meta_and_shared(3, coords, labels, median_best)
    upscaled = (expected_iou > threshold).any(dim=1)
    assert 0 < int(upscaled.sum()) < 9
    torch.testing.assert_close(iou, expected_iou, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(masks[upscaled], expected_masks[upscaled], rtol=1e-4, atol=1e-4)
    assert torch.all(masks[~upscaled] == SKIPPED_MASK_LOGIT)
