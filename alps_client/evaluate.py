"""``alps evaluate``: mIoU of pseudo-labels against ground truth, clusters matched to classes.

Pseudo-label ids are cluster ids, unrelated to the ground truth's class ids, so clusters are first matched to
classes from the dataset-wide confusion matrix (pixels where either side is 255 are ignored):

- ``hungarian`` (default): one-to-one assignment maximising matched pixels (scipy's
  ``linear_sum_assignment``); with more clusters than classes the unmatched clusters' pixels count as errors.
- ``majority``: each cluster goes to the class it overlaps most (many-to-one), the usual upper bound when N > K.

Per class: IoU = TP / (TP + FP + FN) over all images; mIoU averages the classes present in the ground truth.
Coverage is the fraction of labelled ground-truth pixels that received a pseudo-label.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
from PIL import Image

from alps_client.io import atomic
from alps_client.errors import AlpsError
from alps_client.labels.painting import IGNORE

Matching = Literal["hungarian", "majority"]


@dataclass
class EvalReport:
    """Evaluation figures (JSON-ready via ``asdict``)."""

    miou: float
    pixel_accuracy: float
    coverage: float
    n_images: int
    matching: str
    class_iou: dict[int, float] = field(default_factory=dict)
    class_to_cluster: dict[int, list[int]] = field(default_factory=dict)
    missing_ground_truth: list[str] = field(default_factory=list)


def confusion(pred: npt.NDArray[np.uint8], gt: npt.NDArray[np.uint8]) -> npt.NDArray[np.int64]:
    """``(255, 255)`` pixel counts [cluster, class], ignoring 255 on both sides."""
    valid = (pred != IGNORE) & (gt != IGNORE)
    idx = pred[valid].astype(np.int64) * IGNORE + gt[valid].astype(np.int64)
    return np.bincount(idx, minlength=IGNORE * IGNORE).reshape(IGNORE, IGNORE)


def match_clusters(conf: npt.NDArray[np.int64], matching: Matching = "hungarian") -> dict[int, int]:
    """Cluster -> class mapping from a [cluster, class] confusion matrix."""
    clusters = np.flatnonzero(conf.sum(1))
    classes = np.flatnonzero(conf.sum(0))
    if len(clusters) == 0 or len(classes) == 0:
        return {}
    sub = conf[np.ix_(clusters, classes)]
    if matching == "majority":
        return {int(c): int(classes[np.argmax(row)]) for c, row in zip(clusters, sub)}
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(sub, maximize=True)
    return {int(clusters[r]): int(classes[c]) for r, c in zip(rows, cols)}


def scores(conf: npt.NDArray[np.int64], mapping: dict[int, int], gt_pixels: int) -> EvalReport:
    """IoU per ground-truth class given a cluster -> class mapping."""
    classes = np.flatnonzero(conf.sum(0))
    class_iou, class_to_cluster = {}, {}
    tp_total = 0
    for k in classes:
        members = [c for c, m in mapping.items() if m == k]
        tp = int(conf[members, k].sum()) if members else 0
        fp = int(conf[members, :].sum()) - tp if members else 0
        fn = int(conf[:, k].sum()) - tp
        class_iou[int(k)] = tp / (tp + fp + fn) if tp + fp + fn else 0.0
        class_to_cluster[int(k)] = sorted(members)
        tp_total += tp
    compared = int(conf.sum())
    return EvalReport(
        miou=float(np.mean(list(class_iou.values()))) if class_iou else 0.0,
        pixel_accuracy=tp_total / compared if compared else 0.0,
        coverage=compared / gt_pixels if gt_pixels else 0.0,
        n_images=0,
        matching="",
        class_iou=class_iou,
        class_to_cluster=class_to_cluster,
    )


def _read_label(path: Path) -> npt.NDArray[np.uint8]:
    with Image.open(path) as im:
        arr = np.asarray(im)
    if arr.ndim != 2:
        raise AlpsError(f"{path}: a label map must be a single-channel PNG of class ids, got shape {arr.shape}")
    return arr.astype(np.uint8)


def evaluate_dataset(out_dir: str | Path, gt_dir: str | Path, matching: Matching = "hungarian") -> EvalReport:
    """Evaluate ``out_dir/ann_dir/{train,val}/<stem>.png`` against ``gt_dir/**/<stem>.png``.

    Raises:
        AlpsError: If either folder has no label maps or no stem matches.
    """
    out, gt_root = Path(out_dir), Path(gt_dir)
    preds = sorted((out / "ann_dir").glob("*/*.png"))
    if not preds:
        raise AlpsError(f"no label maps under {out / 'ann_dir'}; run `alps run DATASET --out {out}` first")
    if not gt_root.is_dir():
        raise AlpsError(f"ground-truth folder {gt_root} does not exist")
    gts = {p.stem: p for p in sorted(gt_root.rglob("*.png"))}
    conf = np.zeros((IGNORE, IGNORE), np.int64)
    gt_pixels, n, missing = 0, 0, []
    for pred_path in preds:
        gt_path = gts.get(pred_path.stem)
        if gt_path is None:
            missing.append(pred_path.stem)
            continue
        pred, gt = _read_label(pred_path), _read_label(gt_path)
        if pred.shape != gt.shape:
            raise AlpsError(f"{gt_path}: size {gt.shape} differs from the pseudo-label {pred_path} {pred.shape}")
        conf += confusion(pred, gt)
        gt_pixels += int((gt != IGNORE).sum())
        n += 1
    if n == 0:
        raise AlpsError(f"no ground-truth PNG in {gt_root} has the stem of a pseudo-label in {out / 'ann_dir'}")
    report = scores(conf, match_clusters(conf, matching), gt_pixels)
    report.n_images, report.matching, report.missing_ground_truth = n, matching, missing
    return report


def format_table(report: EvalReport, class_names: dict[int, str] | None = None) -> str:
    """A readable per-class table with the summary figures."""
    lines = [f"{'class':<16} {'IoU':>7}  clusters"]
    for k, iou in report.class_iou.items():
        name = (class_names or {}).get(k, str(k))
        lines.append(f"{name:<16} {iou:>7.3f}  {report.class_to_cluster.get(k, [])}")
    lines.append(f"{'mIoU':<16} {report.miou:>7.3f}  ({report.matching} matching, {report.n_images} images)")
    lines.append(f"{'pixel accuracy':<16} {report.pixel_accuracy:>7.3f}")
    lines.append(f"{'coverage':<16} {report.coverage:>7.3f}  (labelled GT pixels given a pseudo-label)")
    if report.missing_ground_truth:
        lines.append(f"{len(report.missing_ground_truth)} pseudo-labels had no ground truth (first: {report.missing_ground_truth[0]})")
    return "\n".join(lines)


def write_report(report: EvalReport, path: str | Path) -> None:
    """Write the report as JSON, atomically."""
    data = asdict(report)
    data["class_iou"] = {str(k): v for k, v in report.class_iou.items()}
    data["class_to_cluster"] = {str(k): v for k, v in report.class_to_cluster.items()}
    atomic.write_json(path, data)
