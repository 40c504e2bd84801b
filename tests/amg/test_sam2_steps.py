"""SAM 2's generator steps against Meta's PyTorch code: token selection, point frame, low-res clean-up."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alps_client.amg.sam2_steps import fill_holes_and_sprinkles, sam2_point_coords, select_mask_tokens
from export.tv_shim import install_torchvision_shim
from tests.amg import sam2_cpu_cc

install_torchvision_shim()
from sam2.modeling.sam.mask_decoder import MaskDecoder
from sam2.utils.transforms import SAM2Transforms

SELECTION = {"multimask": [1, 2, 3], "single": 0, "dynamic_multimask_via_stability": True,
             "dynamic_multimask_stability_delta": 0.05, "dynamic_multimask_stability_thresh": 0.98}


def _meta_decoder() -> MaskDecoder:
    decoder = MaskDecoder.__new__(MaskDecoder)
    torch.nn.Module.__init__(decoder)
    decoder.dynamic_multimask_stability_delta = 0.05
    decoder.dynamic_multimask_stability_thresh = 0.98
    return decoder.eval()


def test_single_mask_selection_matches_meta_including_the_fallback():
    rng = np.random.RandomState(0)
    masks = rng.normal(0, 3, (12, 4, 32, 32)).astype(np.float32)
    masks[::2, 0] = np.where(masks[::2, 0] > 0, 20.0, -20.0)  # half the prompts have a stable token 0
    masks[5, 0] = 0.01  # a flat, tiny-positive token: union > 0, intersection 0
    masks[7, 0] = -5.0  # empty: stability 1 by Meta's definition
    iou = rng.rand(12, 4).astype(np.float32)
    iou[3, 1:] = 0.5  # ties: the first maximum wins, as torch.argmax
    ours_m, ours_i = select_mask_tokens(masks, iou, False, SELECTION)
    their_m, their_i = _meta_decoder()._dynamic_multimask_via_stability(torch.as_tensor(masks), torch.as_tensor(iou))
    np.testing.assert_array_equal(ours_m, their_m.numpy())
    np.testing.assert_array_equal(ours_i, their_i.numpy())
    picked_zero = (ours_i[:, 0] == iou[:, 0])
    assert picked_zero.any() and not picked_zero.all()  # both branches taken
    multi_m, _ = select_mask_tokens(masks, iou, True, SELECTION)
    np.testing.assert_array_equal(multi_m, masks[:, 1:])
    no_dynamic = {**SELECTION, "dynamic_multimask_via_stability": False}
    np.testing.assert_array_equal(select_mask_tokens(masks, iou, False, no_dynamic)[0], masks[:, :1])


@pytest.mark.parametrize("im_size", [(144, 208), (1, 1), (1023, 1025), (3000, 17)])
def test_point_frame_matches_transform_coords(im_size):
    rng = np.random.RandomState(1)
    points = rng.uniform(0, 1, (50, 2)) * np.array(im_size)[::-1]
    theirs = SAM2Transforms(1024, 0.0).transform_coords(
        torch.as_tensor(points, dtype=torch.float32), normalize=True, orig_hw=im_size
    )
    np.testing.assert_array_equal(sam2_point_coords(points, im_size), theirs.numpy())


def test_low_res_clean_up_matches_meta_with_a_cpu_kernel(monkeypatch):
    monkeypatch.delitem(__import__("sys").modules, "sam2._C", raising=False)
    sam2_cpu_cc.install()
    rng = np.random.RandomState(2)
    logits = rng.normal(0, 1, (3, 1, 64, 64)).astype(np.float32)
    logits[:, :, 20:40, 20:40] += 4.0  # one big component with holes, and sprinkles around
    transforms = SAM2Transforms(1024, 0.0, max_hole_area=6, max_sprinkle_area=4)
    theirs = transforms.postprocess_masks(torch.as_tensor(logits), (64, 64)).numpy()  # same size: no resize
    ours = fill_holes_and_sprinkles(logits[:, 0], 0.0, 6, 4)
    np.testing.assert_array_equal(ours, theirs[:, 0])
    assert (ours != logits[:, 0]).any()
    np.testing.assert_array_equal(fill_holes_and_sprinkles(logits[:, 0], 0.0, 0, 0), logits[:, 0])
