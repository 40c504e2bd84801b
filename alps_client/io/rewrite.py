"""``alps relabel``: rewrite a labelled dataset with new classes from its shards (no SAM, no re-clustering).

The masks, their PFLs and the centroids stay as the run left them; only the cluster -> class mapping changes.
The whole dataset (label maps, COCO files, classes.json, previews, GeoTIFF / stitched / NIfTI outputs, vectors,
the report and the manifest, which records the mapping) is written again through the dataset writer, staged and
swapped in as a whole: an interrupted relabel leaves the previous dataset intact, and running it again finishes
the job. The same classes file gives byte-identical outputs, however often it is applied.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from alps_client.config import WriterConfig
from alps_client.errors import InputChangedError
from alps_client.io import atomic
from alps_client.io.dataset import WrittenDataset, load_dataset
from alps_client.io.items import counted
from alps_client.io.layout import work_dir
from alps_client.io.out_lock import busy, out_lock, writer_of, written_while_read
from alps_client.io.publish import dataset_version, finish_killed_swap, outputs_named
from alps_client.io.shards import read_shard
from alps_client.io.vectors import check_vector_dependencies
from alps_client.io.writer import (
    CENTROIDS_UNRECORDED,
    MANIFEST_KEYS,
    DatasetSummary,
    image_labels,
    write_dataset,
)
from alps_client.labels.classes import ClassMap
from alps_client.labels.clustering import centroids_model
from alps_client.labels.relabel import ClassesFileError, class_map_from_spec, clusters_key, parse_classes

KEEP = "keep"
# OUT/.alps/relabelled/<centroids sha256[:12]>/: relabels a rerun could not carry over, with their centroids.
SET_ASIDE = "relabelled"
EARLIER = "earlier"  # OUT/.alps/earlier/<sha256>/centroids.npy: clusters of a dataset a rerun replaced


def relabel_dataset(out: str | Path, classes_file: str | Path,
                    vector_format: Literal["gpkg", "geojson", "keep"] | None = KEEP,
                    write_report: bool | None = None, warn: Callable[[str], None] | None = None
                    ) -> tuple[DatasetSummary, ClassMap]:
    """Apply a classes file to the dataset in ``out``.

    Args:
        out: the dataset folder (``--out`` of ``alps run``).
        classes_file: YAML or JSON classes file (see :mod:`alps_client.labels.relabel`).
        vector_format: ``gpkg`` / ``geojson``, None for no vectors, or ``keep`` for what the dataset has now.
        write_report: write the review page; None keeps what the dataset has now (a page ``alps report`` added
            to a dataset written without one is kept).
        warn: receives the line naming outputs the relabelled dataset drops (its ``evaluation.json``, which
            scored the earlier classes; vectors or the page turned off).

    Returns:
        The written dataset's summary and its class map.

    Raises:
        AlpsError: If ``out`` holds no dataset or lacks shards, or another process is writing it;
            ClassesFileError (one line per problem) if the classes file is invalid. Nothing is written then.
    """
    with out_lock(out, "alps relabel", create=False):  # held before reading: a run may be replacing the dataset
        data = load_dataset(out)
        class_map, record = parse_classes(classes_file, data.centroids)
        missing = data.manifest.get("missing") or []
        if missing and warn is not None:
            warn(_lacks(out, missing, "the relabelled dataset lacks them too; the same `alps run` labels them, and "
                                      "keeps these classes"))
        if vector_format not in (None, KEEP):
            check_vector_dependencies()
        return _rewrite(data, class_map, record, vector_format, write_report, warn)


@dataclass(frozen=True)
class RelabelPreview:
    """What ``alps relabel --dry-run`` shows: a classes file's classes with the figures the relabel would give.

    Attributes:
        class_map: the classes the file gives.
        current: the dataset's classes now.
        masks_per_cluster: ``(N,)`` kept masks of each cluster (a dropped one's too).
        pixels_per_cluster: ``(N,)`` pixels each cluster holds in the label maps (the mask on top decides).
        pixels: pixels of every label map, labelled or not.
        vector_format: the vectors the relabel would write (``gpkg``, ``geojson``; None: none);
            ``vector_format_now``: those the dataset has.
        report: whether the relabel would write the review page; ``report_now``: whether the dataset has one.
    """

    class_map: ClassMap
    current: ClassMap
    masks_per_cluster: tuple[int, ...]
    pixels_per_cluster: tuple[int, ...]
    pixels: int
    vector_format: str | None = None
    vector_format_now: str | None = None
    report: bool = False
    report_now: bool = False

    def masks_of(self, class_map: ClassMap, class_id: int) -> int:
        """Masks of a class (255: of the dropped clusters) of ``class_map``."""
        return sum(self.masks_per_cluster[k] for k, c in enumerate(class_map.cluster_to_class) if c == class_id)

    def pixels_of(self, class_map: ClassMap, class_id: int) -> int:
        """Label-map pixels of a class (255: those the dropped clusters' masks cover) of ``class_map``."""
        return sum(self.pixels_per_cluster[k] for k, c in enumerate(class_map.cluster_to_class) if c == class_id)

    def labelled_fraction(self, class_map: ClassMap) -> float:
        """Share of all label-map pixels that carry a class of ``class_map``."""
        kept = sum(self.pixels_of(class_map, c) for c in range(class_map.n_classes))
        return kept / self.pixels if self.pixels else 0.0


def preview_relabel(out: str | Path, classes_file: str | Path, warn: Callable[[str], None] | None = None,
                    vector_format: Literal["gpkg", "geojson", "keep"] | None = KEEP,
                    write_report: bool | None = None) -> RelabelPreview:
    """Check a classes file against the dataset in ``out`` and count what :func:`relabel_dataset` would make of it.

    Nothing is written. The figures are the relabel's own: every shard's masks are assigned and painted as the
    writer paints them, so a class's pixels here are its ``n_pixels`` in ``classes.json`` after the relabel.
    ``vector_format`` and ``write_report`` are the relabel's: ``warn`` gets the line naming the outputs it would
    not write again, as the relabel's own.

    Raises:
        AlpsError: As :func:`relabel_dataset` does (no dataset, shards missing); OutputBusyError if another process
            writes the dataset when the read begins or wrote it while it went on; ClassesFileError with one line
            per problem of the file.
    """
    # Read without the write lock, so that a run may start meanwhile; one that did is found after the read.
    holder = writer_of(out)
    if holder:
        raise busy(out, holder)
    finish_killed_swap(out, "alps relabel --dry-run")  # as load_dataset would, but under the lock
    before = dataset_version(out)
    data = load_dataset(out)
    class_map, _ = parse_classes(classes_file, data.centroids)
    missing = data.manifest.get("missing") or []
    if missing and warn is not None:
        warn(_lacks(out, missing, "the figures leave them out, as the relabelled dataset would"))
    if vector_format not in (None, KEEP):
        check_vector_dependencies()
    writer = _rewritten_writer(data, vector_format, write_report)
    # the same classes give the same label maps, which the evaluation scored (the writer keeps it then)
    gone = [name for name, kept in (("vectors", writer.vector_format), ("report", writer.write_report),
                                    ("evaluation.json", class_map == data.class_map))
            if not kept and (data.out / name).exists()]
    if gone and warn is not None:
        warn(f"the relabel would remove {outputs_named(data.out, gone)}")
    n = len(data.centroids)
    masks, pixels, total = np.zeros(n, np.int64), np.zeros(n, np.int64), 0
    identity = ClassMap.identity(n)
    for path in data.shard_paths.values():
        labels = image_labels(read_shard(path), data.centroids, identity)
        masks += np.bincount(labels.cluster_ids, minlength=n)[:n]
        pixels += np.bincount(labels.cluster_label.ravel(), minlength=256)[:n]
        total += labels.cluster_label.size
    holder = writer_of(out)
    if holder or dataset_version(out) != before:
        raise written_while_read(out, holder, "dry run")
    return RelabelPreview(class_map, data.class_map, tuple(masks.tolist()), tuple(pixels.tolist()), total,
                          writer.vector_format, data.config.writer.vector_format if (data.out / "vectors").is_dir()
                          else None, writer.write_report, (data.out / "report" / "index.html").is_file())


def _lacks(out: str | Path, missing: list[dict[str, Any]], then: str) -> str:
    """The line saying that the dataset in ``out`` lacks the good images of its manifest's ``missing``, and ``then``."""
    return (f"{out} lacks {counted(len(missing), 'good image')} that its run could not label (written with "
            f"--allow-partial; first: {missing[0].get('path')}): {then}")


def _rewrite(data: WrittenDataset, class_map: ClassMap, record: dict[str, Any],
             vector_format: Literal["gpkg", "geojson", "keep"] | None, write_report: bool | None,
             warn: Callable[[str], None] | None = None) -> tuple[DatasetSummary, ClassMap]:
    config = dataclasses.replace(data.config, writer=_rewritten_writer(data, vector_format, write_report))
    extra = {k: v for k, v in data.manifest.items() if k not in MANIFEST_KEYS}
    extra.setdefault("centroids_from", CENTROIDS_UNRECORDED)  # a dataset an older alps wrote: said, as a run says it
    extra["relabel"] = record
    try:
        summary = write_dataset(data.out, sorted(data.shard_paths.values(), key=lambda p: p.name), data.centroids,
                                config, data.model, data.errors, data.image_sources, class_map, extra, warn)
    except InputChangedError as err:
        raise InputChangedError(f"{err}: run the `alps run` that labelled the dataset until it completes (its "
                                "first run finds them and removes their shards, the next labels them anew), then "
                                "this command", err.stems) from None
    return summary, class_map


def _rewritten_writer(data: WrittenDataset, vector_format: Literal["gpkg", "geojson", "keep"] | None,
                      write_report: bool | None) -> WriterConfig:
    """The writer settings of a relabel: the dataset's own, with ``vector_format`` unless ``keep``.

    The page is written when ``write_report`` says so or, None, when the dataset has one (``alps report`` may have
    added it).
    """
    changes: dict[str, object] = {}
    if vector_format != KEEP:
        changes["vector_format"] = vector_format
    if write_report is None and (data.out / "report" / "index.html").is_file():
        write_report = True
    if write_report is not None:
        changes["write_report"] = write_report
    return dataclasses.replace(data.config.writer, **changes)


def carried_relabel(out: str | Path, centroids: npt.NDArray[np.float32], warn: Callable[[str], None],
                    centroids_file: str | Path | None = None,
                    renumbered: Callable[[Path], None] = lambda _: None) -> tuple[ClassMap, dict[str, Any]] | None:
    """The classes of the last ``alps relabel`` of ``out``, for a rerun of ``alps run`` that writes it again.

    A rerun that finds the same clusters (same shards and clustering settings, or the same ``--centroids``) keeps
    the names, merges and drops the user gave them. When the clusters changed (new images, another ``--n-clusters``)
    the old mapping would name the wrong things: it is not applied, and ``warn`` says so in one line. The
    centroids it was made for are set aside with it (``OUT/.alps/relabelled/<their sha256>/``), so that the
    user's work is not lost: a later run with ``--centroids`` of that folder labels every image with those
    clusters and gets the classes back.

    A new dataset labelled with the centroids of a relabelled one (``--centroids OTHER/centroids.npy``, or a
    folder set aside there) gets that dataset's classes: the same ids, names, merges and drops, so that batches
    labelled apart share one set of classes. The record then says where it came from (``from``).

    Args:
        out: the dataset folder, as the previous run or relabel left it.
        centroids: ``(N, D) float32`` the centres the rerun is about to write.
        warn: receives the line explaining why a previous relabel is not carried over.
        centroids_file: the run's ``--centroids``, if any.
        renumbered: receives the ``centroids.npy`` the dataset's earlier clusters are kept in, when these differ
            and no relabel was made for them (:func:`_set_aside_earlier_clusters`): class ids change.

    Returns:
        ``(class map, manifest record)`` of the previous relabel (or of one set aside for these centroids, or of
        the dataset ``centroids_file`` belongs to), or None when there is none to carry over.
    """
    out = Path(out)
    centroids = np.asarray(centroids, dtype=np.float32)
    try:
        record = json.loads((out / "manifest.json").read_text()).get("relabel")
        previous = np.load(out / "centroids.npy") if record else None
    except (OSError, ValueError):
        record = previous = None  # no previous dataset (or an unreadable one, which the run replaces)
    if record and _same(previous, centroids):
        if centroids_file and record.get("from") == str(Path(centroids_file).parent.resolve()):
            return _origins_classes(Path(centroids_file), centroids, record, warn)
        return _apply(record, len(centroids), out / "manifest.json", warn)
    aside = next((folder for folder in sorted((work_dir(out) / SET_ASIDE).glob("*/"))
                  if _same(load_or_none(folder / "centroids.npy"), centroids)), None)
    if record and previous is not None:  # whatever this run's classes will be, these are kept
        sha = str(record.get("classes_file_sha256", "unknown"))
        folder = _set_aside(out, SET_ASIDE, previous)
        atomic.write_json(folder / "relabel.json", record)
        back = shlex.quote(str(folder / "centroids.npy"))
        if aside is not None:  # said as what it is: one relabel's classes replaced by another's (said next)
            warn(f"{out}'s classes (its relabel, classes file sha256 {sha[:12]}) are set aside for the relabel made "
                 f"for these --centroids; run again with --centroids {back} to have them back")
        else:
            warn(f"{out} was relabelled (classes file sha256 {sha[:12]}) for other clusters; this run's clusters "
                 f"differ (new images, clustering settings or --centroids), so those classes are not carried over: "
                 f"review {out / 'report' / 'index.html'} and run `alps relabel` again, or run again with "
                 f"--centroids {back} to label every image with the clusters they named (the classes come back)")
    if aside is not None:  # a run with --centroids of a relabel set aside earlier: its classes come back
        try:
            return _apply(json.loads((aside / "relabel.json").read_text()), len(centroids), aside, warn)
        except (OSError, ValueError) as err:
            warn(f"the relabel set aside in {aside} cannot be read ({err}); run `alps relabel` again")
            return None
    if centroids_file:
        return _relabel_beside(Path(centroids_file), centroids, warn)
    if not record:
        earlier = _set_aside_earlier_clusters(out, centroids, warn)
        if earlier is not None:
            renumbered(earlier)
    return None


def _set_aside_earlier_clusters(out: Path, centroids: npt.NDArray[np.float32], warn: Callable[[str], None]
                                ) -> Path | None:
    """Keep the clusters of the dataset a rerun replaces when they differ from the rerun's, and say so.

    k-means runs again over every mask at each run: a few images added or removed change the clusters, and with
    them the class ids of nearly every label map (a class a user noted, or trained on, silently means something
    else). The earlier centres are kept under ``OUT/.alps/earlier/<sha256>/``; ``--centroids`` brings them back.
    Returns their ``centroids.npy``, or None when there were none or they are the same.
    """
    previous = load_or_none(out / "centroids.npy")
    if previous is None or _same(previous, centroids):
        return None
    folder = _set_aside(out, EARLIER, previous)
    warn(f"this run's clusters differ from those of the dataset it replaces in {out} (k-means runs again over every "
         f"mask: images added or removed, or other clustering settings), so class ids change in the label maps; the "
         f"earlier clusters are kept: run again with --centroids {shlex.quote(str(folder / 'centroids.npy'))} to label "
         "every image with them")
    return folder / "centroids.npy"


def _set_aside(out: Path, kind: str, previous: npt.NDArray[Any]) -> Path:
    """Keep the dataset's centroids in ``OUT/.alps/<kind>/<sha256[:12]>/``, with what records their model family.

    ``--centroids`` of the folder is what the warnings tell the user to run: without the ``centroids.json`` of
    the dataset they came from, a SAM 2.1 run would refuse them (their family unknown) and a SAM run would warn.
    """
    folder = work_dir(out) / kind / clusters_key(previous)
    atomic.write_with(folder / "centroids.npy", lambda f: np.save(f, previous))
    record = centroids_model(out / "centroids.npy")  # the dataset's, before this run replaces it
    if record is not None:
        atomic.write_json(folder / "centroids.json", record)
    return folder


def _origins_classes(centroids_file: Path, centroids: npt.NDArray[np.float32], carried: dict[str, Any],
                     warn: Callable[[str], None]) -> tuple[ClassMap, dict[str, Any]] | None:
    """The classes of the dataset ``--centroids`` come from, as it has them now, for a rerun that took them before.

    Batches labelled apart share one set of classes: once that dataset was relabelled again (or its relabel
    undone), a rerun kept the classes it had copied at its first run, and said they were that dataset's.
    """
    now = _relabel_beside(centroids_file, centroids, warn)
    if now is None:
        warn(f"{carried['from']} has no `alps relabel` for these clusters any more (undone, or made for other "
             "clusters): this dataset's classes, taken from it before, are dropped too, and its clusters get classes "
             "of their own (cluster_<k>)")
    elif now[1].get("spec") != carried.get("spec"):
        warn(f"{carried['from']} was relabelled since this dataset took its classes: its classes now are applied "
             f"({len(now[0].names)} classes)")
    return now


def _relabel_beside(centroids_file: Path, centroids: npt.NDArray[np.float32],
                    warn: Callable[[str], None]) -> tuple[ClassMap, dict[str, Any]] | None:
    """The relabel recorded beside a ``--centroids`` file, if made for exactly these centroids; else None.

    Beside it: its dataset's manifest (``OTHER/centroids.npy``), or a set-aside ``relabel.json``.
    """
    folder = centroids_file.parent
    try:
        manifest = folder / "manifest.json"
        record = (json.loads(manifest.read_text()).get("relabel") if manifest.is_file()
                  else json.loads((folder / "relabel.json").read_text()))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not _same(load_or_none(centroids_file), centroids):
        return None
    return _apply({**record, "from": str(folder.resolve())}, len(centroids), folder, warn)


def _same(a: npt.NDArray[Any] | None, b: npt.NDArray[np.float32]) -> bool:
    return a is not None and a.shape == b.shape and bool(np.array_equal(a, b))


def load_or_none(path: Path) -> npt.NDArray[Any] | None:
    """The array saved at ``path``; None if there is none or it cannot be read (a run replaces it)."""
    try:
        return np.load(path)
    except (OSError, ValueError):
        return None


def _apply(record: dict[str, Any], n_clusters: int, where: Path,
           warn: Callable[[str], None]) -> tuple[ClassMap, dict[str, Any]] | None:
    try:
        return class_map_from_spec(record["spec"], n_clusters, "the manifest's relabel record"), record
    except (ClassesFileError, KeyError, TypeError) as err:
        warn(f"the relabel recorded in {where} cannot be applied again ({err}); run `alps relabel` again")
        return None
