"""What a dataset's runs gave its inputs: their names and their splits (``OUT/.alps/names.json``).

The dataset's manifest says what the dataset holds now; this record also keeps the split of inputs that are away
(deleted, moved, unreadable for a while) while their shards are kept, so that they come back in their own split,
whatever arrived meanwhile (a validation image never comes back in train); the names are written when a run
starts, so that a run killed before it wrote a dataset leaves them too.

``{"names": {path relative to the dataset: name}, "splits": {path of a scene's file: "train" | "val"},
"split_by": [seed, val_fraction(, split_group)]}``; the splits are those of the ``--seed``, ``--val-fraction`` (and
``--split-group``, when given) in ``split_by``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from alps_client.io import atomic
from alps_client.io.discovery import whole_stem
from alps_client.io.layout import shard_dir, work_dir

FILE_NAME = "names.json"


def read_registry(out: str | Path) -> dict[str, Any]:
    """The record of ``out`` (empty parts where there is none, or it cannot be read)."""
    try:
        record = json.loads((work_dir(out) / FILE_NAME).read_text())
    except (OSError, ValueError):
        record = {}
    if not isinstance(record, dict):
        record = {}
    names, splits = record.get("names"), record.get("splits")
    return {"names": names if isinstance(names, dict) else {}, "splits": splits if isinstance(splits, dict) else {},
            "split_by": record.get("split_by")}


def record_names(out: str | Path, names: Mapping[str, str]) -> None:
    """Record the names this run gave (``names``: relative path -> name).

    The names of absent inputs whose shards are kept stay recorded; the others are dropped.
    """
    record = read_registry(out)
    kept = _names_with_shards(out, record["names"].values())
    record["names"] = {**{relative: name for relative, name in record["names"].items() if name in kept},
                       **names}
    atomic.write_json(work_dir(out) / FILE_NAME, record)


def split_identity(seed: int, val_fraction: float, split_group: str | None = None) -> list[Any]:
    """What draws a split: its seed, val fraction and grouping (``split_by`` of the record)."""
    return [seed, val_fraction] if split_group is None else [seed, val_fraction, split_group]


def earlier_splits(out: str | Path, split_by: list[Any]) -> dict[str, str]:
    """``input path -> split`` that ``out``'s runs gave with this :func:`split_identity`; else empty.

    Without a record (deleted, unreadable, or from an alps before it) the dataset in ``out`` says them, as its
    ``manifest.json`` (its inputs and its seed and fraction) and its ``ann_dir`` folders hold them.
    """
    record = read_registry(out)
    return _splits_by(record, split_by) if record["split_by"] else _dataset_splits(out, split_by)


def _dataset_splits(out: str | Path, split_by: list[Any]) -> dict[str, str]:
    """``input path -> split`` of the dataset written in ``out`` if it was split as ``split_by`` says."""
    try:
        manifest = json.loads((Path(out) / "manifest.json").read_text())
        writer, sources = manifest["config"]["writer"], manifest["sources"]
        written_by = split_identity(writer["seed"], writer["val_fraction"], writer.get("split_group"))
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    if written_by != split_by or not isinstance(sources, dict):
        return {}
    splits = {}
    for label in Path(out).glob("ann_dir/*/*.png"):
        name = whole_stem(label.stem)  # a scene's tile, a volume's slice: their file's split
        if label.parent.name in ("train", "val") and isinstance(sources.get(name), str):
            splits[sources[name]] = label.parent.name
    return splits


def _splits_by(record: Mapping[str, Any], split_by: list[Any]) -> dict[str, str]:
    return dict(record["splits"]) if record["split_by"] == split_by else {}


def record_splits(out: str | Path, splits: Mapping[str, str], split_by: list[Any]) -> None:
    """Record the split of each input of the dataset just written (by path), keeping those of absent inputs."""
    record = read_registry(out)
    earlier = _splits_by(record, split_by)  # the record read once
    record["splits"] = {**{path: split for path, split in earlier.items() if path in record["names"]}, **splits}
    record["split_by"] = split_by
    atomic.write_json(work_dir(out) / FILE_NAME, record)


def record_moves(out: str | Path, moves: Mapping[str, str]) -> None:
    """Inputs found under new paths (``old path -> new path``): each keeps its split there; its old name is freed."""
    if not moves:
        return
    record = read_registry(out)
    record["splits"] = {moves.get(path, path): split for path, split in record["splits"].items()}
    record["names"] = {path: name for path, name in record["names"].items() if path not in moves}
    atomic.write_json(work_dir(out) / FILE_NAME, record)


def shard_stems(out: str | Path) -> set[str]:
    """The stems of the shards in ``OUT/.alps/shards`` (empty when there is none)."""
    try:
        return {entry.name[: -len(".npz")] for entry in os.scandir(shard_dir(out))
                if entry.name.endswith(".npz")}
    except OSError:
        return set()


def _names_with_shards(out: str | Path, names: Iterable[str]) -> set[str]:
    """Which of ``names`` still have a shard in ``OUT/.alps/shards`` (a scene's: one of its tiles')."""
    stems = shard_stems(out)
    return set(names) & (stems | {whole_stem(stem) for stem in stems})
