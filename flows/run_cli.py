"""``alps run``: check the request, run the flow with one Prefect API, and say how it ended.

The exit statuses are listed in :mod:`flows.cli`; the flags and the configuration they make are in
:mod:`flows.run_arguments`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from alps_client.config import PipelineConfig
from flows.console import fail, show_library_warnings
from flows.exits import (
    EXIT_INCOMPLETE,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    STOP_WORDS,
    Terminated,
    exit_now,
    signalled_code,
    stop_code,
    stop_on_sigterm_and_sighup,
)
from flows.run_arguments import (
    add_run_arguments,
    build_config,
    check_utf8_arguments,
    settings_in_file,
    triton_urls,
)


class _NoFailedFlowRunLine(logging.Filter):
    """Drops the flow run's ``Finished in state Failed(...)`` line from the console (the Prefect API keeps it).

    ``alps run`` ends every failed run with its own ``alps: error:`` line, which said the same once more.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "prefect.flow_runs" and isinstance(record.msg, str)
                    and record.msg.startswith("Finished in state Failed("))


def _say_a_failed_run_once() -> None:
    """Adds :class:`_NoFailedFlowRunLine` to Prefect's console handlers (on the root logger, once Prefect is set up)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and not any(
                isinstance(f, _NoFailedFlowRunLine) for f in handler.filters):
            handler.addFilter(_NoFailedFlowRunLine())


def _empty_tiles(count: int) -> str:
    """``"; 4 tiles wholly nodata, left out"`` (among the images labelled or done), or ""."""
    return f"; {count} tile{'s' if count > 1 else ''} wholly nodata, left out" if count else ""


def _print_summary(result: dict[str, Any], out: str) -> None:
    from alps_client.backends.manifest import family_name
    from alps_client.io.items import by_reason, counted, one_line
    from alps_client.io.splits import describe_split_counts
    from alps_client.labels.classes import in_dropped_clusters

    s = result["summary"]
    print(f"\nLabelled dataset: {out}  ({counted(s['n_images'], 'image')}: {describe_split_counts(s)}, "
          f"{counted(s['n_classes'], 'class')}, {counted(s['n_masks_kept'], 'mask')} kept{in_dropped_clusters(s)}, "
          f"{s['n_masks_gated']} gated; "
          f"{result['n_labelled']} labelled now, {result['n_skipped']} already done"
          f"{_empty_tiles(result.get('n_empty_tiles', 0))}"
          f"{'; unchanged, not written again' if result.get('dataset_unchanged') else ''})")
    if s.get("report"):
        print(f"Review the clusters: {(Path(out).resolve() / 'report' / 'index.html').as_uri()}")
    mmseg = Path(out).resolve() / "mmseg_dataset.py"
    if mmseg.is_file():  # not written without img_dir (writer.copy_images false)
        print(f"Train on it with mmsegmentation: _base_ = [\"{mmseg}\", ...]")
    sam = family_name(result.get("model_family"))
    if result["stand_in"]:
        example = {"SAM": "vit_h --checkpoint sam_vit_h_4b8939.pth",
                   "SAM 2.1": "sam2.1_hiera_b+ --checkpoint sam2.1_hiera_base_plus.pt"}[sam]
        print(f"Model: a STAND-IN, not {sam}. For real labels, export {sam} from its checkpoint, e.g. "
              f"python export/export_sam.py --model-type {example} --out DIR")
    elif result.get("random_init"):
        print(f"Model: {result['model']} with RANDOM weights (--random-init), not a trained {sam}: the labels mean "
              "nothing. Export with --checkpoint for real labels.")
    for key, title, listing in (("errors", "input(s) rejected (bad files)", "errors.jsonl"),
                                ("missing", "good image(s) NOT labelled (--allow-partial)", 'manifest.json ("missing")')):
        if result[key]:
            print(f"{len(result[key])} {title}, listed in {Path(out) / listing}:")
            shown = result[key][:10]
            for e in shown:
                print(f"  {one_line(e['path'])}: {one_line(e['reason'])}")
            if len(result[key]) > len(shown):
                print(f"  ... and {len(result[key]) - len(shown)} more (all by reason: {by_reason(result[key])})")


def _fail_resumable(what: str, args: argparse.Namespace, code: int = EXIT_INCOMPLETE) -> int:
    """Exit for a run that stopped part way: what happened, where the finished images are, how to resume."""
    return fail(f"{what}; the finished images are kept in {Path(args.out) / '.alps'}: run the same command again "
                "to resume", code)


def _outcome(state: Any, args: argparse.Namespace) -> int:
    """Exit status and message of a finished flow run (see the module docstring)."""
    import httpx

    from alps_client.errors import AlpsError, IncompleteRunError, OutputDiskFullError, ran_out_of_memory
    from alps_client.runs.retry import describe

    if state.is_completed():
        _print_summary(state.result(), args.out)
        return EXIT_OK
    err = state.result(raise_on_failure=False)
    if isinstance(err, IncompleteRunError):
        return fail(str(err), EXIT_INCOMPLETE)
    if isinstance(err, OutputDiskFullError):  # while writing the dataset or the run's records
        return _fail_resumable(describe(err), args)
    if isinstance(err, AlpsError):
        return fail(describe(err) + _address_from_environment(err, args))
    if isinstance(err, BaseException) and ran_out_of_memory(err):  # at k-means or the dataset write: not a bug
        return _fail_resumable(f"the run ran out of memory ({describe(err)}): free memory or raise the process's "
                               "limit (ulimit -v, a container's)", args)
    if isinstance(err, (httpx.HTTPError, OSError)):  # the Prefect API or the disk failed mid-run
        from alps_client.io.publish import swap_pending

        half = ("; OUT holds files of the previous dataset beside this run's (the swap of the new dataset into it "
                "stopped part way) until the same command finishes it") if swap_pending(args.out) else ""
        return _fail_resumable(f"the run failed: {describe(err) if isinstance(err, BaseException) else err}{half}",
                               args)
    what = describe(err) if isinstance(err, BaseException) else f"flow run ended {state.type.value}: {state.message}"
    return fail(f"internal error: {what} (the traceback is in the log above; please report it)", EXIT_INTERNAL)


def _address_from_environment(err: BaseException, args: argparse.Namespace) -> str:
    """`` (the address is ALPS_TRITON_URL's)`` after a Triton server's failure when no --triton-url named it, or ""."""
    from alps_client.errors import BackendUnavailableError

    from_flag = triton_urls(vars(args))[1] == "--triton-url"
    return "" if from_flag or not isinstance(err, BackendUnavailableError) else " (the address is ALPS_TRITON_URL's)"


def cmd_run(args: argparse.Namespace) -> int:
    """``alps run``: check the request, then run the flow with one Prefect API (see the module docstring)."""
    from alps_client.errors import AlpsError
    from alps_client.io.layout import work_dir
    from alps_client.io.out_lock import busy, writer_of
    from alps_client.runs.labellers import check_workers
    from alps_client.runs.plan import check_request
    from alps_client.runs.retry import describe

    show_library_warnings()  # --dry-run's too: it reads every image's header
    made: list[Path] = []
    try:
        check_utf8_arguments(args)
        # As the Prefect UI shows them (the run's parameters, its log) and manifest.json and last_run.json record
        # them: a relative path names no folder there.
        args.dataset, args.out = (os.path.abspath(path) for path in (args.dataset, args.out))
        made = _folders_to_make(args.out)  # as the run names it: `link/..` is not where the link points
        if args.model_repository:
            args.model_repository = os.path.abspath(args.model_repository)
        if args.centroids:
            args.centroids = os.path.abspath(args.centroids)
        config = build_config(args)
        if not os.path.isabs(config.backend.model_repository):  # the default (--config's are absolute)
            config = dataclasses.replace(config, backend=dataclasses.replace(
                config.backend, model_repository=os.path.abspath(config.backend.model_repository)))
        check_workers(args.concurrency, args.dask_workers, args.dask_address)
        had_work_dir = work_dir(args.out).is_dir()
        check_request(args.dataset, config, args.out)  # nothing to do: fail before any server starts
        holder = writer_of(args.out)  # a run on a user's API leaves no server record: its lock alone says it
        if holder:
            raise busy(args.out, holder, ", or use another --out")
        if config.cluster.centroids and args.n_clusters is not None:  # was ignored unsaid
            import numpy as np

            count = len(np.load(config.cluster.centroids, mmap_mode="r"))  # read whole by check_request already
            if args.n_clusters != count:
                raise AlpsError(f"--n-clusters {args.n_clusters}, but --centroids {config.cluster.centroids} holds "
                                f"{count} centroids, one per cluster: leave --n-clusters out")
        if args.dry_run:
            try:
                _say_the_plan(args, config)
            finally:  # check_request made OUT/.alps to see that OUT is writable
                _leave_no_folder(args.out, made)
                if not had_work_dir:
                    with contextlib.suppress(OSError):
                        work_dir(args.out).rmdir()
            return 0
    except (ValueError, AlpsError) as err:
        _leave_no_folder(args.out, made)
        return fail(_naming_the_file(describe(err) if isinstance(err, AlpsError) else str(err), args))
    import httpx

    from flows.prefect_api import PrefectApiError, prefect_api, said_url, server_disk_full

    # During the flow Prefect's own SIGTERM handler raises in the flow and marks the run crashed, then hands the
    # signal on to this one. SIGHUP (an SSH session that dropped) ended the process at once, leaving the run
    # "Running" on a user's own Prefect API for ever: it stops the run like SIGTERM.
    stop_on_sigterm_and_sighup()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")  # as the run's record writes its start
    try:
        with prefect_api(work_dir(args.out), args.prefect_startup_timeout):
            from flows.alps_flow import alps_flow

            _say_a_failed_run_once()
            state = alps_flow(args.dataset, args.out, config, overwrite=args.overwrite, concurrency=args.concurrency,
                              progress_bar=args.progress_bar, dask_address=args.dask_address,
                              dask_workers=args.dask_workers, allow_partial=args.allow_partial, return_state=True)
    except PrefectApiError as err:
        _leave_no_folder(args.out, made, keep_api_log=True)  # the line may point to the API server's log
        return fail(str(err))
    except httpx.HTTPError as err:
        # The Prefect API went away mid-run (a user's own server stopped): Prefect retried, then could not even
        # record the run's end. The per-image work does not need the API, so what was labelled is in the shards.
        api = said_url(os.environ["PREFECT_API_URL"]) if os.environ.get("PREFECT_API_URL") else "of this run"
        code = stop_code(err)
        if code is None and _stopped_after_the_write(args.out, started):  # the labelling needs no API: it went on
            print(f"alps: warning: the Prefect API {api} stopped answering ({describe(err)}) after the run wrote "
                  f"its dataset to {args.out}: the dataset is complete; the Prefect UI does not show the run's end",
                  file=sys.stderr)
            exit_now(EXIT_OK)
        if code is None:
            full = "" if os.environ.get("PREFECT_API_URL") else server_disk_full(work_dir(args.out))
            exit_now(_fail_resumable(f"the Prefect API {api} stopped answering ({describe(err)}){full}", args))
        exit_now(_fail_resumable(f"{STOP_WORDS[code]} (the Prefect API {api} did not answer: {describe(err)})",
                                  args, code))
    except (KeyboardInterrupt, Terminated, Exception) as stop:
        if not isinstance(stop, (KeyboardInterrupt, Terminated)) and signalled_code() is None:
            raise
        code = signalled_code() or (EXIT_INTERRUPTED if isinstance(stop, KeyboardInterrupt) else stop.code)
        if _stopped_after_the_write(args.out, started):
            exit_now(fail(f"{STOP_WORDS[code]} after the run wrote its dataset to {args.out}: it is complete, "
                           "nothing to resume", code))
        exit_now(_fail_resumable(STOP_WORDS[code], args, code))
    code = _outcome(state, args)
    if code == EXIT_USAGE:  # refused before any image (a server unreachable), or no mask to cluster (shards kept)
        _leave_no_folder(args.out, made)
    return code


def _naming_the_file(message: str, args: argparse.Namespace) -> str:
    """``message``, saying which of the flags it names ``--config``'s file set: they were never given.

    ``--use-m2m: SAM 2.1 only`` for a file's ``use_m2m: true`` named neither the file nor where to change it.
    """
    import re

    from alps_client.errors import AlpsError

    if not getattr(args, "config", None) or f"--config {args.config}" in message:
        return message
    try:
        in_file = {name for part in settings_in_file(args.config).values() if isinstance(part, dict) for name in part}
    except AlpsError:
        return message
    run_parser = argparse.ArgumentParser()
    add_run_arguments(run_parser)
    actions = run_parser._option_string_actions
    from_file = [flag for flag in dict.fromkeys(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", message))
                 if flag in actions and actions[flag].dest in in_file and getattr(args, actions[flag].dest) is None]
    if not from_file:
        return message
    paths = " (relative paths in it start in its folder)" if {"--model-repository", "--centroids"} & set(
        from_file) else ""
    return f"{message} ({', '.join(from_file)}: set by --config {args.config}{paths})"


def _say_the_plan(args: argparse.Namespace, config: PipelineConfig) -> None:
    """``alps run --dry-run``: what the run would do, from the plan it would start with; nothing is written.

    Raises:
        AlpsError: What the run would refuse with (shards of another labelling configuration, no input...).
    """
    from alps_client.io.dataset import last_run_record
    from alps_client.io.items import by_reason, one_line, printable
    from alps_client.runs.plan import describe_items, plan_run, unused_input_settings

    plan = plan_run(args.dataset, args.out, config, args.overwrite)
    n_label = len(plan.items) - plan.n_done
    again = [f"{plan.n_changed} changed since {'it was' if plan.n_changed == 1 else 'they were'} labelled"] * bool(
        plan.n_changed) + [f"{plan.n_damaged} with a shard that cannot be read whole"] * bool(plan.n_damaged) + [
        f"{plan.n_pooled_otherwise} whose features an earlier alps pooled otherwise"] * bool(plan.n_pooled_otherwise)
    kept = [f"{len(plan.moved)} input(s) moved or renamed"] * bool(plan.moved) + [
        f"{len(plan.retimed)} input(s) with other modification times, the same bytes"] * bool(plan.retimed)
    rejected = [error.to_json() for error in plan.rejected]
    # Found bad only when decoded (cut short, transparent): counted to label at every dry run, rejected at every run
    rejected_before = {error.get("path") for error in last_run_record(args.out).get("errors") or []
                       if isinstance(error, dict)}
    n_rejected_before = len({item.source for item in plan.items
                             if item.stem not in plan.done and printable(item.source) in rejected_before})
    if n_rejected_before:
        again.append(f"{n_rejected_before} input(s) the last run rejected, read again")
    lines = [f"alps run --dry-run: nothing written; {describe_items(plan.items)} under {args.dataset}, into {args.out}",
             f"  model: {plan.manifest.model_type} ({plan.manifest.precision}) from {plan.manifest.root}"
             + (" (a STAND-IN, not SAM: its labels demonstrate the pipeline only)" if plan.manifest.is_stand_in else ""),
             f"  to label: {n_label}" + (f" ({', '.join(again)})" if again else ""),
             f"  already labelled (skipped): {plan.n_done}" + (f" ({', '.join(kept)})" if kept else ""),
             f"  rejected: {len(rejected)}" + (f" ({by_reason(rejected)}): " + "; ".join(
                 f"{one_line(error.path)}: {one_line(error.reason)}" for error in plan.rejected[:5])
                 + ("; ..." if len(rejected) > 5 else "") if rejected else "")]
    if plan.gone:
        lines.append(f"  no longer under the dataset (the dataset the run writes leaves them out): {len(plan.gone)}: "
                     + ", ".join(map(one_line, plan.gone[:5])) + (", ..." if len(plan.gone) > 5 else ""))
    lines += [f"  note: {line}" for line in unused_input_settings(config, plan.items)]
    print("\n".join(lines), flush=True)


def _stopped_after_the_write(out: str, started: str) -> bool:
    """Whether the run stopped in ``out``, started at ``started`` (ISO, UTC), had written its dataset.

    If it had, its record is made to say so. A stop as the dataset was swapped in waits for the swap to end
    (:func:`alps_client.io.atomic.stops_held`), and one just after lands before the run's record says the dataset is
    written: that record then refused `alps report` and `alps relabel`, and the run said to run it again to
    resume. A record from before ``started`` is an earlier run's: this one was stopped before it began labelling.
    """
    import json

    from alps_client.io import atomic
    from alps_client.io.dataset import last_run_record, written_by_last_run
    from alps_client.io.layout import work_dir

    run = last_run_record(out)
    try:
        manifest = json.loads((Path(out) / "manifest.json").read_text())
        if str(run.get("started_at", "")) < started or not written_by_last_run(manifest, run):
            return False
        if not run.get("dataset_written"):
            atomic.write_json(work_dir(out) / "last_run.json", {
                **run, "dataset_written": True, "stopped": run.get("stopped") or "stopped once its dataset was written"})
    except (OSError, ValueError, AttributeError):
        return False
    return True


def _leave_no_folder(out: str, made: list[Path], keep_api_log: bool = False) -> None:
    """A run refused (exit 2: nothing new) into an ``--out`` it made leaves no folder behind.

    ``made``: the folders the run was to create, ``--out`` first, then its parents that did not exist ([] when
    ``--out`` existed). Only a folder that holds nothing but the run's own records goes: its lock, names, and the
    log of its API server unless ``keep_api_log`` (the refusal names it); then the parents it made, if empty.
    """
    import shutil

    from alps_client.errors import AlpsError
    from alps_client.io.layout import WORK_DIR, work_dir
    from alps_client.io.out_lock import out_lock

    if not made:
        return
    records = {f"{WORK_DIR}/{name}" for name in ("lock", "names.json", "prefect-api.json",
                                                 *(() if keep_api_log else ("prefect-api.log",)))}
    root = Path(out)
    try:
        if work_dir(root).is_dir():
            with out_lock(root, "alps run", create=False):  # a run that started into it meanwhile holds it: it stays
                left = {p.relative_to(root).as_posix() for p in root.rglob("*")}
                if not left <= {WORK_DIR, *records}:  # a file or folder of someone else's, or a record it names
                    return
                shutil.rmtree(root)
        for folder in made:
            if os.path.lexists(folder):
                folder.rmdir()  # empty, or it stays (and its parents with it)
    except (AlpsError, OSError):  # busy, gone, or not ours to remove
        pass


def _folders_to_make(out: str) -> list[Path]:
    """``out`` and its parents that do not exist, ``out`` first ([] when ``out`` exists, or is a link)."""
    made = []
    for folder in (Path(out), *Path(out).parents):
        if os.path.lexists(folder):
            break
        made.append(folder)
    return made
