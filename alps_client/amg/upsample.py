"""Low-resolution mask logits to the image frame, as ``Sam.postprocess_masks`` does, in numpy.

Meta upsamples ``(B, 3, 256, 256)`` logits bilinearly (``align_corners=False``) to 1024x1024, crops the valid
``input_size`` region, and resizes bilinearly again to the original size. Both steps are linear and separable,
so per axis they compose into one ``(out, 256)`` matrix (upsample, crop, resize) with only a few non-zero taps
per output pixel (2 when the original side is the resized side, at most 4 otherwise). Applying those taps
(columns, then rows) gives Meta's values to float32 rounding (max abs difference ~1e-4 on logits of magnitude
~40) without the 1024x1024 intermediate, and only for masks that survive the IoU filter.

SAM 2 (``SAM2Transforms.postprocess_masks``) resizes the low-res logits straight to the original size, with no
padded frame to crop: :func:`direct_taps` are that single interpolation's taps, and the windowed function below
takes them through ``frame="stretched"``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import numpy.typing as npt


def _linear_weights(in_size: int, out_size: int) -> tuple[npt.NDArray, npt.NDArray, npt.NDArray, npt.NDArray]:
    """Indices and weights of 1D linear interpolation, ``align_corners=False`` (torch's CPU kernel)."""
    scale = np.float32(in_size) / np.float32(out_size)
    src = scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    i0 = src.astype(np.int64)  # floor, src >= 0
    i0 = np.minimum(i0, in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    l1 = (src - i0.astype(np.float32)).astype(np.float32)
    l0 = (np.float32(1.0) - l1).astype(np.float32)
    return i0, i1, l0, l1


def _interpolation_matrix(in_size: int, out_size: int) -> npt.NDArray[np.float64]:
    """``(out_size, in_size)`` matrix of 1D bilinear interpolation, ``align_corners=False``."""
    i0, i1, l0, l1 = _linear_weights(in_size, out_size)
    m = np.zeros((out_size, in_size), np.float64)
    rows = np.arange(out_size)
    np.add.at(m, (rows, i0), l0.astype(np.float64))
    np.add.at(m, (rows, i1), l1.astype(np.float64))
    return m


@lru_cache(maxsize=64)
def composed_taps(
    low_res: int, image_size: int, valid: int, original: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Non-zero taps of one axis, upsampled to ``image_size``, cropped to ``valid``, resized to ``original``.

    Returns:
        ``(original, K)`` source indices and float32 weights. Rows with fewer than K taps are padded with weight
        0 on their own first index, so that every index of a row lies within the span its real taps cover.
    """
    up = _interpolation_matrix(low_res, image_size)[:valid]
    m = _interpolation_matrix(valid, original) @ up  # (original, low_res) float64
    nonzero = m != 0.0
    k = max(int(nonzero.sum(axis=1).max()), 1)
    index = np.zeros((original, k), np.int64)
    weight = np.zeros((original, k), np.float32)
    for row in range(original):
        cols = np.flatnonzero(nonzero[row])
        index[row, :] = cols[0] if len(cols) else 0
        index[row, : len(cols)] = cols
        weight[row, : len(cols)] = m[row, cols]
    return index, weight


@lru_cache(maxsize=64)
def direct_taps(low_res: int, original: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Taps of one bilinear resize ``low_res -> original`` (``align_corners=False``): ``(original, 2)`` each."""
    i0, i1, l0, l1 = _linear_weights(low_res, original)
    return np.stack([i0, i1], axis=1), np.stack([l0, l1], axis=1)


def _axis_taps(low_res: int, image_size: int, valid: int, original: int, frame: str) -> tuple[npt.NDArray, npt.NDArray]:
    if frame == "stretched":
        return direct_taps(low_res, original)
    return composed_taps(low_res, image_size, valid, original)


@lru_cache(maxsize=64)
def _tap_groups(low_res: int, image_size: int, valid: int, original: int, frame: str) -> tuple[npt.NDArray, npt.NDArray]:
    """Runs of consecutive output pixels of one axis with the same taps: ``(G, K)`` source indices, ``(G,)`` lengths."""
    index, _ = _axis_taps(low_res, image_size, valid, original, frame)
    starts = np.concatenate([[0], np.flatnonzero((index[1:] != index[:-1]).any(axis=1)) + 1])
    return index[starts], np.diff(np.concatenate([starts, [len(index)]]))


def stability_upper_bound(
    low_res: npt.NDArray[np.float32],
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    mask_threshold: float,
    offset: float,
    image_size: int = 1024,
    frame: str = "padded",
) -> float:
    """An upper bound of the mask's stability score, from its low-res logits, without upsampling them.

    Output pixels whose taps are the same form cells; a cell's upsampled values lie between the smallest and the
    largest of its taps (convex combinations, up to a float-rounding margin). Pixels of cells whose largest tap
    cannot pass ``mask_threshold + offset`` are outside the intersection for sure; pixels of cells whose smallest
    tap passes ``mask_threshold - offset`` are inside the union for sure. So ``stability <= bound``: a mask whose
    bound is below the stability threshold is dropped exactly as the full computation would drop it.

    Returns:
        The bound, or ``inf`` when nothing is surely inside the union (no bound).
    """
    levels = _bound_levels(low_res, mask_threshold, offset)
    return _cell_bound(*levels, input_size, original_size, image_size, frame)


def fails_stability_for_sure(
    low_res: npt.NDArray[np.float32],
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    mask_threshold: float,
    offset: float,
    stability_thresh: float,
    image_size: int = 1024,
    frame: str = "padded",
) -> bool:
    """True only for a mask whose stability score is surely below ``stability_thresh``; False says nothing.

    See :func:`stability_upper_bound`. The cell bound is tried only where the low-res logits suggest it can decide
    (their own share above the high threshold is under half the threshold), so masks near the threshold cost two
    counts, not the bound; noise masks (random weights) are dropped without being upsampled.
    """
    logits, high, low, margin = levels = _bound_levels(low_res, mask_threshold, offset)
    n_low = np.count_nonzero(logits > low + margin)
    if n_low == 0 or np.count_nonzero(logits > high - margin) > 0.5 * stability_thresh * n_low:
        return False
    bound = _cell_bound(*levels, input_size, original_size, image_size, frame)
    # A float32 score within a rounding step of the threshold could still pass: only clear misses count.
    return bound < stability_thresh - 1e-6


def _bound_levels(low_res: npt.NDArray[np.float32], mask_threshold: float,
                  offset: float) -> tuple[npt.NDArray[np.float32], float, float, float]:
    """The logits as float32, the two stability thresholds as Meta compares them, and the float-rounding margin."""
    high, low = float(np.float32(mask_threshold + offset)), float(np.float32(mask_threshold - offset))
    logits = low_res.astype(np.float32, copy=False)
    margin = 1e-4 * (1.0 + max(abs(high), abs(low)) + float(np.abs(logits).max(initial=0.0)))
    return logits, high, low, margin


def _cell_bound(logits: npt.NDArray[np.float32], high: float, low: float, margin: float, input_size: tuple[int, int],
                original_size: tuple[int, int], image_size: int, frame: str) -> float:
    row_taps, row_len = _tap_groups(logits.shape[0], image_size, input_size[0], original_size[0], frame)
    col_taps, col_len = _tap_groups(logits.shape[1], image_size, input_size[1], original_size[1], frame)
    rows_max, rows_min = logits[row_taps[:, 0]], logits[row_taps[:, 0]]  # (Gr, 256): over each cell's row taps
    for k in range(1, row_taps.shape[1]):
        rows_max = np.maximum(rows_max, logits[row_taps[:, k]])
        rows_min = np.minimum(rows_min, logits[row_taps[:, k]])
    rows_max, rows_min = np.ascontiguousarray(rows_max.T), np.ascontiguousarray(rows_min.T)  # (256, Gr)
    cell_max, cell_min = rows_max[col_taps[:, 0]], rows_min[col_taps[:, 0]]  # (Gc, Gr)
    for k in range(1, col_taps.shape[1]):
        cell_max = np.maximum(cell_max, rows_max[col_taps[:, k]])
        cell_min = np.minimum(cell_min, rows_min[col_taps[:, k]])
    pixels = np.outer(col_len, row_len)  # (Gc, Gr)
    union_at_least = int(pixels[cell_min > low + margin].sum())
    if union_at_least == 0:
        return float("inf")
    return int(pixels[cell_max > high - margin].sum()) / union_at_least


def postprocess_masks(
    low_res: npt.NDArray[np.float32], input_size: tuple[int, int], original_size: tuple[int, int], image_size: int = 1024
) -> npt.NDArray[np.float32]:
    """``(N, 256, 256)`` logits in the padded frame -> ``(N, H, W)`` logits in the original image frame."""
    _, lh, lw = low_res.shape
    row_index, row_weight = composed_taps(lh, image_size, input_size[0], original_size[0])  # (H, Kr)
    col_index, col_weight = composed_taps(lw, image_size, input_size[1], original_size[1])  # (W, Kc)
    low_res = low_res.astype(np.float32, copy=False)
    tmp = low_res[:, :, col_index[:, 0]] * col_weight[:, 0]  # (N, 256, W)
    for k in range(1, col_index.shape[1]):
        tmp += low_res[:, :, col_index[:, k]] * col_weight[:, k]
    out = tmp[:, row_index[:, 0], :]  # (N, H, W), a copy
    out *= row_weight[:, 0, None]
    for k in range(1, row_index.shape[1]):
        out += tmp[:, row_index[:, k], :] * row_weight[:, k, None]
    return out


def postprocess_mask_window(
    low_res: npt.NDArray[np.float32],
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    floor: float,
    image_size: int = 1024,
    frame: str = "padded",
) -> tuple[tuple[int, int, int, int], npt.NDArray[np.float32]]:
    """One mask's logits in the original frame, computed only where they can exceed ``floor``.

    Every output value is a convex combination of its source taps, so a pixel whose taps all lie at or below
    ``floor`` (minus a float-rounding margin) is at or below ``floor`` too. Only the window of output pixels
    reached by a tap above that is computed, with the same arithmetic as :func:`postprocess_masks`, so inside
    the window the values are identical and outside it they are known to be ``<= floor``: masks thresholded
    at or above ``floor`` and their stability scores are exactly those of the full computation.

    Args:
        low_res: ``(256, 256) float32`` logits in the padded 1024 frame.
        input_size: ``(h, w)`` valid region of the resized image inside the 1024 frame.
        original_size: ``(H, W)`` of the image (or crop).
        floor: the lowest threshold that will be applied (``mask_threshold - |stability_score_offset|``).
        image_size: side of the encoder's square input.
        frame: ``padded`` (SAM: upsample to the 1024 frame, crop ``input_size``, resize) or ``stretched``
            (SAM 2: one resize of the whole low-res frame to ``original_size``; ``input_size`` is unused).

    Returns:
        ``((y0, y1, x0, x1), logits (y1 - y0, x1 - x0) float32)``; an empty window when nothing can exceed ``floor``.
    """
    margin = 1e-4 * (1.0 + abs(floor) + float(np.abs(low_res).max(initial=0.0)))
    active = low_res > floor - margin
    rows_any, cols_any = active.any(axis=1), active.any(axis=0)
    if not rows_any.any():
        return (0, 0, 0, 0), np.zeros((0, 0), np.float32)
    row_index, row_weight = _axis_taps(low_res.shape[0], image_size, input_size[0], original_size[0], frame)
    col_index, col_weight = _axis_taps(low_res.shape[1], image_size, input_size[1], original_size[1], frame)
    rows = np.flatnonzero((rows_any[row_index] & (row_weight != 0.0)).any(axis=1))
    cols = np.flatnonzero((cols_any[col_index] & (col_weight != 0.0)).any(axis=1))
    if len(rows) == 0 or len(cols) == 0:
        return (0, 0, 0, 0), np.zeros((0, 0), np.float32)
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    ci, cw = col_index[x0:x1], col_weight[x0:x1]
    ri, rw = row_index[y0:y1], row_weight[y0:y1]
    # Every output value is computed by the same float32 operations, in the same order, as postprocess_masks
    # (so the values are identical), but only over the low-res rows the window's taps reach, and with taps
    # gathered as whole rows of C-contiguous arrays (the columns pass runs on the transposed rows).
    r0 = int(ri.min())
    low_t = np.ascontiguousarray(low_res[r0 : int(ri.max()) + 1].astype(np.float32, copy=False).T)  # (256, rows)
    tmp_t = low_t[ci[:, 0]]  # (x1 - x0, rows)
    tmp_t *= cw[:, 0, None]
    for k in range(1, ci.shape[1]):
        term = low_t[ci[:, k]]
        term *= cw[:, k, None]
        tmp_t += term
    tmp = np.ascontiguousarray(tmp_t.T)  # (rows, x1 - x0)
    ri = ri - r0
    out = tmp[ri[:, 0]]
    out *= rw[:, 0, None]
    for k in range(1, ri.shape[1]):
        term = tmp[ri[:, k]]
        term *= rw[:, k, None]
        out += term
    return (y0, y1, x0, x1), out
