"""The one mask representation: every RLE operation works for any number of masks, in bounded memory."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from alps_client.masks import (
    MaskSet,
    decode_coco_rle,
    encode_coco_rle,
    intersect,
    iter_decoded,
    rle_areas,
    rle_boxes,
    window_rle,
)

COUNTS = [0, 1, 255, 256, 1000, 10000]


def random_masks(n: int, size: tuple[int, int] = (24, 40), seed: int = 0) -> np.ndarray:
    """``n`` rectangles of random size and place (some empty)."""
    rng = np.random.RandomState(seed)
    h, w = size
    masks = np.zeros((n, h, w), bool)
    for i in range(n):
        y0, x0 = rng.randint(0, h), rng.randint(0, w)
        masks[i, y0 : y0 + rng.randint(0, h), x0 : x0 + rng.randint(0, w)] = True
    return masks


@pytest.mark.parametrize("n", COUNTS)
def test_every_rle_operation_works_for_any_mask_count(n):
    masks = random_masks(n)
    rles = encode_coco_rle(masks)
    assert len(rles) == n
    areas = rle_areas(rles)
    assert areas.dtype == np.int64 and areas.tolist() == masks.sum(axis=(1, 2)).tolist()
    boxes = rle_boxes(rles)
    assert boxes.shape == (n, 4)
    for i in range(0, n, max(1, n // 50)):  # box = pixel extent, as pycocotools' toBbox
        ys, xs = np.nonzero(masks[i])
        expected = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1] if len(xs) else [0, 0, 0, 0]
        assert boxes[i].tolist() == expected
    decoded = np.zeros_like(masks)
    for start, chunk in iter_decoded(rles, chunk=64):
        assert len(chunk) <= 64
        decoded[start : start + len(chunk)] = chunk
    np.testing.assert_array_equal(decoded, masks)
    region = np.zeros(masks.shape[1:], bool)
    region[:, 5:30] = True
    clipped = intersect(rles, region)
    assert rle_areas(clipped).tolist() == (masks & region).sum(axis=(1, 2)).tolist()
    if n:  # pycocotools' own iou and merge take the same lists
        assert mask_utils.iou([_b(r) for r in rles[:300]], [_b(r) for r in rles[:300]], [0] * min(n, 300)).shape == (
            min(n, 300), min(n, 300))
        assert mask_utils.area(mask_utils.merge([_b(r) for r in rles])) == masks.any(axis=0).sum()


def _b(rle):
    return {"size": rle["size"], "counts": rle["counts"].encode()}


def test_pycocotools_area_limit_is_real():
    """Why rle_areas chunks: pycocotools' area() of 256+ RLEs overflows with numpy 2 (if this starts passing, the
    chunking in alps_client/masks.py can go)."""
    rles = [_b(r) for r in encode_coco_rle(random_masks(256))]
    try:
        mask_utils.area(rles)
    except OverflowError:
        return
    pytest.skip("this pycocotools build no longer overflows on 256 RLEs")


def test_window_rle_gives_pycocotools_bytes_for_every_window():
    masks = list(random_masks(70, size=(30, 50), seed=4))
    full = np.zeros((30, 50), bool)
    full[:, 10:] = True  # runs joined across columns, down to the frame's last pixel
    corner = np.zeros((30, 50), bool)
    corner[0, 0] = True  # a run at the frame's first pixel (a leading 0-count)
    masks += [full, corner, np.ones((30, 50), bool), np.zeros((30, 50), bool)]
    rles = []
    for i, m in enumerate(masks):
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        if not len(rows):
            rles.append(window_rle(np.zeros((0, 0), bool), 0, 0, (30, 50)))
        elif i % 2:  # the tight window, or a window with empty margins
            rles.append(window_rle(m[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], int(rows[0]), int(cols[0]),
                                   (30, 50)))
        else:
            y0, x0 = max(int(rows[0]) - 2, 0), max(int(cols[0]) - 3, 0)
            rles.append(window_rle(m[y0 : rows[-1] + 2, x0 : cols[-1] + 1], y0, x0, (30, 50)))
    assert rles == encode_coco_rle(np.stack(masks))  # the same bytes as pycocotools' encode of the whole frame
    np.testing.assert_array_equal(decode_coco_rle(rles), np.stack(masks))


def test_mask_set_measures_on_the_rles_and_clips():
    masks = random_masks(5, seed=2)
    ms = MaskSet.from_rles((24, 40), encode_coco_rle(masks), predicted_iou=np.arange(5, dtype=np.float32))
    assert ms.areas.tolist() == masks.sum((1, 2)).tolist() and len(ms) == 5
    valid = np.zeros((24, 40), bool)
    valid[:12] = True
    clipped = ms.clipped(valid)
    assert clipped.areas.tolist() == (masks & valid).sum((1, 2)).tolist()
    assert (clipped.bboxes == rle_boxes(clipped.rles)).all()
    assert ms.select([4, 1]).predicted_iou.tolist() == [4.0, 1.0]
    with pytest.raises(ValueError, match="rows for 5 masks"):
        MaskSet.from_rles((24, 40), ms.rles, predicted_iou=np.zeros(3))


def test_runs_and_segments_are_read_from_the_compressed_string():
    """rle_counts decodes pycocotools' compressed counts (multi-character and negative differences included)."""
    from alps_client.masks import mask_to_rle, rle_column_segments, rle_counts

    rng = np.random.RandomState(0)
    cases = [rng.rand(rng.randint(1, 60), rng.randint(1, 60)) > rng.rand() for _ in range(200)]
    big = np.zeros((1000, 1000), bool)
    big[3:900, 5:990] = True
    big[500:510, :] = False
    for mask in [*cases, big, np.zeros((5, 5), bool), np.ones((5, 5), bool)]:
        (rle,) = encode_coco_rle(mask[None])
        assert rle_counts(rle).tolist() == mask_to_rle(mask)["counts"]  # Meta's uncompressed counts
        painted = np.zeros_like(mask)
        for x, y0, y1 in zip(*rle_column_segments(rle)):
            painted[y0:y1, x] = True
        np.testing.assert_array_equal(painted, mask)
