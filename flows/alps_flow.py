"""The ALPS Prefect flow: plan -> label every image (masks, gate, PFL -> shard) -> cluster -> write -> report.

Run it with ``alps run DATASET --out OUT``; ``python flows/alps_flow.py DATASET --out OUT`` is the same command.
The flow is thin: run set-up, per-image work, where it runs, retries and publishing the dataset live in
:mod:`alps_client.runs`; here they become Prefect tasks, artifacts and the flow run's final state (the per-image
stage in :mod:`flows.labelling`, the log's filters in :mod:`flows.run_logging`). Tasks return small metadata
(paths, counts); arrays stay in the shards under ``OUT/.alps/``.

Outcomes: a **completed** flow run wrote the dataset (``--allow-partial`` may leave images out, listed). A flow
run that cannot start (nothing to label, model repository missing, server unreachable, outputs of another
configuration) or that could not label every good image ends **failed**, with one line as its message and the
error as its data, so callers (``alps run``) map it to an exit code without a traceback.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections import Counter
from pathlib import Path

if __name__ == "__main__":  # `python flows/alps_flow.py ...` is `alps run ...`: the CLI takes this process's place
    _root = str(Path(__file__).resolve().parents[1])
    _env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_root, os.environ.get("PYTHONPATH")]))}
    os.execve(sys.executable, [sys.executable, "-m", "flows.cli", "run", *sys.argv[1:]], _env)

if __package__ in (None, ""):  # loaded from its file (a deployment's entrypoint) without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import time
import uuid
from datetime import datetime, timezone
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from prefect.states import Failed, State
from prefect.utilities.annotations import quote

from alps_client.config import PipelineConfig
from alps_client.errors import (
    AlpsError,
    ConfigMismatchError,
    IncompleteRunError,
    InputChangedError,
    NoInputsError,
    OutputDiskFullError,
)
from alps_client.io import atomic, publish
from alps_client.io.items import by_reason, one_line, printable
from alps_client.io.layout import work_dir
from alps_client.io.out_lock import out_lock
from alps_client.io.readers import NOTHING_VALID, name_pil_warnings
from alps_client.runs import allocator
from alps_client.runs.announce import announce
from alps_client.runs.finish import fit_or_keep_centroids, write_labelled_dataset
from alps_client.runs.labellers import check_workers, open_labeller
from alps_client.runs.plan import RunPlan, plan_run
from alps_client.runs.retry import describe
from alps_client.runs.tidy import tidy_out
from alps_client.runs.work import ImageOutcome, LabelJob
from flows import artifacts
from flows.deployment_config import deployment_run_config
from flows.labelling import NOT_STARTED, label_all
from flows.prefect_api import record_runs_left_running
from flows.review_cli import report_link_artifact
from flows.run_config import ConfigParameter, validated_config
from flows.run_logging import library_log_to_run

CHANGED_MID_RUN = "its file changed or went away after it was labelled, during the run (a rerun labels it anew)"
# What else can undo an image's labels during the run: its shard in OUT, by its status (plan.changed_since_labelled)
SHARD_LOST_MID_RUN = {
    "missing": "its shard in OUT/.alps/shards went away after it was labelled, during the run (OUT deleted or moved?); "
               "a rerun labels it anew",
    "damaged": "its shard in OUT/.alps/shards was cut short or altered after it was labelled, during the run; a rerun "
               "labels it anew",
    "stale": "its shard in OUT/.alps/shards was replaced by another labelling (another model or settings) during the "
             "run; a rerun with one or the other settings decides",
}
# Rejected inputs logged one by one; one line counts the rest. A folder of thousands of broken files buried the
# run's log, and its page in the UI, under a line each (OUT/errors.jsonl and the alps-errors artifact list them).
LOGGED_REJECTED = 100


@task(name="cluster", cache_policy=NONE)
def cluster(shards: list[str], out: str, config: PipelineConfig, model_family: str = "sam") -> str | State:
    """The centroids' path (:func:`~alps_client.runs.finish.fit_or_keep_centroids`); a full disk fails the task."""
    try:
        return str(fit_or_keep_centroids(shards, out, config, model_family, get_run_logger()))
    except OutputDiskFullError as err:
        return Failed(message=describe(err), data=err)  # one line, not a traceback: the flow stops on it


@task(name="write-dataset", cache_policy=NONE)
def write(out: str, shards: list[str], centroids_path: str, plan: RunPlan, errors: list[dict[str, str]],
          missing: list[dict[str, str]], image_sources: dict[str, str], sources: dict[str, str], run_id: str
          ) -> dict[str, Any] | State:
    """The flow's one dataset write (:func:`~alps_client.runs.finish.write_labelled_dataset`); its summary."""
    try:
        return write_labelled_dataset(out, shards, centroids_path, plan, errors, missing, image_sources, sources,
                                      get_run_logger(), run_id)
    except OutputDiskFullError as err:
        return Failed(message=describe(err), data=err)  # one line, not a traceback: the flow stops on it
    except InputChangedError as err:  # images missing from this run, as if changed during it: resumable
        rows = [{"path": sources.get(stem, stem), "stem": stem, "reason": "its file holds other bytes than when it "
                 "was labelled"} for stem in err.stems]
        return Failed(message=str(err), data=IncompleteRunError(str(err), rows))


def _incomplete(plan: RunPlan, failed: list[ImageOutcome], n_done: int, stopped: str) -> IncompleteRunError:
    rows = [{"path": o.source, "stem": o.stem, "reason": o.reason} for o in failed]
    details = f"(details: {work_dir(plan.out) / 'last_run.json'})"
    kept = f"The {n_done} labelled image(s) are kept. " if n_done else ""
    if stopped:
        n_left = sum(o.reason == NOT_STARTED for o in failed)
        return IncompleteRunError(
            f"{stopped}; {n_left} of {len(plan.items)} image(s) "
            f"not started, {len(failed) - n_left} failed; no dataset written. {kept}Fix the cause and run the "
            f"same command again to resume {details}", rows)
    reasons: dict[str, int] = {}
    for o in failed:
        reasons[o.reason] = reasons.get(o.reason, 0) + 1
    top, count = max(reasons.items(), key=lambda kv: kv[1])
    others = f", and {len(reasons) - 1} other reason(s)" if len(reasons) > 1 else ""
    partial = ", or add --allow-partial to write the dataset without them" if n_done else ""
    return IncompleteRunError(
        f"{len(failed)} of {len(plan.items)} image(s) not labelled: {top} ({count}x{others}); no dataset written. "
        f"{kept}Run the same command again to finish{partial} {details}",
        rows,
    )


@flow(name="alps-label-dataset", log_prints=True)
def alps_flow(dataset: str, out: str, config: ConfigParameter = None, overwrite: bool = False,
              concurrency: int = 2, progress_bar: bool = True, dask_address: str | None = None,
              dask_workers: int | None = None, allow_partial: bool = False) -> dict[str, Any] | State:
    """Pseudo-label every image under ``dataset`` into ``out`` (ALPS); returns the run summary.

    The per-image stage runs on threads of this process, or on a Dask cluster (``dask_address`` of a scheduler,
    or ``dask_workers`` local worker processes started for the run) as plain functions that never talk to
    Prefect. Outputs do not depend on where or in which order images were labelled. A good image is labelled
    or reported missing, never dropped: without ``allow_partial`` a run that missed any ends failed and writes
    no dataset (its finished shards stay for the rerun).

    Args:
        dataset: the folder of images (or one image, NIfTI volume or GeoTIFF scene) to label; a relative path or
            ~ is the running process's (alps serve's).
        out: the folder the labelled dataset is written to; a rerun into it labels only what is new or changed.
        config: the pipeline's settings (PipelineConfig as JSON); a run may set only some fields, the others keep
            the deployment's.
        overwrite: relabel images that OUT holds labelled with another model or configuration.
        concurrency: images labelled at once (one's post-processing overlaps the next one's model).
        progress_bar: a tqdm bar on the console of the process that runs the flow.
        dask_address: a Dask scheduler (tcp://host:8786) to label on its workers.
        dask_workers: label on this many local Dask worker processes instead of threads.
        allow_partial: write the dataset even if some good images could not be labelled (each listed missing).
    """
    started = time.perf_counter()
    allocator.cap_malloc_arenas()  # before the run's threads: memory freed stayed in their arenas
    name_pil_warnings()  # a served run's process, and the flow called from Python, say them as `alps run` does
    # As the run's log, records and UI show them: a served run's `~/out` was a folder named `~` under the serve
    # process's folder, logged as `~/out`, read as $HOME.
    dataset, out = (os.path.abspath(os.path.expanduser(path)) for path in (dataset, out))
    with library_log_to_run():
        try:
            check_workers(concurrency, dask_workers, dask_address)
            config, config_note = deployment_run_config(config)
            config = validated_config(config) or PipelineConfig()  # a mapping Prefect let through (flows/run_config.py)
            if config_note:
                get_run_logger().info("%s", config_note)
            try:
                plan = plan_run(dataset, out, config, overwrite)
            except ConfigMismatchError:  # perhaps the shards of a run writing OUT now: that is what to say
                with out_lock(out, "alps run", create=False):
                    raise
            with out_lock(out, "alps run"):  # one writer per OUT, also on a shared Prefect API
                _record_runs_left_running(out)
                if publish.recover(out):  # a dataset write a kill left half swapped, which the plan read: finished first
                    get_run_logger().info("finished the dataset write that an interrupted run or `alps relabel` left "
                                          "half done in %s", out)
                    plan = plan_run(dataset, out, config, overwrite)
                return _run_plan(plan, started, concurrency, progress_bar, dask_address, dask_workers, allow_partial)
        except AlpsError as err:  # nothing can be done, or another process writes OUT: one line, no traceback
            if isinstance(err, NoInputsError) and err.rejected:  # every file found was rejected: each one's reason
                artifacts.publish_errors(err.rejected, "every file found: no input could be read, nothing is written")
            return Failed(message=describe(err), data=err)


def _record_runs_left_running(out: str) -> None:
    """Earlier flow runs into ``out`` that a kill left *Running* recorded Crashed (:func:`record_runs_left_running`).

    Bookkeeping of the Prefect API alone: where it fails, the run says so and labels on.
    """
    logger = get_run_logger()

    def recorded(name: str) -> None:
        logger.warning("flow run %s of %s was left Running by a process that ended without a word (kill -9, out of "
                       "memory): recorded Crashed", name, out)

    try:
        record_runs_left_running(out, recorded)
    except Exception as err:  # noqa: BLE001 (the API's record of other runs never stops this one)
        logger.warning("could not look for earlier runs into %s left Running by a kill (%s)", out, one_line(str(err)))


# The config parameter's type as an object, not the name `from __future__ import annotations` leaves: a served
# run's process gets the flow pickled by value, with only the globals its code uses, and Prefect's validation of
# its parameters could not resolve the name ("`Alps_FlowModel` is not fully defined").
alps_flow.fn.__annotations__["config"] = ConfigParameter


def _run_record(plan: RunPlan) -> dict[str, Any]:
    """What ``last_run.json`` says of every run: where from and to, the model, the settings (a rerun needs them)."""
    return {"dataset": plan.dataset, "out": plan.out, "model": plan.manifest.model_type,
            "model_family": plan.manifest.model_family,
            "stand_in": plan.manifest.is_stand_in, "random_init": plan.manifest.random_init,
            "config": plan.config.to_dict()}


def _run_plan(plan: RunPlan, started: float, concurrency: int, progress_bar: bool, dask_address: str | None,
              dask_workers: int | None, allow_partial: bool) -> dict[str, Any] | State:
    """The flow after its set-up: label every item, cluster, write the dataset (see :func:`alps_flow`)."""
    logger = get_run_logger()
    dataset, out, config = plan.dataset, plan.out, plan.config
    announce(plan, dask_address, dask_workers, logger)
    tidy_out(plan, logger)
    try:
        job = LabelJob(out, config, plan.fingerprint, plan.manifest.fingerprint, plan.labelling,
                       plan.manifest.model_family)
        with open_labeller(job, concurrency, dask_address, dask_workers) as lab:
            if lab.runs_on:
                logger.info("Model runs on %s", lab.runs_on)
            # Until the run writes its own, the record says this run did not finish, whatever it ends by (SIGKILL
            # too): the previous run's "complete" must not stand, and `alps relabel` must not rebuild from shards
            # it replaced. Written once the backend is open: a run refused for it (a server unreachable) labelled
            # nothing, and the previous record stands.
            # Its id goes into the manifest of the dataset it writes: a stop after that write (the record not yet
            # saying so) leaves a dataset readers can tell is this run's.
            run_id, started_at = uuid.uuid4().hex, datetime.now(timezone.utc).isoformat(timespec="seconds")
            atomic.write_json(work_dir(out) / "last_run.json", {
                **_run_record(plan), "to_label": len(plan.items) - plan.n_done, "complete": False,
                "dataset_written": False, "started_at": started_at, "run_id": run_id})
            outcomes, stopped = label_all(plan, job, lab, progress_bar)
    except AlpsError as err:  # the backend or cluster could not be opened: nothing was labelled
        return Failed(message=describe(err), data=err)
    label_seconds = time.perf_counter() - started
    by_status: dict[str, list[ImageOutcome]] = {s: [] for s in ("labelled", "skipped", "rejected", "failed")}
    for o in sorted(outcomes, key=lambda o: o.stem):
        # "skipped" says its shard was current when the image's last try began. One not done when the run began
        # was labelled by this run: by an earlier try whose result was lost with its Dask worker.
        status = "labelled" if o.status == "skipped" and o.stem not in plan.done else o.status
        by_status[status].append(o)
    done = by_status["labelled"] + by_status["skipped"]
    done.sort(key=lambda o: o.stem)
    failed = by_status["failed"]
    # A file changed since its image was labelled would put its new pixels in img_dir beside its old labels.
    changed = plan.changed_since_labelled({o.stem for o in done})
    failed += [dataclasses.replace(o, status="failed", reason=SHARD_LOST_MID_RUN.get(changed[o.stem], CHANGED_MID_RUN))
               for o in done if o.stem in changed]
    done = [o for o in done if o.stem not in changed]
    empty = {o.stem for o in done if o.empty}
    errors = [e.to_json() for e in plan.rejected] + _rejected_inputs(plan, by_status["rejected"])
    nothing_there = set(plan.scenes_within(empty))
    errors += [{"path": source, "reason": NOTHING_VALID}
               for source in sorted(nothing_there)]  # as a whole image's would be: no tile to train on
    # Each image in one list of the run's record: a scene rejected whole is not labelled too (by its tiles), and an
    # image whose file changed during the run is missing, not labelled
    counted_elsewhere = set(changed) | {item.stem for item in plan.items if printable(item.source) in nothing_there}
    errors.sort(key=lambda e: e["path"])
    if empty - counted_elsewhere:
        logger.info("%d tile(s) lie wholly in their scene's nodata or transparency: nothing to label there, left out "
                    "of the dataset (255 in stitched maps)", len(empty - counted_elsewhere))
    missing = [{"path": o.source, "stem": o.stem, "reason": o.reason} for o in failed]
    for e in errors[:LOGGED_REJECTED]:
        logger.warning("rejected input %s: %s", one_line(e["path"]), one_line(e["reason"]))
    if len(errors) > LOGGED_REJECTED:
        logger.warning("... and %d more rejected input(s): the dataset's errors.jsonl lists every one (all %d by "
                       "reason: %s)", len(errors) - LOGGED_REJECTED, len(errors), by_reason(errors))
    for m in missing:
        if m["reason"] != NOT_STARTED:
            logger.error("not labelled %s: %s", one_line(m["path"]), one_line(m["reason"]))
    if stopped:
        logger.error("%s: %d image(s) not started", stopped, sum(m["reason"] == NOT_STARTED for m in missing))
    run: dict[str, Any] = {
        **_run_record(plan), "labelled": [o.stem for o in by_status["labelled"] if o.stem not in counted_elsewhere],
        "skipped": [o.stem for o in by_status["skipped"] if o.stem not in counted_elsewhere],
        "errors": errors, "missing": missing, "complete": not missing, "stopped": stopped, "dataset_written": False,
        "n_empty_tiles": len(empty - counted_elsewhere), "run_id": run_id, "started_at": started_at,
    }
    try:
        atomic.write_json(work_dir(out) / "last_run.json", run)  # the images' record, also for a run that ends here
        _write_failure_details(out, failed)
    except OutputDiskFullError as err:  # what filled the disk (a shard, said below) matters more than the record
        logger.warning("The run's record was not written: %s", describe(err))
    if failed and (not allow_partial or not done or stopped):  # a stopped run is broken, not short of a few images
        artifacts.publish_errors(errors, "all in .alps/last_run.json")
        artifacts.publish_missing(missing)
        err = _incomplete(plan, failed, len(done), stopped)
        return Failed(message=str(err), data=err)
    if len(done) == len(empty):
        artifacts.publish_errors(errors, "all in .alps/last_run.json")
        err = NoInputsError(f"none of the {len(plan.items)} input(s) under {dataset} could be read; "
                            f"reasons in {work_dir(out) / 'last_run.json'}")
        return Failed(message=str(err), data=err)
    shards = [o.shard for o in done if o.shard]
    if not any(o.n_kept for o in done):  # with --centroids too: it wrote a dataset of 255 alone, with exit 0
        from alps_client.labels.clustering import why_nothing_to_cluster

        # images skipped as done carry no counts: their shards do
        reason = why_nothing_to_cluster(shards, config.amg.min_mask_region_area)
        if reason:
            return Failed(message=reason, data=AlpsError(reason))
    from alps_client.labels.clustering import centroids_from

    # What comes after the last image is silent for minutes on a large dataset (about 11 ms an image to write).
    logger.info("Clustering the masks of %d image(s) (%s), then writing the dataset to %s", len(shards),
                centroids_from(config.cluster), out)
    t = time.perf_counter()
    # quote(): Prefect links every value a task returned to that task, and lists each such value found in another
    # task's arguments as an input of it, in the events it sends for that task (capped at 1.5 MB): per-image
    # lists (and the plan, whose items' strings the outcomes share) made one entry per image, and a run of 8,000
    # images failed at its end with EventTooLarge.
    centroids = cluster(quote(shards), out, config, plan.manifest.model_family)
    if isinstance(centroids, State):  # the task's Failed state (a full disk), returned as it is by the call
        return _flow_failure(centroids)
    cluster_seconds = time.perf_counter() - t
    t = time.perf_counter()
    summary = write(out, quote(shards), centroids, quote(plan), quote(errors), quote(missing),
                    quote({o.stem: o.image for o in done if o.image}),
                    quote(plan.sources({o.stem for o in done if not o.empty})), run_id)  # (a scene of nodata: no map)
    if isinstance(summary, State):
        return _flow_failure(summary)
    unchanged = summary.pop("unchanged", False)
    run["scene_outputs"] = summary.pop("scene_outputs")
    run["summary"] = summary
    run["dataset_written"] = True
    run["dataset_unchanged"] = unchanged
    run["stage_seconds"] = artifacts.stage_totals(o.timings for o in done)
    run["seconds"] = {"label": label_seconds, "cluster": cluster_seconds, "write": time.perf_counter() - t,
                      "total": time.perf_counter() - started}
    atomic.write_json(work_dir(out) / "last_run.json", run)
    artifacts.publish(run, out)
    report_link_artifact(out)
    logger.info("Labelled dataset %s %s: %d image(s), %d class(es), %d rejected input(s), %d missing",
                "unchanged in" if unchanged else "written to", out, summary["n_images"], summary["n_classes"],
                len(errors), len(missing))
    return {k: v for k, v in run.items() if k not in ("labelled", "skipped")} | {
        "n_labelled": len(run["labelled"]), "n_skipped": len(run["skipped"])}


def _rejected_inputs(plan: RunPlan, rejected: list[ImageOutcome]) -> list[dict[str, str]]:
    """``{"path", "reason"}`` of each input file rejected while labelling: once per file, its first part's reason.

    The tiles of a scene or slices of a volume that cannot be read were one rejected input each: 64 lines and
    ``n_errors`` 64 for one file cut short. Their count goes into the reason (``all 64 tiles``).
    """
    kinds = {item.source: item.kind for item in plan.items}
    totals = Counter(item.source for item in plan.items)  # the items each file was cut into
    by_file: dict[str, list[str]] = {}  # source -> the reasons of its parts (which differ by a block's offset)
    for outcome in rejected:
        by_file.setdefault(outcome.source, []).append(outcome.reason or "")
    errors = []
    for source, reasons in by_file.items():
        kind, total = kinds.get(source, "image"), totals[source]
        reason, count = reasons[0], len(reasons)
        if kind != "image":
            reason += f" ({'all ' if count == total else ''}{count}{'' if count == total else f' of {total}'} {kind}s)"
        errors.append({"path": source, "reason": reason})
    return errors


def _flow_failure(task_state: State) -> State:
    """The flow's own Failed state for a task's, its error kept as the data.

    A task's state returned by the flow as it is would end the flow "1/1 states failed", the error lost.
    """
    return Failed(message=task_state.message, data=task_state.result(raise_on_failure=False))


def _write_failure_details(out: str, failed: list[ImageOutcome]) -> None:
    """Tracebacks of unexpected failures (bugs) go to ``OUT/.alps/failures.log``, not to the console."""
    details = [f"== {o.stem} ({o.source}): {o.reason}\n{o.detail}" for o in failed if o.detail]
    if details:
        atomic.write_text(work_dir(out) / "failures.log", "\n".join(details))
