"""Pseudo feature labels (PFL): SAM's (or SAM 2's) image embedding pooled under each mask, one 256-d vector per mask.

The paper's step: the encoder's ``(256, 64, 64)`` map F of the image resized to 1024x1024 is upsampled
bilinearly to ``S x S`` (S = 256), each binary mask is resized to ``S x S``, and ``L_i = F * M_i`` is pooled
over the mask. Exactly what we compute, from the embedding the mask generator already made:

1. **Valid region.** Only the unpadded part of the 1024 frame carries the image: ``input_size = (h, w)``,
   i.e. ``h / 16 x w / 16`` embedding cells (fractional when h or w is not a multiple of 16). That extent is
   resampled to ``S x S`` bilinearly with ``align_corners=False``: output pixel i samples the embedding at
   cell coordinate ``(i + 0.5) * (h / 16) / S - 0.5``, clamped to ``[0, ceil(h / 16) - 1]``, from its two
   neighbours: the image's edge cells are replicated, as when the valid cells are cropped before resizing, so no
   cell that lies wholly in the padding is ever read (the encoder's output there describes the padding).
   **SAM 2.1** pools its 256-channel ``image_embeddings`` (the Hiera/FPN map after ``no_mem_embed``, the one its
   mask decoder attends to: the analogue of SAM's), not the high-resolution maps. Its encoder stretches the
   whole image to 1024x1024 without padding, so its embeddings carry ``input_size = (1024, 1024)``: the valid
   region is all 64x64 cells, and the same formula resamples the whole map (see ``docs/sam2.md``).
2. **Masks** are resized to ``S x S`` by area averaging: each output pixel holds the fraction of its
   footprint in the original image that the mask covers (so a mask too small to survive nearest-neighbour
   resizing still has non-zero weight).
3. **Pooling** is the coverage-weighted mean ``sum_ij c_ij F_ij / sum_ij c_ij``; for a binary coverage it
   is the reference code's sum over the mask divided by its pixel count.
4. Optionally the vector is L2-normalised.

Both resamplings are linear, so the pooled vector is computed without materialising ``S x S`` maps: the
coverage is pulled back onto the 64x64 embedding grid (``Ry^T C Rx``) and contracted with F.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from alps_client.backends.base import Embedding
from alps_client.config import FeatureConfig
from alps_client.masks import Rle, rle_column_segments

CELL_PIXELS = 16  # pixels of the 1024 frame per embedding cell
IMAGE_GRID = 64  # embedding cells per side of SAM's 1024 frame
MASKS_PER_CHUNK = 64  # masks whose grid weights are contracted with F in one matrix product
# How features are pooled, recorded in each shard (``extra["pooling"]``). 2: never from a cell wholly in the padding;
# shards without it may have read one at the image's bottom or right edge (:func:`read_padding_before_pooling_2`).
POOLING = 2


@lru_cache(maxsize=64)
def embedding_resample_matrix(valid_cells: float, grid: int, out_size: int) -> npt.NDArray[np.float64]:
    """``(out_size, grid)`` bilinear weights (align_corners=False) over the first ``valid_cells`` of an axis.

    Samples are clamped to the last cell that holds any of the image, ``ceil(valid_cells) - 1``: the cells beyond
    it hold only padding, and weight 0.
    """
    return _bilinear_weights(valid_cells, grid, out_size, max(min(grid, _cells_holding(valid_cells)) - 1, 0))


def _cells_holding(valid_cells: float) -> int:
    """How many cells of an axis hold any of the image: ``ceil(valid_cells)``."""
    return int(np.ceil(valid_cells - 1e-9))


def _bilinear_weights(valid_cells: float, grid: int, out_size: int, last: int) -> npt.NDArray[np.float64]:
    """``(out_size, grid)`` bilinear weights over ``valid_cells`` of an axis, samples clamped to ``[0, last]``."""
    src = (np.arange(out_size) + 0.5) * (valid_cells / out_size) - 0.5
    src = np.clip(src, 0.0, last)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, last)
    frac = src - i0
    m = np.zeros((out_size, grid))
    rows = np.arange(out_size)
    np.add.at(m, (rows, i0), 1.0 - frac)
    np.add.at(m, (rows, i1), frac)
    return m


@lru_cache(maxsize=1024)
def read_padding_before_pooling_2(image_size: tuple[int, int], model_family: str, feature_size: int) -> bool:
    """Whether alps before :data:`POOLING` 2 pooled padding cells into the features of an ``(H, W)`` image's masks.

    It clamped samples to the 64x64 grid, not to the image's cells: where the unpadded extent ends on a cell
    boundary (a 768-px side) or late in a cell, the last samples blended in the first cell of the padding. SAM 2.1
    stretches the image over the whole frame: none.
    """
    if model_family == "sam2":
        return False
    from alps_client.backends.preprocess import get_preprocess_shape

    for side in get_preprocess_shape(*image_size):
        valid_cells = side / CELL_PIXELS
        then = _bilinear_weights(valid_cells, IMAGE_GRID, feature_size, IMAGE_GRID - 1)  # the old clamp
        if then[:, _cells_holding(valid_cells):].any():
            return True
    return False


@lru_cache(maxsize=64)
def area_resize_matrix(in_size: int, out_size: int) -> npt.NDArray[np.float64]:
    """``(out_size, in_size)`` area-averaging weights: row i = overlap of each input pixel with output pixel i."""
    edges_out = np.arange(out_size + 1) * (in_size / out_size)
    lo = np.maximum(np.arange(in_size)[None, :], edges_out[:-1, None])
    hi = np.minimum(np.arange(in_size)[None, :] + 1.0, edges_out[1:, None])
    return np.clip(hi - lo, 0.0, None) / (in_size / out_size)


def pool_mask_features(
    embedding: Embedding, masks: Sequence[Rle], config: FeatureConfig | None = None
) -> npt.NDArray[np.float32]:
    """One pseudo feature label per mask.

    Args:
        embedding: the image's embedding (``features (256, 64, 64)``, ``input_size``, ``original_size``).
        masks: COCO RLEs of the masks in the original image frame (size = ``embedding.original_size``); never
            decoded: their weights on the grid are built from their runs and contracted with the features
            ``MASKS_PER_CHUNK`` at a time, so memory is bounded whatever their number.
        config: feature frame size and L2 normalisation.

    Returns:
        ``(N, 256) float32``; an empty mask gives a zero vector.
    """
    config = config or FeatureConfig()
    channels, grid_h, grid_w = embedding.features.shape
    if len(masks) == 0:
        return np.zeros((0, channels), np.float32)
    if hasattr(masks, "rles") or not all(isinstance(m, dict) and "size" in m and "counts" in m for m in masks):
        raise ValueError(f"masks must be a sequence of COCO RLEs ({{'size': [H, W], 'counts': ...}}), got "
                         f"{type(masks).__name__}: give a MaskSet's .rles, or alps_client.masks.encode_coco_rle(m) "
                         "of (N, H, W) bool masks m")
    h, w = (int(v) for v in masks[0]["size"])
    if (h, w) != tuple(embedding.original_size) or any(tuple(m["size"]) != (h, w) for m in masks):
        raise ValueError(f"masks must all be of the embedding's original_size {tuple(embedding.original_size)}, "
                         f"got {sorted({tuple(m['size']) for m in masks})}")
    size = config.feature_size
    # Pull the coverage back onto the embedding grid: (Ry^T Ay) M (Ax^T Rx), then contract with F. A mask is a set
    # of vertical segments (from its RLE, never decoded): segment (x, y0, y1) adds (sum of Py's columns y0..y1-1)
    # times Px's row x, and the column sums come from a running sum of Py.
    ry = embedding_resample_matrix(embedding.input_size[0] / CELL_PIXELS, grid_h, size)  # (S, 64)
    rx = embedding_resample_matrix(embedding.input_size[1] / CELL_PIXELS, grid_w, size)
    py = ry.T @ area_resize_matrix(h, size)  # (64, H)
    px = area_resize_matrix(w, size).T @ rx  # (W, 64)
    py_running = np.concatenate([np.zeros((grid_h, 1)), np.cumsum(py, axis=1)], axis=1)  # (64, H + 1)
    flat_features = embedding.features.reshape(channels, -1).T.astype(np.float64)  # (64*64, C)
    pooled = np.empty((len(masks), channels), np.float64)
    totals = np.empty(len(masks), np.float64)
    for lo in range(0, len(masks), MASKS_PER_CHUNK):
        chunk = masks[lo : lo + MASKS_PER_CHUNK]
        grid_weights = np.empty((len(chunk), grid_h * grid_w))
        for j, rle in enumerate(chunk):
            x, y0, y1 = rle_column_segments(rle)
            grid_weights[j] = ((py_running[:, y1] - py_running[:, y0]) @ px[x]).ravel()
            totals[lo + j] = float((y1 - y0).sum()) * (size * size) / float(h * w)
        pooled[lo : lo + len(chunk)] = grid_weights @ flat_features
    with np.errstate(invalid="ignore", divide="ignore"):
        pooled = np.where(totals[:, None] > 0, pooled / totals[:, None], 0.0)
    if config.l2_normalize:
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        pooled = np.where(norms > 0, pooled / np.maximum(norms, 1e-12), 0.0)
    return pooled.astype(np.float32)
