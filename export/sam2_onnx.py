"""ONNX export of SAM 2.1's image encoder (preprocessing in the graph) and of its point-prompt mask decoder.

What ``SAM2ImagePredictor.set_image`` computes, and the encoder graph reproduces:

1. ``ToTensor``: ``(H, W, 3) uint8`` -> ``(3, H, W) float32``, divided by 255;
2. ``Resize((1024, 1024))`` on that float tensor: torchvision's tensor resize, bilinear, ``antialias=True``,
   ``align_corners=False``, **without keeping the aspect ratio and without padding** (an image already
   1024x1024 is passed through);
3. ``Normalize`` with ImageNet mean/std (in [0, 1] units);
4. ``forward_image``: Hiera trunk + FPN neck, then the mask decoder's ``conv_s0``/``conv_s1`` on the two
   high-resolution levels (the predictor caches them, so does our client);
5. ``no_mem_embed`` added to the lowest-resolution map (``directly_add_no_mem_embed``).

Outputs: ``image_embeddings (B, 256, 64, 64)``, ``high_res_feats_0 (B, 32, 256, 256)``,
``high_res_feats_1 (B, 64, 128, 128)``, all float32. Step 2 becomes onnx ``Resize`` (linear, half_pixel,
``antialias=1``); its difference from PyTorch's kernel is measured at export and stored in the manifest.

The decoder takes one image's features, ``B`` prompts of ``N`` points and an optional low-res mask per prompt,
and returns the logits and predicted IoU of **all four** mask tokens: token 0 is the single-mask output and
tokens 1-3 the multimask outputs. Which of them ``MaskDecoder.forward`` returns (``multimask_output``, and the
dynamic fallback from an unstable token 0 to the best multimask token) is pure selection, done by the client
from the constants the manifest records, so one graph serves both the grid pass and ``use_m2m``'s refinement.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from export.onnx_export import OPSET, _save

IMAGE_SIZE = 1024
PIXEL_MEAN = (0.485, 0.456, 0.406)  # SAM2Transforms: ImageNet statistics of [0, 1] images
PIXEL_STD = (0.229, 0.224, 0.225)
LOW_RES = 256
MASK_TOKENS = 4
ENCODER_INPUTS = {"images": "images"}
ENCODER_OUTPUTS = {
    "image_embeddings": "image_embeddings",
    "high_res_feats_0": "high_res_feats_0",
    "high_res_feats_1": "high_res_feats_1",
}
DECODER_INPUTS = {
    "image_embeddings": "image_embeddings",
    "high_res_feats_0": "high_res_feats_0",
    "high_res_feats_1": "high_res_feats_1",
    "point_coords": "point_coords",
    "point_labels": "point_labels",
    "mask_input": "mask_input",
    "has_mask_input": "has_mask_input",
}
DECODER_OUTPUTS = {"low_res_masks": "low_res_masks", "iou_predictions": "iou_predictions"}


def preprocess(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(B, H, W, 3) uint8`` -> ``(B, 3, 1024, 1024) float32``, as ``SAM2Transforms`` on each image.

    Args:
        images: uint8 RGB batch (one size per batch).
        mean: ``(1, 3, 1, 1) float32`` ImageNet mean.
        std: ``(1, 3, 1, 1) float32`` ImageNet std.
    """
    x = images.permute(0, 3, 1, 2).to(torch.float32).div(255)
    x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False, antialias=True)
    return (x - mean) / std


class Sam2EncoderWithPreprocess(nn.Module):
    """``images (B, H, W, 3) uint8`` -> ``(image_embeddings, high_res_feats_0, high_res_feats_1)``.

    Works for any module with ``SAM2Base``'s ``forward_image`` / ``_prepare_backbone_features`` /
    ``no_mem_embed`` (Meta's model or the structured SAM 2 stand-in).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """See the class docstring."""
        backbone_out = self.model.forward_image(preprocess(images, self.mean, self.std))
        _, feats, _, _ = self.model._prepare_backbone_features(backbone_out)
        feats = [f.permute(1, 2, 0) for f in feats]  # (B, C, HW), as the predictor's view
        if self.model.directly_add_no_mem_embed:
            feats[-1] = feats[-1] + self.model.no_mem_embed.view(1, -1, 1)
        b = images.shape[0]
        s0, s1, emb = (f.reshape(b, f.shape[1], size, size) for f, size in zip(feats, (256, 128, 64)))
        return emb, s0, s1


class Sam2AmgDecoder(nn.Module):
    """One image's features + ``B`` prompts -> logits and IoU of the 4 mask tokens.

    Inputs: ``image_embeddings (1, 256, 64, 64)``, ``high_res_feats_0 (1, 32, 256, 256)``,
    ``high_res_feats_1 (1, 64, 128, 128)``, ``point_coords (B, N, 2)`` in the 1024x1024 frame,
    ``point_labels (B, N)`` (1 foreground, 0 background, float32), ``mask_input (B, 1, 256, 256)`` low-res
    logits and ``has_mask_input (B,)`` (1 where ``mask_input`` is used, else the no-mask embedding).
    Outputs: ``low_res_masks (B, 4, 256, 256)`` and ``iou_predictions (B, 4)``.

    SAM 2's prompt encoder appends the padding point (0, 0) with label -1 when no box is given; so does this
    graph (``_embed_points(pad=True)``), as ``SAM2ImagePredictor._predict`` does for point prompts.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.prompt_encoder = model.sam_prompt_encoder
        self.mask_decoder = model.sam_mask_decoder

    def forward(
        self,
        image_embeddings: torch.Tensor,
        high_res_feats_0: torch.Tensor,
        high_res_feats_1: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """See the class docstring."""
        pe = self.prompt_encoder
        sparse = pe._embed_points(point_coords, point_labels, pad=True)
        no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        dense = torch.where(has_mask_input.reshape(-1, 1, 1, 1) > 0, pe._embed_masks(mask_input), no_mask)
        masks, iou, _, _ = self.mask_decoder.predict_masks(
            image_embeddings=image_embeddings,
            image_pe=pe.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            repeat_image=True,
            high_res_features=[high_res_feats_0, high_res_feats_1],
        )
        return masks, iou


def export_encoder(model: nn.Module, path: Path, opset: int = OPSET) -> float:
    """Export the encoder with preprocessing; dynamic batch, height and width. Returns seconds taken."""
    start = time.perf_counter()
    wrapper = Sam2EncoderWithPreprocess(model).eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    height = torch.export.Dim("height", min=2, max=16384)
    width = torch.export.Dim("width", min=2, max=16384)
    images = torch.zeros((2, 300, 400, 3), dtype=torch.uint8)
    with torch.no_grad():
        program = torch.onnx.export(
            wrapper,
            (images,),
            dynamo=True,
            opset_version=opset,
            input_names=list(ENCODER_INPUTS.values()),
            output_names=list(ENCODER_OUTPUTS.values()),
            dynamic_shapes={"images": {0: batch, 1: height, 2: width}},
            verbose=False,
        )
    _save(program, path, opset)
    return time.perf_counter() - start


def export_decoder(model: nn.Module, path: Path, opset: int = OPSET) -> float:
    """Export the AMG decoder; dynamic prompts B and points per prompt N. Returns seconds taken."""
    start = time.perf_counter()
    wrapper = Sam2AmgDecoder(model).eval()
    prompts = torch.export.Dim("num_prompts", min=1, max=4096)
    points = torch.export.Dim("num_points", min=1, max=64)
    b = 3
    example: dict[str, Any] = {
        "image_embeddings": torch.randn((1, 256, 64, 64)),
        "high_res_feats_0": torch.randn((1, 32, 256, 256)),
        "high_res_feats_1": torch.randn((1, 64, 128, 128)),
        "point_coords": torch.rand((b, 2, 2)) * IMAGE_SIZE,
        "point_labels": torch.ones((b, 2)),
        "mask_input": torch.randn((b, 1, LOW_RES, LOW_RES)),
        "has_mask_input": torch.tensor([0.0, 1.0, 0.0]),
    }
    dynamic = {name: None for name in example}
    dynamic.update({
        "point_coords": {0: prompts, 1: points},
        "point_labels": {0: prompts, 1: points},
        "mask_input": {0: prompts},
        "has_mask_input": {0: prompts},
    })
    with torch.no_grad():
        program = torch.onnx.export(
            wrapper,
            tuple(example.values()),
            dynamo=True,
            opset_version=opset,
            input_names=list(DECODER_INPUTS.values()),
            output_names=list(DECODER_OUTPUTS.values()),
            dynamic_shapes=dynamic,
            verbose=False,
        )
    _save(program, path, opset)
    return time.perf_counter() - start
