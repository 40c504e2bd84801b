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
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from alps_client.io.dataset import load_dataset
from alps_client.io.writer import MANIFEST_KEYS, DatasetSummary, write_dataset
from alps_client.labels.classes import ClassMap
from alps_client.labels.relabel import ClassesFileError, class_map_from_spec, parse_classes

KEEP = "keep"


def relabel_dataset(out: str | Path, classes_file: str | Path,
                    vector_format: Literal["gpkg", "geojson", "keep"] | None = KEEP,
                    write_report: bool | None = None) -> tuple[DatasetSummary, ClassMap]:
    """Apply a classes file to the dataset in ``out``.

    Args:
        out: the dataset folder (``--out`` of ``alps run``).
        classes_file: YAML or JSON classes file (see :mod:`alps_client.labels.relabel`).
        vector_format: ``gpkg`` / ``geojson``, None for no vectors, or ``keep`` for what the dataset has now.
        write_report: write the review page; None keeps the dataset's setting.

    Returns:
        The written dataset's summary and its class map.

    Raises:
        AlpsError: If ``out`` holds no dataset or lacks shards; ClassesFileError (one line per problem) if the
            classes file is invalid. Nothing is written in either case.
    """
    data = load_dataset(out)
    class_map, record = parse_classes(classes_file, len(data.centroids))
    writer = data.config.writer
    changes: dict[str, object] = {}
    if vector_format != KEEP:
        changes["vector_format"] = vector_format
    if write_report is not None:
        changes["write_report"] = write_report
    config = dataclasses.replace(data.config, writer=dataclasses.replace(writer, **changes))
    extra = {k: v for k, v in data.manifest.items() if k not in MANIFEST_KEYS}
    extra["relabel"] = record
    summary = write_dataset(data.out, sorted(data.shard_paths.values(), key=lambda p: p.name), data.centroids,
                            config, data.model, data.errors, data.image_sources, class_map, extra)
    return summary, class_map


def carried_relabel(out: str | Path, centroids: npt.NDArray[np.float32],
                    warn: Callable[[str], None]) -> tuple[ClassMap, dict[str, Any]] | None:
    """The classes of the last ``alps relabel`` of ``out``, for a rerun of ``alps run`` that writes it again.

    A rerun that finds the same clusters (same shards and clustering settings, or the same ``--centroids``) keeps
    the names, merges and drops the user gave them. When the clusters changed (new images, another ``--n-clusters``)
    the old mapping would name the wrong things: it is not applied, and ``warn`` says so in one line.

    Args:
        out: the dataset folder, as the previous run or relabel left it.
        centroids: ``(N, D) float32`` the centres the rerun is about to write.
        warn: receives the line explaining why a previous relabel is not carried over.

    Returns:
        ``(class map, manifest record)`` of the previous relabel, or None when there is none to carry over.
    """
    out = Path(out)
    try:
        record = json.loads((out / "manifest.json").read_text()).get("relabel")
        previous = np.load(out / "centroids.npy") if record else None
    except (OSError, ValueError):
        return None  # no previous dataset (or an unreadable one, which the run replaces): nothing to carry over
    if not record:
        return None
    centroids = np.asarray(centroids, dtype=np.float32)
    if previous.shape != centroids.shape or not np.array_equal(previous, centroids):
        warn(f"{out} was relabelled (classes file sha256 {record.get('classes_file_sha256', '?')[:12]}) for other "
             "clusters; this run's clusters differ (new images or clustering settings), so those classes are not "
             f"carried over: review {out / 'report' / 'index.html'} and run `alps relabel` again")
        return None
    try:
        return class_map_from_spec(record["spec"], len(centroids), "the manifest's relabel record"), record
    except (ClassesFileError, KeyError, TypeError) as err:
        warn(f"the relabel recorded in {out / 'manifest.json'} cannot be applied again ({err}); run `alps relabel` again")
        return None
