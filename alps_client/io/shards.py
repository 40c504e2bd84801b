"""Per-image shards: the masks (a MaskSet), gate decisions and PFLs of one image, written atomically.

A shard is one ``.npz`` file. Its ``meta`` entry (JSON) carries the fingerprint of the model and labelling
configuration that produced it, so a rerun can skip current shards and refuse to mix stale ones.
"""

from __future__ import annotations

import hashlib
import json
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from alps_client.io.atomic import write_with
from alps_client.masks import MaskSet

# 2: masks as one RLE blob + offsets (the JSON metadata stays small), prompt points and crop boxes kept.
SHARD_FORMAT = 2
# What reading a shard raises when it is gone or damaged (cut short, not a zip, its JSON broken: a ValueError),
# for callers that then treat it as missing.
SHARD_READ_ERRORS = (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile)
ShardStatus = Literal["missing", "damaged", "current", "changed", "stale"]


@dataclass
class ImageShard:
    """Everything ALPS keeps of one labelled image (or tile / slice).

    Attributes:
        stem: unique output name of the image.
        source: input path it was read from.
        fingerprint: model + labelling configuration identity (see :func:`shard_fingerprint`).
        masks: every mask found (kept and gated), clipped to the image's valid pixels.
        keep: ``(M,) bool`` gate decisions (True = kept).
        pfl: ``(K, 256) float32`` pseudo feature labels of the kept masks, in mask order.
        extra: small JSON-able metadata (timings, prompts, valid pixels, geo info).
    """

    stem: str
    source: str
    fingerprint: str
    masks: MaskSet
    keep: npt.NDArray[np.bool_]
    pfl: npt.NDArray[np.float32]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` in pixels."""
        return self.masks.image_size

    @property
    def n_kept(self) -> int:
        """Masks kept by the gate."""
        return int(self.keep.sum())

    def kept_masks(self) -> MaskSet:
        """The kept masks, in the order of their PFL rows."""
        return self.masks.select(self.keep)


def shard_fingerprint(model_fingerprint: str, labelling_config: dict[str, Any]) -> str:
    """Stable sha256 of the model identity and the configuration fields that change per-image results."""
    payload = json.dumps({"model": model_fingerprint, "config": labelling_config, "format": SHARD_FORMAT}, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def shard_path(shard_dir: str | Path, stem: str) -> Path:
    """Where the shard of ``stem`` lives."""
    return Path(shard_dir) / f"{stem}.npz"


def write_shard(path: str | Path, shard: ImageShard) -> None:
    """Write a shard atomically (temp file + rename): a killed run never leaves a half shard."""
    masks = shard.masks
    meta = {
        "format": SHARD_FORMAT,
        "stem": shard.stem,
        "source": shard.source,
        "image_size": list(shard.image_size),
        "fingerprint": shard.fingerprint,
        "n_masks": len(masks),
        "n_kept": shard.n_kept,
        "extra": shard.extra,
    }
    counts = [r["counts"].encode("ascii") for r in masks.rles]
    offsets = np.concatenate([[0], np.cumsum([len(c) for c in counts], dtype=np.int64)]).astype(np.int64)
    arrays = {
        "meta": np.frombuffer(json.dumps(meta, sort_keys=True).encode("utf-8"), dtype=np.uint8),
        "rle_counts": np.frombuffer(b"".join(counts), dtype=np.uint8),
        "rle_offsets": offsets,
        "areas": np.asarray(masks.areas, np.int64),
        "bboxes": np.asarray(masks.bboxes, np.float64).reshape(-1, 4),
        "predicted_iou": np.asarray(masks.predicted_iou, np.float32),
        "stability_score": np.asarray(masks.stability_score, np.float32),
        "point_coords": np.asarray(masks.point_coords, np.float64).reshape(-1, 2),
        "crop_boxes": np.asarray(masks.crop_boxes, np.int64).reshape(-1, 4),
        "keep": np.asarray(shard.keep, bool),
        "pfl": np.asarray(shard.pfl, np.float32).reshape(-1, shard.pfl.shape[-1] if shard.pfl.size else 256),
    }
    write_with(path, lambda f: np.savez(f, **arrays))


# numpy parses each array's header with ast.literal_eval, and CPython 3.11 counts the depth of the syntax tree it
# builds in one counter per interpreter, not per thread: two threads reading shards at once (the images in flight
# check their shards) could fail one read with "SystemError: AST constructor recursion depth mismatch": an image
# not labelled, the run asking for a rerun (seen under load). Reads take turns; one is small next to an image's work.
_SHARD_READS = threading.Lock()


def _read_entries(path: str | Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The arrays ``names`` of the shard at ``path`` (only those are read)."""
    with _SHARD_READS, np.load(path) as data:
        return {name: data[name] for name in names}


def read_shard_meta(path: str | Path) -> dict[str, Any]:
    """The shard's JSON metadata only (cheap: the arrays are not read).

    Raises:
        ValueError: If the metadata is not JSON, or names an output place no shard alps writes names
            (:func:`_placed_inside`).
    """
    return _decode_meta(_read_entries(path, ("meta",))["meta"], path)


# The splits a shard may name: its image's split folder's (``train``, ``val``, ``test``), or none.
SHARD_SPLITS = (None, "train", "val", "test")


def _decode_meta(meta: np.ndarray, path: str | Path) -> dict[str, Any]:
    return _placed_inside(json.loads(meta.tobytes().decode("utf-8")), Path(path))


def _placed_inside(meta: dict[str, Any], path: Path) -> dict[str, Any]:
    """``meta``, refused where its names would place an output outside its folder.

    Output files are named by the stem, the scene (stitched maps, label volumes) and the split: in an OUT handed
    over, a shard naming the stem ``../../x`` or the scene ``/home/u/x`` had ``alps relabel`` write label maps
    there. alps names each shard after its stem, and a scene is a stem.

    Raises:
        ValueError: naming the shard and the name.
    """
    extra = meta.get("extra") or {}
    scene = extra.get("scene")
    if meta.get("stem") != path.name.removesuffix(".npz"):
        raise ValueError(f"{path}: its metadata names the image {meta.get('stem')!r}, not its file's name; not "
                         "a shard alps wrote")
    if scene is not None and (not isinstance(scene, str) or not scene or any(c in scene for c in "/\\\0")):
        raise ValueError(f"{path}: its metadata names the scene {scene!r}, which is no file name; not a shard alps "
                         "wrote")
    if extra.get("split") not in SHARD_SPLITS:
        raise ValueError(f"{path}: its metadata names the split {extra.get('split')!r}; not a shard alps wrote")
    return meta


def read_shard(path: str | Path) -> ImageShard:
    """Read a whole shard."""
    data = _read_entries(path, ("meta", "rle_counts", "rle_offsets", "areas", "bboxes", "predicted_iou",
                                "stability_score", "point_coords", "crop_boxes", "keep", "pfl"))
    meta = _decode_meta(data["meta"], path)
    size = (int(meta["image_size"][0]), int(meta["image_size"][1]))
    blob, offsets = data["rle_counts"].tobytes(), data["rle_offsets"]
    rles = [{"size": list(size), "counts": blob[offsets[i] : offsets[i + 1]].decode("ascii")}
            for i in range(len(offsets) - 1)]
    masks = MaskSet(size, rles, data["areas"], data["bboxes"], data["predicted_iou"], data["stability_score"],
                    data["point_coords"], data["crop_boxes"])
    return ImageShard(stem=meta["stem"], source=meta["source"], fingerprint=meta["fingerprint"], masks=masks,
                      keep=data["keep"], pfl=data["pfl"], extra=meta.get("extra", {}))


def read_pfl(path: str | Path) -> npt.NDArray[np.float32]:
    """Only the ``(K, 256)`` PFLs of a shard."""
    return _read_entries(path, ("pfl",))["pfl"]


def shard_damage(path: str | Path) -> str | None:
    """Why the shard at ``path`` cannot be read whole (None when it can): not a zip, cut short, or bytes altered.

    Every entry is read and checked against its CRC-32, so a shard damaged past its metadata (a disk-full crash,
    a copy cut short, a flipped bit) is found before its features are needed.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile) as err:
        return f"{type(err).__name__}: {err}"
    if bad:
        return f"the bytes of its {bad!r} entry do not match their CRC-32"
    try:
        read_shard_meta(path)
    except (ValueError, KeyError) as err:  # not JSON, or names no place alps writes to (_placed_inside)
        return str(err)
    return None


def read_shard_status(path: str | Path, fingerprint: str, source_signature: dict[str, Any] | None = None
                      ) -> tuple[ShardStatus, dict[str, Any] | None]:
    """The shard's status and the metadata it read (None for a missing or damaged shard), read once.

    The status: ``missing``, ``damaged``, ``current``, ``changed`` or ``stale`` (another model or configuration).
    ``current``: the same model and configuration and, when ``source_signature`` is given, the same input file
    (:func:`alps_client.io.items.source_signature`, kept in the shard's ``extra``); ``changed``: the same model and
    configuration, but the input file changed since (or the shard does not say which file it was made from).
    ``damaged``: a shard that cannot be read whole (:func:`shard_damage`; e.g. from a disk-full crash), so it is
    recomputed.
    """
    path = Path(path)
    if not path.is_file():
        return "missing", None
    try:
        meta = read_shard_meta(path)
    except SHARD_READ_ERRORS:
        return "damaged", None
    if meta.get("fingerprint") != fingerprint:
        return "stale", meta
    recorded = meta.get("extra", {}).get("source_signature")
    if source_signature is not None:  # a shard from before paths, byte samples or sidecars were recorded: judged
        source_signature = {k: v for k, v in source_signature.items()  # without them
                            if k in (recorded or {}) or k not in ("path", "sample", "sidecars")}
    if source_signature is not None and recorded != source_signature:
        return "changed", meta
    if shard_damage(path):  # only a shard that would be used as it is is read whole
        return "damaged", None
    return "current", meta
