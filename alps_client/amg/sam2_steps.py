"""The steps of SAM 2's automatic mask generation that differ from SAM's, as pure numpy functions.

Each one reproduces a piece of Meta's ``sam2`` package (1.1.0):

- :func:`sam2_point_coords`: ``SAM2Transforms.transform_coords(normalize=True)``: points of an ``(h, w)`` image
  (or crop) to the 1024x1024 frame the whole image is stretched to, in float32 as PyTorch computes it.
- :func:`select_mask_tokens`: ``MaskDecoder.forward``'s choice among the 4 mask tokens: tokens 1-3 for
  ``multimask_output``; otherwise token 0, or the best multimask token by predicted IoU when token 0 is
  unstable (its logits thresholded at +/- delta disagree), as ``build_sam2`` configures the decoder.
- :func:`fill_holes_and_sprinkles`: ``SAM2Transforms.postprocess_masks``' clean-up of the low-res logits that
  ``min_mask_region_area`` turns on (``max_hole_area = max_sprinkle_area = min_mask_region_area``): background
  components (8-connected) of at most that many low-res pixels become foreground (``threshold + 10``),
  foreground components of at most that many become background (``threshold - 10``). Meta runs this with a CUDA
  kernel (``sam2._C``) and silently skips it, with a warning, where that kernel is missing (any CPU install);
  we run it everywhere with OpenCV, which labels the same components.

SAM 2's generator does *not* run SAM 1's ``postprocess_small_regions`` on the full-resolution masks: its
``generate`` never calls it, so ``min_mask_region_area`` acts only through the low-res clean-up above.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from alps_client._imports import lazy_import

SAM2_FRAME = 1024
# What SAM2ImagePredictor hands back as low-res logits (the mask input of use_m2m) is clamped to this.
LOW_RES_CLAMP = 32.0


def sam2_point_coords(points: npt.NDArray[np.floating], im_size: tuple[int, int]) -> npt.NDArray[np.float32]:
    """``(N, 2)`` points (x, y) in an ``(h, w)`` image -> ``(N, 2) float32`` in the 1024x1024 frame.

    As ``transform_coords``: the float32 points are divided by w (x) and h (y), then multiplied by 1024.

    Examples:
        >>> sam2_point_coords(np.array([[50.0, 25.0]]), (100, 200)).tolist()
        [[256.0, 256.0]]
    """
    h, w = im_size
    p = np.asarray(points, dtype=np.float32)
    out = np.empty_like(p)
    out[:, 0] = p[:, 0] / np.float32(w)
    out[:, 1] = p[:, 1] / np.float32(h)
    return out * np.float32(SAM2_FRAME)


def token_stability(logits: npt.NDArray[np.float32], delta: float) -> npt.NDArray[np.float32]:
    """``(B, H, W)`` logits -> ``(B,)``: area above +delta over area above -delta (1 where the latter is 0)."""
    flat = logits.reshape(len(logits), -1)
    inter = (flat > np.float32(delta)).sum(axis=1).astype(np.float32)
    union = (flat > np.float32(-delta)).sum(axis=1).astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, np.float32(1.0)).astype(np.float32)


def select_mask_tokens(
    masks: npt.NDArray[np.float32],
    iou: npt.NDArray[np.float32],
    multimask_output: bool,
    selection: dict[str, Any],
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """The outputs ``MaskDecoder.forward`` returns, from all 4 tokens.

    Args:
        masks: ``(B, 4, 256, 256) float32`` low-res logits of the 4 mask tokens.
        iou: ``(B, 4) float32`` their predicted IoUs.
        multimask_output: tokens 1-3 when True; one mask per prompt when False.
        selection: the manifest's ``models.decoder.mask_tokens`` (``multimask``, ``single``,
            ``dynamic_multimask_via_stability``, ``dynamic_multimask_stability_delta`` / ``_thresh``).

    Returns:
        ``(masks (B, K, 256, 256), iou (B, K))`` with K = 3 or 1.
    """
    if multimask_output:
        index = list(selection["multimask"])
        return masks[:, index], iou[:, index]
    single = int(selection["single"])
    if not selection["dynamic_multimask_via_stability"]:
        return masks[:, single : single + 1], iou[:, single : single + 1]
    multi = np.asarray(selection["multimask"])
    best = multi[np.argmax(iou[:, multi], axis=1)]  # first maximum, as torch.argmax
    rows = np.arange(len(masks))
    stable = token_stability(masks[:, single], selection["dynamic_multimask_stability_delta"]) >= np.float32(
        selection["dynamic_multimask_stability_thresh"]
    )
    pick = np.where(stable, single, best)
    return masks[rows, pick][:, None], iou[rows, pick][:, None]


def _small_components(binary: npt.NDArray[np.bool_], max_area: float) -> npt.NDArray[np.bool_]:
    """Pixels of 8-connected components of ``binary`` (H, W) with at most ``max_area`` pixels."""
    cv2 = lazy_import("cv2")
    _, labels, stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=8)
    small = stats[:, cv2.CC_STAT_AREA] <= max_area
    small[0] = False  # label 0 is the complement of binary
    return small[labels] & binary


def fill_holes_and_sprinkles(
    low_res: npt.NDArray[np.float32], mask_threshold: float, max_hole_area: float, max_sprinkle_area: float
) -> npt.NDArray[np.float32]:
    """SAM 2's low-res clean-up: ``(N, H, W)`` logits -> a cleaned copy (unchanged when both areas are 0).

    Both components are found on the *input* logits (as Meta does: holes, then sprinkles, both from the
    original masks); holes are set to ``mask_threshold + 10``, sprinkles to ``mask_threshold - 10``.
    """
    out = np.array(low_res, dtype=np.float32, copy=True)
    for i, logits in enumerate(low_res):
        if max_hole_area > 0:
            holes = _small_components(logits <= np.float32(mask_threshold), max_hole_area)
            out[i][holes] = np.float32(mask_threshold + 10.0)
        if max_sprinkle_area > 0:
            sprinkles = _small_components(logits > np.float32(mask_threshold), max_sprinkle_area)
            out[i][sprinkles] = np.float32(mask_threshold - 10.0)
    return out
