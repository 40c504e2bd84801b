"""Automatic mask generation on any SamBackend: Meta's ``SamAutomaticMaskGenerator``, in numpy.

Same parameters, defaults, records and results as Meta's generator (the ALPS paper's setting; one exception:
duplicate masks one pixel wide or tall, which ``boxes.nms`` suppresses where torchvision keeps each), organised the
same way (generate -> _process_crop -> _process_batch), with the work done only on what survives: the
predicted-IoU filter runs on the decoder's low-resolution output, and only surviving masks are upsampled (over the
window where their logits can pass a threshold: exact, see ``upsample.postprocess_mask_window``),
scored for stability and encoded (COCO RLE by pycocotools). No step changes a mask relative to Meta's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from alps_client._imports import lazy_import
from alps_client.amg.boxes import (
    batched_mask_to_box,
    box_area,
    box_xyxy_to_xywh,
    boxes_xyxy_to_xywh,
    is_box_near_crop_edge,
    nms,
    uncrop_boxes_xyxy,
    uncrop_points,
    window_mask_box,
)
from alps_client.amg.filtering import calculate_stability_score, remove_small_regions
from alps_client.amg.grids import build_all_layer_point_grids, generate_crop_boxes
from alps_client.amg.mask_data import MaskData
from alps_client.amg.upsample import fails_stability_for_sure, postprocess_mask_window
from alps_client.backends.base import Embedding, SamBackend
from alps_client.backends.preprocess import apply_coords, check_image
from alps_client.config import AmgConfig
from alps_client.masks import MaskSet, decode_coco_rle, encode_coco_rle, mask_to_rle, rle_areas, window_rle


@dataclass
class MaskGenerationResult:
    """Masks of one image and what the ALPS stages need next.

    Attributes:
        masks: the masks as a :class:`MaskSet` (COCO RLE, areas, boxes, scores), in Meta's output order.
        embedding: the whole image's embedding (crop layer 0), reused for pseudo feature labels.
        timings: seconds spent in ``encoder``, ``decoder`` and ``postprocess``.
        n_prompts: decoder prompts issued (points over all crops).
    """

    masks: MaskSet
    embedding: Embedding
    timings: dict[str, float] = field(default_factory=dict)
    n_prompts: int = 0


class MaskGenerator:
    """Generate masks for a whole image with a grid of point prompts, as Meta's automatic mask generator.

    Args:
        backend: where the encoder and decoder run (embedded onnxruntime or Triton).
        config: Meta's parameters; ``points_per_batch=None`` uses ``backend.prompt_batch_size``.
    """

    family = "sam"
    default_pred_iou_thresh = 0.88  # SamAutomaticMaskGenerator's

    def __init__(self, backend: SamBackend, config: AmgConfig | None = None) -> None:
        self.backend = backend
        self.config = config or AmgConfig()
        c = self.config
        self._check_family()
        self._check_parameters()
        self.pred_iou_thresh = self.default_pred_iou_thresh if c.pred_iou_thresh is None else c.pred_iou_thresh
        if c.points_per_side is not None:
            self.point_grids = build_all_layer_point_grids(c.points_per_side, c.crop_n_layers, c.crop_n_points_downscale_factor)
        else:
            self.point_grids = [np.asarray(g, dtype=np.float64) for g in c.point_grids or ()]
        if c.min_mask_region_area > 0:
            lazy_import("cv2")
        self.points_per_batch = c.points_per_batch or backend.prompt_batch_size

    def _check_family(self) -> None:
        family = self.backend.manifest.model_family
        if family != self.family:
            raise ValueError(
                f"{type(self).__name__} drives {self.family} models, {self.backend.manifest.root} holds {family}; "
                "use alps_client.amg.make_mask_generator"
            )

    def _check_parameters(self) -> None:
        """Refuse SAM 2's generator parameters, which Meta's SAM generator does not have."""
        given = [name for name, on in (("use_m2m=True", self.config.use_m2m),
                                       ("multimask_output=False", not self.config.multimask_output)) if on]
        if given:
            raise ValueError(f"{' and '.join(given)}: SAM 2.1 only (its generator's parameters); "
                             f"{self.backend.manifest.root} holds {self.backend.manifest.model_type} (sam)")

    def generate(self, image: npt.NDArray[np.uint8]) -> list[dict[str, Any]]:
        """Masks of an ``(H, W, 3) uint8`` RGB image as Meta's records (``output_mode`` decides the segmentation)."""
        data, _, _, _ = self._run(image)
        return self._records(data)

    def generate_masks(self, image: npt.NDArray[np.uint8]) -> MaskGenerationResult:
        """Masks of an ``(H, W, 3) uint8`` RGB image as a :class:`MaskSet`, with the embedding and timings.

        Memory stays bounded whatever the number of masks: they are never all decoded at once.
        """
        data, embedding, n_prompts, timings = self._run(image)
        rles = data["rles"] if len(data) else []
        scores = {"predicted_iou": data["iou_preds"], "stability_score": data["stability_score"],
                  "point_coords": data["points"], "crop_boxes": boxes_xyxy_to_xywh(data["crop_boxes"])} if len(data) else {}
        masks = MaskSet.from_rles((int(image.shape[0]), int(image.shape[1])), rles, **scores)
        return MaskGenerationResult(masks, embedding, timings, n_prompts)

    def _run(self, image: npt.NDArray[np.uint8]) -> tuple[MaskData, Embedding, int, dict[str, float]]:
        check_image(image)
        timings = {"encoder": 0.0, "decoder": 0.0, "postprocess": 0.0}
        data, embedding, n_prompts = self._generate_masks(image, timings)
        start = time.perf_counter()
        data = self._clean_up(data)
        timings["postprocess"] += time.perf_counter() - start
        return data, embedding, n_prompts, timings

    def _clean_up(self, data: MaskData) -> MaskData:
        """SAM's last step: small holes and islands at full resolution, when ``min_mask_region_area > 0``."""
        if self.config.min_mask_region_area <= 0:
            return data
        return self.postprocess_small_regions(
            data, self.config.min_mask_region_area, max(self.config.box_nms_thresh, self.config.crop_nms_thresh)
        )

    def _records(self, data: MaskData) -> list[dict[str, Any]]:
        """Meta's record dicts; dense masks only for ``binary_mask`` (Meta's own output), one at a time."""
        mode = self.config.output_mode
        rles = data["rles"] if len(data) else []
        areas = rle_areas(rles)
        records = []
        for idx in range(len(rles)):
            if mode == "coco_rle":
                segmentation: Any = rles[idx]
            elif mode == "binary_mask":
                segmentation = decode_coco_rle(rles[idx : idx + 1])[0]
            else:
                segmentation = mask_to_rle(decode_coco_rle(rles[idx : idx + 1])[0])
            records.append({
                "segmentation": segmentation,
                "area": int(areas[idx]),
                "bbox": box_xyxy_to_xywh(data["boxes"][idx]),
                "predicted_iou": float(data["iou_preds"][idx]),
                "point_coords": [data["points"][idx].tolist()],
                "stability_score": float(data["stability_score"][idx]),
                "crop_box": box_xyxy_to_xywh(data["crop_boxes"][idx]),
            })
        return records

    def _generate_masks(self, image: npt.NDArray[np.uint8], timings: dict[str, float]) -> tuple[MaskData, Embedding, int]:
        orig_size = (int(image.shape[0]), int(image.shape[1]))
        crop_boxes, layer_idxs = generate_crop_boxes(orig_size, self.config.crop_n_layers, self.config.crop_overlap_ratio)
        data = MaskData()
        whole: Embedding | None = None
        n_prompts = 0
        for crop_box, layer_idx in zip(crop_boxes, layer_idxs):
            crop_data, embedding, n = self._process_crop(image, crop_box, layer_idx, orig_size, timings)
            whole = whole or embedding
            n_prompts += n
            data.cat(crop_data)
        # Remove duplicate masks between crops, preferring masks from smaller crops.
        if len(crop_boxes) > 1 and len(data):
            start = time.perf_counter()
            scores = np.float32(1.0) / box_area(data["crop_boxes"]).astype(np.float32)
            data.filter(nms(data["boxes"], scores, self.config.crop_nms_thresh))
            timings["postprocess"] += time.perf_counter() - start
        if whole is None:  # unreachable: layer 0 is the whole image
            raise RuntimeError("no crop was processed")
        return data, whole, n_prompts

    def _process_crop(
        self,
        image: npt.NDArray[np.uint8],
        crop_box: list[int],
        crop_layer_idx: int,
        orig_size: tuple[int, int],
        timings: dict[str, float],
    ) -> tuple[MaskData, Embedding, int]:
        x0, y0, x1, y1 = crop_box
        cropped = np.ascontiguousarray(image[y0:y1, x0:x1, :])
        cropped_size = (int(cropped.shape[0]), int(cropped.shape[1]))
        start = time.perf_counter()
        (embedding,) = self.backend.encode([cropped])
        timings["encoder"] += time.perf_counter() - start

        points_scale = np.array(cropped_size)[None, ::-1]
        points_for_image = self.point_grids[crop_layer_idx] * points_scale
        data = MaskData()
        for begin in range(0, len(points_for_image), self.points_per_batch):
            points = points_for_image[begin : begin + self.points_per_batch]
            data.cat(self._process_batch(points, embedding, cropped_size, crop_box, orig_size, timings))

        start = time.perf_counter()
        if len(data):
            # Remove duplicates within this crop.
            data.filter(nms(data["boxes"], data["iou_preds"], self.config.box_nms_thresh))
            # Return to the original image frame.
            data["boxes"] = uncrop_boxes_xyxy(data["boxes"], crop_box)
            data["points"] = uncrop_points(data["points"], crop_box)
        data["crop_boxes"] = np.tile(np.asarray(crop_box, dtype=np.int64), (len(data), 1))
        timings["postprocess"] += time.perf_counter() - start
        return data, embedding, len(points_for_image)

    def _process_batch(
        self,
        points: npt.NDArray[np.float64],
        embedding: Embedding,
        im_size: tuple[int, int],
        crop_box: list[int],
        orig_size: tuple[int, int],
        timings: dict[str, float],
    ) -> MaskData:
        coords = apply_coords(points, im_size, self.backend.manifest.image_size).astype(np.float32)[:, None, :]
        labels = np.ones((len(points), 1), np.float32)
        start = time.perf_counter()
        # Masks at or below a positive pred_iou_thresh are dropped unseen: the decoder may skip upscaling them.
        skip_at_or_below = self.pred_iou_thresh if self.pred_iou_thresh > 0.0 else None
        out = self.backend.decode(embedding, coords, labels, iou_threshold=skip_at_or_below)
        timings["decoder"] += time.perf_counter() - start

        start = time.perf_counter()
        n_out = out.low_res_masks.shape[1]
        low_res = out.low_res_masks.reshape(-1, *out.low_res_masks.shape[2:])
        iou_preds = out.iou_predictions.reshape(-1).astype(np.float32)
        point_rows = np.repeat(points, n_out, axis=0)
        # Filter by predicted IoU before anything is upsampled.
        keep = self._iou_survivors(iou_preds)
        data = self._survivor_masks(low_res[keep], keep, iou_preds, point_rows, embedding, im_size, crop_box, orig_size)
        timings["postprocess"] += time.perf_counter() - start
        return data

    def _iou_survivors(self, iou_preds: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
        """Rows whose predicted IoU passes ``pred_iou_thresh`` (all of them when it is 0 or less, as Meta)."""
        thresh = self.pred_iou_thresh
        return np.flatnonzero(iou_preds > thresh) if thresh > 0.0 else np.arange(len(iou_preds))

    def _survivor_masks(
        self,
        survivors: npt.NDArray[np.float32],
        index: npt.NDArray[np.int64],
        iou_preds: npt.NDArray[np.float32],
        point_rows: npt.NDArray[np.floating],
        embedding: Embedding,
        im_size: tuple[int, int],
        crop_box: list[int],
        orig_size: tuple[int, int],
        frame: str = "padded",
    ) -> MaskData:
        """Upsample, score and encode the IoU survivors ``(K, 256, 256)`` (rows ``index`` of the batch).

        Each mask is upsampled only over the window where its logits can pass a threshold, filtered by stability
        and by touching a crop edge, and encoded straight into the image frame one window at a time: memory stays
        bounded whatever the mask count.
        """
        c = self.config
        orig_h, orig_w = orig_size
        floor = c.mask_threshold - abs(c.stability_score_offset)
        image_box = [0, 0, orig_w, orig_h]
        kept_index, kept_stability, kept_boxes, rles = [], [], [], []
        image_size = self.backend.manifest.image_size
        for logits_low, i in zip(survivors, index):
            if c.stability_score_thresh > 0.0 and fails_stability_for_sure(
                logits_low, embedding.input_size, im_size, c.mask_threshold, c.stability_score_offset,
                c.stability_score_thresh, image_size, frame,
            ):
                continue  # Meta's stability filter would drop it: not upsampled
            (y0, _, x0, _), logits = postprocess_mask_window(
                logits_low, embedding.input_size, im_size, floor, image_size, frame=frame
            )
            stability = calculate_stability_score(logits[None], c.mask_threshold, c.stability_score_offset)[0]
            if c.stability_score_thresh > 0.0 and not stability >= c.stability_score_thresh:
                continue
            binary = logits > np.float32(c.mask_threshold)
            box = window_mask_box(binary, y0, x0)
            # Filter boxes that touch crop boundaries.
            if is_box_near_crop_edge(box[None], crop_box, image_box)[0]:
                continue
            rles.append(window_rle(binary, y0 + crop_box[1], x0 + crop_box[0], orig_size))
            kept_index.append(i)
            kept_stability.append(stability)
            kept_boxes.append(box)
        if not kept_index:
            return MaskData()
        rows = np.asarray(kept_index, np.int64)
        return MaskData(
            iou_preds=iou_preds[rows],
            points=point_rows[rows],
            stability_score=np.asarray(kept_stability, np.float32),
            boxes=np.stack(kept_boxes),
            rles=rles,
        )

    @staticmethod
    def postprocess_small_regions(mask_data: MaskData, min_area: int, nms_thresh: float) -> MaskData:
        """Fill small holes and drop small islands, then NMS again preferring unchanged masks (Meta's rules)."""
        if len(mask_data) == 0:
            return mask_data
        # One mask at a time: memory stays bounded whatever the mask count.
        scores, boxes, changed_rles = [], [], {}
        for i, rle in enumerate(mask_data["rles"]):
            mask = decode_coco_rle([rle])[0]
            mask, changed_holes = remove_small_regions(mask, min_area, mode="holes")
            mask, changed_islands = remove_small_regions(mask, min_area, mode="islands")
            unchanged = not (changed_holes or changed_islands)
            scores.append(float(unchanged))
            boxes.append(mask_data["boxes"][i] if unchanged else batched_mask_to_box(mask[None])[0])
            if not unchanged:
                changed_rles[i] = encode_coco_rle(mask[None])[0]
        boxes_array = np.stack(boxes).astype(np.int64)
        keep = nms(boxes_array, np.asarray(scores, np.float32), nms_thresh)
        rles = list(mask_data["rles"])
        for i in keep:
            if i in changed_rles:
                rles[i] = changed_rles[i]
                mask_data["boxes"][i] = boxes_array[i]
        mask_data["rles"] = rles
        mask_data.filter(keep)
        return mask_data
