"""``OUT/mmseg_dataset.py``: the dataset as an mmsegmentation 1.x dataset config, ready to be a ``_base_``.

The layout (``img_dir/<split>``, ``ann_dir/<split>``) is mmsegmentation's custom dataset; what a user would
otherwise type by hand, and get wrong silently, is written beside it: the one image suffix (a wrong
``img_suffix`` lists no image, or some), the class names and palette in class-id order, and
``reduce_zero_label=False`` (class 0 is a pseudo-label, not "unlabelled": 255 is). The pipelines are those of
mmsegmentation's own dataset configs (LoveDA's: random resize to 2048 x 512 at 0.5-2x, 512 x 512 crops, flips,
photometric distortion); override them in the config that uses this one. ``data_root`` is mmengine's
``{{ fileDirname }}``: the folder of this file, so the dataset may be moved.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pprint import pformat

FILE_NAME = "mmseg_dataset.py"


def mmseg_config(class_names: Sequence[str], palette: Sequence[Sequence[int]], img_suffix: str,
                 splits: Sequence[str]) -> str:
    """The text of ``mmseg_dataset.py`` for a dataset with these classes (id order), image suffix and splits.

    Args:
        class_names: one name per class id 0..N-1.
        palette: ``(N, 3)`` RGB colours, the previews' own.
        img_suffix: the extension every image in ``img_dir`` has (the manifest's ``img_suffix``).
        splits: the splits that hold images (``train``, and ``val`` and ``test`` where the dataset has them).
    """
    metainfo = {"classes": tuple(class_names), "palette": [list(map(int, c)) for c in palette]}
    # mmsegmentation fails on a split folder that does not exist (and on an empty one): train on train, else on
    # val, else on test (input folders that give only val/test images); validate on val, else on test, else on
    # train (--val-fraction 0, a single scene); and say so.
    trained = "train" if "train" in splits else "val" if "val" in splits else "test"
    validated = "val" if "val" in splits else "test" if "test" in splits else "train"
    evaluated = "test" if "test" in splits else validated
    notes = []
    if trained != "train":
        given = " and ".join(name for name in ("val", "test") if name in splits)
        notes.append(f"This dataset has no train split (its input's folders hold only {given} images): training "
                     f"runs on {trained}.")
    if validated != "val":
        runs = "validation runs" if validated == evaluated == "test" else "validation and test run"
        also_trained = ", the images trained on" if validated == trained else ""
        notes.append("This dataset has no val split (--val-fraction 0, too few scenes, or input folders without "
                     f"val/): {runs} on {validated}{also_trained}.")
    note = "".join(textwrap.fill(n, 115, initial_indent="# ", subsequent_indent="# ") + "\n" for n in notes)
    return f'''# mmsegmentation 1.x dataset settings for the ALPS pseudo-labels in this folder (written by alps: do not
# edit, `alps run` and `alps relabel` rewrite it). Use it as a base of your model's config:
#     _base_ = ["/path/to/this/mmseg_dataset.py", ...]
# then override what you train with (pipelines, batch size). 255 in ann_dir is "no pseudo-label", ignored.
{note}dataset_type = "BaseSegDataset"
data_root = "{{{{ fileDirname }}}}"
img_suffix = {img_suffix!r}
metainfo = {pformat(metainfo, width=110, compact=True)}
crop_size = (512, 512)
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),
    dict(type="RandomResize", scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type="RandomCrop", crop_size=crop_size, cat_max_ratio=0.75),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PhotoMetricDistortion"),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(2048, 512), keep_ratio=True),
    dict(type="LoadAnnotations"),
    dict(type="PackSegInputs"),
]


def _split(name, pipeline):
    return dict(type=dataset_type, data_root=data_root, metainfo=metainfo, img_suffix=img_suffix,
                seg_map_suffix=".png", reduce_zero_label=False, ignore_index=255,
                data_prefix=dict(img_path="img_dir/" + name, seg_map_path="ann_dir/" + name), pipeline=pipeline)


train_dataloader = dict(batch_size=4, num_workers=4, persistent_workers=True,
                        sampler=dict(type="InfiniteSampler", shuffle=True), dataset=_split({trained!r}, train_pipeline))
val_dataloader = dict(batch_size=1, num_workers=4, persistent_workers=True,
                      sampler=dict(type="DefaultSampler", shuffle=False), dataset=_split({validated!r}, test_pipeline))
test_dataloader = dict(batch_size=1, num_workers=4, persistent_workers=True,
                       sampler=dict(type="DefaultSampler", shuffle=False),
                       dataset=_split({evaluated!r}, test_pipeline))
val_evaluator = dict(type="IoUMetric", iou_metrics=["mIoU"])
test_evaluator = val_evaluator
del _split
'''
