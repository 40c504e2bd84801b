"""What the dataset in ``OUT`` was written from (``OUT/.alps/written.json``): a rerun with nothing new writes nothing.

A rerun whose images were all labelled before still ends with the dataset write: every label map painted again,
every image copied again, the whole dataset swapped in with new files: 4.9 s of such a rerun's 6.8 s flow on 300
small images here (about 16 ms an image, 0.1 s with this record), and every file new to a backup. The write is a
function of its inputs (:func:`~alps_client.io.writer.write_dataset`: the same shards, centroids, class map and
settings give byte-identical outputs), so the run records a key of those inputs and a digest of the files it
published, and a rerun whose key is the same, with the dataset's files as they were published, writes nothing.

The key holds every input of the write: the shards and source images (name, inode, size, modification and change
time, much as ``make`` judges a target), the centroids' bytes, the class map, the configuration, the model's
manifest, the rejected and missing inputs, the manifest's other entries, the splits recorded for the split settings,
``OUT``'s name (the review page's title), the dataset format, the packages' versions and alps' own source. Anything
else rewrites: a file of the dataset deleted, added or altered (``alps report`` rebuilding ``report/`` too), a
dataset swapped in by ``alps relabel`` (:func:`~alps_client.io.publish.publish` forgets the record before any swap),
an upgrade.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from alps_client.io import atomic
from alps_client.io.items import FileVersion
from alps_client.io.layout import work_dir

RECORD = "written.json"

# `alps evaluate` adds its scores to a dataset and a write keeps them where the labels are the same: not the write's.
_NOT_WRITTEN_BY_THE_RUN = ("evaluation.json",)


def _record(out: str | Path) -> Path:
    return work_dir(out) / RECORD


@functools.cache
def _alps_source_digest() -> str:
    """sha256 of alps' own source: a dataset written by other code (a checkout with edits) is written again."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _stat_of(path: str | Path) -> tuple[int, ...] | None:
    """``path``'s :class:`~alps_client.io.items.FileVersion` without its path; None where it cannot be read.

    The change time and inode as well: a file put in another's place (a shard written again, a copy that keeps its
    modification time, another file renamed onto its name within one tick of the clock) has new ones, which no one
    can set back. A dataset copied elsewhere is written again once; one moved (its path) is not.
    """
    try:
        return FileVersion.of(path)[1:]
    except OSError:
        return None


def write_key(out: str | Path, shards: Sequence[str | Path], centroids: npt.NDArray[np.float32],
              image_sources: Mapping[str, str | Path], inputs: Mapping[str, Any]) -> str:
    """sha256 of everything a dataset write depends on (the module's docstring lists it).

    Args:
        out: the output folder.
        shards: one shard per labelled image.
        centroids: ``(N, D) float32`` the write's centroids.
        image_sources: stem -> image file copied into ``img_dir`` and read for the previews.
        inputs: the write's other inputs, JSON-able (configuration, model manifest, class map, errors, the
            manifest's extra entries, the splits recorded for the split settings...).
    """
    from alps_client.io.publish import DATASET_FORMAT
    from alps_client.versions import versions

    centroids = np.ascontiguousarray(centroids)
    content = {
        "format": DATASET_FORMAT, "alps_source": _alps_source_digest(), "versions": versions(),
        "out_name": Path(out).resolve().name,
        "shards": sorted([Path(p).name, _stat_of(p)] for p in shards),
        "image_sources": sorted([stem, str(path), _stat_of(path)] for stem, path in image_sources.items()),
        "centroids": [str(centroids.dtype), list(centroids.shape), hashlib.sha256(centroids.tobytes()).hexdigest()],
        "inputs": inputs,
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def _files_digest(out: Path) -> str:
    """sha256 of the dataset's files in ``out`` as they lie: each path, type, size, modification and change time."""
    from alps_client.io.publish import DATASET_ENTRIES

    listing = []
    for name in DATASET_ENTRIES:
        if name in _NOT_WRITTEN_BY_THE_RUN:
            continue
        entry = out / name
        paths = [entry] if not entry.is_dir() or entry.is_symlink() else \
            [entry, *(Path(root) / f for root, dirs, files in os.walk(entry) for f in (*dirs, *files))]
        for path in paths:
            try:
                st = path.lstat()
            except OSError:  # absent: not an output of this dataset
                continue
            listing.append([path.relative_to(out).as_posix(), st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns])
    listing.sort()
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def record_written(out: str | Path, key: str) -> None:
    """Say that the dataset now in ``out`` was written from ``key`` (:func:`write_key`), as its files lie now."""
    atomic.write_json(_record(out), {"key": key, "files": _files_digest(Path(out))})


def forget_written(out: str | Path) -> None:
    """Before the dataset in ``out`` changes: no record may describe a dataset it does not hold."""
    _record(out).unlink(missing_ok=True)


def summary_if_written_from(out: str | Path, key: str) -> dict[str, Any] | None:
    """The summary of the dataset in ``out`` if it was written from ``key`` and its files lie as published; else None.

    Returns:
        ``{"out_dir", **manifest["counts"]}``: what :func:`~alps_client.io.writer.write_dataset` returned for it.
    """
    out = Path(out)
    try:
        record = json.loads(_record(out).read_text())
        if record.get("key") != key or record.get("files") != _files_digest(out):
            return None
        counts = json.loads((out / "manifest.json").read_text())["counts"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return {"out_dir": str(out), **counts} if isinstance(counts, dict) else None
