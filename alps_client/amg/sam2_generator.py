"""Automatic mask generation for SAM 2.1 repositories: Meta's ``SAM2AutomaticMaskGenerator``, in numpy.

The crop loop, NMS, records and output modes are SAM's (:class:`alps_client.amg.generator.MaskGenerator`, which
this class extends); what SAM 2 does differently lives in :mod:`alps_client.amg.sam2_steps` and in
:meth:`Sam2MaskGenerator._process_batch`:

- points go to the 1024x1024 frame the whole crop is stretched to (no longest-side resize, no padding);
- the decoder returns 4 mask tokens, and ``multimask_output`` / the dynamic single-mask fallback pick from them;
- ``use_m2m`` re-prompts every candidate (before any filter) with its own point and low-res logits as mask
  input, one mask per prompt, and the refined masks and IoUs replace the first ones;
- ``min_mask_region_area`` cleans the low-res logits (holes and sprinkles) before upsampling, and nothing else;
- low-res logits are upsampled straight to the crop size (``F.interpolate(..., orig_hw)``).

As in the SAM generator, the predicted-IoU filter runs before upsampling, and only survivors are upsampled
(over the window where their logits can pass a threshold), scored for stability and RLE-encoded; no step changes
a mask relative to Meta's. Defaults are SAM 2's: ``pred_iou_thresh`` 0.8 when the config leaves it unset.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import numpy.typing as npt

from alps_client.amg.generator import MaskGenerator
from alps_client.amg.mask_data import MaskData
from alps_client.amg.sam2_steps import (
    LOW_RES_CLAMP,
    fill_holes_and_sprinkles,
    sam2_point_coords,
    select_mask_tokens,
)
from alps_client.backends.base import Embedding, SamBackend
from alps_client.config import AmgConfig

# The logit that tells a mask from its holes in the low-resolution clean-up (SAM2ImagePredictor's default).
PREDICTOR_MASK_THRESHOLD = 0.0


class Sam2MaskGenerator(MaskGenerator):
    """Masks of a whole image from a grid of point prompts, as ``SAM2AutomaticMaskGenerator``.

    Args:
        backend: a backend on a SAM 2 model repository (``model_family: sam2``).
        config: Meta's parameters (``use_m2m`` and ``multimask_output`` included); ``points_per_batch=None`` uses
            ``backend.prompt_batch_size`` (the batch size never changes the masks).
    """

    family = "sam2"
    default_pred_iou_thresh = 0.8  # SAM2AutomaticMaskGenerator's

    def __init__(self, backend: SamBackend, config: AmgConfig | None = None) -> None:
        super().__init__(backend, config)
        self.token_selection: dict[str, Any] = backend.manifest.raw["models"]["decoder"]["mask_tokens"]

    def _check_parameters(self) -> None:
        """Nothing to refuse: ``use_m2m`` and ``multimask_output`` are this generator's."""

    def _clean_up(self, data: MaskData) -> MaskData:
        """Nothing: SAM 2 cleans small regions on the low-res logits (in :meth:`_process_batch`), not at the end."""
        return data

    def _decode(
        self, embedding: Embedding, points: npt.NDArray[np.float32], im_size: tuple[int, int],
        mask_input: npt.NDArray[np.float32] | None, multimask: bool, timings: dict[str, float],
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """One predictor call for ``(n, 2)`` points: ``(masks (n, K, 256, 256), iou (n, K))`` as Meta selects them."""
        coords = sam2_point_coords(points, im_size)[:, None, :]
        labels = np.ones((len(points), 1), np.float32)
        start = time.perf_counter()
        out = self.backend.decode(embedding, coords, labels, mask_input=mask_input)
        timings["decoder"] += time.perf_counter() - start
        return select_mask_tokens(out.low_res_masks, out.iou_predictions, multimask, self.token_selection)

    def _process_batch(
        self,
        points: npt.NDArray[np.float64],
        embedding: Embedding,
        im_size: tuple[int, int],
        crop_box: list[int],
        orig_size: tuple[int, int],
        timings: dict[str, float],
    ) -> MaskData:
        c = self.config
        points32 = np.asarray(points, dtype=np.float32)  # SAM 2 keeps the grid points in float32
        low_res, iou = self._decode(embedding, points32, im_size, None, c.multimask_output, timings)
        n_out = low_res.shape[1]
        low_res = low_res.reshape(-1, *low_res.shape[2:])
        iou_preds = iou.reshape(-1).astype(np.float32)
        point_rows = np.repeat(points32, n_out, axis=0)
        if c.use_m2m:
            # Every candidate is refined (Meta filters only afterwards), in chunks of points_per_batch.
            refined, refined_iou = [], []
            for lo in range(0, len(point_rows), self.points_per_batch):
                rows = slice(lo, lo + self.points_per_batch)
                mask_input = np.clip(low_res[rows], -LOW_RES_CLAMP, LOW_RES_CLAMP)[:, None]
                m, i = self._decode(embedding, point_rows[rows], im_size, mask_input, False, timings)
                refined.append(m[:, 0])
                refined_iou.append(i[:, 0])
            low_res, iou_preds = np.concatenate(refined), np.concatenate(refined_iou).astype(np.float32)

        start = time.perf_counter()
        keep = self._iou_survivors(iou_preds)
        survivors = low_res[keep]
        if c.min_mask_region_area > 0 and len(keep):
            area = c.min_mask_region_area
            # At 0.0, SAM2ImagePredictor's default: Meta's generator builds its predictor without its own
            # mask_threshold, which only binarises and scores stability after the clean-up.
            survivors = fill_holes_and_sprinkles(survivors, PREDICTOR_MASK_THRESHOLD, area, area)
        data = self._survivor_masks(survivors, keep, iou_preds, point_rows, embedding, im_size, crop_box, orig_size,
                                    frame="stretched")
        timings["postprocess"] += time.perf_counter() - start
        return data
