"""SAM's mask decoder for automatic mask generation, rearranged for B prompts on one image.

Meta's ``MaskDecoder.predict_masks`` copies the image embedding once per prompt (``repeat_interleave``), so
everything computed from the image alone is recomputed B times; then it turns the tokens back to ``(B, C, H, W)``
for two ``ConvTranspose2d`` layers. Here, with the same weights and the same arithmetic:

- the image embedding and its positional encoding stay at batch 1 and broadcast: in the first two-way block the
  key/value projections of the token-to-image attention and the query projection of the image-to-token attention
  run once per image instead of once per prompt;
- the upscaling stays channels-last: a 2x2 stride-2 transposed convolution has no overlap, so it is one MatMul
  per pixel followed by a pixel shuffle; ``LayerNorm2d`` becomes a plain layer norm over the last axis; only the
  3 output masks are shuffled back to ``(B, 3, 256, 256)``, not the 32 upscaled channels.

Parity with Meta's decoder is checked at every export (``onnx_export.check_parity``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _transposed_conv_2x2_channels_last(x: torch.Tensor, conv: nn.ConvTranspose2d) -> torch.Tensor:
    """``ConvTranspose2d(kernel_size=2, stride=2)`` on channels-last tokens.

    Args:
        x: ``(B, P, C_in)`` with one row per input pixel.
        conv: Meta's layer; weight ``(C_in, C_out, 2, 2)``.

    Returns:
        ``(B, P, 4, C_out)``: for each input pixel, its 2x2 output pixels in (dy, dx) order.
    """
    c_in, c_out = conv.weight.shape[:2]
    weight = conv.weight.permute(0, 2, 3, 1).reshape(c_in, 4 * c_out)
    y = x @ weight
    return y.reshape(*x.shape[:-1], 4, c_out) + conv.bias


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

    # Batch 1 here: TwoWayTransformer's matmuls and additions broadcast it against the B prompts' tokens.
    src = image_embeddings + dense_prompt_embedding
    hs, keys = md.transformer(src, image_pe, tokens)  # keys: (B, h*w, C), channels-last
    iou_pred = md.iou_prediction_head(hs[:, 0, :])[:, 1:]
    # Multimask output: mask tokens 1..3 (token k sits at position 1 + k, after the IoU token).
    hyper_in = torch.stack(
        [md.output_hypernetworks_mlps[k](hs[:, 1 + k, :]) for k in range(1, md.num_mask_tokens)], dim=1
    )

    conv1, norm, act1, conv2, act2 = md.output_upscaling
    y = _transposed_conv_2x2_channels_last(keys, conv1)  # (B, h*w, 4, C/4)
    y = _gelu(F.layer_norm(y, (y.shape[-1],), norm.weight, norm.bias, norm.eps), act1)
    y = _gelu(_transposed_conv_2x2_channels_last(y, conv2), act2)  # (B, h*w, 4, 4, C/8)
    masks = y.reshape(b, -1, y.shape[-1]) @ hyper_in.transpose(1, 2)  # (B, h*w*16, 3)
    # Pixel (4i + 2dy + ey, 4j + 2dx + ex) <- input pixel (i, j), first shuffle (dy, dx), second (ey, ex).
    masks = masks.reshape(b, h, w, 2, 2, 2, 2, -1).permute(0, 7, 1, 3, 5, 2, 4, 6)
    return masks.reshape(b, -1, 4 * h, 4 * w), iou_pred
