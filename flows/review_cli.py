"""``alps report`` and ``alps relabel``, and the report's link on the Prefect run.

Neither command runs SAM, the flow or Prefect: both rebuild outputs from what ``alps run`` left in ``OUT``
(shards, centroids, manifest). A user mistake (no dataset, a bad classes file) is one ``alps: error:`` line per
problem and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from flows.console import fail

if TYPE_CHECKING:
    from alps_client.io.rewrite import RelabelPreview

VECTOR_CHOICES = ("gpkg", "geojson")


def a_path(value: str) -> str:
    """A path argument: an empty one (an unset shell variable) would mean the current folder."""
    if not value.strip():
        raise argparse.ArgumentTypeError("an empty path (an unset shell variable?)")
    return value


def add_vector_argument(p: argparse._ActionsContainer, help_default: str) -> None:
    """``--vector gpkg|geojson``: one polygon per kept mask under ``OUT/vectors/``."""
    p.add_argument("--vector", dest="vector_format", choices=VECTOR_CHOICES,
                   help=f"also write one polygon per kept mask to OUT/vectors/ ({help_default})")


def cmd_report(args: argparse.Namespace) -> int:
    """``alps report OUT``."""
    from alps_client.errors import AlpsError
    from alps_client.review import build_report

    try:
        size = build_report(args.out)
    except AlpsError as err:
        return fail(str(err))
    index = Path(args.out).resolve() / "report" / "index.html"
    print(f"Review page: {index.as_uri()}  ({size['files']} files, {size['bytes'] / 1e6:.1f} MB)")
    print(f"Name, merge, drop: copy {index.parent / 'classes.yaml'}, edit it, then "
          f"`alps relabel {shlex.quote(args.out)} --classes classes.yaml`")
    return 0


def cmd_relabel(args: argparse.Namespace) -> int:
    """``alps relabel OUT --classes FILE``."""
    from alps_client.errors import AlpsError
    from alps_client.io.items import counted
    from alps_client.io.rewrite import KEEP, relabel_dataset

    vector = None if args.no_vector else (args.vector_format or KEEP)
    if args.dry_run:
        return _dry_run(args, vector)
    try:
        summary, class_map = relabel_dataset(args.out, args.classes, vector, args.write_report,
                                             lambda line: print(f"alps: {line}", file=sys.stderr))
    except AlpsError as err:
        return fail(str(err))
    print(f"Relabelled {args.out}: {counted(summary.n_images, 'image')}, {counted(class_map.n_classes, 'class')} "
          f"({', '.join(class_map.names[:8])}{', ...' if class_map.n_classes > 8 else ''})"
          f"{f'; clusters {class_map.dropped} dropped (255)' if class_map.dropped else ''}")
    if summary.vectors:
        print(f"Vectors: {Path(args.out) / 'vectors'} ({sum(summary.vectors.values())} polygons)")
    if summary.report:
        print(f"Review page: {(Path(args.out).resolve() / 'report' / 'index.html').as_uri()}")
    return 0


def _dry_run(args: argparse.Namespace, vector: str | None) -> int:
    """``alps relabel OUT --classes FILE --dry-run``: the classes the file gives, with their figures.

    Then the vectors and page the relabel with the same flags would write, and the outputs it would remove.
    """
    from alps_client.errors import AlpsError
    from alps_client.io.items import counted
    from alps_client.io.rewrite import preview_relabel

    try:
        preview = preview_relabel(args.out, args.classes, lambda line: print(f"alps: {line}", file=sys.stderr),
                                  vector, args.write_report)
    except AlpsError as err:
        return fail(str(err))
    print(f"Dry run (nothing written): with {args.classes}, {args.out} would have "
          f"{counted(preview.class_map.n_classes, 'class')} (now {preview.current.n_classes}):")
    for line in relabel_table(preview):
        print(line)
    print(f"labelled pixels: {100 * preview.labelled_fraction(preview.class_map):.1f}% of all "
          f"(now {100 * preview.labelled_fraction(preview.current):.1f}%)")
    print(f"vectors: {preview.vector_format or 'none'} (now {preview.vector_format_now or 'none'}); review page: "
          f"{'written' if preview.report else 'none'} (now {'one' if preview.report_now else 'none'})")
    return 0


def relabel_table(preview: RelabelPreview) -> list[str]:
    """The lines of a dry run's table.

    Each class of the file (dropped clusters last, as id 255) with its clusters, masks, pixels, share of the
    labelled pixels, and the classes those clusters are in now.
    """
    from alps_client.labels.painting import IGNORE

    new, now = preview.class_map, preview.current
    labelled = sum(preview.pixels_of(new, c) for c in range(new.n_classes))
    ids = [*range(new.n_classes), *([IGNORE] if new.dropped else [])]
    rows = [("id", "class", "clusters", "masks", "pixels", "share", "now")]
    for c in ids:
        clusters = new.clusters_of(c)
        was = list(dict.fromkeys(now.names[c] if c != IGNORE else "(dropped)"
                                 for c in (now.cluster_to_class[k] for k in clusters)))
        pixels = preview.pixels_of(new, c)
        share = "" if c == IGNORE else f"{100 * pixels / labelled:.1f}%" if labelled else "-"
        rows.append((str(c), "(dropped: no label)" if c == IGNORE else new.names[c], ", ".join(map(str, clusters)),
                     str(preview.masks_of(new, c)), str(pixels), share, ", ".join(was)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    right = {0, 3, 4, 5}
    return ["  ".join(cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))
                      ).rstrip() for row in rows]


def add_report_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``alps report``."""
    p = sub.add_parser("report", help="write the cluster review page OUT/report/index.html (no SAM)",
                       description="Rebuild OUT/report/ from the run's shards and centroids: one section per class "
                                   "with mask crops, figures and a classes file to edit for `alps relabel`.")
    p.add_argument("out", type=a_path, help="a dataset written by `alps run`")
    p.set_defaults(func=cmd_report)


def add_relabel_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``alps relabel``."""
    p = sub.add_parser("relabel", help="name, merge and drop clusters; rewrite the dataset from its shards (no SAM)",
                       description="Rewrite OUT with the classes of a YAML/JSON file: {classes: [{name, clusters}], "
                                   "drop: [...]}. Unlisted clusters keep a class of their own (cluster_<k>).")
    p.add_argument("out", type=a_path, help="a dataset written by `alps run`")
    p.add_argument("--classes", required=True, help="YAML or JSON classes file (template: OUT/report/classes.yaml)")
    vectors = p.add_mutually_exclusive_group()
    add_vector_argument(vectors, "default: the format the dataset has now")
    vectors.add_argument("--no-vector", action="store_true", help="remove OUT/vectors/")
    p.add_argument("--no-report", dest="write_report", action="store_false", default=None,
                   help="do not write OUT/report/ (default: keep the page if the dataset has one)")
    p.add_argument("--dry-run", action="store_true",
                   help="check the classes file and print the classes it gives, with their clusters, masks and "
                        "pixels, beside the classes now, and the vectors and page the relabel with these flags "
                        "would write; write nothing")
    p.set_defaults(func=cmd_relabel)


def report_link_artifact(out: str | Path) -> None:
    """A link artifact on the current Prefect run to the review page (when the run wrote one)."""
    from prefect.artifacts import create_link_artifact

    index = Path(out).resolve() / "report" / "index.html"
    if index.is_file():
        create_link_artifact(key="alps-report", link=index.as_uri(), link_text="cluster review page",
                             description=f"Cluster review page of {out}: static HTML on the machine that holds "
                                         "it; browsers do not follow file:// links from a web page, so copy the "
                                         "link into the address bar")
