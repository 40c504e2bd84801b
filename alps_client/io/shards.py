"""Per-image shards: masks (COCO RLE), scores, gate decisions and PFLs of one image, written atomically.

A shard is one ``.npz`` file. Its ``meta`` entry (JSON) carries the fingerprint of the model and labelling
configuration that produced it, so a rerun can skip current shards and refuse to mix stale ones.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from alps_client.io.atomic import write_with

SHARD_FORMAT = 1
ShardStatus = Literal["missing", "current", "stale"]


@dataclass
class ImageShard:
    """Everything ALPS keeps of one labelled image (or tile / slice).

    Attributes:
        stem: unique output name of the image.
        source: input path it was read from.
        image_size: ``(H, W)`` in pixels.
        fingerprint: model + labelling configuration identity (see :func:`shard_fingerprint`).
        rles: COCO compressed RLE of every mask found (kept and gated).
        areas: ``(M,) int64`` mask areas in pixels.
        bboxes: ``(M, 4) float64`` XYWH boxes.
        predicted_iou: ``(M,) float32``.
        stability_score: ``(M,) float32``.
        keep: ``(M,) bool`` gate decisions (True = kept).
        pfl: ``(K, 256) float32`` pseudo feature labels of the kept masks, in mask order.
        extra: small JSON-able metadata (timings, prompts, valid pixels, geo info).
    """

    stem: str
    source: str
    image_size: tuple[int, int]
    fingerprint: str
    rles: list[dict[str, Any]]
    areas: npt.NDArray[np.int64]
    bboxes: npt.NDArray[np.float64]
    predicted_iou: npt.NDArray[np.float32]
    stability_score: npt.NDArray[np.float32]
    keep: npt.NDArray[np.bool_]
    pfl: npt.NDArray[np.float32]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_kept(self) -> int:
        return int(self.keep.sum())


def shard_fingerprint(model_fingerprint: str, labelling_config: dict[str, Any]) -> str:
    """Stable sha256 of the model identity and the configuration fields that change per-image results."""
    payload = json.dumps({"model": model_fingerprint, "config": labelling_config, "format": SHARD_FORMAT}, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def shard_path(shard_dir: str | Path, stem: str) -> Path:
    """Where the shard of ``stem`` lives."""
    return Path(shard_dir) / f"{stem}.npz"


def write_shard(path: str | Path, shard: ImageShard) -> None:
    """Write a shard atomically (temp file + rename): a killed run never leaves a half shard."""
    meta = {
        "format": SHARD_FORMAT,
        "stem": shard.stem,
        "source": shard.source,
        "image_size": list(shard.image_size),
        "fingerprint": shard.fingerprint,
        "rles": shard.rles,
        "n_masks": len(shard.rles),
        "n_kept": shard.n_kept,
        "extra": shard.extra,
    }
    arrays = {
        "meta": np.frombuffer(json.dumps(meta, sort_keys=True).encode("utf-8"), dtype=np.uint8),
        "areas": np.asarray(shard.areas, np.int64),
        "bboxes": np.asarray(shard.bboxes, np.float64).reshape(-1, 4),
        "predicted_iou": np.asarray(shard.predicted_iou, np.float32),
        "stability_score": np.asarray(shard.stability_score, np.float32),
        "keep": np.asarray(shard.keep, bool),
        "pfl": np.asarray(shard.pfl, np.float32).reshape(-1, shard.pfl.shape[-1] if shard.pfl.size else 256),
    }
    write_with(path, lambda f: np.savez(f, **arrays))


def read_shard_meta(path: str | Path) -> dict[str, Any]:
    """The shard's JSON metadata only (cheap: the arrays are not read)."""
    with np.load(path) as data:
        return json.loads(data["meta"].tobytes().decode("utf-8"))


def read_shard(path: str | Path) -> ImageShard:
    """Read a whole shard."""
    with np.load(path) as data:
        meta = json.loads(data["meta"].tobytes().decode("utf-8"))
        return ImageShard(
            stem=meta["stem"],
            source=meta["source"],
            image_size=(int(meta["image_size"][0]), int(meta["image_size"][1])),
            fingerprint=meta["fingerprint"],
            rles=meta["rles"],
            areas=data["areas"],
            bboxes=data["bboxes"],
            predicted_iou=data["predicted_iou"],
            stability_score=data["stability_score"],
            keep=data["keep"],
            pfl=data["pfl"],
            extra=meta.get("extra", {}),
        )


def read_pfl(path: str | Path) -> npt.NDArray[np.float32]:
    """Only the ``(K, 256)`` PFLs of a shard."""
    with np.load(path) as data:
        return data["pfl"]


def shard_status(path: str | Path, fingerprint: str) -> ShardStatus:
    """``missing`` (no usable shard), ``current`` (same model and config) or ``stale`` (another one).

    An unreadable shard (e.g. from a disk-full crash) counts as missing, so it is recomputed.
    """
    path = Path(path)
    if not path.is_file():
        return "missing"
    try:
        meta = read_shard_meta(path)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError):
        return "missing"
    return "current" if meta.get("fingerprint") == fingerprint else "stale"
