"""SAM's mask decoder for automatic mask generation, rearranged for B prompts on one image.

Meta's ``MaskDecoder.predict_masks`` copies the image embedding once per prompt (``repeat_interleave``), so
everything computed from the image alone is recomputed B times; then it turns the tokens back to ``(B, C, H, W)``
for two ``ConvTranspose2d`` layers. Here, with the same weights and, up to float rounding, the same values:

- the image embedding and its positional encoding stay at batch 1 and broadcast: in the first two-way block the
  key/value projections of the token-to-image attention and the query projection of the image-to-token attention
  run once per image instead of once per prompt;
- in the image-to-token attentions, each head's output projection is applied to its T token values before the
  attention probabilities mix them (``P @ (V @ W_out)``): N x H*T x C multiply-adds per prompt instead of
  N x D x C, with H*T = 8 x 7 = 56 for a one-point prompt and D = 128 (vit_b: 29.0 -> 27.3 ms per prompt);
- the upscaling stays channels-last: a 2x2 stride-2 transposed convolution has no overlap, so it is one MatMul
  per pixel followed by a pixel shuffle; ``LayerNorm2d`` becomes a plain layer norm over the last axis; only the
  3 output masks are shuffled back to ``(B, 3, 256, 256)``, not the 32 upscaled channels.

Keeping the image tokens factored after each attention (later projections rebuilt from the shared embedding and
the rank-56 updates) would halve the multiply-adds again, but the row statistics of the layer norms then need
several passes over ``(B, N, C)`` tensors, and on CPU those memory-bound passes cost what the MatMuls saved
(measured: 31.4 vs 29.8 ms per prompt).

Parity with Meta's decoder is checked at every export (``onnx_export.check_parity``) and in
``tests/export/test_rearranged_modules.py``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``(b, n, D)`` -> ``(b, H, n, D / H)``."""
    b, n, d = x.shape
    return x.reshape(b, n, num_heads, d // num_heads).transpose(1, 2)


def _image_to_token(
    attention: nn.Module, image_with_pe: torch.Tensor, tokens_with_pe: torch.Tensor, tokens: torch.Tensor
) -> torch.Tensor:
    """Meta's ``Attention(q=image + pe, k=tokens + pe, v=tokens)``: ``(B, N, C)``.

    The output projection is applied to the T token values of each head before the attention probabilities mix
    them: ``P @ (V @ W_out)`` costs N x H*T x C multiply-adds per prompt instead of N x D x C (H*T = 8 x 7 = 56 for
    a one-point prompt, D = 128).
    """
    h = attention.num_heads
    q = _heads(attention.q_proj(image_with_pe), h)  # (1 or B, H, N, d)
    k = _heads(attention.k_proj(tokens_with_pe), h)  # (B, H, T, d)
    v = _heads(attention.v_proj(tokens), h)
    b, _, t, d = k.shape
    probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)  # (B, H, N, T)
    probs = probs.transpose(1, 2).reshape(b, -1, h * t)
    out_weight = attention.out_proj.weight.T.reshape(h, d, -1)  # (H, d, C)
    values = (v @ out_weight).reshape(b, h * t, -1)  # (B, H*T, C)
    return probs @ values + attention.out_proj.bias


def _two_way_transformer(
    transformer: nn.Module, image_embedding: torch.Tensor, image_pe: torch.Tensor, point_embedding: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Meta's ``TwoWayTransformer.forward`` on ``(1, N, C)`` image tokens and ``(B, T, C)`` prompt tokens.

    Returns the tokens ``(B, T, C)`` and the image tokens ``(B, N, C)``.
    """
    queries, keys = point_embedding, image_embedding
    for block in transformer.layers:
        if block.skip_first_layer_pe:
            queries = block.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + point_embedding
            queries = queries + block.self_attn(q=q, k=q, v=queries)
        queries = block.norm1(queries)
        q, k = queries + point_embedding, keys + image_pe
        queries = block.norm2(queries + block.cross_attn_token_to_image(q=q, k=k, v=keys))
        queries = block.norm3(queries + block.mlp(queries))
        q = queries + point_embedding
        keys = block.norm4(keys + _image_to_token(block.cross_attn_image_to_token, k, q, queries))
    q, k = queries + point_embedding, keys + image_pe
    attn_out = transformer.final_attn_token_to_image(q=q, k=k, v=keys)
    return transformer.norm_final_attn(queries + attn_out), keys


def _transposed_conv_2x2_weight(conv: nn.ConvTranspose2d) -> torch.Tensor:
    """``ConvTranspose2d(kernel_size=2, stride=2)`` as one ``(C_in, 4 * C_out)`` matrix: per input pixel, its
    2x2 output pixels in (dy, dx) order."""
    c_in, c_out = conv.weight.shape[:2]
    return conv.weight.permute(0, 2, 3, 1).reshape(c_in, 4 * c_out)


def _gelu(x: torch.Tensor, activation: nn.Module) -> torch.Tensor:
    """Meta's activation; exact GELU written as onnxruntime's Gelu fusion pattern (one fused kernel, same values)."""
    if isinstance(activation, nn.GELU) and activation.approximate == "none":
        return x * 0.5 * (1.0 + torch.erf(x / 1.4142135623730951))
    return activation(x)


def predict_masks_shared_embedding(
    mask_decoder: nn.Module,
    image_embeddings: torch.Tensor,
    image_pe: torch.Tensor,
    sparse_prompt_embeddings: torch.Tensor,
    dense_prompt_embedding: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Meta's ``MaskDecoder.predict_masks`` for B prompts sharing one image; multimask output (masks 1..3).

    Args:
        mask_decoder: ``segment_anything.modeling.MaskDecoder``.
        image_embeddings: ``(1, C, h, w) float32`` (C = 256, h = w = 64).
        image_pe: ``(1, C, h, w) float32``.
        sparse_prompt_embeddings: ``(B, N, C) float32``.
        dense_prompt_embedding: ``(1, C, 1, 1)`` or ``(1, C, h, w) float32``, the same for all prompts (no mask
            input in automatic mask generation).

    Returns:
        ``low_res_masks (B, 3, 4h, 4w) float32`` logits and ``iou_predictions (B, 3) float32``.
    """
    md = mask_decoder
    b = sparse_prompt_embeddings.shape[0]
    _, c, h, w = image_embeddings.shape
    output_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], dim=0)
    tokens = torch.cat((output_tokens.unsqueeze(0).expand(b, -1, -1), sparse_prompt_embeddings), dim=1)

    src = (image_embeddings + dense_prompt_embedding).flatten(2).transpose(1, 2)  # (1, h*w, C)
    pe = image_pe.flatten(2).transpose(1, 2)
    hs, keys = _two_way_transformer(md.transformer, src, pe, tokens)
    iou_pred = md.iou_prediction_head(hs[:, 0, :])[:, 1:]
    # Multimask output: mask tokens 1..3 (token k sits at position 1 + k, after the IoU token).
    hyper_in = torch.stack(
        [md.output_hypernetworks_mlps[k](hs[:, 1 + k, :]) for k in range(1, md.num_mask_tokens)], dim=1
    )

    conv1, norm, act1, conv2, act2 = md.output_upscaling
    y = keys @ _transposed_conv_2x2_weight(conv1)
    y = y.reshape(*y.shape[:-1], 4, -1) + conv1.bias  # (B, h*w, 4, C/4)
    y = _gelu(F.layer_norm(y, (y.shape[-1],), norm.weight, norm.bias, norm.eps), act1)
    y = y @ _transposed_conv_2x2_weight(conv2)
    y = _gelu(y.reshape(*y.shape[:-1], 4, -1) + conv2.bias, act2)  # (B, h*w, 4, 4, C/8)
    masks = y.reshape(b, -1, y.shape[-1]) @ hyper_in.transpose(1, 2)  # (B, h*w*16, 3)
    # Pixel (4i + 2dy + ey, 4j + 2dx + ex) <- input pixel (i, j), first shuffle (dy, dx), second (ey, ex).
    masks = masks.reshape(b, h, w, 2, 2, 2, 2, -1).permute(0, 7, 1, 3, 5, 2, 4, 6)
    return masks.reshape(b, -1, 4 * h, 4 * w), iou_pred
