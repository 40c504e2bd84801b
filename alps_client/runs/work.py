"""One image's work: skip it if its shard is current, read it, label it, write its shard (no Prefect here).

This is the only caller of :func:`alps_client.pipeline.label_image` and :func:`alps_client.io.readers.load_item`
in a run, whether it runs on a flow thread or on a Dask worker.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from alps_client.backends.base import SamBackend
from alps_client.config import PipelineConfig
from alps_client.errors import InputImageError, ModelChangedError
from alps_client.io import atomic
from alps_client.io.items import InputItem, content_digest, printable
from alps_client.io.shards import ImageShard, write_shard
from alps_client.labels.features import POOLING
from alps_client.masks import MaskSet
from alps_client.runs.plan import Pooling, decoded_image, item_status, labelling_identity

Status = Literal["labelled", "skipped", "rejected", "failed"]


@dataclass(frozen=True)
class LabelJob:
    """What every image of a run shares (small and picklable: it travels to Dask workers).

    Attributes:
        out: the output dataset folder (shared by every worker).
        config: the run's configuration.
        fingerprint: shard fingerprint of the model and labelling configuration.
        model: the model's fingerprint (:attr:`~alps_client.backends.manifest.ModelManifest.fingerprint`), kept in
            each shard with the labelling configuration, so that a run refused for another one can say what differs.
        labelling: what ``fingerprint`` hashes, kept in each shard (:attr:`~alps_client.runs.plan.RunPlan.labelling`);
            None: the model's and ``config``'s.
        model_family: the model's family (``sam``, ``sam2``): how its features are pooled.
    """

    out: str
    config: PipelineConfig
    fingerprint: str
    model: str = ""
    labelling: dict[str, Any] | None = None
    model_family: str = "sam"

    @property
    def pooling(self) -> Pooling:
        """How this run pools features (:class:`~alps_client.runs.plan.Pooling`)."""
        return Pooling(self.model_family, self.config.features.feature_size)


@dataclass
class ImageOutcome:
    """What became of one item (small: a Prefect task result, a line of ``last_run.json``).

    ``rejected`` is a bad *input* (unreadable, not an image): listed in ``errors.jsonl``. ``failed`` is a
    *processing* failure (backend, worker, memory, a bug) after the retries: the image is good and missing;
    ``reason`` is one line, ``detail`` the traceback of an unexpected error; ``ends_run`` a failure that every
    image left would meet too (the output's disk is full), so the run starts no other. ``empty``: a tile wholly in
    its scene's nodata or transparency, done without the model (a shard without masks) and left out of the dataset.
    """

    status: Status
    stem: str
    source: str
    shard: str | None = None
    image: str | None = None
    reason: str = ""
    n_masks: int = 0
    n_kept: int = 0
    n_gated: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    detail: str = ""
    ends_run: bool = False
    empty: bool = False

    def __post_init__(self) -> None:  # said in logs, reports and failures.log; ``image`` is opened, kept as it is
        self.source, self.reason, self.detail = printable(self.source), printable(self.reason), printable(self.detail)

    def __repr__(self) -> str:  # short: Prefect prints it in state messages
        return f"ImageOutcome({self.status} {self.stem})"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return asdict(self)


def label_item(item: InputItem, job: LabelJob, backend: SamBackend) -> ImageOutcome:
    """Label one item and write its shard, or report it skipped (current shard) or rejected (bad input).

    Raises:
        Exception: Any processing failure (backend, memory, disk...): the caller retries transient ones and
            reports the image as failed, never as a rejected input.
    """
    from alps_client.amg import make_mask_generator
    from alps_client.io.readers import load_item
    from alps_client.pipeline import label_image

    status, signature, shard, meta, _ = item_status(job.out, item, job.fingerprint, job.pooling)  # signature first
    done = _skipped(item, job, shard, meta) if status == "current" else None
    if done is not None:
        return done
    _check_same_model(backend, job)
    try:
        loaded = load_item(item, job.config.inputs)
    except InputImageError as err:  # the only failure that makes an input "bad"
        _forget_earlier_labels(item, job, shard)
        return ImageOutcome("rejected", item.stem, item.source, reason=err.reason)
    extra = {"kind": item.kind, "scene": item.scene, "window": item.window, "split": item.split, "geo": loaded.geo,
             "input": loaded.extra, "source_signature": signature, "content_sha256": _content_of(item.source),
             "labelling": job.labelling or labelling_identity(job.model, job.config), "pooling": POOLING}
    if loaded.valid is not None and not loaded.valid.any():  # a tile in a scene's collar: nothing there to label
        write_shard(shard, ImageShard(item.stem, item.source, job.fingerprint, MaskSet.empty(loaded.valid.shape),
                                      np.zeros(0, bool), np.zeros((0, 0), np.float32),
                                      {**extra, "empty": True, "image_file": None, "n_prompts": 0, "image_area": 0}))
        return ImageOutcome("labelled", item.stem, item.source, str(shard), empty=True)
    image_file = _image_file(item, job, loaded.plain_copy)
    if not loaded.plain_copy:
        atomic.write_png(image_file, loaded.rgb)
    extra["image_file"] = image_file
    extra["runs_on"] = backend.runs_on
    generator = make_mask_generator(backend, job.config.amg)
    summary = label_image(loaded.rgb, item.stem, item.source, generator, job.config, shard, job.fingerprint,
                          loaded.valid, extra)
    return ImageOutcome("labelled", item.stem, item.source, str(shard), image_file, n_masks=summary.n_masks,
                        n_kept=summary.n_kept, n_gated=summary.n_gated, timings=summary.timings)


def _check_same_model(backend: SamBackend, job: LabelJob) -> None:
    """Refuse a backend whose model is not the run's: every shard is stamped with the run's fingerprint.

    A Dask worker builds its backend from the repository when it first labels, and again when it is replaced: after
    a re-export into that repository, its images were labelled with the new model and recorded as the old one.

    Raises:
        ModelChangedError: naming both models (ends the run, resumable).
    """
    loaded = backend.manifest.fingerprint
    if job.model and loaded != job.model:
        raise ModelChangedError(
            f"the model in {backend.manifest.root} is now {loaded}, not the {job.model} this run started with (exported "
            "again during the run?); the run stopped rather than label on with a second model: export the run's "
            "model there again and run the same command to resume, or give the new export to a new --out (or rerun "
            "with --overwrite: every image labelled again with it)")


def done_outcome(item: InputItem, job: LabelJob) -> ImageOutcome | None:
    """The ``skipped`` outcome of an item whose shard is current (:func:`label_item`'s first check), else None.

    For a run's images done when it began, without a try of their own: a task run each, only to say "skipped",
    grew Prefect's database by ~20 KB per image at every rerun.
    """
    status, _, shard, meta, _ = item_status(job.out, item, job.fingerprint, job.pooling)
    return _skipped(item, job, shard, meta) if status == "current" else None


def _skipped(item: InputItem, job: LabelJob, shard: Path, meta: dict[str, Any] | None) -> ImageOutcome | None:
    if meta is None:
        return None
    plain_copy = meta["extra"].get("image_file") == meta["source"]
    return ImageOutcome("skipped", item.stem, item.source, str(shard), _image_file(item, job, plain_copy),
                        n_masks=meta["n_masks"], n_kept=meta["n_kept"], n_gated=meta["n_masks"] - meta["n_kept"],
                        empty=bool(meta["extra"].get("empty")))


def _content_of(source: str) -> str | None:
    """The file's :func:`content_digest`; None if it cannot be read again (its shard then never follows a move)."""
    try:
        return content_digest(source)
    except OSError:
        return None


def _forget_earlier_labels(item: InputItem, job: LabelJob, shard: Path) -> None:
    """Remove the shard (and decoded copy) of an earlier version of ``item``'s file, which is now a bad input.

    That file is gone, so its labels never reach the dataset; kept, the shard would be judged "changed" by every
    rerun, which would warn again that the image changed since it was labelled.
    """
    shard.unlink(missing_ok=True)
    Path(_image_file(item, job, plain_copy=False)).unlink(missing_ok=True)


def _image_file(item: InputItem, job: LabelJob, plain_copy: bool) -> str:
    """The image the dataset shows for ``item``: its input file itself, or the decoded RGB kept under ``OUT/.alps``.

    Derived from where the dataset and ``OUT`` are now, not read back from the shard: a rerun after either moved
    still finds it.
    """
    return item.source if plain_copy else str(decoded_image(job.out, item.stem))
