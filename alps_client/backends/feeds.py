"""The tensors a backend exchanges with the exported models, by role, for each model family (SAM and SAM 2).

Both the embedded and the Triton backend build their requests here and map roles to tensor names through the
manifest, so a family's conventions live in one place:

- **SAM** (``model_family: sam``): the client resizes the longest side to 1024 (PIL BILINEAR) and pads; the
  encoder takes ``images (1, 1024, 1024, 3) uint8`` + ``input_size (1, 2) int64``. The decoder takes the embedding
  and point prompts and returns the 3 multimask outputs.
- **SAM 2** (``model_family: sam2``): the encoder takes the image as it is, ``(1, H, W, 3) uint8``, and resizes it
  to 1024x1024 itself (``SAM2Transforms``: no aspect ratio, no padding), so the embedding's valid region is the
  whole frame (``input_size = (1024, 1024)``). It returns the embedding and two high-resolution maps; the
  decoder takes all three, the points, and a low-res mask per prompt with a 0/1 flag (zeros and 0 when there is
  none), and returns the 4 mask tokens.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from alps_client.backends.base import Embedding
from alps_client.backends.manifest import ModelManifest
from alps_client.backends.preprocess import check_image, prepare_encoder_input

Array = npt.NDArray[np.generic]
LOW_RES = 256
SAM2_FRAME = (1024, 1024)
HIGH_RES_ROLES = ("high_res_feats_0", "high_res_feats_1")


def encoder_feeds(manifest: ModelManifest, image: npt.NDArray[np.uint8]) -> tuple[dict[str, Array], tuple[int, int]]:
    """Encoder inputs by role for one ``(H, W, 3) uint8`` RGB image, and the valid ``(h, w)`` in the 1024 frame."""
    if manifest.model_family == "sam2":
        check_image(image)
        return {"images": np.ascontiguousarray(image)[None]}, SAM2_FRAME
    padded, input_size = prepare_encoder_input(image, manifest.image_size)  # checks the image itself
    return {"images": padded[None], "input_size": np.array([input_size], dtype=np.int64)}, input_size


def encoder_output_roles(manifest: ModelManifest) -> tuple[str, ...]:
    """Roles of the encoder outputs to fetch: the embedding, then (SAM 2) the high-resolution maps."""
    return ("image_embeddings", *HIGH_RES_ROLES) if manifest.model_family == "sam2" else ("image_embeddings",)


def make_embedding(
    outputs: dict[str, Array], input_size: tuple[int, int], image: npt.NDArray[np.uint8]
) -> Embedding:
    """An :class:`Embedding` from one image's encoder outputs (by role, batch dimension 1)."""
    high_res = None
    if HIGH_RES_ROLES[0] in outputs:
        high_res = (outputs[HIGH_RES_ROLES[0]][0], outputs[HIGH_RES_ROLES[1]][0])
    return Embedding(outputs["image_embeddings"][0], input_size, (int(image.shape[0]), int(image.shape[1])), high_res)


def decoder_feeds(
    manifest: ModelManifest,
    embedding: Embedding,
    point_coords: npt.NDArray[np.float32],
    point_labels: npt.NDArray[np.float32],
    mask_input: npt.NDArray[np.float32] | None = None,
    iou_threshold: float | None = None,
) -> tuple[dict[str, Array], dict[str, Array]]:
    """Decoder inputs by role: ``(shared by all prompts, per prompt)``; per-prompt arrays have B rows.

    ``iou_threshold`` goes to decoders that declare it (an optional input: prompts whose predicted IoUs are all at
    or below it are not upscaled; see ``SamBackend.decode``); others do not get it.

    Raises:
        ValueError: For inconsistent shapes, or a mask input for a SAM (1) repository.
    """
    if point_coords.ndim != 3 or point_coords.shape[2] != 2 or point_labels.shape != point_coords.shape[:2]:
        raise ValueError(
            f"point_coords must be (B, N, 2) and point_labels (B, N), got {point_coords.shape} and {point_labels.shape}"
        )
    b = point_coords.shape[0]
    shared: dict[str, Array] = {"image_embeddings": np.ascontiguousarray(embedding.features[None], np.float32)}
    if iou_threshold is not None and "iou_threshold" in manifest.decoder.inputs:
        shared["iou_threshold"] = np.array([iou_threshold], np.float32)
    per_prompt: dict[str, Array] = {
        "point_coords": np.ascontiguousarray(point_coords, np.float32),
        "point_labels": np.ascontiguousarray(point_labels, np.float32),
    }
    if manifest.model_family != "sam2":
        if mask_input is not None:
            raise ValueError(f"mask inputs (use_m2m) need a SAM 2 model repository; {manifest.root} holds SAM")
        return shared, per_prompt
    if embedding.high_res_features is None:
        raise ValueError("this embedding has no high-resolution features: encode the image with a SAM 2 repository")
    for role, feats in zip(HIGH_RES_ROLES, embedding.high_res_features):
        shared[role] = np.ascontiguousarray(feats[None], np.float32)
    if mask_input is None:
        per_prompt["mask_input"] = np.zeros((b, 1, LOW_RES, LOW_RES), np.float32)
        per_prompt["has_mask_input"] = np.zeros((b,), np.float32)
    else:
        if mask_input.shape != (b, 1, LOW_RES, LOW_RES):
            raise ValueError(f"mask_input must be ({b}, 1, {LOW_RES}, {LOW_RES}), got {mask_input.shape}")
        per_prompt["mask_input"] = np.ascontiguousarray(mask_input, np.float32)
        per_prompt["has_mask_input"] = np.ones((b,), np.float32)
    return shared, per_prompt


def mask_outputs(manifest: ModelManifest) -> int:
    """Masks per prompt the decoder returns: 3 (SAM) or 4 (SAM 2's mask tokens)."""
    return int(manifest.decoder.outputs["low_res_masks"].shape[1])
