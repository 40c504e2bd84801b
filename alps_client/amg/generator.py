"""Automatic mask generation on any SamBackend: Meta's ``SamAutomaticMaskGenerator``, in numpy.

Same parameters, defaults, records and results as Meta's generator (the ALPS paper's setting), organised the
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
from alps_client.backends.base import Embedding, SamBackend
from alps_client.amg.boxes import (
    batched_mask_to_box,
    box_area,
    box_xyxy_to_xywh,
    is_box_near_crop_edge,
    nms,
    uncrop_boxes_xyxy,
    uncrop_masks,
    uncrop_points,
)
from alps_client.config import AmgConfig
from alps_client.amg.filtering import calculate_stability_score, remove_small_regions
from alps_client.amg.grids import build_all_layer_point_grids, generate_crop_boxes
from alps_client.amg.mask_data import MaskData
from alps_client.masks import area_from_coco_rle, decode_coco_rle, encode_coco_rle, mask_to_rle
from alps_client.backends.preprocess import apply_coords
from alps_client.amg.upsample import postprocess_mask_window

@dataclass
class MaskGenerationResult:
    """Masks of one image and what the ALPS core needs next.

    Attributes:
        records: Meta's record dicts (segmentation per ``output_mode``, area, bbox XYWH, predicted_iou,
            point_coords, stability_score, crop_box XYWH).
        embedding: the whole image's embedding (crop layer 0), reused for pseudo feature labels.
        timings: seconds spent in ``encoder``, ``decoder`` and ``postprocess``.
        n_prompts: decoder prompts issued (points over all crops).
    """

    records: list[dict[str, Any]]
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
        self.pred_iou_thresh = self.default_pred_iou_thresh if c.pred_iou_thresh is None else c.pred_iou_thresh
        if c.points_per_side is not None:
            self.point_grids = build_all_layer_point_grids(c.points_per_side, c.crop_n_layers, c.crop_n_points_downscale_factor)
        else:
            self.point_grids = [np.asarray(g, dtype=np.float64) for g in c.point_grids or ()]
        if len(self.point_grids) != c.crop_n_layers + 1:
            raise ValueError(
                f"point_grids must hold crop_n_layers + 1 = {c.crop_n_layers + 1} grids, got {len(self.point_grids)}"
            )
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
        if self.config.use_m2m or not self.config.multimask_output:
            raise ValueError("use_m2m and multimask_output=False are SAM 2 parameters; this repository holds SAM")

    def generate(self, image: npt.NDArray[np.uint8]) -> list[dict[str, Any]]:
        """Masks of an ``(H, W, 3) uint8`` RGB image as Meta's records."""
        return self.generate_with_embedding(image).records

    def generate_with_embedding(self, image: npt.NDArray[np.uint8]) -> MaskGenerationResult:
        """Masks of an ``(H, W, 3) uint8`` RGB image, with its embedding and per-stage timings."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be (H, W, 3) uint8 RGB, got shape {image.shape} dtype {image.dtype}")
        timings = {"encoder": 0.0, "decoder": 0.0, "postprocess": 0.0}
        data, embedding, n_prompts = self._generate_masks(image, timings)
        start = time.perf_counter()
        if self.config.min_mask_region_area > 0:
            data = self.postprocess_small_regions(
                data, self.config.min_mask_region_area, max(self.config.box_nms_thresh, self.config.crop_nms_thresh)
            )
        records = self._records(data)
        timings["postprocess"] += time.perf_counter() - start
        return MaskGenerationResult(records, embedding, timings, n_prompts)

    def _records(self, data: MaskData) -> list[dict[str, Any]]:
        mode = self.config.output_mode
        rles = data["rles"] if len(data) else []
        areas = area_from_coco_rle(rles)
        binary = decode_coco_rle(rles) if rles and mode != "coco_rle" else None
        records = []
        for idx in range(len(rles)):
            if mode == "coco_rle":
                segmentation: Any = rles[idx]
            elif mode == "binary_mask":
                segmentation = binary[idx]  # type: ignore[index]
            else:
                segmentation = mask_to_rle(binary[idx])  # type: ignore[index]
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
        c = self.config
        orig_h, orig_w = orig_size
        coords = apply_coords(points, im_size).astype(np.float32)[:, None, :]
        labels = np.ones((len(points), 1), np.float32)
        start = time.perf_counter()
        out = self.backend.decode(embedding, coords, labels)
        timings["decoder"] += time.perf_counter() - start

        start = time.perf_counter()
        n_out = out.low_res_masks.shape[1]
        low_res = out.low_res_masks.reshape(-1, *out.low_res_masks.shape[2:])
        iou_preds = out.iou_predictions.reshape(-1).astype(np.float32)
        point_rows = np.repeat(points, n_out, axis=0)
        # Filter by predicted IoU before anything is upsampled.
        thresh = self.pred_iou_thresh
        keep = np.flatnonzero(iou_preds > thresh) if thresh > 0.0 else np.arange(len(iou_preds))

        # Upsample and score survivors only, each over the window where its logits can pass a threshold.
        floor = c.mask_threshold - abs(c.stability_score_offset)
        # Masks are written transposed, (N, W, H): pycocotools' column-major layout, so RLE needs no copy.
        masks_t = np.zeros((len(keep), im_size[1], im_size[0]), bool)
        kept_index, kept_stability = [], []
        for i in keep:
            (y0, y1, x0, x1), logits = postprocess_mask_window(
                low_res[i], embedding.input_size, im_size, floor, self.backend.manifest.image_size
            )
            stability = calculate_stability_score(logits[None], c.mask_threshold, c.stability_score_offset)[0]
            if c.stability_score_thresh > 0.0 and not stability >= c.stability_score_thresh:
                continue
            masks_t[len(kept_index), x0:x1, y0:y1] = (logits > np.float32(c.mask_threshold)).T
            kept_index.append(i)
            kept_stability.append(stability)
        if not kept_index:
            timings["postprocess"] += time.perf_counter() - start
            return MaskData()
        masks = masks_t[: len(kept_index)].transpose(0, 2, 1)  # (N, H, W) view
        index = np.asarray(kept_index, np.int64)
        data = MaskData(
            iou_preds=iou_preds[index],
            points=point_rows[index],
            stability_score=np.asarray(kept_stability, np.float32),
            boxes=batched_mask_to_box(masks),
        )
        # Filter boxes that touch crop boundaries.
        near_edge = is_box_near_crop_edge(data["boxes"], crop_box, [0, 0, orig_w, orig_h])
        if near_edge.any():
            data.filter(~near_edge)
            masks = masks[~near_edge]
        data["rles"] = encode_coco_rle(uncrop_masks(masks, crop_box, orig_h, orig_w))
        timings["postprocess"] += time.perf_counter() - start
        return data

    @staticmethod
    def postprocess_small_regions(mask_data: MaskData, min_area: int, nms_thresh: float) -> MaskData:
        """Fill small holes and drop small islands, then NMS again preferring unchanged masks (Meta's rules)."""
        if len(mask_data) == 0:
            return mask_data
        new_masks, scores = [], []
        for mask in decode_coco_rle(mask_data["rles"]):
            mask, changed_holes = remove_small_regions(mask, min_area, mode="holes")
            mask, changed_islands = remove_small_regions(mask, min_area, mode="islands")
            new_masks.append(mask)
            scores.append(float(not (changed_holes or changed_islands)))
        masks = np.stack(new_masks)
        boxes = batched_mask_to_box(masks)
        keep = nms(boxes, np.asarray(scores, np.float32), nms_thresh)
        rles = list(mask_data["rles"])
        for i in keep:
            if scores[i] == 0.0:
                rles[i] = encode_coco_rle(masks[i : i + 1])[0]
                mask_data["boxes"][i] = boxes[i]
        mask_data["rles"] = rles
        mask_data.filter(keep)
        return mask_data
