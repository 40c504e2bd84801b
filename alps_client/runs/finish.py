"""A run's last two steps, after every image is labelled: the centroids, then the dataset.

The flow's ``cluster`` and ``write-dataset`` tasks call these; so does a run composed in Python without Prefect
(docs/flow.md, "From Python"). ``log`` is a :class:`logging.Logger` (the flow gives Prefect's run logger).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from alps_client.config import PipelineConfig
from alps_client.errors import InputChangedError
from alps_client.io import atomic
from alps_client.io.items import content_digest, not_utf8_bytes
from alps_client.io.layout import shard_dir, work_dir
from alps_client.io.publish import recover
from alps_client.io.registry import earlier_splits, split_identity
from alps_client.io.rewrite import EARLIER, carried_relabel, load_or_none
from alps_client.io.shards import shard_path
from alps_client.io.writer import CENTROIDS_UNRECORDED, write_dataset
from alps_client.io.written import record_written, summary_if_written_from, write_key
from alps_client.labels.clustering import centroids_from, clustering_key, fit_centroids, same_clusters
from alps_client.runs.plan import RunPlan

Log = logging.Logger | logging.LoggerAdapter  # type: ignore[type-arg]
logger = logging.getLogger(__name__)


def fit_or_keep_centroids(shards: Sequence[str], out: str | Path, config: PipelineConfig, model_family: str = "sam",
                          log: Log = logger) -> Path:
    """Fit the centroids over all shards and save them in ``OUT/.alps/centroids.npy``; returns that path.

    A rerun whose shards hold the features the saved centroids were fitted on, with the same settings, keeps them
    (``OUT/.alps/centroids.key``): k-means over millions of masks is not run again for nothing, and the classes do
    not move with a change of k-means' own code or of the machine's arithmetic.

    Raises:
        AlpsError: If no shard holds a kept mask.
        OutputDiskFullError: If the centroids cannot be saved for want of space.
    """
    path, key_path = work_dir(out) / "centroids.npy", work_dir(out) / "centroids.key"
    from_path = path.with_name(CENTROIDS_FROM)
    key = None if config.cluster.centroids else clustering_key(shards, config.cluster)
    if key and path.is_file() and key_path.is_file() and key_path.read_text() == key:
        log.info("k-means not run again: the masks and clustering settings are those the clusters in %s were "
                 "fitted on", path)
        return path
    centroids = fit_centroids(shards, config.cluster, model_family)
    published = load_or_none(Path(out) / "centroids.npy")  # the dataset's, its label maps' and relabel's
    if published is not None and not np.array_equal(published, centroids) and same_clusters(centroids, published):
        log.info("k-means found the dataset's clusters again, numbered in another order (alps reads the masks in "
                 "another order since an upgrade): the dataset's numbering is kept")
        centroids = published.astype(np.float32)
    key_path.unlink(missing_ok=True)  # before the centroids change: a key never names others, nor a record
    from_path.unlink(missing_ok=True)
    atomic.write_with(path, lambda f: np.save(f, centroids))
    atomic.write_json(from_path, {"from": centroids_from(config.cluster), "centroids_sha256": content_digest(str(path))})
    if key:
        atomic.write_text(key_path, key)
    return path


# Beside OUT/.alps/centroids.npy: how they came about (:func:`centroids_from`), kept with them, so that a rerun that
# keeps the centroids (on another machine, where ``auto`` means another k-means) records the k-means that fitted
# them, not the one it would have run.
CENTROIDS_FROM = "centroids.from.json"


def recorded_centroids_from(centroids_path: Path) -> str:
    """How the centroids at ``centroids_path`` came about, as recorded beside them, else :data:`CENTROIDS_UNRECORDED`.

    The record names the centroids' sha256: one left by centroids an older alps fitted again since (a downgrade and
    back) is not theirs.
    """
    try:
        record = json.loads(centroids_path.with_name(CENTROIDS_FROM).read_text())
        return str(record["from"]) if record["centroids_sha256"] == content_digest(str(centroids_path)) else CENTROIDS_UNRECORDED
    except (OSError, ValueError, KeyError, TypeError):
        return CENTROIDS_UNRECORDED


def sources_not_utf8(sources: Mapping[str, str]) -> dict[str, str]:
    """The sources whose file names are not UTF-8 (a Latin-1 disk's), their bytes percent-encoded.

    ``sources`` keeps them as Python reads them; see :func:`alps_client.io.items.not_utf8_bytes`.
    """
    return {stem: encoded for stem, path in sources.items() if (encoded := not_utf8_bytes(path))}


def write_labelled_dataset(out: str | Path, shards: Sequence[str], centroids_path: str | Path, plan: RunPlan,
                           errors: Sequence[dict[str, str]], missing: Sequence[dict[str, str]],
                           image_sources: dict[str, str], sources: dict[str, str], log: Log = logger,
                           run_id: str | None = None) -> dict[str, Any]:
    """Paint label maps once and write the dataset (and scene outputs), replacing the previous one as a whole.

    Args:
        out: the output folder.
        shards: one shard per labelled image.
        centroids_path: from :func:`fit_or_keep_centroids`.
        plan: the run's plan (:func:`~alps_client.runs.plan.plan_run`).
        errors: rejected inputs, each ``{"path", "reason"}``.
        missing: good images not labelled (``--allow-partial``), recorded in the manifest apart from ``errors``;
            ``complete`` says whether any is missing.
        image_sources: stem -> image file (each :class:`~alps_client.runs.work.ImageOutcome`'s ``image``).
        sources: input file of each labelled image (:meth:`RunPlan.sources`).
        log: where the relabel carried over and the images moved between splits are said.
        run_id: the run's id in ``OUT/.alps/last_run.json``, recorded in the manifest (``run_id``): a stop after the
            write, before the run's record says so, leaves a dataset that says which run wrote it.

    Returns:
        The dataset's summary (:class:`~alps_client.io.writer.DatasetSummary` as a dict). Where ``out`` holds the
        dataset these inputs give, as it was written (:mod:`alps_client.io.written`), nothing is written: the
        summary is its manifest's, with ``"unchanged": True``.

    Raises:
        OutputDiskFullError: If the disk fills up: the previous dataset stays.
    """
    recover(out)  # a write killed as it swapped its dataset in: what follows reads the dataset OUT holds
    centroids = np.load(centroids_path)
    extra: dict[str, Any] = {"complete": not missing, "missing": list(missing), "sources": sources,
                             "scene_sizes": plan.scene_sizes(set(sources)), **({"run_id": run_id} if run_id else {})}
    extra["centroids_from"] = recorded_centroids_from(Path(centroids_path))
    undecodable = sources_not_utf8(sources)
    if undecodable:
        extra["sources_not_utf8"] = undecodable
    class_map = None
    earlier: list[Path] = []
    carried = carried_relabel(out, centroids, log.warning, plan.config.cluster.centroids, earlier.append)
    if earlier:  # said on the console and in the run's log; the dataset says it to whoever reads it later
        extra["classes_renumbered"] = {
            "earlier_centroids": str(earlier[0]),
            "why": "k-means ran again over other masks (images added or removed, or other clustering settings): "
                   "class ids differ from those of the dataset this one replaced; --centroids of earlier_centroids "
                   "labels every image with the earlier classes"}
    else:  # these clusters are the dataset's in OUT: what it says of the one before it holds for this one
        kept = _renumbering_of(out, centroids)
        if kept is not None:
            extra["classes_renumbered"] = kept
    if carried:
        class_map, extra["relabel"] = carried
        if "from" in extra["relabel"]:
            log.info(f"the classes of {extra['relabel']['from']} (its `alps relabel`, made for these --centroids) "
                     f"are applied: {len(class_map.names)} classes")
        else:  # kept unsaid, or brought back by going back to the clusters they were made for
            names = ", ".join(class_map.names[:8]) + (", ..." if len(class_map.names) > 8 else "")
            log.info(f"the classes of this dataset's `alps relabel` are kept, its clusters being the same: "
                     f"{len(class_map.names)} classes ({names})")
    split_by = split_identity(plan.config.writer.seed, plan.config.writer.val_fraction, plan.config.writer.split_group)

    def key(splits: dict[str, str]) -> str:  # the splits recorded: a write records the ones it gave
        inputs = {"config": plan.config.to_dict(), "model": plan.manifest.raw, "errors": list(errors),
                  "classes": class_map.to_json() if class_map else None,
                  "extra": {k: v for k, v in extra.items() if k != "run_id"}, "splits": splits}
        return write_key(out, shards, centroids, image_sources, inputs)

    recorded = earlier_splits(out, split_by)
    unchanged = summary_if_written_from(out, key(recorded))
    if unchanged is not None:
        log.info(f"{out} holds the dataset these shards, centroids, classes and settings give, as it was written: "
                 "not written again")
        return unchanged | {"unchanged": True}
    before = _splits_in(out)
    try:
        summary = write_dataset(out, shards, centroids, plan.config, plan.manifest.raw, errors, image_sources,
                                class_map, extra, log.warning)
    except InputChangedError as err:  # their shards are not theirs any more: the rerun labels them anew
        for stem in err.stems:
            shard_path(shard_dir(out), stem).unlink(missing_ok=True)
        raise InputChangedError(f"{err}; their shards are removed: run the same command again, which labels them "
                                "anew", err.stems) from None
    record_written(out, key(earlier_splits(out, split_by)))
    window = plan.config.inputs.intensity_window
    if window is not None and summary.n_images and not _stretched(out):
        log.warning("--intensity-window %g %g was applied to no image: every input labelled is 8-bit, read as it is "
                    "(the window is for NIfTI volumes and 16-bit or float rasters)", *window)
    after = _splits_in(out)
    moved = sorted(stem for stem, split in after.items() if before.get(stem, split) != split)
    in_split_folder = {item.stem for item in plan.items if item.split}  # its folder's split: never held, nor back
    held = [stem for stem in moved
            if stem not in in_split_folder and recorded.get(sources.get(stem, "")) == before[stem]]
    if held:  # kept in the record: they go back to their split once the other images are back
        log.warning("%d image(s) of the earlier val or train are in the other split this time (%s%s): the images "
                    "of this run left no train image otherwise (the others are gone, for now); their earlier split "
                    "is kept for the runs that have the other images back", len(held),
                    ", ".join(held[:5]), ", ..." if len(held) > 5 else "")
    back = [stem for stem in moved
            if stem not in in_split_folder and recorded.get(sources.get(stem, "")) == after[stem]]
    if back:
        log.info("%d image(s) are back in the split the dataset recorded for them, the other images back: %s%s",
                 len(back), ", ".join(back[:5]), ", ..." if len(back) > 5 else "")
    moved = [stem for stem in moved if stem not in held and stem not in back]
    if moved:  # a model trained on the earlier split has seen some of the new val images
        log.warning("%d image(s) moved between splits (%s%s): another --seed, --val-fraction or --split-group than "
                    "the dataset's draws the split anew (or their input moved between the dataset's train/val "
                    "folders)",
                    len(moved), ", ".join(moved[:5]), ", ..." if len(moved) > 5 else "")
    return summary.__dict__


def _renumbering_of(out: str | Path, centroids: np.ndarray) -> dict[str, Any] | None:
    """The ``classes_renumbered`` of the dataset in ``out`` when its centroids are ``centroids``; else None.

    A rerun (or a run resumed after a stop that came once the dataset was swapped in) writes the same clusters
    again: it dropped the record, and with it where the clusters before them are kept.
    """
    published = load_or_none(Path(out) / "centroids.npy")
    if published is None or not np.array_equal(published, centroids):
        return None
    try:
        kept = json.loads((Path(out) / "manifest.json").read_text()).get("classes_renumbered")
        # Named by their absolute path, which moves with OUT: found again in this OUT's folder of earlier ones.
        here = work_dir(out) / EARLIER / Path(kept["earlier_centroids"]).parent.name / "centroids.npy"
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return None
    return {**kept, "earlier_centroids": str(here)} if here.is_file() else None  # gone: no longer said kept


def _stretched(out: str | Path) -> dict[str, Any]:
    """The inputs of more than 8 bits the dataset in ``out`` holds, with their window (its manifest's ``stretch``)."""
    return json.loads((Path(out) / "manifest.json").read_text()).get("stretch") or {}


def _splits_in(out: str | Path) -> dict[str, str]:
    """``stem -> split`` of the label maps the dataset in ``out`` holds now (empty before its first write)."""
    return {path.stem: path.parent.name for path in Path(out).glob("ann_dir/*/*.png")}
