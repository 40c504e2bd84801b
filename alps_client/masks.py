"""The one mask representation of alps: COCO run-length encodings, from the generator to the writer.

Masks are never held as one dense ``(N, H, W)`` array: 2,000 masks of a 1024 x 1024 image would be 2 GB each
time. A :class:`MaskSet` keeps each mask as a COCO compressed RLE (``{"size": [H, W], "counts": str}``,
JSON-ready, pycocotools' format) with its area and box; whatever needs pixels decodes a bounded chunk at a time
(:func:`iter_decoded`). Areas and boxes always come from the RLE itself (pycocotools' ``area``/``toBbox``), so a
COCO annotation's ``area`` and ``bbox`` agree with its segmentation by construction.

pycocotools 2.0.x with numpy 2 raises ``OverflowError`` in ``mask.area`` for 256 or more RLEs in one call
(it builds its result from a uint8 array); every call here is chunked below that, whatever the mask count.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from pycocotools import mask as mask_utils

Rle = dict[str, Any]
# Largest list pycocotools' area() takes in one call with numpy 2 (see module docs).
PYCOCOTOOLS_MAX_LIST = 255
# Masks decoded at once where pixels are needed (painting, pooling, clean-up): bounded memory per image.
DECODE_CHUNK = 32


def encode_coco_rle(masks: npt.NDArray[np.bool_]) -> list[Rle]:
    """``(N, H, W) bool`` masks to COCO compressed RLEs (``{"size": [H, W], "counts": str}``, JSON-ready)."""
    if masks.shape[0] == 0:
        return []
    # (H, W, N) in Fortran order; no copy when the masks are stored transposed, (N, W, H) C-contiguous.
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).view(np.uint8)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def decode_coco_rle(rles: Sequence[Rle]) -> npt.NDArray[np.bool_]:
    """COCO RLEs (compressed or not) of one image size to ``(N, H, W) bool``; use :func:`iter_decoded` for many."""
    if not rles:
        raise ValueError("decode_coco_rle needs at least one RLE (the image size comes from them)")
    return mask_utils.decode([_to_coco(r) for r in rles]).transpose(2, 0, 1).astype(bool)


def iter_decoded(rles: Sequence[Rle], chunk: int = DECODE_CHUNK) -> Iterator[tuple[int, npt.NDArray[np.bool_]]]:
    """``(start, (n, H, W) bool)`` for consecutive chunks of at most ``chunk`` masks: memory bounded by the chunk."""
    for start in range(0, len(rles), chunk):
        yield start, decode_coco_rle(rles[start : start + chunk])


def rle_areas(rles: Sequence[Rle]) -> npt.NDArray[np.int64]:
    """``(N,) int64`` pixel areas of COCO RLEs, for any N (chunked below pycocotools' limit)."""
    objs = [_to_coco(r) for r in rles]
    parts = [mask_utils.area(objs[i : i + PYCOCOTOOLS_MAX_LIST]) for i in range(0, len(objs), PYCOCOTOOLS_MAX_LIST)]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros((0,), np.int64)


def rle_boxes(rles: Sequence[Rle]) -> npt.NDArray[np.float64]:
    """``(N, 4) float64`` COCO boxes ``[x, y, width, height]`` (pixel extent) of COCO RLEs; zeros for empty masks."""
    if not rles:
        return np.zeros((0, 4), np.float64)
    return np.asarray(mask_utils.toBbox([_to_coco(r) for r in rles]), np.float64).reshape(-1, 4)


def intersect(rles: Sequence[Rle], region: npt.NDArray[np.bool_]) -> list[Rle]:
    """Each RLE clipped to an ``(H, W) bool`` region, computed on the encodings (no dense masks)."""
    if not rles:
        return []
    (region_rle,) = encode_coco_rle(region[None])
    region_obj = _to_coco(region_rle)
    out = []
    for rle in rles:
        merged = mask_utils.merge([_to_coco(rle), region_obj], intersect=True)
        out.append({"size": [int(v) for v in merged["size"]], "counts": merged["counts"].decode("ascii")})
    return out


def rle_counts(rle: Rle) -> npt.NDArray[np.int64]:
    """Uncompressed counts of a COCO RLE (alternating 0-runs and 1-runs, column-major, starting with a 0-run).

    Decodes pycocotools' compressed string (``rleFrString`` in its maskApi.c: 5 bits per character with a
    continuation bit, sign-extended, each count after the second stored as a difference to the count two before)
    with numpy, without materialising the mask.
    """
    counts = rle["counts"]
    if isinstance(counts, list):
        return np.asarray(counts, np.int64)
    raw = np.frombuffer(counts.encode("ascii") if isinstance(counts, str) else counts, np.uint8).astype(np.int64) - 48
    if raw.size == 0:
        return np.zeros(0, np.int64)
    last = (raw & 0x20) == 0  # the last character of each number
    group = np.concatenate([[0], np.cumsum(last)[:-1]])
    starts = np.flatnonzero(np.concatenate([[True], last[:-1]]))
    k = np.arange(raw.size) - starts[group]  # 5-bit digit index within its number
    values = np.add.reduceat((raw & 0x1F) << (5 * k), starts)
    ends = np.flatnonzero(last)
    negative = (raw[ends] & 0x10) != 0
    values = np.where(negative, values - (1 << (5 * (k[ends] + 1))), values)
    for parity in (0, 1):  # counts[m] += counts[m - 2] for m > 2: one running sum per parity
        first = 2 + parity if parity == 0 else 1
        values[first::2] = np.cumsum(values[first::2])
    return values


def rle_runs(rle: Rle) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Foreground runs of a COCO RLE: ``(starts, lengths)`` in column-major flat pixel indices (``x * H + y``)."""
    counts = rle_counts(rle)
    ends = np.cumsum(counts)
    return ends[0::2][: len(counts[1::2])], counts[1::2]


def rle_column_segments(rle: Rle) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """A mask as vertical segments ``(x, y0, y1)``: its runs split where they wrap from one column to the next."""
    h = int(rle["size"][0])
    starts, lengths = rle_runs(rle)
    keep = lengths > 0
    starts, ends = starts[keep], starts[keep] + lengths[keep]
    first_col, last_col = starts // h, (ends - 1) // h
    pieces = last_col - first_col + 1
    col = np.repeat(first_col, pieces) + (np.arange(pieces.sum()) - np.repeat(np.cumsum(pieces) - pieces, pieces))
    y0 = np.where(col == np.repeat(first_col, pieces), np.repeat(starts, pieces) - col * h, 0)
    y1 = np.where(col == np.repeat(last_col, pieces), np.repeat(ends, pieces) - col * h, h)
    return col, y0, y1


def window_rle(window: npt.NDArray[np.bool_], y0: int, x0: int, image_size: tuple[int, int]) -> Rle:
    """One mask given as a window of an ``(H, W)`` frame (zero elsewhere) to a COCO compressed RLE.

    The runs are found on the window alone (each column padded with a 0 above and below, so a run never spans two
    columns there), placed in the frame's column-major order, and joined where a run ends at the bottom of one
    column and the next starts at the top of the following one, as pycocotools' ``encode`` does for the whole
    frame; the counts are then compressed by pycocotools. Same bytes as ``encode`` of the full mask, at the cost of
    the window, and memory for one window whatever the number of masks.

    Args:
        window: ``(h, w) bool``, placed at row ``y0``, column ``x0``.
        y0: the window's first row in the frame.
        x0: the window's first column in the frame.
        image_size: ``(H, W)`` of the frame.
    """
    frame_h, frame_w = int(image_size[0]), int(image_size[1])
    h, w = window.shape
    padded = np.zeros((w, h + 2), bool)  # one column per row, in the frame's column-major order
    padded[:, 1:-1] = window.T
    flat = padded.ravel()
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1  # starts and ends alternate
    column, row = np.divmod(edges, h + 2)
    boundaries = (x0 + column) * frame_h + y0 + row - 1
    starts, ends = boundaries[0::2], boundaries[1::2]
    if len(starts) > 1:  # a run down to the bottom of a column goes on at the top of the next one
        split = starts[1:] != ends[:-1]
        starts = starts[np.concatenate([[True], split])]
        ends = ends[np.concatenate([split, [True]])]
    bounds = np.empty(2 * len(starts) + 2, np.int64)
    bounds[0], bounds[1:-1:2], bounds[2:-1:2], bounds[-1] = 0, starts, ends, frame_h * frame_w
    counts = np.diff(bounds)
    if len(counts) > 1 and counts[-1] == 0:  # the mask reaches the frame's last pixel: no trailing 0-run
        counts = counts[:-1]
    rle = mask_utils.frPyObjects({"size": [frame_h, frame_w], "counts": counts.tolist()}, frame_h, frame_w)
    return {"size": [frame_h, frame_w], "counts": rle["counts"].decode("ascii")}


def _to_coco(rle: Rle) -> Rle:
    counts = rle["counts"]
    h, w = rle["size"]
    if isinstance(counts, list):
        return mask_utils.frPyObjects(rle, h, w)
    return {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def mask_to_rle(mask: npt.NDArray[np.bool_]) -> Rle:
    """One ``(H, W) bool`` mask to Meta's uncompressed RLE (column-major counts, starting with a 0-run)."""
    h, w = mask.shape
    flat = mask.T.ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    idx = np.concatenate([[0], change, [h * w]])
    counts = np.diff(idx).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": [h, w], "counts": counts}


def rle_to_mask(rle: Rle) -> npt.NDArray[np.bool_]:
    """Meta's uncompressed RLE to an ``(H, W) bool`` mask."""
    h, w = rle["size"]
    counts = np.asarray(rle["counts"], dtype=np.int64)
    values = np.zeros(len(counts), bool)
    values[1::2] = True
    return np.repeat(values, counts).reshape(w, h).T


@dataclass
class MaskSet:
    """The masks of one image, as the generator found them and the writer writes them.

    Attributes:
        image_size: ``(H, W)`` of the image in pixels.
        rles: ``N`` COCO compressed RLEs.
        areas: ``(N,) int64`` pixels of each mask (pycocotools' area of the RLE).
        bboxes: ``(N, 4) float64`` COCO ``[x, y, width, height]`` of each mask (pycocotools' toBbox of the RLE).
        predicted_iou: ``(N,) float32`` the decoder's IoU prediction.
        stability_score: ``(N,) float32``.
        point_coords: ``(N, 2) float64`` the prompt point (x, y) in image pixels.
        crop_boxes: ``(N, 4) int64`` XYWH crop each mask was found in.
    """

    image_size: tuple[int, int]
    rles: list[Rle]
    areas: npt.NDArray[np.int64]
    bboxes: npt.NDArray[np.float64]
    predicted_iou: npt.NDArray[np.float32] = field(default_factory=lambda: np.zeros(0, np.float32))
    stability_score: npt.NDArray[np.float32] = field(default_factory=lambda: np.zeros(0, np.float32))
    point_coords: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros((0, 2)))
    crop_boxes: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros((0, 4), np.int64))

    def __len__(self) -> int:
        return len(self.rles)

    @classmethod
    def from_rles(cls, image_size: tuple[int, int], rles: Sequence[Rle], **scores: Any) -> MaskSet:
        """A set whose areas and boxes are measured on the RLEs; ``scores`` fill the other fields (default zeros)."""
        n = len(rles)
        defaults: dict[str, Any] = {
            "predicted_iou": np.zeros(n, np.float32), "stability_score": np.zeros(n, np.float32),
            "point_coords": np.zeros((n, 2)), "crop_boxes": np.zeros((n, 4), np.int64),
        }
        defaults.update({k: np.asarray(v) for k, v in scores.items()})
        for name, value in defaults.items():
            if len(value) != n:
                raise ValueError(f"MaskSet field {name} has {len(value)} rows for {n} masks")
        return cls((int(image_size[0]), int(image_size[1])), list(rles), rle_areas(rles), rle_boxes(rles), **defaults)

    @classmethod
    def empty(cls, image_size: tuple[int, int]) -> MaskSet:
        """No masks."""
        return cls.from_rles(image_size, [])

    def select(self, index: npt.ArrayLike) -> MaskSet:
        """The masks at ``index`` (a boolean mask or indices, in that order)."""
        index = np.asarray(index)
        rows = np.flatnonzero(index) if index.dtype == bool else index.astype(np.int64)
        return MaskSet(self.image_size, [self.rles[i] for i in rows], self.areas[rows], self.bboxes[rows],
                       self.predicted_iou[rows], self.stability_score[rows], self.point_coords[rows],
                       self.crop_boxes[rows])

    def clipped(self, region: npt.NDArray[np.bool_] | None) -> MaskSet:
        """Every mask intersected with an ``(H, W) bool`` region (e.g. non-transparent pixels).

        Areas and boxes are re-measured on the clipped RLEs; a region of None leaves the set unchanged.
        """
        if region is None or not len(self):
            return self
        if region.shape != self.image_size:
            raise ValueError(f"region must be {self.image_size}, got {region.shape}")
        rles = intersect(self.rles, region)
        return MaskSet(self.image_size, rles, rle_areas(rles), rle_boxes(rles), self.predicted_iou,
                       self.stability_score, self.point_coords, self.crop_boxes)
