"""The evaluation as people read it (a table of classes and figures) and as tools read it (``evaluation.json``)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from alps_client.evaluate.ground_truth import RARE_SHARE
from alps_client.evaluate.scores import EvalReport
from alps_client.io import atomic
from alps_client.io.items import counted
from alps_client.labels.painting import IGNORE

WORST_SHOWN = 5  # images of lowest pixel accuracy named under the table


def format_table(report: EvalReport, class_names: dict[int, str] | None = None) -> str:
    """A readable per-class table with the summary figures."""
    def named(ids: list[int]) -> str:  # pseudo-label ids, with the names `alps relabel` gave them
        names = report.pseudo_label_names
        return "[" + ", ".join(f"{i} {names[i]}" if names.get(i, f"cluster_{i}") != f"cluster_{i}" else str(i)
                               for i in ids) + "]"

    class_names = class_names or report.ground_truth_names or report.ground_truth_colours

    def gt_named(ids: list[int], most: int = 12) -> str:  # ground-truth classes, by name and value where named
        colours = report.ground_truth_colours
        shown = ", ".join(f"'{class_names[k]}' ({colours.get(k, k)})" if k in report.ground_truth_names
                          else str(colours.get(k, k)) for k in ids[:most])
        return shown + (f" and {len(ids) - most} more (evaluation.json lists them)" if len(ids) > most else "")

    # the first column as wide as the longest class name: a long one shifted its row's figures out of their columns
    width = max([16, *(len(class_names.get(k, str(k))) for k in report.class_iou)])
    lines = [f"{'class':<{width}} {'IoU':>7} {'IoU*':>7}  pseudo-labels"]
    for k, iou in report.class_iou.items():
        name = class_names.get(k, str(k))
        never = "  (never labelled)" if k in report.classes_never_labelled else ""
        lines.append(f"{name:<{width}} {iou:>7.3f} {_figure(report.class_iou_labelled_pixels[k])}  "
                     f"{named(report.class_to_pseudo_labels.get(k, []))}{never}")
    undefined = sum(iou is None for iou in report.class_iou_labelled_pixels.values())
    them = "it" if undefined == 1 else "them"
    left_out = (f"; {counted(undefined, 'class')} left out (-): no labelled pixel of {them}, none labelled as "
                f"{them}") if undefined else ""
    lines += [
        (f"{'mIoU':<{width}} {report.miou:>7.3f}          over all {counted(report.n_classes, 'class')}, "
         f"unlabelled pixels counted as misses ({report.matching} matching, {counted(report.n_images, 'image')})"),
        f"{'mIoU*':<{width}} {_figure(report.miou_labelled_pixels)}          (*) on labelled pixels only{left_out}",
        f"{'coverage':<{width}} {report.coverage:>7.3f}          ground-truth pixels given a pseudo-label",
        (f"{'pixel accuracy':<{width}} {report.pixel_accuracy:>7.3f}          "
         f"(on labelled pixels only: {report.pixel_accuracy_labelled_pixels:.3f})"),
    ]
    ignored = gt_named(report.ground_truth_ignored).replace(", ", " and ")
    if report.ground_truth_names:
        lines.append(f"ground-truth classes: {len(report.ground_truth_names)} declared in "
                     f"{report.ground_truth_classes_file}")
    if report.ground_truth_pixels_snapped:
        lines.append(f"{counted(report.ground_truth_pixels_snapped, 'ground-truth pixel')} of undeclared colours "
                     f"within {report.ground_truth_colour_tolerance} of a declared one took its class")
    if report.classes_absent_from_ground_truth:
        lines.append(f"declared classes with no ground-truth pixel in these images (not scored): "
                     f"{gt_named(report.classes_absent_from_ground_truth)}")
    if report.classes_only_in_images_left_out:
        lines.append(f"ground-truth classes only in the images left out (--exclude-unlabelled-images), not "
                     f"scored: {gt_named(report.classes_only_in_images_left_out)}")
    if report.ground_truth_colours:
        lines.append(f"colour-coded ground truth: {len(report.ground_truth_colours)} colours"
                     + (f", {ignored} ignored (they name no class)" if ignored else ""))
    elif not report.ground_truth_ignored:
        lines.append("no ground-truth value is ignored: 255 is a class like any other")
    elif report.ground_truth_ignored != [IGNORE] or IGNORE in report.ground_truth_names:
        lines.append(f"ground-truth pixels of {ignored} are ignored (they name no class)")
    if report.ground_truth_rare_colours:
        lines.append(f"{report.ground_truth_rare_colours} of those colours hold under {RARE_SHARE:.1%} of the "
                     "pixels each, and each is scored as a class: if they are noise (JPEG, resampling), declare "
                     "the classes with --gt-classes and give --gt-colour-tolerance")
    if report.ground_truth_nodata:
        values = " and ".join(f"{v:g}" if isinstance(v, float) else v for v in report.ground_truth_nodata)
        lines.append(f"ground-truth pixels their GeoTIFF declares nodata ({values}) are left out (no class, no miss)")
    if report.ground_truth_nan_pixels:
        lines.append(f"{counted(report.ground_truth_nan_pixels, 'ground-truth pixel')} of NaN (no value) are left "
                     "out (no class, no miss)")
    if report.ground_truth_alpha_files:
        lines.append(f"{counted(report.ground_truth_alpha_files, 'ground-truth file')} with an alpha channel (grey "
                     f"or RGB and alpha): the grey or colour is the class, "
                     f"{counted(report.ground_truth_transparent_pixels, 'pixel')} of alpha 0 left out (no class, "
                     "no miss)")
    absent = report.pseudo_labels_absent_from_scored_pixels
    with_pixels = [c for c in report.unmatched_pseudo_labels if c not in absent]
    if with_pixels:
        lines.append(f"pseudo-labels matched to no class (their pixels count as errors): {named(with_pixels)}")
    if absent:
        lines.append(f"pseudo-labels of the dataset with no pixel in the images scored (matched to no class): "
                     f"{named(absent)}")
    worst = [row for row in report.per_image[:WORST_SHOWN]
             if row["pixels"] and row["pixel_accuracy"] < report.pixel_accuracy]
    if worst and len(report.per_image) > 1:
        lines.append("lowest pixel accuracy (coverage): " + ", ".join(
            f"{row['image']} {row['pixel_accuracy']:.3f} ({row['coverage']:.3f})" for row in worst)
            + " (every image in evaluation.json, per_image)")
    if report.missing_pseudo_labels:
        how = "counted as unlabelled" if report.missing_pseudo_labels_counted else "left out"
        lines.append(f"{len(report.missing_pseudo_labels)} ground-truth image(s) have no pseudo-label ({how}; "
                     f"first: {report.missing_pseudo_labels[0]})")
    if report.inputs_without_ground_truth:
        lines.append(f"{len(report.inputs_without_ground_truth)} labelled image(s) have no ground truth (a tiled "
                     f"scene or a volume counted once; first: {report.inputs_without_ground_truth[0]})")
    return "\n".join(lines)


def _figure(value: float | None) -> str:
    """A figure in its 7-character column; ``-`` where it is undefined (0/0)."""
    return f"{'-':>7}" if value is None else f"{value:>7.3f}"


def write_report(report: EvalReport, path: str | Path) -> None:
    """Write the report as JSON, atomically (class ids as string keys)."""
    data = asdict(report)
    for key in ("class_iou", "class_iou_labelled_pixels", "class_to_pseudo_labels", "ground_truth_colours",
                "ground_truth_names"):
        data[key] = {str(k): v for k, v in data[key].items()}
    atomic.write_json(path, data)
