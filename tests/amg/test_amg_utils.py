"""Pure AMG helpers against hand-written arrays and against segment_anything's own torch functions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alps_client.amg.boxes import batched_mask_to_box, is_box_near_crop_edge, nms, window_mask_box
from alps_client.amg.filtering import calculate_stability_score, remove_small_regions
from alps_client.amg.grids import build_all_layer_point_grids, build_point_grid, generate_crop_boxes
from alps_client.amg.mask_data import MaskData
from alps_client.amg.upsample import postprocess_masks
from alps_client.masks import decode_coco_rle, encode_coco_rle, mask_to_rle, rle_areas, rle_to_mask
from export.tv_shim import install_torchvision_shim

install_torchvision_shim()
from segment_anything.utils import amg as meta  # noqa: E402


@pytest.mark.parametrize(
    ("mask_box", "expected"),
    [((2, 1, 5, 3), [2, 1, 4, 2]), ((0, 0, 8, 6), [0, 0, 7, 5]), ((7, 5, 8, 6), [7, 5, 7, 5]), (None, [0, 0, 0, 0])],
)
def test_batched_mask_to_box_golden(mask_box, expected):
    mask = np.zeros((1, 6, 8), bool)
    if mask_box:
        x0, y0, x1, y1 = mask_box
        mask[0, y0:y1, x0:x1] = True
    assert batched_mask_to_box(mask).tolist() == [expected]


def test_boxes_match_meta_on_random_masks():
    rng = np.random.RandomState(0)
    masks = rng.rand(20, 17, 23) > 0.97
    masks[3] = False
    theirs = meta.batched_mask_to_box(torch.as_tensor(masks)).numpy()
    np.testing.assert_array_equal(batched_mask_to_box(masks), theirs)


@pytest.mark.parametrize(("size", "layers", "ratio"), [((480, 640), 0, 512 / 1500), ((480, 640), 2, 512 / 1500), ((333, 97), 1, 0.2)])
def test_crop_boxes_match_meta(size, layers, ratio):
    assert generate_crop_boxes(size, layers, ratio) == meta.generate_crop_boxes(size, layers, ratio)


@pytest.mark.parametrize("size", [(1, 4000), (2, 3), (1, 1)])
def test_crop_boxes_of_a_sliver_hold_pixels(size):
    """A side of 1 or 2 px: Meta's crops start at or past the image's edge, and its generator divides by zero."""
    ours, theirs = generate_crop_boxes(size, 2, 512 / 1500), meta.generate_crop_boxes(size, 2, 512 / 1500)
    assert any(x1 <= x0 or y1 <= y0 for x0, y0, x1, y1 in theirs[0])
    assert all(0 <= x0 < x1 <= size[1] and 0 <= y0 < y1 <= size[0] for x0, y0, x1, y1 in ours[0])
    assert [(box, layer) for box, layer in zip(*theirs) if box[2] > box[0] and box[3] > box[1]] == list(zip(*ours))


def test_point_grids_match_meta():
    np.testing.assert_array_equal(build_point_grid(4), meta.build_point_grid(4))
    for ours, theirs in zip(build_all_layer_point_grids(32, 2, 2), meta.build_all_layer_point_grids(32, 2, 2)):
        np.testing.assert_array_equal(ours, theirs)
    assert build_point_grid(2).tolist() == [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]]


def torchvision_cpu_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """torchvision's CPU kernel (torchvision/csrc/ops/cpu/nms_kernel.cpp) transcribed loop for loop: stable
    descending sort, float32 arithmetic, ``ovr > iou_threshold`` with the threshold as a double."""
    f = np.float32
    x1, y1, x2, y2 = (boxes[:, k].astype(f) for k in range(4))
    areas = (x2 - x1) * (y2 - y1)
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))  # Python's sort is stable
    suppressed, keep = [False] * len(scores), []
    for a, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        for j in order[a + 1 :]:
            if suppressed[j]:
                continue
            w = max(f(0), min(x2[i], x2[j]) - max(x1[i], x1[j]))
            h = max(f(0), min(y2[i], y2[j]) - max(y1[i], y1[j]))
            inter = f(w * h)
            ovr = f(inter / f(areas[i] + areas[j] - inter))
            if float(ovr) > iou_threshold:
                suppressed[j] = True
    return keep


def test_nms_matches_torchvision_kernel():
    rng = np.random.RandomState(1)
    xy = rng.randint(0, 80, (60, 2))
    wh = rng.randint(5, 40, (60, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.int64)
    boxes[5] = boxes[6]  # identical boxes
    scores = rng.rand(60).astype(np.float32)
    scores[10:20] = scores[0]  # ties: the stable order decides
    for thresh in (0.3, 0.7, 1.0):
        assert nms(boxes, scores, thresh).tolist() == torchvision_cpu_nms(boxes, scores, thresh)
    # Hand-made: the lower-scored overlapping box goes, the separate one stays.
    hand = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]])
    assert nms(hand, np.array([0.9, 0.8, 0.7]), 0.5).tolist() == [0, 2]


def test_nms_compares_boxes_of_zero_area_by_their_pixels():
    """Masks one pixel wide or tall have boxes of zero area; torchvision's IoU of two such boxes is 0/0, which
    never suppresses: Meta's generator kept every copy of a one-pixel mask (10 % of the masks of 64 x 64 images)."""
    boxes = np.array([
        [5, 5, 5, 5],  # one pixel
        [5, 5, 5, 5],  # the same pixel: a copy, suppressed
        [6, 5, 6, 5],  # the pixel beside it: kept
        [0, 9, 9, 9],  # a one-pixel line, 10 px
        [1, 9, 9, 9],  # the same line less a pixel: IoU 0.9, suppressed
        [0, 9, 3, 9],  # its first 4 pixels: IoU 0.4, kept
        [4, 4, 6, 6],  # 3 x 3 pixels around the first pixel: one area is not zero, so torchvision's IoU 0 stands
    ])
    scores = np.linspace(1.0, 0.1, len(boxes)).astype(np.float32)
    assert nms(boxes, scores, 0.7).tolist() == [0, 2, 3, 5, 6]
    with np.errstate(invalid="ignore"):
        assert torchvision_cpu_nms(boxes, scores, 0.7) == [0, 1, 2, 3, 4, 5, 6]  # what Meta's generator keeps


def test_rle_roundtrip_and_meta_format():
    rng = np.random.RandomState(2)
    masks = rng.rand(4, 9, 13) > 0.5
    masks[0] = False
    masks[1] = True
    for m in masks:
        rle = mask_to_rle(m)
        assert rle == meta.mask_to_rle_pytorch(torch.as_tensor(m[None]))[0]
        np.testing.assert_array_equal(rle_to_mask(rle), m)
    coco = encode_coco_rle(masks)
    assert all(isinstance(r["counts"], str) for r in coco)
    np.testing.assert_array_equal(decode_coco_rle(coco), masks)
    assert rle_areas(coco).tolist() == masks.sum((1, 2)).tolist()


def test_stability_score_matches_meta():
    rng = np.random.RandomState(3)
    logits = (rng.randn(6, 30, 40) * 3).astype(np.float32)
    ours = calculate_stability_score(logits, 0.0, 1.0)
    theirs = meta.calculate_stability_score(torch.as_tensor(logits), 0.0, 1.0).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)


def test_remove_small_regions_matches_meta():
    mask = np.zeros((40, 40), bool)
    mask[5:30, 5:30] = True
    mask[10:12, 10:12] = False  # small hole
    mask[35:37, 35:37] = True  # small island
    for mode in ("holes", "islands"):
        ours, changed = remove_small_regions(mask, 10, mode)
        theirs, their_changed = meta.remove_small_regions(mask, 10, mode)
        assert changed and their_changed
        np.testing.assert_array_equal(ours, theirs)
    with pytest.raises(ValueError, match="mode must be 'holes' or 'islands'"):
        remove_small_regions(mask, 10, "blobs")


@pytest.mark.parametrize(("input_size", "original"), [((683, 1024), (200, 300)), ((1024, 768), (1333, 1000)), ((1024, 1024), (64, 64))])
def test_postprocess_masks_matches_torch(input_size, original):
    import torch.nn.functional as F

    rng = np.random.RandomState(4)
    low = (rng.randn(3, 256, 256) * 10).astype(np.float32)
    ours = postprocess_masks(low, input_size, original)
    t = F.interpolate(torch.as_tensor(low)[None], (1024, 1024), mode="bilinear", align_corners=False)
    t = F.interpolate(t[..., : input_size[0], : input_size[1]], original, mode="bilinear", align_corners=False)[0].numpy()
    np.testing.assert_allclose(ours, t, atol=5e-4)
    assert ((ours > 0) != (t > 0)).sum() == 0


def test_crop_edge_and_uncrop():
    boxes = np.array([[0, 0, 50, 50], [30, 30, 60, 60]])
    # Crop [100, 100, 200, 200] of a 300x300 image: box 0 touches the crop's top-left corner, not the image's.
    assert is_box_near_crop_edge(boxes, [100, 100, 200, 200], [0, 0, 300, 300]).tolist() == [True, False]
    assert not is_box_near_crop_edge(boxes, [0, 0, 300, 300], [0, 0, 300, 300]).any()


def test_window_box_equals_the_box_of_the_whole_frame_mask():
    rng = np.random.RandomState(3)
    for _ in range(20):
        window = rng.rand(7, 9) > 0.9
        frame = np.zeros((1, 20, 30), bool)
        frame[0, 5:12, 11:20] = window
        assert window_mask_box(window, 5, 11).tolist() == batched_mask_to_box(frame)[0].tolist()
    assert window_mask_box(np.zeros((3, 3), bool), 4, 4).tolist() == [0, 0, 0, 0]


def test_mask_data_filter_and_cat():
    d = MaskData(a=np.arange(4), b=["w", "x", "y", "z"])
    d.filter(np.array([True, False, True, False]))
    assert d["a"].tolist() == [0, 2] and d["b"] == ["w", "y"]
    d.cat(MaskData(a=np.array([9]), b=["q"]))
    assert d["a"].tolist() == [0, 2, 9] and d["b"] == ["w", "y", "q"] and len(d) == 3
    d.filter(np.array([2, 0]))
    assert d["b"] == ["q", "w"]
    with pytest.raises(TypeError, match="lists or numpy arrays"):
        MaskData(a=(1, 2))


@pytest.mark.parametrize(("input_size", "original"), [((768, 1024), (768, 1024)), ((683, 1024), (200, 300)), ((1024, 768), (1333, 1000))])
@pytest.mark.parametrize("offset", [1.0, -2.0, 0.0])
def test_windowed_upsampling_gives_the_full_masks_and_scores(input_size, original, offset):
    from alps_client.amg.upsample import postprocess_mask_window

    rng = np.random.RandomState(7)
    low = np.full((4, 256, 256), -30.0, np.float32)
    low[0, 40:90, 100:180] = 25.0  # an object
    low[1] = rng.randn(256, 256) * 10  # everywhere
    low[2, 200:, 250:] = 0.5  # at the padded frame's corner, barely above 0
    # low[3]: nothing above any threshold
    full = postprocess_masks(low, input_size, original)
    floor = 0.0 - abs(offset)
    for i in range(4):
        (y0, y1, x0, x1), win = postprocess_mask_window(low[i], input_size, original, floor)
        mask = np.zeros(original, bool)
        mask[y0:y1, x0:x1] = win > 0.0
        np.testing.assert_array_equal(mask, full[i] > 0.0)
        np.testing.assert_array_equal(win, full[i, y0:y1, x0:x1])
        assert (full[i] > floor).sum() == (win > floor).sum()
        expected = calculate_stability_score(full[i : i + 1], 0.0, offset)[0]
        got = calculate_stability_score(win[None], 0.0, offset)[0]
        assert (np.isnan(expected) and np.isnan(got)) or got == expected
    assert postprocess_mask_window(low[3], input_size, original, floor)[0] == (0, 0, 0, 0)
    assert postprocess_mask_window(low[0], input_size, original, floor)[1].size < full[0].size / 4


@pytest.mark.parametrize("frame", ["padded", "stretched"])
@pytest.mark.parametrize(("input_size", "original"), [((1024, 1024), (1024, 1024)), ((683, 1024), (200, 300)),
                                                      ((1024, 768), (1333, 1000))])
def test_stability_upper_bound_never_undercuts_the_score_and_skips_noise(frame, input_size, original):
    from alps_client.amg.upsample import (
        fails_stability_for_sure,
        postprocess_mask_window,
        stability_upper_bound,
    )

    rng = np.random.RandomState(11)
    yy, xx = np.mgrid[:256, :256]
    cases = [rng.uniform(-1, 1, (256, 256)).astype(np.float32)]  # random weights: logits within +-1
    for _ in range(25):  # blobs with soft or sharp edges, and noise on top
        cy, cx, r, slope = rng.uniform(20, 236), rng.uniform(20, 236), rng.uniform(3, 90), rng.uniform(0.05, 8)
        cases.append(((r - np.hypot(yy - cy, xx - cx)) * slope + rng.normal(0, rng.uniform(0, 2), (256, 256)))
                     .astype(np.float32))
    skipped = 0
    for low in cases:
        bound = stability_upper_bound(low, input_size, original, 0.0, 1.0, frame=frame)
        (_, _, _, _), win = postprocess_mask_window(low, input_size, original, -1.0, frame=frame)
        stability = calculate_stability_score(win[None], 0.0, 1.0)[0]
        assert np.isnan(stability) or stability <= bound + 1e-12, (bound, stability)
        skipped += bound < 0.95
        if fails_stability_for_sure(low, input_size, original, 0.0, 1.0, 0.95, frame=frame):
            assert not stability >= 0.95  # what the generator skips, Meta's filter drops
    assert stability_upper_bound(cases[0], input_size, original, 0.0, 1.0, frame=frame) < 0.05
    assert fails_stability_for_sure(cases[0], input_size, original, 0.0, 1.0, 0.95, frame=frame)  # noise: no work
    assert 0 < skipped < len(cases)
