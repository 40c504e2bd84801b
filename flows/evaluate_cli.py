"""``alps evaluate``: the scores of a written dataset against ground-truth label maps (alps_client.evaluate)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flows.console import fail
from flows.exits import EXIT_OK
from flows.review_cli import a_path


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``alps evaluate``: mIoU of a written dataset against ground-truth label maps."""
    from alps_client.errors import AlpsError
    from alps_client.evaluate import evaluate_dataset, format_table, write_report
    from alps_client.labels.relabel import ClassesFileError
    from alps_client.runs.retry import describe

    try:
        report = evaluate_dataset(args.out, args.gt_dir, args.matching, args.exclude_unlabelled_images,
                                  args.ignore_index, args.gt_suffix, args.image_suffix, args.gt_classes,
                                  args.gt_colour_tolerance)
    except ClassesFileError as err:  # every problem of the --gt-classes file, one line each
        return fail(str(err))
    except AlpsError as err:
        return fail(describe(err))
    json_path = Path(args.json or Path(args.out) / "evaluation.json")
    try:  # written before anything is printed: a reader that leaves early (`| head`) does not lose it
        write_report(report, json_path)
        unwritable = None
    except OSError as err:
        unwritable = err
    for warning in report.warnings:
        print(f"alps: {warning}", file=sys.stderr)
    print(format_table(report))
    if unwritable is not None:
        return fail(f"--json {json_path}: cannot write the report ({unwritable.strerror or unwritable}); the "
                    "figures are above")
    print(f"Written to {json_path}")
    return EXIT_OK


def add_evaluate_parser(sub: argparse._SubParsersAction) -> None:
    """``alps evaluate``'s parser, in ``alps``' commands."""
    ev = sub.add_parser("evaluate", help="mIoU of pseudo-labels against ground truth (every class, every miss counted)")
    ev.add_argument("out", type=a_path, help="a dataset written by `alps run`")
    ev.add_argument("gt_dir", type=a_path,
                    help="ground-truth label maps (PNG, TIFF, BMP, GIF, JPEG, WebP, JPEG 2000 of class ids or of one "
                         "RGB colour per class; NIfTI label volumes): a tree that mirrors the dataset's, or a flat folder with the images' file names")
    ev.add_argument("--matching", choices=["hungarian", "majority"], default="hungarian",
                    help="cluster -> class: one cluster per class, best total (hungarian), or each cluster to its "
                         "most frequent class, several per class (majority) (hungarian)")
    ev.add_argument("--ignore-index", metavar="ID", action="append",
                    help="a ground-truth value that names no class (a dataset's 'unlabelled' or no-data, e.g. 0 for "
                         "LoveDA), ignored like 255; give it again for each value to ignore; 'none': every value is "
                         "a class, 255 too (a binary 0/255 mask); a colour as #rrggbb for colour-coded ground truth")
    ev.add_argument("--gt-suffix", default="", metavar="TEXT",
                    help="the end of ground-truth file names that their images' names lack, dropped before pairing "
                         "(ISPRS Potsdam: _label; DeepGlobe: _mask; ISIC: _segmentation)")
    ev.add_argument("--image-suffix", default="", metavar="TEXT",
                    help="the end of image names that their ground truth's names lack, dropped before pairing "
                         "(ISPRS Potsdam: _RGB; DeepGlobe: _sat)")
    ev.add_argument("--gt-classes", metavar="FILE",
                    help="YAML/JSON naming every ground-truth class: {classes: [road, building]} (ids 0, 1), "
                         "{classes: [{name: road, id: 7}]} or {classes: [{name: urban, colour: '#00ffff'}]}; a "
                         ".txt of one name per line (ids 0, 1, ...); a FreeSurfer, 3D Slicer or ITK-SNAP colour "
                         "table. A value it does not declare is refused")
    ev.add_argument("--gt-colour-tolerance", type=int, default=0, metavar="N",
                    help="colour-coded ground truth: a colour within N of a declared one in every channel takes "
                         "its class (noisy masks; DeepGlobe: 127, its binarisation at 128)")
    ev.add_argument("--json", help="report path (default OUT/evaluation.json)")
    ev.add_argument("--exclude-unlabelled-images", action="store_true",
                    help="leave out ground-truth images that have no pseudo-label (default: count them as unlabelled)")
    ev.set_defaults(func=cmd_evaluate)
