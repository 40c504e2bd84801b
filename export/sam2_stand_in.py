"""The structured stand-in for SAM 2.1: deterministic, no weights, SAM 2's exact interfaces. NOT SAM 2.1.

Why a stand-in: no SAM 2 weights exist on our machines, and the real architecture with random weights gives no
masks at the AMG's default thresholds (and, at lowered ones, noise whose keep/drop decisions flip with float
rounding), so it cannot show that our client reproduces Meta's ``SAM2AutomaticMaskGenerator``. This model gives
crisp, realistic masks on images of coloured regions through Meta's own ``SAM2ImagePredictor`` and AMG, and
exports through exactly the wrappers of :mod:`export.sam2_onnx` that the real model uses.

It reuses the SAM 1 stand-in's maths (:mod:`export.stand_in`) in SAM 2's frame (the image resized to 1024x1024
without keeping its aspect ratio, ImageNet normalisation, which is SAM 1's up to rounding) and routes it through
SAM 2's tensors:

- ``forward_image``: ``image_embeddings`` is the SAM 1 stand-in's colour-statistics map ``(B, 256, 64, 64)``;
  ``high_res_feats_0`` holds the 4x4-block colour of the frame (the 256x256 low-res frame) in channels 0-2 of
  ``(B, 32, 256, 256)``; ``high_res_feats_1`` the 8x8-block colour in ``(B, 64, 128, 128)``.
- prompt encoder: passes ``(x + 0.5, y + 0.5, label)`` rows through, SAM 2's padding point appended; a mask input
  is passed through as the dense embedding ``(B, 1, 256, 256)`` (zeros without one).
- mask decoder (a subclass of Meta's ``MaskDecoder``, so its ``forward`` selects outputs, including the dynamic
  fallback of the single-mask token, exactly as for SAM 2): 4 mask tokens; token 0 (single mask) has the
  "part" reach, tokens 1-3 the sub-part / part / whole reaches; the colour is read from ``high_res_feats_0``;
  a mask input adds a quarter of its (clamped) logits, so ``use_m2m`` refines; the IoU prediction is the
  agreement between each mask's soft and hard versions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from export.stand_in import (
    BLOCK,
    IMAGE_SIZE,
    LOW_RES,
    REACH_PX,
    StandInImageEncoder,
    colour_prompt_logits,
    predicted_iou,
)

SAM2_STAND_IN_NAME = "sam2-stand-in"
# Token 0 (single mask) reaches as far as the "part" multimask token; tokens 1-3 are SAM 1's three reaches.
TOKEN_REACH_PX = (REACH_PX[1], *REACH_PX)
MASK_INPUT_WEIGHT = 0.25
MASK_INPUT_CLAMP = 20.0


class StandInSam2ImageEncoder(nn.Module):
    """``(B, 3, 1024, 1024)`` normalised frame -> SAM 2's three feature levels (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.stats = StandInImageEncoder()

    def forward(self, x: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        """``backbone_fpn`` (high-res first) and zero ``vision_pos_enc``, as Meta's ``ImageEncoder``."""
        b = x.shape[0]
        s0 = F.pad(F.avg_pool2d(x, BLOCK), (0, 0, 0, 0, 0, 29))  # (B, 32, 256, 256), colour in channels 0-2
        s1 = F.pad(F.avg_pool2d(x, 2 * BLOCK), (0, 0, 0, 0, 0, 61))  # (B, 64, 128, 128)
        fpn = [s0, s1, self.stats(x)]
        pos = [torch.zeros((b, 1, f.shape[2], f.shape[3]), dtype=x.dtype) for f in fpn]
        return {"vision_features": fpn[-1], "vision_pos_enc": pos, "backbone_fpn": fpn}


class StandInSam2PromptEncoder(nn.Module):
    """SAM 2 ``PromptEncoder``'s interface: sparse rows ``(B, N + 1, 3)``, dense ``(B, 1, 256, 256)``."""

    def __init__(self) -> None:
        super().__init__()
        self.no_mask_embed = nn.Embedding(1, 1)
        nn.init.zeros_(self.no_mask_embed.weight)
        self.register_buffer("_dense_pe", torch.zeros(1, 1, 1, 1), persistent=False)

    def get_dense_pe(self) -> torch.Tensor:
        """A ``(1, 1, 1, 1)`` zero: the stand-in has no positional encoding."""
        return self._dense_pe

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        points = points + 0.5  # pixel centres, as SAM 2's prompt encoder
        labels = labels.to(points.dtype)
        if pad:
            points = torch.cat([points, torch.zeros((points.shape[0], 1, 2), dtype=points.dtype)], dim=1)
            labels = torch.cat([labels, -torch.ones((labels.shape[0], 1), dtype=labels.dtype)], dim=1)
        return torch.cat([points, labels.unsqueeze(-1)], dim=-1)

    def _embed_masks(self, masks: torch.Tensor) -> torch.Tensor:
        return masks

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse rows and dense mask logits, as ``PromptEncoder.forward``."""
        if points is None or boxes is not None:
            raise ValueError("the SAM 2 stand-in takes point prompts (and optional mask inputs) only")
        sparse = self._embed_points(points[0], points[1], pad=True)
        if masks is not None:
            return sparse, self._embed_masks(masks)
        dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(sparse.shape[0], -1, LOW_RES, LOW_RES)
        return sparse, dense


def _build_decoder_class() -> type[nn.Module]:
    """Subclass Meta's ``MaskDecoder`` (imported lazily: ``sam2`` needs the torchvision shim first)."""
    from export.tv_shim import install_torchvision_shim

    install_torchvision_shim()
    from sam2.modeling.sam.mask_decoder import MaskDecoder

    class StandInSam2MaskDecoder(MaskDecoder):
        """Meta's ``forward`` (output selection) over the stand-in's ``predict_masks``."""

        def __init__(self) -> None:
            nn.Module.__init__(self)
            # build_sam2's apply_postprocessing settings for the single-mask output.
            self.dynamic_multimask_via_stability = True
            self.dynamic_multimask_stability_delta = 0.05
            self.dynamic_multimask_stability_thresh = 0.98
            self.use_multimask_token_for_obj_ptr = True
            self.pred_obj_scores = False
            self.num_mask_tokens = len(TOKEN_REACH_PX)
            centres = (torch.arange(LOW_RES, dtype=torch.float32) + 0.5) * (IMAGE_SIZE / LOW_RES)
            self.register_buffer("low_res_centres", centres, persistent=False)
            self.register_buffer("pixel_index", torch.arange(LOW_RES, dtype=torch.float32), persistent=False)
            self.register_buffer("reach", torch.tensor(TOKEN_REACH_PX, dtype=torch.float32), persistent=False)

        def predict_masks(
            self,
            image_embeddings: torch.Tensor,
            image_pe: torch.Tensor,
            sparse_prompt_embeddings: torch.Tensor,
            dense_prompt_embeddings: torch.Tensor,
            repeat_image: bool,
            high_res_features: list[torch.Tensor] | None = None,
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
            if high_res_features is None:
                raise ValueError("the SAM 2 stand-in reads colour from high_res_features[0]")
            colour = high_res_features[0][:1, :3]  # (1, 3, 256, 256)
            coords, labels = sparse_prompt_embeddings[..., :2], sparse_prompt_embeddings[..., 2]
            extra = MASK_INPUT_WEIGHT * torch.clamp(dense_prompt_embeddings, -MASK_INPUT_CLAMP, MASK_INPUT_CLAMP)
            masks = colour_prompt_logits(
                colour, coords, labels, self.low_res_centres, self.pixel_index, self.reach, extra
            )
            b = masks.shape[0]
            tokens = torch.zeros((b, self.num_mask_tokens, 1), dtype=masks.dtype)
            return masks, predicted_iou(masks), tokens, torch.full((b, 1), 10.0)

    return StandInSam2MaskDecoder


class StandInSam2(nn.Module):
    """The SAM 2 stand-in with the attributes and methods ``SAM2ImagePredictor`` uses from ``SAM2Base``."""

    image_size = IMAGE_SIZE
    directly_add_no_mem_embed = True
    num_feature_levels = 3

    def __init__(self) -> None:
        super().__init__()
        self.image_encoder = StandInSam2ImageEncoder()
        self.sam_prompt_encoder = StandInSam2PromptEncoder()
        self.sam_mask_decoder = _build_decoder_class()()
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, 256), requires_grad=False)

    @property
    def device(self) -> torch.device:
        """CPU: where the stand-in lives."""
        return self.no_mem_embed.device

    def forward_image(self, img_batch: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        """The image encoder's outputs (already in the decoder's channels)."""
        return self.image_encoder(img_batch)

    def _prepare_backbone_features(self, backbone_out: dict) -> tuple:
        from sam2.modeling.sam2_base import SAM2Base

        return SAM2Base._prepare_backbone_features(self, backbone_out)  # type: ignore[arg-type]


def build_stand_in_sam2() -> StandInSam2:
    """The structured SAM 2 stand-in (not SAM 2.1), in eval mode, ready for Meta's predictor/AMG or export."""
    return StandInSam2().eval()
