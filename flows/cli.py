"""The ``alps`` command line: ``alps run``, ``alps evaluate``, ``alps serve``, ``alps report``, ``alps relabel``.

Flags are named after the configuration fields (``--points-per-side`` <-> ``AmgConfig.points_per_side``);
unset flags are dropped so the dataclass defaults stay the only defaults. Only this module reads environment
variables (``ALPS_TRITON_URL``; Prefect reads its own).

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

from alps_client.config import (
    AmgConfig,
    BackendConfig,
    ClusterConfig,
    FeatureConfig,
    GateConfig,
    InputConfig,
    PipelineConfig,
    WriterConfig,
)
from flows.review_cli import a_path, add_relabel_parser, add_report_parser, add_vector_argument

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_INCOMPLETE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 3, 130, 143
EXIT_HUNG_UP = 129  # 128 + SIGHUP
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell tool stopped by a closed pipe returns
EXIT_OUTPUT_FAILED = 74  # sysexits.h's EX_IOERR


EXIT_OF_SIGNAL = {signal.SIGINT: EXIT_INTERRUPTED, signal.SIGTERM: EXIT_TERMINATED, signal.SIGHUP: EXIT_HUNG_UP}


class Terminated(BaseException):
    """SIGTERM or SIGHUP received: like Ctrl-C, never caught by ``except Exception`` on its way up."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(f"{signal.Signals(signum).name} received")
        self.code = EXIT_OF_SIGNAL[signum]


# The stop signals this command received, in order: a library that caught the KeyboardInterrupt raised in it and
# raised another error in its place (Prefect's logging set-up, Ctrl-C at start: a PydanticSerializationError) is
# still a stop.
_SIGNALLED: list[int] = []


def _raise_terminated(signum: int, frame: object) -> None:
    _SIGNALLED.append(signum)
    raise Terminated(signum)


def _raise_interrupted(signum: int, frame: object) -> None:
    _SIGNALLED.append(signum)
    raise KeyboardInterrupt


def _stop_on_sigterm_and_sighup() -> None:
    """SIGTERM and SIGHUP raise :class:`Terminated` in the main thread, as Ctrl-C raises KeyboardInterrupt."""
    _SIGNALLED.clear()
    if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
        signal.signal(signal.SIGTERM, _raise_terminated)
        if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # under nohup it stays ignored
            signal.signal(signal.SIGHUP, _raise_terminated)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # as Python's, and noted
            signal.signal(signal.SIGINT, _raise_interrupted)


def _signalled_code() -> int | None:
    """130, 143 or 129 for the first stop signal this command received; None if none came."""
    return EXIT_OF_SIGNAL[_SIGNALLED[0]] if _SIGNALLED else None


STOP_WORDS = {EXIT_INTERRUPTED: "interrupted", EXIT_TERMINATED: "terminated (SIGTERM)",
              EXIT_HUNG_UP: "hung up (SIGHUP: its terminal closed)"}


def _stop_code(err: BaseException | None) -> int | None:
    """130 or 143 if ``err`` is, or was raised while handling, a Ctrl-C or a SIGTERM; else None.

    Prefect records a stopped run as crashed through its API: when that API is gone, the HTTP error it gives up
    with replaces the stop, which stays in its ``__context__``.
    """
    from prefect.exceptions import TerminationSignal

    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, KeyboardInterrupt):
            return EXIT_INTERRUPTED
        if isinstance(err, Terminated):
            return err.code
        if isinstance(err, TerminationSignal):
            return EXIT_TERMINATED
        seen.add(id(err))
        err = err.__context__
    return None


def _exit_now(code: int) -> NoReturn:
    """End the process without joining the threads of images still in flight.

    For a run that ended part way: a stalled backend call would otherwise hold the exit for as long as it hangs
    (and its retries after it). The run's API server is stopped by then and finished shards are on disk.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


AMG_FLAGS: list[tuple[str, type]] = [
    ("points_per_side", int), ("points_per_batch", int), ("pred_iou_thresh", float),
    ("stability_score_thresh", float), ("stability_score_offset", float), ("mask_threshold", float),
    ("box_nms_thresh", float), ("crop_n_layers", int), ("crop_nms_thresh", float), ("crop_overlap_ratio", float),
    ("crop_n_points_downscale_factor", int), ("min_mask_region_area", int),
]


AMG_HELP = {
    "points_per_side": "prompt grid: this many points along each side of the image, its square per image",
    "points_per_batch": "prompts sent to the decoder at once; never changes the masks",
    "pred_iou_thresh": "drop masks whose predicted IoU is at or below this (as Meta)",
    "stability_score_thresh": "drop masks whose stability under a shift of the mask threshold is below this",
    "stability_score_offset": "the shift of the mask threshold for the stability score",
    "mask_threshold": "logit threshold that makes a mask binary",
    "box_nms_thresh": "box IoU above which the lower-scored of two masks is dropped",
    "crop_n_layers": "also run on crops: layers of 2^i x 2^i crops",
    "crop_nms_thresh": "box IoU for the non-maximum suppression between crops",
    "crop_overlap_ratio": "overlap of neighbouring crops, a share of the image's length",
    "crop_n_points_downscale_factor": "points per side in layer i are points_per_side / factor^i",
    "min_mask_region_area": "remove holes and islands smaller than this many pixels (needs OpenCV); SAM 2.1: of at "
                            "most this many pixels of the 256x256 low-resolution mask, as Meta's SAM 2.1 does",
}
AMG_DEFAULT_TEXT = {"pred_iou_thresh": "0.88 for SAM, 0.8 for SAM 2.1",
                    "points_per_batch": "chosen by the backend", "crop_overlap_ratio": "512/1500"}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _n_clusters(value: str) -> int | str:
    try:
        return value if value == "auto" else int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or 'auto', got {value!r}") from None


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):  # NaN too
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {value!r}")
    return seconds


def _bands(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 1-based band numbers such as 4,3,2, got {value!r}") from None


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


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``alps run`` (and ``python flows/alps_flow.py``)."""
    p.add_argument("dataset", type=a_path, help="folder (or file) of images to label")
    p.add_argument("--out", required=True, type=a_path, help="output dataset folder")
    b = p.add_argument_group("backend")
    b.add_argument("--backend", dest="kind", choices=["embedded", "triton"], help="default: embedded (onnxruntime)")
    b.add_argument("--model-repository", type=a_path, help="exported model repository (default: model_repository)")
    b.add_argument("--triton-url", dest="triton_urls", action="append", metavar="HOST:PORT",
                   help="Triton host:port (repeatable; default $ALPS_TRITON_URL, else 127.0.0.1:8001 for gRPC, "
                        "127.0.0.1:8000 for HTTP)")
    b.add_argument("--protocol", choices=["grpc", "http"], help="Triton protocol (grpc; Triton serves HTTP on 8000)")
    b.add_argument("--shared-memory", action="store_true", default=None, help="Triton system shared memory (same host)")
    b.add_argument("--num-threads", type=int, help="onnxruntime threads (embedded)")
    b.add_argument("--timeout-s", type=float, help="per-request timeout of a remote backend, seconds (120)")
    b.add_argument("--retries", type=int, help="tries again per image after a transient failure (5)")
    b.add_argument("--retry-delay-s", type=float, help="wait before the first retry, doubling after (2)")
    b.add_argument("--retry-max-delay-s", type=float, help="longest wait between tries (30)")
    b.add_argument("--stop-after-failures", type=int,
                   help="start no more images once this many in a row failed after their retries: the backend, "
                        "workers or disk is down (10; 0: never)")
    a = p.add_argument_group("automatic mask generation (Meta's names and defaults)")
    amg_defaults = {f.name: f.default for f in dataclasses.fields(AmgConfig)}
    for name, typ in AMG_FLAGS:
        default = AMG_DEFAULT_TEXT.get(name, amg_defaults[name])
        a.add_argument(_flag(name), dest=name, type=typ, help=f"{AMG_HELP[name]} ({default})")
    # SAM 2.1's generator only (a SAM repository refuses them with one line).
    a.add_argument("--use-m2m", dest="use_m2m", action=argparse.BooleanOptionalAction, default=None,
                   help="SAM 2.1: refine each mask by re-prompting with it (Meta's use_m2m)")
    a.add_argument("--multimask-output", dest="multimask_output", action=argparse.BooleanOptionalAction, default=None,
                   help="SAM 2.1: three masks per prompt (default) or one")
    c = p.add_argument_group("ALPS")
    c.add_argument("--sigma", type=float, help="gate: drop masks covering more than sigma of the image (0.3)")
    c.add_argument("--l2-normalize", dest="l2_normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="scale each mask's 256-d feature to unit length before k-means, so that clusters follow "
                        "the direction of SAM's features, not their magnitude (on; the paper's masked mean is "
                        "--no-l2-normalize)")
    c.add_argument("--n-clusters", type=_n_clusters, help="number of pseudo classes, or 'auto' (16)")
    c.add_argument("--max-n-clusters", type=int, help="most classes 'auto' may find (64)")
    c.add_argument("--cluster-backend", choices=["auto", "sklearn", "cuml", "dask"],
                   help="k-means on: auto (cuML when a GPU and cuML are present, else scikit-learn), or the one named "
                        "(cuml needs RAPIDS cuML, dask needs dask-ml; auto)")
    c.add_argument("--centroids", type=a_path, help="centroids.npy of an earlier run: label with its classes")
    c.add_argument("--val-fraction", type=float,
                   help="share of the images put in val, as near as whole scenes allow (a scene's tiles and a "
                        "volume's slices stay together), in [0, 1) (0.3)")
    c.add_argument("--seed", type=int, help="seed of the train/val split and of k-means (0)")
    c.add_argument("--split-group", metavar="REGEX",
                   help="split together the inputs whose paths (relative to DATASET) share this pattern's first "
                        "match (its capture group, if it has one), e.g. 'sub-[^/]+' keeps each subject's sessions "
                        "in one split (default: a scene's tiles and a volume's slices stay together)")
    c.add_argument("--no-vis", dest="write_vis", action="store_false", default=None,
                   help="do not write the palette previews OUT/vis/")
    add_vector_argument(c, "default: none")
    c.add_argument("--no-report", dest="write_report", action="store_false", default=None,
                   help="do not write the cluster review page OUT/report/index.html")
    i = p.add_argument_group("inputs")
    i.add_argument("--bands", type=_bands, help="three 1-based bands of multispectral rasters, e.g. 4,3,2")
    i.add_argument("--tile", type=int, help="cut large images into tiles of this size (iSAID: 896)")
    i.add_argument("--overlap", type=int, help="tile overlap in pixels (default: 3/7 of --tile, iSAID's 384 for 896)")
    i.add_argument("--stitch", action="store_true", default=None, help="also write one label map per tiled scene")
    i.add_argument("--slice-axis", type=int, choices=[0, 1, 2], help="axis of NIfTI volumes cut into slices (2)")
    i.add_argument("--intensity-window", type=float, nargs=2, metavar=("LOW", "HIGH"),
                   help="stretch NIfTI volumes and 16-bit or float rasters between these values, in the data's own "
                        "units, for every input alike (CT: -1000 1000 Hounsfield units); values outside clip "
                        "(default: each volume's 0.5-99.5 %% percentiles, each image's 2-98 %%, which move with "
                        "metal or padding)")
    i.add_argument("--write-nifti-labels", action="store_true", default=None,
                   help="stack label slices of NIfTI inputs into label volumes")
    r = p.add_argument_group("run")
    r.add_argument("--concurrency", type=int, default=2, help="images in flight (default 2)")
    r.add_argument("--dask-address", help="run the per-image stage on this Dask scheduler (tcp://host:8786); "
                                          "also used by --cluster-backend dask")
    r.add_argument("--dask-workers", type=int, help="run the per-image stage on N local Dask worker processes")
    r.add_argument("--overwrite", action="store_true", help="relabel images labelled with another model/config")
    r.add_argument("--dry-run", action="store_true",
                   help="say what the run would do (images to label, skipped, labelled again, rejected, gone) and "
                        "exit: nothing written, no server started")
    r.add_argument("--allow-partial", action="store_true",
                   help="write the dataset even if some good images could not be labelled (listed as missing)")
    r.add_argument("--prefect-startup-timeout", type=_seconds, default=180.0, metavar="SECONDS",
                   help="how long to wait for the run's temporary Prefect API server (default 180; used when "
                        "PREFECT_API_URL is unset)")
    r.add_argument("--no-progress", dest="progress_bar", action="store_false",
                   help="no progress on the console (a bar on a terminal; elsewhere, a log file or CI, a line every "
                        "30 s)")


def _sub(cls: type, values: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names and v is not None})


def build_config(args: argparse.Namespace) -> PipelineConfig:
    """One PipelineConfig from parsed flags; unset flags keep the dataclass defaults.

    Raises:
        ValueError: If a flag is out of range, or ``--stitch`` / ``--overlap`` come without ``--tile`` (they would
            do nothing).
    """
    v = dict(vars(args))
    if v.get("tile") is None:
        for flag in ("stitch", "overlap"):
            if v.get(flag) is not None:  # unset flags are None (--stitch too); --overlap 0 is given
                raise ValueError(f"--{flag} applies to the tiles of --tile; add --tile (iSAID: --tile 896 --overlap "
                                 f"384), or leave --{flag} out")
    v["triton_urls"], urls_from = triton_urls(v)
    seed = v.get("seed")
    cluster = {**v, "n_clusters": v.get("n_clusters"), "backend": v.get("cluster_backend"), "seed": seed}
    try:
        return PipelineConfig(
            backend=_sub(BackendConfig, v),
            inputs=_sub(InputConfig, v),
            amg=_sub(AmgConfig, v),
            gate=_sub(GateConfig, v),
            features=_sub(FeatureConfig, v),
            cluster=_sub(ClusterConfig, cluster),
            writer=_sub(WriterConfig, {**v, "seed": seed}),
        )
    except ValueError as err:
        raise ValueError(in_flag_words(str(err)).replace("--triton-url", urls_from)) from None


# The Triton flags of `alps run` and `alps serve`: the parsed value's name -> the flag.
TRITON_FLAGS = {"triton_urls": "--triton-url", "protocol": "--protocol", "shared_memory": "--shared-memory"}


def triton_urls(values: dict[str, Any]) -> tuple[tuple[str, ...] | None, str]:
    """The Triton servers of a run, and what a message about them names (the flag or the variable).

    ``--triton-url``'s, else ``ALPS_TRITON_URL``'s for ``--backend triton`` (comma-separated, spaces and empty
    entries dropped). ``values``: the parsed flags (``vars(args)``: ``kind`` and :data:`TRITON_FLAGS`' names, None
    where not given).

    Raises:
        ValueError: If a Triton flag is given without ``--backend triton``: the run would go on the embedded
            backend, unsaid.
    """
    kind = values.get("kind")
    given = [flag for name, flag in TRITON_FLAGS.items() if values.get(name) is not None]
    if given and kind != "triton":
        one = len(given) == 1
        raise ValueError(f"{' and '.join(given)} appl{'ies' if one else 'y'} to --backend triton, which is not given "
                         "(the run would label with the embedded onnxruntime backend): add --backend triton, or "
                         f"leave {'it' if one else 'them'} out")
    if values.get("triton_urls") is not None:
        return tuple(values["triton_urls"]), "--triton-url"
    listed = [url.strip() for url in os.environ.get("ALPS_TRITON_URL", "").split(",") if url.strip()]
    if kind == "triton" and listed:
        return tuple(listed), "ALPS_TRITON_URL (the environment)"
    return None, "--triton-url"


def run_flags() -> dict[str, str]:
    """Each ``dest`` of `alps run`'s flags -> the flag that sets it (``triton_urls`` -> ``--triton-url``)."""
    return {a.dest: next((o for o in a.option_strings if o.startswith("--") and not o.startswith("--no-")),
                         a.option_strings[-1]) for a in command_parsers(make_parser())["run"]._actions
            if a.option_strings and a.dest != "help"}


def command_parsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser of each command of ``alps`` (``run``, ``evaluate``...), by name."""
    (commands,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices


def in_flag_words(message: str) -> str:
    """A configuration check's message in the words of `alps run`: ``seed must lie in ...`` names ``--seed``.

    The checks name the configuration's fields, as the Python API and the Prefect UI's parameters do; a field that
    a flag of `alps run` sets (its ``dest``) is named by that flag: the message's subject, any name with an
    underscore (``retry_delay_s``), and one that closes a range (``[0, tile)``). Python's words for a flag's
    values go: ``a tuple of 2 (a finite number, a finite number) or None`` is ``2 finite numbers``.
    """
    import re

    flags = run_flags()
    field, space, rest = message.partition(" ")
    rest = re.sub(r"\b[a-z][a-z0-9]*(?:_[a-z0-9]+)+\b|\b[a-z]+(?=[)\]])",
                  lambda m: flags.get(m.group(), m.group()), rest)
    rest = re.sub(r"a tuple of (\d+) \(a finite number(?:, a finite number)*\)", r"\1 finite numbers", rest)
    rest = rest.replace(" or None, got ", ", got ")
    return f"{flags.get(field, field)}{space}{rest}"


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
          f"{_empty_tiles(result.get('n_empty_tiles', 0))})")
    if s.get("report"):
        print(f"Review the clusters: {(Path(out).resolve() / 'report' / 'index.html').as_uri()}")
    print(f"Train on it with mmsegmentation: _base_ = [\"{Path(out).resolve() / 'mmseg_dataset.py'}\", ...]")
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


def check_utf8_arguments(args: argparse.Namespace) -> None:
    """Refuse an argument that is not UTF-8 text (a folder named in Latin-1), naming it and the way out.

    Prefect records a run's arguments as UTF-8 (JSON over HTTP): such a path made the run fail with a traceback
    before it started. Files with such names inside the dataset are labelled (docs/inputs.md).

    Raises:
        ValueError: For the first such argument.
    """
    from alps_client.io.items import printable

    for name, value in vars(args).items():
        for text in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(text, str) and printable(text) != text:
                what = "the dataset path" if name == "dataset" else run_flags()[name]
                raise ValueError(f"{what} {printable(text)} is not UTF-8 text, which Prefect needs to record the "
                                 "run; rename it, or give a link to it whose name is (ln -s OLD NEW)")


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
        args.model_repository = os.path.abspath(args.model_repository or BackendConfig.model_repository)
        if args.centroids:
            args.centroids = os.path.abspath(args.centroids)
        config = build_config(args)
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
        return _fail(describe(err) if isinstance(err, AlpsError) else str(err))
    import httpx

    from flows.prefect_api import PrefectApiError, prefect_api, said_url, server_disk_full

    # During the flow Prefect's own SIGTERM handler raises in the flow and marks the run crashed, then hands the
    # signal on to this one. SIGHUP (an SSH session that dropped) ended the process at once, leaving the run
    # "Running" on a user's own Prefect API for ever: it stops the run like SIGTERM.
    _stop_on_sigterm_and_sighup()
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
        code = _stop_code(err)
        if code is None and _stopped_after_the_write(args.out, started):  # the labelling needs no API: it went on
            print(f"alps: warning: the Prefect API {api} stopped answering ({describe(err)}) after the run wrote "
                  f"its dataset to {args.out}: the dataset is complete; the Prefect UI does not show the run's end",
                  file=sys.stderr)
            _exit_now(EXIT_OK)
        if code is None:
            full = "" if os.environ.get("PREFECT_API_URL") else server_disk_full(work_dir(args.out))
            _exit_now(_fail_resumable(f"the Prefect API {api} stopped answering ({describe(err)}){full}", args))
        _exit_now(_fail_resumable(f"{STOP_WORDS[code]} (the Prefect API {api} did not answer: {describe(err)})",
                                  args, code))
    except (KeyboardInterrupt, Terminated, Exception) as stop:
        if not isinstance(stop, (KeyboardInterrupt, Terminated)) and _signalled_code() is None:
            raise
        code = _signalled_code() or (EXIT_INTERRUPTED if isinstance(stop, KeyboardInterrupt) else stop.code)
        if _stopped_after_the_write(args.out, started):
            _exit_now(_fail(f"{STOP_WORDS[code]} after the run wrote its dataset to {args.out}: it is complete, "
                            "nothing to resume", code))
        _exit_now(_fail_resumable(STOP_WORDS[code], args, code))
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
        plan.n_changed) + [f"{plan.n_damaged} with a shard that cannot be read whole"] * bool(plan.n_damaged)
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
            config = PipelineConfig(backend=_sub(BackendConfig, {
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
    _exit_surely_on_sigterm()
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


# How long `alps serve` may take to exit after SIGTERM before it is ended at once.
SIGTERM_GRACE_S = 30.0


def _exit_surely_on_sigterm() -> None:
    """Make SIGTERM stop ``alps serve`` and its runs as Ctrl-C does, and surely.

    Prefect's runner handles SIGTERM with ``sys.exit(0)``; a signal that lands while a multiprocessing finaliser runs
    (the cleanup of a cancelled flow run's process) has that SystemExit ignored there, and serve went on serving:
    seen under load, `docker stop` or systemd would have had to kill it. The handler now stops serve and its runs'
    processes with SIGINT (what Ctrl-C sends them), and arms a timer that ends the process after
    :data:`SIGTERM_GRACE_S` if that exit did not happen, saying so, with :data:`EXIT_TERMINATED` (a graceful stop
    exits 0).
    """
    from prefect.runner.runner import Runner

    # Started with SIGINT ignored (a script's `alps serve &`, nohup), SIGINT stopped neither serve nor its runs'
    # processes (which inherit the ignoring): serve was ended by the timer, its run labelling on, holding OUT. Caught
    # here, SIGINT is back to its default in the processes serve starts as well (exec resets a caught signal).
    signal.signal(signal.SIGINT, signal.default_int_handler)

    def end_now() -> None:  # the graceful exit did not happen: say so, and do not exit 0 as a clean stop does
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(f"alps: error: serve did not stop within {SIGTERM_GRACE_S:g} s of SIGTERM: ended at "
                             "once; a run it held may be left Running (the next run into its OUT records it)\n")
            sys.stderr.flush()
        os._exit(EXIT_TERMINATED)

    def handle_sigterm(self: Runner, *args: Any, **kwargs: Any) -> None:
        timer = threading.Timer(SIGTERM_GRACE_S, end_now)
        timer.daemon = True  # a graceful exit is not held by it
        timer.start()
        # As Ctrl-C in a terminal, which reaches the runs' processes too. Prefect's own stop (sys.exit inside its
        # event loop) printed an asyncio traceback and left each run in flight Running, its process labelling on
        # after serve: now each run stops as `alps run` does (crashed, its images in flight cancelled, why logged).
        import psutil

        # Its runs' processes: the runner's own map of them was found empty under `.serve` (pinned prefect).
        for child in psutil.Process().children():
            with contextlib.suppress(psutil.NoSuchProcess):
                child.send_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)

    Runner.handle_sigterm = handle_sigterm  # type: ignore[method-assign]


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


def _open_closed_standard_fds() -> set[int]:
    """Open ``/dev/null`` on each of file descriptors 0, 1 and 2 that is closed (``alps run ... >&-``).

    Left closed, the first file the command opens takes its number: a library or a child process writing to
    "stdout" would write into that file (a log, a lock, a label map).

    Returns:
        the descriptors that were closed.
    """
    closed = set()
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            closed.add(fd)
    for fd in sorted(closed):
        devnull = os.open(os.devnull, os.O_RDWR)
        if devnull != fd:
            os.dup2(devnull, fd)
            os.close(devnull)
    return closed


def _to_devnull(stream: Any) -> None:
    """Point ``stream``'s file descriptor at ``/dev/null``: its reader has left."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, stream.fileno())
    os.close(devnull)


class ConsoleStream:
    r"""stdout or stderr, whose reader may leave mid-command or whose writes may fail.

    The write that found the pipe closed (``alps run ... 2>&1 | head``, quitting ``less``) raised BrokenPipeError in
    whichever part of the run logged: the run ended with exit 1 and no word, nothing labelled; one that found no
    space (``>/dev/full``) ended a finished run in a traceback. Now the stream goes to ``/dev/null`` from then on and
    the command carries on: its files are written, and it exits 141 or 74 (module docstring). A character the
    stream's encoding lacks (``PYTHONIOENCODING=ascii``, a legacy locale) is written escaped (``\xe9``), as the
    logs write it, never a UnicodeEncodeError after the work is done.
    """

    def __init__(self, stream: Any, closed_name: str | None = None) -> None:
        self._stream = stream
        self.left = False
        self.failure: str | None = None  # why a write failed (not a closed pipe), once one has
        self._closed_name = closed_name  # the stream was closed when the command started (``>&-``)
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")

    @classmethod
    def over_closed(cls, fd: int, name: str) -> ConsoleStream:
        """The stream of ``fd``, closed when the command started and now open on ``/dev/null``.

        The first write to it fails as one to ``/dev/full`` does: ``alps --version >&-`` said nothing and exited 0.
        """
        return cls(open(fd, "w", encoding="utf-8", errors="backslashreplace", closefd=False), closed_name=name)

    def write(self, text: str) -> int:
        """Write ``text``, or drop it once the reader has left or a write failed."""
        if self._closed_name and text:
            self.failure = self.failure or f"{self._closed_name} was closed"
        try:
            return self._stream.write(text)
        except OSError as err:
            self._gone(err)
            return len(text)

    def flush(self) -> None:
        """Flush, or drop what is held once the reader has left or a write failed."""
        try:
            self._stream.flush()
        except OSError as err:
            self._gone(err)

    def _gone(self, err: OSError) -> None:
        if isinstance(err, BrokenPipeError):
            self.left = True
        else:
            self.failure = self.failure or err.strerror or str(err)
        with contextlib.suppress(OSError):
            _to_devnull(self._stream)  # what the stream still holds is flushed there too

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _console_code(code: int, consoles: list[ConsoleStream]) -> int:
    """``code``, or 141 / 74 for a command that did its work but whose console output was lost."""
    if code != 0 or not consoles:
        return code
    failures = [console.failure for console in consoles if console.failure]
    if failures:
        if not consoles[-1].failure:  # stderr still works: say what was lost
            consoles[-1].write(f"alps: error: its console output could not be written ({failures[0]}); the "
                               "command itself went on to its end\n")
            consoles[-1].flush()
        return EXIT_OUTPUT_FAILED
    return EXIT_BROKEN_PIPE if any(console.left for console in consoles) else code


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
    closed = _open_closed_standard_fds()
    consoles = [ConsoleStream(stream) if stream is not None else ConsoleStream.over_closed(fd, name)
                for fd, name, stream in ((1, "stdout", streams[0]), (2, "stderr", streams[1]))
                if stream is not None or fd in closed]
    if len(consoles) < len(streams):  # a caller's stream set to None, its descriptor open: left as it is
        consoles = []
    if consoles:
        sys.stdout, sys.stderr = consoles  # type: ignore[assignment]
    # the commands' stop handlers (_stop_on_sigterm_and_sighup) last as long as the command, in a caller's process
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)} \
        if threading.current_thread() is threading.main_thread() else {}
    try:
        try:  # `alps --version | head -1`, `alps run --help >/dev/full`: said by _console_code
            args, unknown = parser.parse_known_args(argv)
        except SystemExit as done:  # --help, --version, a flag refused: argparse's exit, with its code
            for console in consoles:
                console.flush()
            raise SystemExit(_console_code(done.code if isinstance(done.code, int) else EXIT_USAGE, consoles)) \
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
            _stop_on_sigterm_and_sighup()
        from alps_client.io.readers import name_pil_warnings

        name_pil_warnings()  # every command that reads images: the run, --dry-run, report, relabel
        code = int(args.func(args))
        for console in consoles:
            console.flush()
        return _console_code(code, consoles)
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
