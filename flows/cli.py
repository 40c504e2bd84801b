"""The ``alps`` command line: ``alps run``, ``alps evaluate``, ``alps serve``, ``alps report``, ``alps relabel``.

The commands and their parser are here; `alps run`'s flags and the configuration they make in
:mod:`flows.run_arguments`, the exit statuses and stop signals in :mod:`flows.exits`, the console that a reader may
leave in :mod:`flows.console`.

Exit status (also in docs/flow.md):

- 0: the dataset is written (rejected inputs are listed; with ``--allow-partial``, missing images too).
- 2: nothing was done, with one line saying why: bad flags, no such path, no images, model repository missing,
  Triton server or Dask scheduler or Prefect API unreachable, outputs of another configuration in ``--out``; or,
  after labelling, no mask left to cluster in any image (the finished images are kept; the line names the setting).
- 3: the run started but could not label every good image (processing failures after the retries; after
  ``--stop-after-failures`` in a row, or at once when the output's disk is full, the run starts no other), or the
  disk filled up while the dataset was written: the finished images are kept, no dataset is written, and running
  the same command again resumes.
- 1: an internal error (a bug); the line names it, the traceback is in the log above.
- 130: interrupted (Ctrl-C); 143: terminated (SIGTERM: ``kill``, ``docker stop``, a scheduler's time limit); 129:
  hung up (SIGHUP: the terminal or the SSH session it ran in closed). The run stops at once and the finished
  images are kept.
- 141: the reader of the output left early (``alps evaluate ... | head``, ``alps run ... 2>&1 | head``): what the
  command writes to files is written (a run goes on to its end); the rest of its console output is dropped.
- 74: the console output could not be written (stdout or stderr on a full disk, ``>/dev/full``, closed,
  ``>&-``, an I/O error): the command went on to its end as for 141, and says so on stderr where it can.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn

from alps_client.config import BackendConfig, PipelineConfig
from flows.console import ConsoleStream, console_code, open_closed_standard_fds
from flows.exits import (
    EXIT_INCOMPLETE,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    STOP_WORDS,
    Terminated,
    exit_now,
    exit_surely_on_sigterm,
    signalled_code,
    stop_code,
    stop_on_sigterm_and_sighup,
)
from flows.review_cli import a_path, add_relabel_parser, add_report_parser
from flows.run_arguments import (
    add_run_arguments,
    build_config,
    check_utf8_arguments,
    config_part,
    in_flag_words,
    settings_in_file,
    triton_urls,
)


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"alps: error: {message}", file=sys.stderr)
    return code


def _show_library_warnings() -> None:
    """Warnings of alps_client (a Triton server leaving the rotation, ...) on stderr, one line each."""
    log = logging.getLogger("alps_client")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("alps: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.WARNING)
        log.propagate = False


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
    return _fail(f"{what}; the finished images are kept in {Path(args.out) / '.alps'}: run the same command again "
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
        return _fail(str(err), EXIT_INCOMPLETE)
    if isinstance(err, OutputDiskFullError):  # while writing the dataset or the run's records
        return _fail_resumable(describe(err), args)
    if isinstance(err, AlpsError):
        return _fail(describe(err) + _address_from_environment(err, args))
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
    return _fail(f"internal error: {what} (the traceback is in the log above; please report it)", EXIT_INTERNAL)


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

    _show_library_warnings()  # --dry-run's too: it reads every image's header
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
        return _fail(_naming_the_file(describe(err) if isinstance(err, AlpsError) else str(err), args))
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
        return _fail(str(err))
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
            exit_now(_fail(f"{STOP_WORDS[code]} after the run wrote its dataset to {args.out}: it is complete, "
                            "nothing to resume", code))
        exit_now(_fail_resumable(STOP_WORDS[code], args, code))
    code = _outcome(state, args)
    if code == EXIT_USAGE:  # refused before any image (a server unreachable), or no mask to cluster (shards kept)
        _leave_no_folder(args.out, made)
    return code


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


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``alps evaluate``: mIoU of a written dataset against ground-truth label maps."""
    from alps_client.errors import AlpsError
    from alps_client.evaluate import evaluate_dataset, format_table, write_report
    from alps_client.labels.relabel import ClassesFileError
    from alps_client.runs.retry import describe

    try:
        report = evaluate_dataset(args.out, args.gt_dir, args.matching, args.exclude_unlabelled_images,
                                  args.ignore_index, args.gt_suffix, args.image_suffix, args.gt_classes,
                                  args.gt_colour_tolerance)
    except ClassesFileError as err:  # every problem of the --gt-classes file, one line each
        return _fail(str(err))
    except AlpsError as err:
        return _fail(describe(err))
    json_path = Path(args.json or Path(args.out) / "evaluation.json")
    try:  # written before anything is printed: a reader that leaves early (`| head`) does not lose it
        write_report(report, json_path)
        unwritable = None
    except OSError as err:
        unwritable = err
    for warning in report.warnings:
        print(f"alps: {warning}", file=sys.stderr)
    print(format_table(report))
    if unwritable is not None:
        return _fail(f"--json {json_path}: cannot write the report ({unwritable.strerror or unwritable}); the "
                     "figures are above")
    print(f"Written to {json_path}")
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    """``alps serve``: register the deployment on a running Prefect server and execute its runs."""
    from flows.prefect_api import PrefectApiError, check_reachable, configured_api_url

    try:  # the flags first: a mistake in them is said without waiting on a server
        # Absolute: the deployment's default (shown in the UI) names the folder it means, not one relative
        # to a process's folder that the UI does not show.
        repository = str(Path(args.model_repository or BackendConfig.model_repository).resolve())
        urls, urls_from = triton_urls(vars(args))
        try:
            config = PipelineConfig(backend=config_part(BackendConfig, {
                "kind": args.kind, "model_repository": repository, "triton_urls": urls, "protocol": args.protocol,
                "shared_memory": args.shared_memory}))
        except ValueError as err:
            raise ValueError(in_flag_words(str(err)).replace("--triton-url", urls_from)) from None
        url = configured_api_url()
        if not url:
            return _fail("alps serve needs a Prefect server that outlives it: start one (`make server`) and "
                         "`export PREFECT_API_URL=http://127.0.0.1:4200/api`")
        check_reachable(url, temporary_one=False)
    except (PrefectApiError, ValueError) as err:
        return _fail(str(err))
    _show_library_warnings()
    for line in serve_default_warnings(args.dataset, config.backend):
        print(f"alps: {line}", file=sys.stderr)
    from flows.alps_flow import alps_flow

    # A run's partial `config` is laid over this one field by field (flows/deployment_config.py), so a run
    # that sets only `amg` keeps this backend: Prefect alone would replace the whole parameter.
    # Stored as JSON with the tile overlap left to follow the tile (3/7 of it): stored as resolved, 384, a run
    # that set only `inputs.tile` kept 384, and any tile of 384 px or less failed as "overlap must lie in [0, tile)".
    default = config.to_dict()
    default["inputs"]["overlap"] = None
    if urls is None:  # the same for Triton's port, which follows the protocol (a run's `backend.protocol`)
        default["backend"]["triton_urls"] = None
    parameters: dict[str, Any] = {"config": default}
    parameters.update({name: os.path.abspath(value) for name, value in (("dataset", args.dataset), ("out", args.out))
                       if value})
    print(f"alps serve: deployment alps-label-dataset/{args.name} on {url}; Ctrl-C stops it")
    exit_surely_on_sigterm()
    try:
        alps_flow.serve(name=args.name, tags=["alps"], parameters=parameters, limit=args.limit)
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def serve_default_warnings(dataset: str | None, backend: BackendConfig) -> list[str]:
    """Lines on what ``alps serve``'s defaults lack: every run that keeps a default that is not there fails.

    Not refused: the folder may come later (a mount, an export), a Triton server may start later (compose's
    order), and a run may give its own.
    """
    from alps_client.backends.triton import accepts_connections

    model_repository = backend.model_repository
    lines = []
    if backend.kind == "triton":
        for url in backend.triton_urls or ():
            if not accepts_connections(url, 2.0):
                lines.append(f"no Triton server answers at {url} (yet): runs on this backend will fail until one does")
    if dataset and not Path(dataset).exists():
        lines.append(f"--dataset {os.path.abspath(dataset)} does not exist (yet): runs that keep this default "
                     "will fail until it does")
    if not (Path(model_repository) / "manifest.json").is_file():
        lines.append(f"no model repository at {os.path.abspath(model_repository)} (no manifest.json; "
                     "--model-repository): runs that keep this default will fail until export/export_sam.py "
                     "writes one there")
    return lines


def _deployment_name(value: str) -> str:
    """A deployment name that Prefect registers as given.

    `--name ""` became `alps-label-dataset/alps-label-dataset`, `a/b` a traceback after the "deployment ..." line.
    """
    if not value.strip() or value != value.strip() or any(c in value for c in "/%"):
        raise argparse.ArgumentTypeError(f"expected a name without '/', '%' or spaces around it, got {value!r}")
    return value


def _runs_at_once(value: str) -> int:
    """At least one: `--limit 0` served runs that stayed Late for ever, `-1` a traceback after "is being served"."""
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of runs >= 1, got {value!r}")
    return limit


class _VersionAction(argparse.Action):
    """``alps --version``: alps's version, then Python's and each package's that decides outputs.

    What a bug report needs; a dataset's manifest.json records the same under ``versions``.
    """

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> NoReturn:
        from alps_client.versions import versions

        found = versions()
        commit = found.pop("alps_commit", None)
        lines = [f"alps {found.pop('alps', 'not installed (run from a source folder)')}"
                 + (f" (commit {commit})" if commit else "")]
        lines += [f"  {name} {version}" for name, version in found.items()]
        print("\n".join(lines))
        parser.exit()


class _Parser(argparse.ArgumentParser):
    """A parser that takes no abbreviation of a flag.

    ``--overw`` relabelled everything, and a script's ``--n-clust`` would break, or change meaning, when a flag is
    added.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


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
    actions = command_parsers(make_parser())["run"]._option_string_actions
    from_file = [flag for flag in dict.fromkeys(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", message))
                 if flag in actions and actions[flag].dest in in_file and getattr(args, actions[flag].dest) is None]
    if not from_file:
        return message
    paths = " (relative paths in it start in its folder)" if {"--model-repository", "--centroids"} & set(
        from_file) else ""
    return f"{message} ({', '.join(from_file)}: set by --config {args.config}{paths})"


def command_parsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser of each command of ``alps`` (``run``, ``evaluate``...), by name."""
    (commands,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices


def make_parser() -> argparse.ArgumentParser:
    """The ``alps`` argument parser (``run``, ``evaluate``, ``serve``)."""
    parser = _Parser(prog="alps", description="ALPS pseudo-labelling with SAM (Prefect flow)")
    parser.add_argument("--version", action=_VersionAction,
                        help="print the version of alps and of the packages that decide its outputs, and exit")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="label a dataset")
    add_run_arguments(run)
    run.set_defaults(func=cmd_run)
    ev = sub.add_parser("evaluate", help="mIoU of pseudo-labels against ground truth (every class, every miss counted)")
    ev.add_argument("out", type=a_path, help="a dataset written by `alps run`")
    ev.add_argument("gt_dir", type=a_path,
                    help="ground-truth label maps (PNG, TIFF, BMP, GIF, JPEG, WebP, JPEG 2000 of class ids or of one "
                         "RGB colour per class; NIfTI label volumes): a tree that mirrors the dataset's, or a flat folder with the images' file names")
    ev.add_argument("--matching", choices=["hungarian", "majority"], default="hungarian",
                    help="cluster -> class: one cluster per class, best total (hungarian), or each cluster to its "
                         "most frequent class, several per class (majority) (hungarian)")
    ev.add_argument("--ignore-index", metavar="ID", action="append",
                    help="a ground-truth value that names no class (a dataset's 'unlabelled' or no-data, e.g. 0 for "
                         "LoveDA), ignored like 255; give it again for each value to ignore; 'none': every value is "
                         "a class, 255 too (a binary 0/255 mask); a colour as #rrggbb for colour-coded ground truth")
    ev.add_argument("--gt-suffix", default="", metavar="TEXT",
                    help="the end of ground-truth file names that their images' names lack, dropped before pairing "
                         "(ISPRS Potsdam: _label; DeepGlobe: _mask; ISIC: _segmentation)")
    ev.add_argument("--image-suffix", default="", metavar="TEXT",
                    help="the end of image names that their ground truth's names lack, dropped before pairing "
                         "(ISPRS Potsdam: _RGB; DeepGlobe: _sat)")
    ev.add_argument("--gt-classes", metavar="FILE",
                    help="YAML/JSON naming every ground-truth class: {classes: [road, building]} (ids 0, 1), "
                         "{classes: [{name: road, id: 7}]} or {classes: [{name: urban, colour: '#00ffff'}]}; a "
                         ".txt of one name per line (ids 0, 1, ...); a FreeSurfer, 3D Slicer or ITK-SNAP colour "
                         "table. A value it does not declare is refused")
    ev.add_argument("--gt-colour-tolerance", type=int, default=0, metavar="N",
                    help="colour-coded ground truth: a colour within N of a declared one in every channel takes "
                         "its class (noisy masks; DeepGlobe: 127, its binarisation at 128)")
    ev.add_argument("--json", help="report path (default OUT/evaluation.json)")
    ev.add_argument("--exclude-unlabelled-images", action="store_true",
                    help="leave out ground-truth images that have no pseudo-label (default: count them as unlabelled)")
    ev.set_defaults(func=cmd_evaluate)
    serve = sub.add_parser("serve", help="register a deployment (flow.serve) to start runs from the Prefect UI")
    serve.add_argument("--name", type=_deployment_name, default="alps",
                       help="the deployment's name: alps-label-dataset/NAME (alps)")
    serve.add_argument("--dataset", help="default dataset parameter of the runs started in the UI")
    serve.add_argument("--out", type=a_path, help="default output parameter of the runs started in the UI")
    serve.add_argument("--limit", type=_runs_at_once, default=1, help="runs executed at once (1)")
    serve.add_argument("--backend", dest="kind", choices=["embedded", "triton"], help="the runs' backend (embedded)")
    serve.add_argument("--model-repository", type=a_path, help="the runs' model repository (model_repository)")
    serve.add_argument("--triton-url", dest="triton_urls", action="append", metavar="HOST:PORT",
                       help="Triton host:port of the runs (repeatable; default $ALPS_TRITON_URL, else 127.0.0.1:8001 "
                            "for gRPC, 127.0.0.1:8000 for HTTP)")
    serve.add_argument("--protocol", choices=["grpc", "http"], help="the runs' Triton protocol (grpc)")
    serve.add_argument("--shared-memory", action="store_true", default=None,
                       help="the runs send images through Triton's system shared memory (same host)")
    serve.set_defaults(func=cmd_serve)
    add_report_parser(sub)
    add_relabel_parser(sub)
    return parser


# Commands whose writes are staged and swapped in: stopped by a signal, they say so and exit 130, 143 or 129.
STAGED_COMMANDS = ("relabel", "report", "evaluate")


def main(argv: list[str] | None = None) -> int:
    """Console entry point (``alps``)."""
    parser = make_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:  # the commands and what they do, not "the following arguments are required: command"
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    streams = sys.stdout, sys.stderr
    closed = open_closed_standard_fds()
    consoles = [ConsoleStream(stream) if stream is not None else ConsoleStream.over_closed(fd, name)
                for fd, name, stream in ((1, "stdout", streams[0]), (2, "stderr", streams[1]))
                if stream is not None or fd in closed]
    if len(consoles) < len(streams):  # a caller's stream set to None, its descriptor open: left as it is
        consoles = []
    if consoles:
        sys.stdout, sys.stderr = consoles  # type: ignore[assignment]
    # the commands' stop handlers (stop_on_sigterm_and_sighup) last as long as the command, in a caller's process
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)} \
        if threading.current_thread() is threading.main_thread() else {}
    try:
        try:  # `alps --version | head -1`, `alps run --help >/dev/full`: said by console_code
            args, unknown = parser.parse_known_args(argv)
        except SystemExit as done:  # --help, --version, a flag refused: argparse's exit, with its code
            for console in consoles:
                console.flush()
            raise SystemExit(console_code(done.code if isinstance(done.code, int) else EXIT_USAGE, consoles)) \
                from None
        if unknown:  # said by the command's parser, with its usage (the top one showed `alps {run,...}`)
            command_parsers(parser)[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
        if sys.getfilesystemencoding().lower().replace("-", "") != "utf8":
            return _fail(f"alps needs file names read as UTF-8, and this Python reads them as "
                         f"{sys.getfilesystemencoding()} (a C or POSIX locale with PYTHONUTF8=0 or "
                         "PYTHONCOERCECLOCALE=0): every non-ASCII name would fail; run it with PYTHONUTF8=1 (or "
                         "LC_ALL=C.UTF-8)")
        if os.environ.get("NO_COLOR"):  # no-color.org: Prefect's console log still set flow names in bold
            os.environ.setdefault("PREFECT_LOGGING_COLORS", "false")
        if args.command in STAGED_COMMANDS:
            stop_on_sigterm_and_sighup()
        from alps_client.io.readers import name_pil_warnings

        name_pil_warnings()  # every command that reads images: the run, --dry-run, report, relabel
        code = int(args.func(args))
        for console in consoles:
            console.flush()
        return console_code(code, consoles)
    except (KeyboardInterrupt, Terminated) as stop:  # in relabel, report or evaluate (a run says more)
        from alps_client.io.publish import SWAPPED_WHOLE

        code = stop.code if isinstance(stop, Terminated) else EXIT_INTERRUPTED
        words = "interrupted (Ctrl-C)" if code == EXIT_INTERRUPTED else STOP_WORDS[code]
        if SWAPPED_WHOLE in getattr(stop, "__notes__", ()):
            return _fail(f"{words} while a new dataset was swapped into place: the swap was finished first, and the "
                         "folder holds that dataset whole (nothing to run again for it)", code)
        return _fail(f"{words}; its writes are staged, so nothing half-written is used: run `alps {args.command}` "
                     "again to finish", code)
    finally:
        if consoles:
            sys.stdout, sys.stderr = streams
        for number, handler in handlers.items():
            if handler is not None:  # set outside Python: left as it is
                signal.signal(number, handler)


if __name__ == "__main__":
    sys.exit(main())
