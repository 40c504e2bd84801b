"""The structured stand-in for SAM: deterministic, no weights, SAM's exact interfaces. NOT SAM.

No SAM weights exist on our build machines, and random SAM weights give no masks at default thresholds.
The stand-in gives realistic masks on images with coloured regions, so the whole pipeline (Meta's
automatic mask generator, our client, Triton, clustering) can be exercised and compared offline.

- Image encoder: 48 channels hold the mean normalised colour of each 4x4-pixel block of the padded 1024x1024
  input (16 blocks per 16x16 cell, ``pixel_unshuffle`` order, i.e. the 256x256 low-res frame of SAM's masks);
  the other 208 hold the cell's colour statistics (mean and standard deviation per channel) mapped by a fixed
  orthonormal projection, so pooled features describe colour and texture. Output ``(B, 256, 64, 64)``.
- Prompt encoder: passes the points and labels through (Meta's padding point included, as Meta's
  ``PromptEncoder`` appends it when no box is given).
- Mask decoder: for each prompt, the reference is the (3x3-smoothed) low-res colour under its foreground
  points; three masks of growing spatial reach (SAM's sub-part / part / whole) are "low-res pixels whose
  colour is close to the reference, within a radius of the points"; each mask's predicted IoU is the agreement
  between its soft and hard versions (crisp colour-bounded masks score high, masks cut by the radius score low).

The module tree mirrors ``segment_anything.modeling.Sam`` so that Meta's ``SamPredictor`` and
``SamAutomaticMaskGenerator`` drive it unchanged, and the ONNX wrappers of ``export/onnx_export.py`` export it
exactly like SAM.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from alps_client.backends.preprocess import IMAGE_SIZE, PIXEL_MEAN, PIXEL_STD

STAND_IN_NAME = "stand-in"
EMBED_DIM = 256
CELL = 16
EMBED_SIZE = IMAGE_SIZE // CELL  # 64
LOW_RES = 4 * EMBED_SIZE  # 256
BLOCK = IMAGE_SIZE // LOW_RES  # 4: one low-res mask pixel
COLOUR_CHANNELS = 3 * (CELL // BLOCK) ** 2  # 48
# Colour-distance threshold and logit scale: squared distance in normalised-pixel units (1 unit ~ 57 grey levels).
COLOUR_TAU = 0.12
COLOUR_SCALE = 200.0
# Spatial reach of the three multimask outputs, in pixels of the 1024 frame, and the logit scale of the ramp beyond.
REACH_PX = (96.0, 320.0, 2048.0)
REACH_PENALTY = 20.0
EDGE_OFFSET = 0.5


def _projection(n_stats: int = 6, seed: int = 0) -> torch.Tensor:
    """Fixed ``(208, n_stats)`` matrix with orthonormal columns (numpy RNG: identical on every machine)."""
    rng = np.random.RandomState(seed)
    q, _ = np.linalg.qr(rng.standard_normal((EMBED_DIM - COLOUR_CHANNELS, n_stats)))
    return torch.from_numpy(q.astype(np.float32))


class StandInImageEncoder(nn.Module):
    """Block colours and cell colour statistics: ``(B, 3, 1024, 1024) -> (B, 256, 64, 64) float32``."""

    img_size = IMAGE_SIZE

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("projection", _projection(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = F.avg_pool2d(x, CELL)
        mean_sq = F.avg_pool2d(x * x, CELL)
        std = torch.sqrt(torch.clamp(mean_sq - mean * mean, min=0.0) + 1e-6)
        stats = torch.cat([mean, std], dim=1)  # (B, 6, 64, 64)
        blocks = F.pixel_unshuffle(F.avg_pool2d(x, BLOCK), CELL // BLOCK)  # (B, 48, 64, 64)
        return torch.cat([blocks, torch.einsum("cs,bshw->bchw", self.projection, stats)], dim=1)


class StandInPromptEncoder(nn.Module):
    """Passes prompts through as ``(B, N + 1, 3)`` rows of (x, y, label), Meta's padding point appended."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("_dense_pe", torch.zeros(1, 1, 1, 1), persistent=False)

    def get_dense_pe(self) -> torch.Tensor:
        return self._dense_pe

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if points is None or boxes is not None or masks is not None:
            raise ValueError("the stand-in model takes point prompts only")
        coords, labels = points
        b = coords.shape[0]
        pad_point = torch.zeros((b, 1, 2), dtype=coords.dtype)
        pad_label = -torch.ones((b, 1), dtype=labels.dtype)
        coords = torch.cat([coords, pad_point], dim=1)
        labels = torch.cat([labels, pad_label], dim=1)
        sparse = torch.cat([coords, labels.unsqueeze(-1).to(coords.dtype)], dim=-1)
        return sparse, self._dense_pe.expand(b, 1, 1, 1)


def colour_prompt_logits(
    colour: torch.Tensor,
    coords: torch.Tensor,
    labels: torch.Tensor,
    centres: torch.Tensor,
    pixel_index: torch.Tensor,
    reach: torch.Tensor,
    extra: torch.Tensor | None = None,
) -> torch.Tensor:
    """Stand-in mask logits: low-res pixels close in colour to the prompted ones, within each spatial reach.

    Args:
        colour: ``(1, 3, 256, 256)`` low-res colour image of the 1024 frame (normalised units).
        coords: ``(B, P, 2)`` point centres (x, y) in the 1024 frame (padding point included).
        labels: ``(B, P)`` point labels (1 foreground, 0 background, -1 padding).
        centres: ``(256,)`` low-res pixel centres in the 1024 frame.
        pixel_index: ``(256,)`` 0..255.
        reach: ``(K,)`` spatial reach of each output mask, in pixels of the 1024 frame.
        extra: optional ``(B, 1, 256, 256)`` logits added before the final clamp (SAM 2 stand-in's mask input).

    Returns:
        ``(B, K, 256, 256) float32`` logits in [-50, 20 + extra].
    """
    foreground = (labels == 1).to(coords.dtype)  # (B, P)
    n_fg = torch.clamp(foreground.sum(dim=1), min=1.0)  # (B,)
    smoothed = F.avg_pool2d(colour, 3, stride=1, padding=1, count_include_pad=False)
    # Reference colour: mean over foreground points of the (3x3-smoothed, robust) low-res pixel they fall in.
    pix = torch.clamp(torch.floor(coords / BLOCK), 0, LOW_RES - 1)  # (B, P, 2)
    onehot_x = (pix[..., 0:1] == pixel_index).to(colour.dtype)  # (B, P, 256)
    onehot_y = (pix[..., 1:2] == pixel_index).to(colour.dtype)
    per_point = torch.einsum("bpy,bpx,cyx->bpc", onehot_y, onehot_x, smoothed[0])  # (B, P, 3)
    reference = (per_point * foreground.unsqueeze(-1)).sum(dim=1) / n_fg.unsqueeze(-1)  # (B, 3)
    dist = ((colour - reference[:, :, None, None]) ** 2).sum(dim=1, keepdim=True)  # (B, 1, 256, 256)
    colour_logit = COLOUR_SCALE * (COLOUR_TAU - dist)  # (B, 1, 256, 256)
    # Spatial distance to the nearest foreground point, in pixels of the 1024 frame.
    dx = centres[None, None, None, :] - coords[..., 0][:, :, None, None]  # (B, P, 1, 256)
    dy = centres[None, None, :, None] - coords[..., 1][:, :, None, None]  # (B, P, 256, 1)
    d2 = dx * dx + dy * dy + (1.0 - foreground)[:, :, None, None] * 1e12
    nearest = torch.sqrt(torch.amin(d2, dim=1, keepdim=True))  # (B, 1, 256, 256)
    # No penalty within the reach, then a linear ramp: masks cut by the reach get soft edges, hence low
    # stability and predicted IoU, as SAM's partial masks do; masks bounded by colour stay crisp.
    reach = reach[None, :, None, None]
    penalty = REACH_PENALTY * torch.relu(nearest - reach) / reach  # (B, K, 256, 256)
    # Bounded logits keep float32 rounding far below the 1e-4 parity tolerance.
    # The colour logit is clamped symmetrically, then shifted by EDGE_OFFSET: without the shift, a pixel midway
    # between a +20 and a -20 block after upsampling sat at 0 +/- float rounding, and PyTorch and onnxruntime could
    # put it on either side of the threshold (a 1-pixel box difference on a tall image with crops).
    logits = torch.clamp(colour_logit, -REACH_PENALTY, REACH_PENALTY) + EDGE_OFFSET - penalty
    if extra is not None:
        logits = logits + extra
    return torch.clamp(logits, min=-50.0)


def predicted_iou(masks: torch.Tensor) -> torch.Tensor:
    """``(B, K, 256, 256)`` logits -> ``(B, K)``: agreement of each mask's soft and hard versions."""
    soft = torch.sigmoid(masks)
    hard = (masks > 0).to(masks.dtype)
    inter = (soft * hard).sum(dim=(2, 3))
    union = hard.sum(dim=(2, 3)) + (soft * (1.0 - hard)).sum(dim=(2, 3))
    return inter / (union + 1.0)


class StandInMaskDecoder(nn.Module):
    """Masks of cells close in embedding to the prompted ones, at three spatial reaches."""

    def __init__(self) -> None:
        super().__init__()
        centres = (torch.arange(LOW_RES, dtype=torch.float32) + 0.5) * (IMAGE_SIZE / LOW_RES)
        self.register_buffer("low_res_centres", centres, persistent=False)
        self.register_buffer("pixel_index", torch.arange(LOW_RES, dtype=torch.float32), persistent=False)
        self.register_buffer("reach", torch.tensor(REACH_PX, dtype=torch.float32), persistent=False)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        coords = sparse_prompt_embeddings[..., :2] + 0.5  # pixel centres, as Meta's prompt encoder
        labels = sparse_prompt_embeddings[..., 2]
        # One image per call, shared by all prompts: unpack its low-res colour image.
        colour = F.pixel_shuffle(image_embeddings[:1, :COLOUR_CHANNELS], CELL // BLOCK)  # (1, 3, 256, 256)
        masks = colour_prompt_logits(colour, coords, labels, self.low_res_centres, self.pixel_index, self.reach)
        iou_pred = predicted_iou(masks)
        if not multimask_output:
            return masks[:, 2:3], iou_pred[:, 2:3]
        return masks, iou_pred


class StandInSam(nn.Module):
    """The stand-in with ``segment_anything.modeling.Sam``'s attributes and pre/post-processing."""

    mask_threshold: float = 0.0
    image_format: str = "RGB"

    def __init__(self) -> None:
        super().__init__()
        self.image_encoder = StandInImageEncoder()
        self.prompt_encoder = StandInPromptEncoder()
        self.mask_decoder = StandInMaskDecoder()
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(-1, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise then zero-pad to 1024x1024, exactly as ``Sam.preprocess``."""
        x = (x - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        return F.pad(x, (0, self.image_encoder.img_size - w, 0, self.image_encoder.img_size - h))

    def postprocess_masks(
        self, masks: torch.Tensor, input_size: tuple[int, ...], original_size: tuple[int, ...]
    ) -> torch.Tensor:
        """Upsample low-res masks to the original image frame, exactly as ``Sam.postprocess_masks``."""
        size = self.image_encoder.img_size
        masks = F.interpolate(masks, (size, size), mode="bilinear", align_corners=False)
        masks = masks[..., : input_size[0], : input_size[1]]
        return F.interpolate(masks, original_size, mode="bilinear", align_corners=False)


def build_stand_in_sam() -> StandInSam:
    """The structured stand-in (not SAM), in eval mode, ready for ``SamPredictor`` or export."""
    return StandInSam().eval()
