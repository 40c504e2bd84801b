"""A dataset written by ``alps run``, read back: what ``alps relabel`` and ``alps report`` rebuild outputs from.

Everything comes from ``OUT`` itself: the manifest (configuration, model, classes, counts), ``errors.jsonl``,
``centroids.npy``, the label maps (which images the dataset holds, in which split) and the per-image shards a run
keeps in ``OUT/.alps/shards``. No model is needed.
"""

from __future__ import annotations

import glob
import itertools
import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from alps_client.config import PipelineConfig
from alps_client.errors import AlpsError
from alps_client.io.discovery import whole_stem
from alps_client.io.items import is_input_name
from alps_client.io.layout import shard_dir, work_dir
from alps_client.io.publish import recover
from alps_client.io.shards import read_shard_meta, shard_damage, shard_path
from alps_client.labels.classes import ClassMap
from alps_client.labels.relabel import name_problem


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


def _image_source(out: Path, split: str, stem: str, shard: Path, img_suffix: str | None) -> Path | None:
    folder = out / "img_dir" / split
    if img_suffix:  # every copy has it (mmsegmentation's img_suffix); `a.png` is not `a.b.png`
        copies = [folder / f"{stem}{img_suffix}"]
    else:  # a dataset from before the manifest named it
        copies = sorted(p for p in folder.glob(f"{glob.escape(stem)}.*") if p.name[len(stem):].count(".") == 1)
    copies = [p for p in copies if p.is_file()]
    if copies:
        return copies[0]
    image_file = read_shard_meta(shard).get("extra", {}).get("image_file")
    return Path(image_file) if image_file and Path(image_file).is_file() else None


def _holds_inputs(folder: Path, look_at: int = 1000) -> bool:
    """Whether one of the first ``look_at`` entries of ``folder`` is a file `alps run` reads (an image, a volume)."""
    try:
        with os.scandir(folder) as entries:
            names = [e.name for e in itertools.islice(entries, look_at) if e.is_file()]
    except OSError:
        return False
    return any(is_input_name(name) and not name.startswith(".") for name in names)  # hidden: not read either


def load_dataset(out: str | Path) -> WrittenDataset:
    """Read the dataset in ``out`` (finishing a swap an interrupted write left half done).

    Raises:
        AlpsError: If ``out`` holds no dataset, or the shards of some of its images are missing or damaged, or
            were replaced by a later run that wrote no dataset.
    """
    out = Path(out)
    if not out.is_dir():
        what = "is a file, not a folder" if out.exists() else "does not exist"
        raise AlpsError(f"{out} {what}; give the --out folder of an `alps run`")
    recover(out)
    manifest_path = out / "manifest.json"
    if not manifest_path.is_file() or not (out / "centroids.npy").is_file():
        if _holds_inputs(out):  # `alps run` into it would write the dataset among the images
            raise AlpsError(f"{out} holds no ALPS dataset (no manifest.json / centroids.npy) but images: label them "
                            f"first with `alps run {shlex.quote(str(out))} --out OUT` (a new folder), then give OUT")
        raise AlpsError(f"{out} holds no ALPS dataset (no manifest.json / centroids.npy); "
                        f"run `alps run DATASET --out {out}` first")
    last_run = last_run_record(out)
    dataset = shlex.quote(str(last_run.get("dataset") or "DATASET"))
    rerun = (f"run the same `alps run {dataset} --out {shlex.quote(str(out))}` again, with the options it was given "
             f"(its settings: `config` in {work_dir(out) / 'last_run.json'})")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as err:  # edited by hand, or cut short outside alps (alps writes it atomically)
        raise AlpsError(f"{manifest_path} cannot be read ({err}); {rerun}: it writes the dataset again") from None
    if not isinstance(manifest, dict):
        raise AlpsError(f"{manifest_path} holds a JSON {type(manifest).__name__}, not an alps manifest; {rerun}: it "
                        "writes the dataset again")
    errors = _recorded_errors(out / "errors.jsonl", rerun)
    centroids = _recorded_centroids(out / "centroids.npy", rerun)
    splits = {p.stem: p.parent.name for p in sorted((out / "ann_dir").glob("*/*.png"))}
    present = set(splits) | {whole_stem(stem) for stem in splits}
    absent = sorted(set(manifest.get("sources") or {}) - present)
    if absent:  # a label map deleted by hand: relabel and report would leave its image out of the dataset
        raise AlpsError(f"{len(absent)} image(s) that {manifest_path} lists have no label map in {out / 'ann_dir'} "
                        f"(first: {absent[0]}); {rerun}: it writes them again")
    shards = {stem: shard_path(shard_dir(out), stem) for stem in splits}
    missing = sorted(stem for stem, path in shards.items() if not path.is_file())
    if missing:
        raise AlpsError(f"{len(missing)} image(s) of {out} have no shard in {shard_dir(out)} (first: "
                        f"{missing[0]}); relabel and report are built from the shards `alps run` keeps there: "
                        f"{rerun}")
    _check_last_run(out, last_run, manifest, rerun)
    damaged = [(stem, why) for stem, path in shards.items() if (why := shard_damage(path))]
    if damaged:
        raise AlpsError(f"{len(damaged)} shard(s) in {shard_dir(out)} cannot be read whole (first: "
                        f"{damaged[0][0]}.npz, {damaged[0][1]}); {rerun}: it labels those images again")
    sources = {stem: _image_source(out, splits[stem], stem, shards[stem], manifest.get("img_suffix"))
               for stem in splits}
    classes = manifest.get("classes")
    class_map = ClassMap.from_json(classes) if classes else ClassMap.identity(len(centroids))
    wrong = next((problem for k, name in enumerate(class_map.names) if (problem := name_problem(name, f"class {k}"))),
                 None)
    if wrong:  # never written by alps (`alps relabel` refuses such names): an OUT edited, or handed over so
        raise AlpsError(f"{manifest_path}: {wrong}, a name alps never writes; {rerun}: it writes the dataset again "
                        "(`alps relabel` then names its classes)")
    return WrittenDataset(out, manifest, PipelineConfig.from_dict(manifest.get("config", {})),
                          dict(manifest.get("model", {})), errors, centroids, class_map, shards,
                          {stem: path for stem, path in sources.items() if path is not None})


def _recorded_errors(path: Path, rerun: str) -> list[dict[str, Any]]:
    """The records of ``OUT/errors.jsonl`` (none if it is absent); AlpsError naming it where one cannot be read."""
    if not path.is_file():
        return []
    try:
        records, problem = _error_records(path.read_text())
    except (OSError, ValueError) as err:
        records, problem = [], str(err)
    if problem is None:
        return records
    raise AlpsError(f"{path} cannot be read ({problem}); {rerun}: it writes the dataset again")


def _error_records(text: str) -> tuple[list[dict[str, Any]], str | None]:
    """The JSON records of ``errors.jsonl``'s ``text``, and what is wrong with the first line that is none."""
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as err:  # edited by hand, or cut short outside alps
            return records, f"line {number}: {err}"
        if not isinstance(record, dict):
            return records, f"line {number} holds a JSON {type(record).__name__}, not a record"
        records.append(record)
    return records, None


def _recorded_centroids(path: Path, rerun: str) -> npt.NDArray[np.float32]:
    """``(K, D) float32`` cluster centres of ``OUT/centroids.npy``; AlpsError naming it where they cannot be read."""
    try:
        centroids = np.load(path)
        if centroids.ndim != 2 or centroids.dtype.kind != "f" or not len(centroids):
            raise ValueError(f"holds {centroids.shape} {centroids.dtype}, not one row of features per cluster")
    except (OSError, ValueError, EOFError) as err:  # replaced by hand (a pickle, another array), or cut short
        raise AlpsError(f"{path} cannot be read ({err}); {rerun}: it writes the dataset again") from None
    return centroids.astype(np.float32, copy=False)


def last_run_record(out: str | Path) -> dict[str, Any]:
    """``OUT/.alps/last_run.json``; empty if there is none (or it cannot be read)."""
    try:
        run = json.loads((work_dir(out) / "last_run.json").read_text())
    except (OSError, ValueError):
        return {}
    return run if isinstance(run, dict) else {}


def written_by_last_run(manifest: dict[str, Any], run: dict[str, Any]) -> bool:
    """Whether the last `alps run` (its record ``run``) wrote the dataset of ``manifest``.

    Stopped just after its write, the run's record may not say so yet.
    """
    return bool(run.get("run_id")) and manifest.get("run_id") == run.get("run_id")


def _check_last_run(out: Path, run: dict[str, Any], manifest: dict[str, Any], rerun: str) -> None:
    """Refuse a dataset whose shards a later run replaced without writing its dataset (interrupted or failed).

    Such a run labelled images again (changed files, other settings with ``--overwrite``) into the shards, so the
    shards no longer describe the label maps and image copies the dataset holds: a rewrite from them would pair
    one image with another's labels.
    """
    if run.get("dataset_written", True) or written_by_last_run(manifest, run):  # (no record: nothing moved on)
        return
    labelled = run.get("labelled")  # the labelling's record; at the run's start, how many it set out to label
    if labelled or run.get("to_label"):
        did = (f"labelled {len(labelled)} image(s)" if isinstance(labelled, list) and labelled else
               f"set out to label {run.get('to_label')} image(s)")
        raise AlpsError(f"the last `alps run` on {out} {did} and wrote no dataset "
                        f"(it was interrupted, or failed): their shards may no longer match the dataset's images "
                        f"and label maps; {rerun} to finish it (it skips what is done), then relabel or report")
