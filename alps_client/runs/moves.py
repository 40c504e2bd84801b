"""Inputs moved or renamed since they were labelled: their labels and their split go with them.

An input's path gives its name, and its name its shards: a file moved to another folder or renamed was a deleted
input and a new one, labelled again (SAM again: hours on a large dataset reorganised) and split anew, so that a
validation image could come back in train. When a new path holds the very bytes of an input the dataset labelled
and no longer finds (the sha256 its shards record, :func:`~alps_client.io.items.content_digest`), its shards are
renamed to its new name and rewritten for its new path, and its split is recorded under that path. Shards from
before the digest was recorded never move (their images are labelled again, as before). A file at its path whose
modification time alone changed (a copy that reset times) keeps its labels the same way (:func:`find_retimed`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alps_client.io.discovery import whole_stem
from alps_client.io.items import InputItem, content_digest, source_signature
from alps_client.io.layout import shard_dir
from alps_client.io.registry import record_moves, shard_stems
from alps_client.io.shards import (
    SHARD_READ_ERRORS,
    ImageShard,
    read_shard,
    read_shard_meta,
    shard_path,
    write_shard,
)
from alps_client.runs.plan import ItemState, Pooling, decoded_image


@dataclass(frozen=True)
class Move:
    """One input found under a new path.

    Attributes:
        old: its path relative to the dataset when it was labelled.
        new: its path now.
        stems: ``(old stem, new stem)`` of each of its shards (one for an image; a scene's tiles, a volume's slices).
        signature: its file's :func:`~alps_client.io.items.source_signature` at its new path, when it was found.
    """

    old: str
    new: str
    stems: tuple[tuple[str, str], ...]
    signature: dict[str, Any]


def find_moves(out: str | Path, items: list[InputItem], names: Mapping[str, str], fingerprint: str,
               pooling: Pooling) -> list[Move]:
    """The inputs found under new paths, with the shards their labels are in.

    Items at a path that ``names`` (path -> name, as ``OUT`` records them) does not know, whose bytes are those of
    an input it knows that is no longer among ``items``, labelled with ``fingerprint`` (features pooled as
    ``pooling`` pools them: else labelled again, :class:`~alps_client.runs.plan.Pooling`). Only reads:
    :func:`apply_moves` renames the shards, under the run's lock on ``OUT``. A file whose size and sampled bytes
    match no such input is not read whole.
    """
    present = {item.relative for item in items}
    gone = {relative: name for relative, name in names.items() if relative not in present}
    new: dict[str, list[InputItem]] = {}
    for item in items:
        if item.relative and item.relative not in names:
            new.setdefault(item.relative, []).append(item)
    if not gone or not new:
        return []
    stems_of = _shard_stems_by_name(out)
    # (size, sample, how it was read) -> [(path, name, sha256)]: a raster labelled before its orientation was
    # applied is labelled again, moved or not
    earlier: dict[tuple[int, str, str], list[tuple[str, str, str]]] = {}
    for relative, name in gone.items():
        recorded = _recorded_file(out, stems_of.get(name, []), fingerprint, pooling)
        if recorded is not None:
            size, sample, reading, digest = recorded
            earlier.setdefault((size, sample, reading), []).append((relative, name, digest))
    moves = []
    for relative, parts in new.items():
        try:
            signature = source_signature(parts[0].source, relative)
            reading = json.dumps(signature.get("read_as", {}), sort_keys=True)
            candidates = earlier.get((signature["size"], signature["sample"], reading), [])
            digest = content_digest(parts[0].source) if candidates else None
        except OSError:  # reading it will say why
            continue
        match = next((candidate for candidate in candidates if candidate[2] == digest), None)
        if match is None:
            continue
        old, name, _ = match
        stems = tuple((name + item.stem[len(item.scene or item.stem):], item.stem) for item in parts)
        if {old_stem for old_stem, _ in stems} == set(stems_of[name]):  # cut alike (the same --tile, --overlap)
            candidates.remove(match)  # one file takes one earlier input's labels
            moves.append(Move(old, relative, stems, signature))
    return moves


def find_retimed(changed: list[tuple[InputItem, ItemState]]) -> list[Move]:
    """The inputs among ``changed`` whose file has another modification time only: the same bytes, at its path.

    A dataset copied without its times (``cp -r``, a download, an archive unpacked without them) changes every
    signature, and its images were labelled again whole. An input is retimed when each of its items' shards
    records its signature but for the time (name, path, size, sampled bytes, sidecars), and the sha256 of the file
    now is the one they record (read whole only then). Only reads: :func:`apply_moves` writes the new signature
    into the shards, under the run's lock on ``OUT``.

    Args:
        changed: the items whose shard is ``changed`` (:func:`~alps_client.runs.plan.check_existing_shards`),
            each with its :class:`~alps_client.runs.plan.ItemState`.

    Returns:
        One :class:`Move` per retimed input, from its path to itself.
    """
    by_path: dict[str, list[tuple[InputItem, ItemState]]] = {}
    for item, state in changed:
        by_path.setdefault(item.relative, []).append((item, state))
    retimed = []
    for relative, parts in by_path.items():
        digests = {_retimed_digest(state) for _, state in parts}
        if len(digests) != 1 or None in digests:
            continue
        try:
            same = content_digest(parts[0][0].source) == digests.pop()
        except OSError:  # reading it will say why
            continue
        if same:
            retimed.append(Move(relative, relative, tuple((item.stem, item.stem) for item, _ in parts),
                                parts[0][1].signature))
    return retimed


def _retimed_digest(state: ItemState) -> str | None:
    """The sha256 ``state``'s shard records, if its signature differs from the file's now by the time alone."""
    extra = (state.meta or {}).get("extra", {})
    recorded, now = extra.get("source_signature") or {}, state.signature
    if "sample" not in recorded or recorded.get("mtime_ns") == now.get("mtime_ns") or state.pooled_otherwise:
        return None
    if {**recorded, "mtime_ns": None} != {**now, "mtime_ns": None}:
        return None
    return extra.get("content_sha256") or None


def apply_moves(out: str | Path, moves: list[Move], items: list[InputItem]) -> list[Move]:
    """Rename each move's shards (and decoded images) to its new name, for its new path; record its split there.

    A retimed input's (:func:`find_retimed`: from its path to itself) are rewritten in place with its new signature.

    A move whose shards or decoded images are gone meanwhile is left undone: its image is labelled again.

    Returns:
        The moves done.
    """
    by_stem = {item.stem: item for item in items}
    done = []
    for move in moves:
        try:
            rewritten = [_for_new_path(out, read_shard(shard_path(shard_dir(out), old)), by_stem[new], move.signature)
                         for old, new in move.stems]
        except SHARD_READ_ERRORS:  # gone or damaged meanwhile
            continue
        if any(shard is None for shard in rewritten):
            continue
        for (old, new), shard in zip(move.stems, rewritten, strict=True):
            old_image, new_image = decoded_image(out, old), decoded_image(out, new)
            if old_image.is_file():
                os.replace(old_image, new_image)
            write_shard(shard_path(shard_dir(out), new), shard)  # type: ignore[arg-type]
            if old != new:  # (a file moved to another split folder may keep its name)
                shard_path(shard_dir(out), old).unlink(missing_ok=True)
        done.append(move)
    record_moves(out, {move.old: move.new for move in done if move.old != move.new})  # (not a retimed input's)
    return done


def restamp(out: str | Path, stems: Sequence[str], fingerprint: str, labelling: dict[str, Any]) -> int:
    """Stamp the shards of ``stems`` with the run's ``fingerprint`` and ``labelling``; returns how many were.

    Their masks and features are the run's (:attr:`~alps_client.runs.plan.RunPlan.restamped`: alike but for the
    outputs the write makes), so OUT keeps one fingerprint. One gone or damaged meanwhile is left: labelled again.
    """
    stamped = 0
    for stem in stems:
        path = shard_path(shard_dir(out), stem)
        try:
            shard = read_shard(path)
        except SHARD_READ_ERRORS:
            continue
        write_shard(path, dataclasses.replace(shard, fingerprint=fingerprint,
                                              extra={**shard.extra, "labelling": labelling}))
        stamped += 1
    return stamped


def _for_new_path(out: str | Path, shard: ImageShard, item: InputItem, signature: dict[str, Any]
                  ) -> ImageShard | None:
    """``shard`` as a run at ``item``'s path would have written it; None when its decoded image is missing."""
    extra = dict(shard.extra)
    image = extra.get("image_file")
    if image is not None and image != shard.source:  # a decoded copy under OUT/.alps/images, not the input itself
        if not decoded_image(out, shard.stem).is_file():
            return None
        image = str(decoded_image(out, item.stem))
    elif image is not None:
        image = item.source
    extra.update(source_signature=signature, scene=item.scene, split=item.split, image_file=image)
    return ImageShard(item.stem, item.source, shard.fingerprint, shard.masks, shard.keep, shard.pfl, extra)


def _readable_metas(out: str | Path, stems: list[str]) -> list[dict[str, Any]]:
    """The metadata of the shards ``stems`` that can be read (a damaged one is labelled again on its own)."""
    metas = []
    for stem in stems:
        try:
            metas.append(read_shard_meta(shard_path(shard_dir(out), stem)))
        except SHARD_READ_ERRORS:
            continue
    return metas


def _shard_stems_by_name(out: str | Path) -> dict[str, list[str]]:
    """The stems of ``OUT``'s shards by the name of their input (a scene's tiles, a volume's slices under it)."""
    by_name: dict[str, list[str]] = {}
    for stem in sorted(shard_stems(out)):
        by_name.setdefault(whole_stem(stem), []).append(stem)
    return by_name


def _recorded_file(out: str | Path, stems: list[str], fingerprint: str, pooling: Pooling
                   ) -> tuple[int, str, str, str] | None:
    """``(size, sample, how it was read, sha256)`` of the file the shards ``stems`` were labelled from, if recorded.

    How it was read: the ``read_as`` of its signature, as JSON (``{}`` where it was read as stored). None too where
    a shard's features were pooled otherwise (``pooling``): that file is labelled again.
    """
    if not stems:
        return None
    try:
        meta = read_shard_meta(shard_path(shard_dir(out), stems[0]))
    except SHARD_READ_ERRORS:
        return None
    extra = meta.get("extra", {})
    signature, digest = extra.get("source_signature") or {}, extra.get("content_sha256")
    if meta.get("fingerprint") != fingerprint or not digest or "size" not in signature or "sample" not in signature:
        return None
    if any(pooling.outdated(other) for other in _readable_metas(out, stems)):
        return None
    return int(signature["size"]), str(signature["sample"]), json.dumps(signature.get("read_as", {}), sort_keys=True), \
        str(digest)
