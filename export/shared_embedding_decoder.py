"""SAM's mask decoder for automatic mask generation, rearranged for B prompts on one image.

Meta's ``MaskDecoder.predict_masks`` copies the image embedding once per prompt (``repeat_interleave``), so
everything computed from the image alone is recomputed B times; then it turns the tokens back to ``(B, C, H, W)``
for two ``ConvTranspose2d`` layers. Here, with the same weights and, up to float rounding, the same values:

- the image embedding and its positional encoding stay at batch 1 and broadcast: in the first two-way block the
  key/value projections of the token-to-image attention and the query projection of the image-to-token attention
  run once per decoder call instead of once per prompt;
- once the image tokens differ per prompt (second block, final attention), no attention projects them: with
  T = 7 prompt tokens and H = 8 heads, H*T = 56 is less than the projection width D = 128, so each head's
  projection is applied to the other side instead. Token-to-image: scores ``(q W_k^T) x^T`` (the key bias adds
  a constant per query and cancels in the softmax) and values ``(P x) W_v + b_v`` (probabilities sum to one);
  image-to-token: scores ``x (W_q k^T) + b_q k^T``. Each costs N x H*T x C multiply-adds per prompt instead of
  N x D x C (vit_b decoder, measured in one run: 34 -> 27 ms of CPU per prompt);
- in the image-to-token attentions, each head's output projection is applied to its T token values before the
  attention probabilities mix them (``P @ (V @ W_out)``), for the same reason (29.0 -> 27.3 ms per prompt);
- the upscaling stays channels-last: a 2x2 stride-2 transposed convolution has no overlap, so it is one MatMul
  per pixel followed by a pixel shuffle; ``LayerNorm2d`` becomes a plain layer norm over the last axis. The
  shuffle is never done pixel by pixel: each of the four output rows an input row becomes is computed on its own,
  and the hypernetwork product writes it as whole rows of the 3 masks (an 8-d transpose of the masks took 4 % of
  the decoder: 20.1 -> 19.0 ms per prompt, same values);
- with ``iou_threshold``, only prompts with at least one predicted IoU above it are upscaled (about half of a
  prompt's multiply-adds): the automatic mask generator drops every mask at or below ``pred_iou_thresh`` before
  looking at it, so the masks it keeps are unchanged. The others come back filled with :data:`SKIPPED_MASK_LOGIT`.

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

# Logit of every pixel of a prompt that was not upscaled (all three IoUs at or below the threshold): an empty mask,
# finite so that interpolating or thresholding it never makes a NaN.
SKIPPED_MASK_LOGIT = -1.0e4


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``(b, n, D)`` -> ``(b, H, n, D / H)``."""
    b, n, d = x.shape
    return x.reshape(b, n, num_heads, d // num_heads).transpose(1, 2)


def _head_weight(linear: nn.Linear, num_heads: int) -> torch.Tensor:
    """A projection ``C -> D`` as ``(H, D / H, C)``: row block h maps the C-dim input to head h."""
    d_out, c = linear.weight.shape
    return linear.weight.reshape(num_heads, d_out // num_heads, c)


def _token_to_image(
    attention: nn.Module, tokens_with_pe: torch.Tensor, image_with_pe: torch.Tensor, image: torch.Tensor
) -> torch.Tensor:
    """Meta's ``Attention(q=tokens + pe, k=image + pe, v=image)`` on per-prompt image tokens: ``(B, T, C)``.

    Args:
        attention: ``segment_anything.modeling.transformer.Attention`` (H heads of width d).
        tokens_with_pe: ``(B, T, C)`` queries.
        image_with_pe: ``(B, N, C)`` keys.
        image: ``(B, N, C)`` values.

    The image tokens are never projected: scores ``(q_h W_k,h) x^T`` and outputs ``(P_h x) W_v,h^T + b_v,h``.
    """
    h = attention.num_heads
    q = _heads(attention.q_proj(tokens_with_pe), h)  # (B, H, T, d)
    b, _, t, d = q.shape
    c = image.shape[-1]
    # The key bias adds q_h . b_k,h to every score of a query: constant along the softmax axis, so it cancels.
    query_in_image_space = (q @ _head_weight(attention.k_proj, h)).reshape(b, h * t, c) / math.sqrt(d)
    probs = torch.softmax(query_in_image_space @ image_with_pe.transpose(1, 2), dim=-1)  # (B, H*T, N)
    mixed = (probs @ image).reshape(b, h, t, c)
    # Each row of probabilities sums to one, so the value bias passes through unchanged.
    out = mixed @ _head_weight(attention.v_proj, h).transpose(1, 2) + attention.v_proj.bias.reshape(h, 1, d)
    return attention.out_proj(out.transpose(1, 2).reshape(b, t, h * d))


def _image_to_token(
    attention: nn.Module, image_with_pe: torch.Tensor, tokens_with_pe: torch.Tensor, tokens: torch.Tensor,
    image_shared: bool,
) -> torch.Tensor:
    """Meta's ``Attention(q=image + pe, k=tokens + pe, v=tokens)``: ``(B, N, C)``.

    Args:
        attention: ``segment_anything.modeling.transformer.Attention``.
        image_with_pe: ``(1, N, C)`` queries when ``image_shared`` (projected once for all prompts), else
            ``(B, N, C)`` (never projected: the query projection goes to the token side,
            ``x (W_q,h k_h^T) + b_q,h k_h^T``).
        tokens_with_pe: ``(B, T, C)`` keys.
        tokens: ``(B, T, C)`` values.
        image_shared: whether ``image_with_pe`` is the one embedding all prompts share.

    The output projection is applied to the T token values of each head before the attention probabilities mix
    them: ``P @ (V @ W_out)`` costs N x H*T x C multiply-adds per prompt instead of N x D x C.
    """
    h = attention.num_heads
    k = _heads(attention.k_proj(tokens_with_pe), h)  # (B, H, T, d)
    v = _heads(attention.v_proj(tokens), h)
    b, _, t, d = k.shape
    if image_shared:
        q = _heads(attention.q_proj(image_with_pe), h)  # (1, H, N, d)
        scores = (q @ k.transpose(-1, -2)).transpose(1, 2).reshape(b, -1, h, t)  # (B, N, H, T)
    else:
        c = image_with_pe.shape[-1]
        key_in_image_space = (_head_weight(attention.q_proj, h).transpose(1, 2) @ k.transpose(-1, -2))  # (B, H, C, T)
        key_in_image_space = key_in_image_space.transpose(1, 2).reshape(b, c, h * t)
        bias = (attention.q_proj.bias.reshape(h, 1, d) @ k.transpose(-1, -2)).reshape(b, 1, h * t)
        scores = (image_with_pe @ key_in_image_space + bias).reshape(b, -1, h, t)
    probs = torch.softmax(scores / math.sqrt(d), dim=-1).reshape(b, -1, h * t)  # (B, N, H*T)
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
    image_shared = True  # the image tokens are the embedding's, (1, N, C), until the first image-to-token update
    for block in transformer.layers:
        if block.skip_first_layer_pe:
            queries = block.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + point_embedding
            queries = queries + block.self_attn(q=q, k=q, v=queries)
        queries = block.norm1(queries)
        q, k = queries + point_embedding, keys + image_pe
        if image_shared:
            attn_out = block.cross_attn_token_to_image(q=q, k=k, v=keys)
        else:
            attn_out = _token_to_image(block.cross_attn_token_to_image, q, k, keys)
        queries = block.norm2(queries + attn_out)
        queries = block.norm3(queries + block.mlp(queries))
        q = queries + point_embedding
        keys = block.norm4(keys + _image_to_token(block.cross_attn_image_to_token, k, q, queries, image_shared))
        image_shared = False
    q, k = queries + point_embedding, keys + image_pe
    attn_out = _token_to_image(transformer.final_attn_token_to_image, q, k, keys)
    return transformer.norm_final_attn(queries + attn_out), keys


def _transposed_conv_2x2_weight(conv: nn.ConvTranspose2d) -> torch.Tensor:
    """``ConvTranspose2d(kernel_size=2, stride=2)`` as one ``(C_in, 4 * C_out)`` matrix.

    Per input pixel, its 2x2 output pixels in (dy, dx) order.
    """
    c_in, c_out = conv.weight.shape[:2]
    return conv.weight.permute(0, 2, 3, 1).reshape(c_in, 4 * c_out)


def _gelu(x: torch.Tensor, activation: nn.Module) -> torch.Tensor:
    """Meta's activation; exact GELU written as onnxruntime's Gelu fusion pattern (one fused kernel, same values)."""
    if isinstance(activation, nn.GELU) and activation.approximate == "none":
        return x * 0.5 * (1.0 + torch.erf(x / 1.4142135623730951))
    return activation(x)


def _upscale_masks(md: nn.Module, keys: torch.Tensor, hyper_in: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Meta's output upscaling and hypernetwork product: ``(K, h*w, C)``, ``(K, 3, C/8)`` -> ``(K, 3, 4h, 4w)``.

    Output pixel ``(4i + 2dy + ey, 4j + 2dx + ex)`` comes from input pixel ``(i, j)`` through the first
    convolution's output block ``(dy, dx)`` and the second's ``(ey, ex)``. Each (dy, ey) pair is computed on its
    own, with the masks' channel axis first (``hyper_in @ y^T``): its ``(K, 3, h, 4w)`` logits are then whole
    output rows, and the four pairs interleave by rows of 4w values, with no pixel-by-pixel shuffle.
    """
    conv1, norm, act1, conv2, act2 = md.output_upscaling
    k = keys.shape[0]
    # Columns (dy, dx, c) and (ey, ex, c): each half of a weight is one dy (or ey).
    w1, w2 = _transposed_conv_2x2_weight(conv1), _transposed_conv_2x2_weight(conv2)
    half1, half2 = w1.shape[1] // 2, w2.shape[1] // 2
    rows = []
    for dy in range(2):
        y = keys @ w1[:, dy * half1 : (dy + 1) * half1]
        y = y.reshape(k, h * w, 2, -1) + conv1.bias  # (K, h*w, dx, C/4)
        y = _gelu(F.layer_norm(y, (y.shape[-1],), norm.weight, norm.bias, norm.eps), act1)
        for ey in range(2):
            z = y @ w2[:, ey * half2 : (ey + 1) * half2]
            z = _gelu(z.reshape(k, h * w, 2, 2, -1) + conv2.bias, act2)  # (K, h*w, dx, ex, C/8)
            masks = hyper_in @ z.reshape(k, -1, z.shape[-1]).transpose(1, 2)  # (K, 3, h*w*4): (i, j, dx, ex)
            rows.append(masks.reshape(k, -1, h, 4 * w))
    return torch.stack(rows, dim=3).reshape(k, -1, 4 * h, 4 * w)  # rows 4i + (2dy + ey)


def prompts_to_upscale(iou_pred: torch.Tensor, iou_threshold: torch.Tensor) -> torch.Tensor:
    """Indices ``(K,) int64`` of the prompts with at least one predicted IoU ``(B, 3)`` above ``iou_threshold (1,)``."""
    return torch.nonzero((iou_pred > iou_threshold).any(dim=1)).reshape(-1)


def scatter_kept(kept: torch.Tensor, index: torch.Tensor, num_prompts: int | torch.SymInt) -> torch.Tensor:
    """``(K, 3, H, W)`` masks of the prompts ``index`` placed in ``(B, 3, H, W)``; the others are empty.

    Empty: :data:`SKIPPED_MASK_LOGIT` everywhere.
    """
    masks = torch.full((num_prompts, *kept.shape[1:]), SKIPPED_MASK_LOGIT, dtype=kept.dtype)
    return masks.index_copy(0, index, kept)


def predict_masks_shared_embedding(
    mask_decoder: nn.Module,
    image_embeddings: torch.Tensor,
    image_pe: torch.Tensor,
    sparse_prompt_embeddings: torch.Tensor,
    dense_prompt_embedding: torch.Tensor,
    iou_threshold: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Meta's ``MaskDecoder.predict_masks`` for B prompts sharing one image; multimask output (masks 1..3).

    Args:
        mask_decoder: ``segment_anything.modeling.MaskDecoder``.
        image_embeddings: ``(1, C, h, w) float32`` (C = 256, h = w = 64).
        image_pe: ``(1, C, h, w) float32``.
        sparse_prompt_embeddings: ``(B, N, C) float32``.
        dense_prompt_embedding: ``(1, C, 1, 1)`` or ``(1, C, h, w) float32``, the same for all prompts (no mask
            input in automatic mask generation).
        iou_threshold: ``(1,) float32``; when given, prompts whose three predicted IoUs are all at or below it are
            not upscaled and their masks are :data:`SKIPPED_MASK_LOGIT` everywhere.

    Returns:
        ``low_res_masks (B, 3, 4h, 4w) float32`` logits and ``iou_predictions (B, 3) float32``.
    """
    md = mask_decoder
    b = sparse_prompt_embeddings.shape[0]
    _, _, h, w = image_embeddings.shape
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
    if iou_threshold is None:
        return _upscale_masks(md, keys, hyper_in, h, w), iou_pred
    index = prompts_to_upscale(iou_pred, iou_threshold)
    kept = _upscale_masks(md, keys.index_select(0, index), hyper_in.index_select(0, index), h, w)
    return scatter_kept(kept, index, b), iou_pred
