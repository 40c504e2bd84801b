"""A dataset written by ``alps run``, read back: what ``alps relabel`` and ``alps report`` rebuild outputs from.

Everything comes from ``OUT`` itself: the manifest (configuration, model, classes, counts), ``errors.jsonl``,
``centroids.npy``, the label maps (which images the dataset holds, in which split) and the per-image shards a run
keeps in ``OUT/.alps/shards``. No model is needed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from alps_client.config import PipelineConfig
from alps_client.errors import AlpsError
from alps_client.io.publish import recover
from alps_client.io.shards import read_shard_meta, shard_path
from alps_client.labels.classes import ClassMap


@dataclass
class WrittenDataset:
    """A labelled dataset on disk.

    Attributes:
        out: its folder.
        manifest: ``manifest.json``.
        config: the configuration it was written with.
        model: the model repository manifest recorded in it.
        errors: rejected inputs (``errors.jsonl``).
        centroids: ``(N, D) float32`` cluster centres.
        class_map: its current classes.
        shard_paths: stem -> shard of every image it holds.
        image_sources: stem -> image to cut thumbnails from / copy into ``img_dir`` (its own ``img_dir`` copy
            when there is one, else the image the run read), for the images where one exists.
    """

    out: Path
    manifest: dict[str, Any]
    config: PipelineConfig
    model: dict[str, Any]
    errors: list[dict[str, Any]]
    centroids: npt.NDArray[np.float32]
    class_map: ClassMap
    shard_paths: dict[str, Path]
    image_sources: dict[str, Path]


def _image_source(out: Path, split: str, stem: str, shard: Path) -> Path | None:
    copies = sorted((out / "img_dir" / split).glob(f"{stem}.*"))
    if copies:
        return copies[0]
    image_file = read_shard_meta(shard).get("extra", {}).get("image_file")
    return Path(image_file) if image_file and Path(image_file).is_file() else None


def load_dataset(out: str | Path) -> WrittenDataset:
    """Read the dataset in ``out`` (finishing a swap an interrupted write left half done).

    Raises:
        AlpsError: If ``out`` holds no dataset, or the shards of some of its images are missing.
    """
    out = Path(out)
    if not out.is_dir():
        what = "is a file, not a folder" if out.exists() else "does not exist"
        raise AlpsError(f"{out} {what}; give the --out folder of an `alps run`")
    recover(out)
    manifest_path = out / "manifest.json"
    if not manifest_path.is_file() or not (out / "centroids.npy").is_file():
        raise AlpsError(f"{out} holds no ALPS dataset (no manifest.json / centroids.npy); "
                        f"run `alps run DATASET --out {out}` first")
    manifest = json.loads(manifest_path.read_text())
    errors_path = out / "errors.jsonl"
    errors = [json.loads(line) for line in errors_path.read_text().splitlines() if line.strip()] \
        if errors_path.is_file() else []
    centroids = np.load(out / "centroids.npy")
    splits = {p.stem: p.parent.name for p in sorted((out / "ann_dir").glob("*/*.png"))}
    shards = {stem: shard_path(out / ".alps" / "shards", stem) for stem in splits}
    missing = sorted(stem for stem, path in shards.items() if not path.is_file())
    if missing:
        raise AlpsError(f"{len(missing)} image(s) of {out} have no shard in {out / '.alps' / 'shards'} (first: "
                        f"{missing[0]}); relabel and report are built from the shards `alps run` keeps there: "
                        f"rerun `alps run` with the same --out")
    sources = {stem: _image_source(out, splits[stem], stem, shards[stem]) for stem in splits}
    classes = manifest.get("classes")
    class_map = ClassMap.from_json(classes) if classes else ClassMap.identity(len(centroids))
    return WrittenDataset(out, manifest, PipelineConfig.from_dict(manifest.get("config", {})),
                          dict(manifest.get("model", {})), errors, centroids, class_map, shards,
                          {stem: path for stem, path in sources.items() if path is not None})
