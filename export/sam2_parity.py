"""ONNX (onnxruntime, CPU) against PyTorch for SAM 2.1 exports: Meta's predictor is the reference.

The encoder side runs ``SAM2ImagePredictor.set_image`` (``SAM2Transforms`` + ``forward_image`` + the
``no_mem_embed`` addition) on a non-square image that is upscaled and on one that is downscaled (where the
antialiasing of the resize matters). The preprocessing graph is also exported alone and compared with
``SAM2Transforms`` pixel for pixel, so the manifest records how far onnxruntime's antialiased ``Resize`` is from
PyTorch's kernel. The decoder side runs Meta's prompt encoder and ``MaskDecoder.predict_masks`` (all 4 mask
tokens), without and with mask inputs (the ``use_m2m`` call).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from export.onnx_export import check_session, parity_image, worst_difference
from export.sam2_onnx import IMAGE_SIZE, LOW_RES, PIXEL_MEAN, PIXEL_STD, preprocess

ENCODER_RTOL = 1e-3
DECODER_ATOL = 1e-4
# Images of the parity check: (height, width) upscaled to 1024 in both axes, and downscaled in both.
PARITY_SIZES = ((480, 640), (1100, 1300))


class _Preprocess(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return preprocess(images, self.mean, self.std)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))


def preprocess_difference(images: list[np.ndarray]) -> float:
    """Max abs difference between the exported preprocessing and ``SAM2Transforms`` (normalised units)."""
    from sam2.utils.transforms import SAM2Transforms

    transforms = SAM2Transforms(resolution=IMAGE_SIZE, mask_threshold=0.0)
    dim = torch.export.Dim
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "preprocess.onnx"
        example = torch.zeros((1, 300, 400, 3), dtype=torch.uint8)
        with torch.no_grad():
            program = torch.onnx.export(
                _Preprocess().eval(), (example,), dynamo=True, input_names=["images"], output_names=["x"],
                dynamic_shapes={"images": {1: dim("height", min=2, max=16384), 2: dim("width", min=2, max=16384)}},
                verbose=False,
            )
        program.save(str(path))
        session = check_session(path)
        worst = 0.0
        for image in images:
            ours = session.run(None, {"images": image[None]})[0][0]
            with torch.no_grad():
                theirs = transforms(image).numpy()
            worst = worst_difference(worst, float(np.abs(ours - theirs).max()))
    return worst


def check_parity(
    model: nn.Module, encoder_path: Path, decoder_path: Path, encoder_rtol: float = ENCODER_RTOL,
    decoder_atol: float = DECODER_ATOL,
) -> dict[str, Any]:
    """Compare the exported encoder and decoder with Meta's PyTorch path; raise past tolerance.

    Returns:
        The figures stored in the manifest's ``parity`` block.
    """
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    predictor = SAM2ImagePredictor(model)
    images = [parity_image(h, w) for h, w in PARITY_SIZES]
    encoder = check_session(encoder_path)  # one model at a time (see check_session)
    encoded = [encoder.run(None, {"images": image[None]}) for image in images]
    del encoder
    encoder_rel: dict[str, float] = {}
    for image, ours in zip(images, encoded):
        predictor.set_image(image)
        theirs = [predictor._features["image_embed"], *predictor._features["high_res_feats"]]
        for name, a, b in zip(("image_embeddings", "high_res_feats_0", "high_res_feats_1"), ours, theirs):
            encoder_rel[name] = worst_difference(encoder_rel.get(name, 0.0), _rel(a, b.numpy()))
    # Decoder on the last image's features (Meta's), 16 one-point prompts; then the same prompts with mask inputs.
    feats = [f.numpy() for f in (predictor._features["image_embed"], *predictor._features["high_res_feats"])]
    h, w = images[-1].shape[:2]
    rng = np.random.RandomState(1)
    points = np.stack([rng.uniform(0, w, 16), rng.uniform(0, h, 16)], axis=-1).astype(np.float32)
    coords = (torch.as_tensor(points) / torch.tensor([w, h], dtype=torch.float32) * IMAGE_SIZE)[:, None, :]
    labels = torch.ones((16, 1))
    decoder = check_session(decoder_path)
    mask_atol = iou_atol = 0.0
    prev: torch.Tensor | None = None
    for with_masks in (False, True):
        mask_input = prev if prev is not None else torch.zeros((16, 1, LOW_RES, LOW_RES))
        has_mask = torch.full((16,), float(with_masks))
        ort_masks, ort_iou = decoder.run(None, {
            "image_embeddings": feats[0], "high_res_feats_0": feats[1], "high_res_feats_1": feats[2],
            "point_coords": coords.numpy(), "point_labels": labels.numpy(),
            "mask_input": mask_input.numpy(), "has_mask_input": has_mask.numpy(),
        })
        with torch.no_grad():
            sparse, dense = model.sam_prompt_encoder(
                points=(coords, labels), boxes=None, masks=mask_input if with_masks else None
            )
            masks, iou, _, _ = model.sam_mask_decoder.predict_masks(
                image_embeddings=torch.as_tensor(feats[0]), image_pe=model.sam_prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, repeat_image=True,
                high_res_features=[torch.as_tensor(feats[1]), torch.as_tensor(feats[2])],
            )
        mask_atol = worst_difference(mask_atol, float(np.abs(ort_masks - masks.numpy()).max()))
        iou_atol = worst_difference(iou_atol, float(np.abs(ort_iou - iou.numpy()).max()))
        prev = torch.clamp(masks[:, 1:2], -32.0, 32.0)  # as the predictor returns low-res logits for m2m
    figures = {
        **{f"encoder_{k}_max_rel_diff": v for k, v in encoder_rel.items()},
        "encoder_max_rel_diff": worst_difference(*encoder_rel.values()),
        "preprocess_max_abs_diff": preprocess_difference(images),
        "decoder_masks_max_abs_diff": mask_atol,
        "decoder_iou_max_abs_diff": iou_atol,
        "encoder_rtol": encoder_rtol,
        "decoder_atol": decoder_atol,
        "image_sizes": [list(s) for s in PARITY_SIZES],
    }
    if not (figures["encoder_max_rel_diff"] <= encoder_rtol and mask_atol <= decoder_atol
            and iou_atol <= decoder_atol):  # NaN fails
        raise RuntimeError(
            f"ONNX/PyTorch parity failed: encoder rel {figures['encoder_max_rel_diff']:.2e} (limit "
            f"{encoder_rtol:.0e}), decoder masks atol {mask_atol:.2e}, iou atol {iou_atol:.2e} (limit "
            f"{decoder_atol:.0e}); the export is not usable"
        )
    return figures
