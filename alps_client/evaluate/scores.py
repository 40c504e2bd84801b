"""Scores from pixel counts: a dataset's confusion, clusters matched to classes, every figure of the report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from alps_client.labels.painting import IGNORE

Matching = Literal["hungarian", "majority"]
N_IDS = 256  # pseudo-label ids 0..255; 255 = no label


@dataclass
class EvalReport:
    """Evaluation figures (JSON-ready via :func:`write_report`); see the module docs for definitions."""

    miou: float
    miou_labelled_pixels: float | None  # None: no class has a labelled pixel
    coverage: float
    pixel_accuracy: float
    pixel_accuracy_labelled_pixels: float
    n_images: int
    n_classes: int
    matching: str
    class_iou: dict[int, float] = field(default_factory=dict)
    # None where a class has neither a ground-truth pixel nor a pseudo-label among labelled pixels: left out of
    # miou_labelled_pixels (0/0 says nothing of the labels there are)
    class_iou_labelled_pixels: dict[int, float | None] = field(default_factory=dict)
    # pseudo-labels are the values of ann_dir: clusters, or after `alps relabel` its classes (pseudo_label_names)
    class_to_pseudo_labels: dict[int, list[int]] = field(default_factory=dict)
    classes_never_labelled: list[int] = field(default_factory=list)
    unmatched_pseudo_labels: list[int] = field(default_factory=list)
    pseudo_labels_absent_from_scored_pixels: list[int] = field(default_factory=list)  # of unmatched: no pixel scored
    missing_ground_truth: list[str] = field(default_factory=list)  # label maps (a scene's tiles, each)
    inputs_without_ground_truth: list[str] = field(default_factory=list)  # as scored: a tiled scene, a volume once
    missing_pseudo_labels: list[str] = field(default_factory=list)
    missing_pseudo_labels_counted: bool = True
    pseudo_label_names: dict[int, str] = field(default_factory=dict)
    ground_truth_ignored: list[int] = field(default_factory=lambda: [IGNORE])
    ground_truth_colours: dict[int, str] = field(default_factory=dict)  # colour-coded ground truth: id -> #rrggbb
    ground_truth_nodata: list[float | str] = field(default_factory=list)  # GeoTIFFs' nodata ("NaN"): left out
    ground_truth_nan_pixels: int = 0  # NaN pixels of float maps declaring no nodata: no label, left out
    ground_truth_alpha_files: int = 0  # grey and alpha, or RGBA: grey or colour read, alpha 0 left out
    ground_truth_transparent_pixels: int = 0  # their pixels of alpha 0
    ground_truth_names: dict[int, str] = field(default_factory=dict)  # --gt-classes: id -> name
    ground_truth_classes_file: str | None = None
    classes_absent_from_ground_truth: list[int] = field(default_factory=list)  # declared, no pixel: not scored
    classes_only_in_images_left_out: list[int] = field(default_factory=list)  # exclude_unlabelled_images: unscored
    ground_truth_colour_tolerance: int = 0
    ground_truth_rare_colours: int = 0  # undeclared colour-coded ground truth: colours of < 0.1 % of the pixels
    # image, pixels, coverage, pixel_accuracy; worst first, both None (and last) where no pixel is scored
    per_image: list[dict[str, Any]] = field(default_factory=list)
    ground_truth_pixels_snapped: int = 0  # undeclared colours within the tolerance, given the nearest's class
    warnings: list[str] = field(default_factory=list)  # what may make the figures wrong, one line each


@dataclass(frozen=True)
class Confusion:
    """Pixel counts over a dataset: ``counts[pseudo-label, j]`` for the ground-truth value ``values[j]``.

    Rows are the pseudo-label ids 0..255 (row 255: unlabelled pixels); columns are the ground-truth values seen,
    in increasing order: any integers (16-bit label maps such as FreeSurfer's reach 2035; -1 marks "no label" in
    some). Ground-truth values that name no class are left out afterwards (:meth:`without`): the whole dataset's
    values decide what 255 is.

    Attributes:
        counts: ``(256, V) int64`` pixel counts.
        values: ``(V,) int64`` ground-truth values, increasing.
    """

    counts: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros((N_IDS, 0), np.int64))
    values: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))

    @classmethod
    def of(cls, pred: npt.NDArray[np.uint8], gt: npt.NDArray[np.integer]) -> Confusion:
        """The confusion of one pseudo-label map (``uint8`` ids) with its ground truth (integers), same shape.

        Counted 4 Mpx at a time: a 20,000-px scene's ground truth is not copied whole to int64 (3.2 GB a copy).
        """
        pred, gt = pred.reshape(-1), gt.reshape(-1)
        step = 1 << 22
        return sum((cls._of_part(pred[i:i + step], gt[i:i + step]) for i in range(0, gt.size, step)), cls())

    @classmethod
    def _of_part(cls, pred: npt.NDArray[np.uint8], gt: npt.NDArray[np.integer]) -> Confusion:
        flat = gt.astype(np.int64)
        if flat.size == 0:
            return cls()
        low, high = int(flat.min()), int(flat.max())
        if high - low < 4096:  # the usual few class ids: counting beats sorting
            values, column = np.arange(low, high + 1, dtype=np.int64), flat - low
        else:
            values, column = np.unique(flat, return_inverse=True)
        counts = np.bincount(pred.astype(np.int64) * len(values) + column,
                             minlength=N_IDS * len(values)).reshape(N_IDS, len(values))
        seen = counts.sum(0) > 0
        return cls(counts[:, seen], values[seen])

    def __add__(self, other: Confusion) -> Confusion:
        values = np.union1d(self.values, other.values)
        counts = np.zeros((N_IDS, len(values)), np.int64)
        counts[:, np.searchsorted(values, self.values)] += self.counts
        counts[:, np.searchsorted(values, other.values)] += other.counts
        return Confusion(counts, values)

    def with_values(self, new: dict[int, int]) -> Confusion:
        """The same counts with ground-truth values renamed (``{old: new}``; values merge if they meet)."""
        renamed = Confusion()
        for j, value in enumerate(self.values.tolist()):
            renamed += Confusion(self.counts[:, j:j + 1], np.array([new.get(value, value)], np.int64))
        return renamed

    def without(self, ignored: list[int]) -> Confusion:
        """The columns of ``ignored`` ground-truth values dropped: they are no class and no miss."""
        kept = ~np.isin(self.values, ignored)
        return Confusion(self.counts[:, kept], self.values[kept])


def match_clusters(conf: Confusion, matching: Matching = "hungarian") -> dict[int, int]:
    """Cluster -> ground-truth class (value) from the confusion of labelled pixels."""
    labelled = conf.counts[:IGNORE]
    clusters = np.flatnonzero(labelled.sum(1))
    columns = np.flatnonzero(conf.counts.sum(0))
    if len(clusters) == 0 or len(columns) == 0:
        return {}
    sub = labelled[np.ix_(clusters, columns)]
    if matching == "majority":
        return {int(c): int(conf.values[columns[np.argmax(row)]]) for c, row in zip(clusters, sub)}
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(sub, maximize=True)
    return {int(clusters[r]): int(conf.values[columns[c]]) for r, c in zip(rows, cols) if sub[r, c] > 0}


def _iou(tp: int, fp: int, fn: int) -> float | None:
    return tp / (tp + fp + fn) if tp + fp + fn else None


def scores(conf: Confusion, mapping: dict[int, int], matching: str = "") -> EvalReport:
    """Every figure of the report from a dataset's confusion and a cluster -> class mapping.

    Every ground-truth value with pixels is a class (ignored values are dropped first: :meth:`Confusion.without`).
    """
    counts = conf.counts
    class_iou, class_iou_labelled, members_of, never = {}, {}, {}, []
    tp_total = 0
    for j in np.flatnonzero(counts.sum(0)).tolist():
        k = int(conf.values[j])
        members = sorted(c for c, m in mapping.items() if m == k)
        tp = int(counts[members, j].sum()) if members else 0
        fp = int(counts[members].sum()) - tp if members else 0
        labelled_gt = int(counts[:IGNORE, j].sum())
        class_iou[k] = _iou(tp, fp, int(counts[:, j].sum()) - tp) or 0.0  # every class has pixels: defined
        class_iou_labelled[k] = _iou(tp, fp, labelled_gt - tp)
        members_of[k] = members
        never += [k] if labelled_gt == 0 else []
        tp_total += tp
    gt_pixels = int(counts.sum())
    labelled_pixels = int(counts[:IGNORE].sum())
    used = set(np.flatnonzero(counts[:IGNORE].sum(1)).tolist())
    defined = [iou for iou in class_iou_labelled.values() if iou is not None]
    return EvalReport(
        miou=float(np.mean(list(class_iou.values()))) if class_iou else 0.0,
        miou_labelled_pixels=float(np.mean(defined)) if defined else None,
        coverage=labelled_pixels / gt_pixels if gt_pixels else 0.0,
        pixel_accuracy=tp_total / gt_pixels if gt_pixels else 0.0,
        pixel_accuracy_labelled_pixels=tp_total / labelled_pixels if labelled_pixels else 0.0,
        n_images=0,
        n_classes=len(class_iou),
        matching=matching,
        class_iou=class_iou,
        class_iou_labelled_pixels=class_iou_labelled,
        class_to_pseudo_labels=members_of,
        classes_never_labelled=never,
        unmatched_pseudo_labels=sorted(int(c) for c in used - set(mapping)),
    )


@dataclass(frozen=True)
class ImageCounts:
    """One image's confusion, kept small (the pseudo-labels it holds only) until clusters are matched to classes."""

    stem: str
    rows: npt.NDArray[np.int64]  # (R,) pseudo-label ids with pixels in this image (255: unlabelled)
    counts: npt.NDArray[np.int64]  # (R, V) pixel counts
    values: npt.NDArray[np.int64]  # (V,) ground-truth values, colour ids for an RGB file
    coloured: bool

    @classmethod
    def of(cls, stem: str, part: Confusion, coloured: bool) -> ImageCounts:
        """The counts of image ``stem`` from its confusion ``part``, the rows of pseudo-labels it lacks left out."""
        rows = np.flatnonzero(part.counts.sum(1))
        return cls(stem, rows, part.counts[rows], part.values, coloured)

    def figures(self, mapping: dict[int, int], ignored: set[int], grey: dict[int, int]) -> dict[str, Any]:
        """Coverage and pixel accuracy of this image under the dataset's cluster -> class ``mapping``.

        Both are None where no pixel of the image is scored (every one ignored, or nodata).

        ``grey``: colour id -> grey value, when RGB ground truth held class ids as greys.
        """
        values = [grey.get(v, v) if self.coloured else v for v in self.values.tolist()]
        scored = [j for j, v in enumerate(values) if v not in ignored]
        counts = self.counts[:, scored]
        truth = [values[j] for j in scored]
        correct = sum(int(counts[i, k]) for i, row in enumerate(self.rows.tolist()) for k, v in enumerate(truth)
                      if mapping.get(row) == v)
        pixels = int(counts.sum())
        labelled = int(counts[self.rows < IGNORE].sum())
        # None, not 0: an image none of whose pixels is scored (all ignored or nodata) did nothing wrong
        return {"image": self.stem, "pixels": pixels, "coverage": labelled / pixels if pixels else None,
                "pixel_accuracy": correct / pixels if pixels else None}
