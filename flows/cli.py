"""The ``alps`` command line: ``alps run``, ``alps evaluate``, ``alps serve``, ``alps report``, ``alps relabel``.

The entry point and the parser are here; each command is in its own module: `alps run` in :mod:`flows.run_cli` (its
flags and the configuration they make in :mod:`flows.run_arguments`), `alps evaluate` in :mod:`flows.evaluate_cli`,
`alps serve` in :mod:`flows.serve_cli`, `alps report` and `alps relabel` in :mod:`flows.review_cli`. The exit
statuses and stop signals are in :mod:`flows.exits`, the console that a reader may leave in :mod:`flows.console`.

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
import os
import signal
import sys
import threading
from typing import Any, NoReturn

from flows.console import ConsoleStream, console_code, fail, open_closed_standard_fds
from flows.evaluate_cli import add_evaluate_parser
from flows.exits import EXIT_INTERRUPTED, EXIT_USAGE, STOP_WORDS, Terminated, stop_on_sigterm_and_sighup
from flows.review_cli import add_relabel_parser, add_report_parser
from flows.run_arguments import add_run_arguments
from flows.run_cli import cmd_run
from flows.serve_cli import add_serve_parser


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
    add_evaluate_parser(sub)
    add_serve_parser(sub)
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
            return fail(f"alps needs file names read as UTF-8, and this Python reads them as "
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
            return fail(f"{words} while a new dataset was swapped into place: the swap was finished first, and the "
                        "folder holds that dataset whole (nothing to run again for it)", code)
        return fail(f"{words}; its writes are staged, so nothing half-written is used: run `alps {args.command}` "
                    "again to finish", code)
    finally:
        if consoles:
            sys.stdout, sys.stderr = streams
        for number, handler in handlers.items():
            if handler is not None:  # set outside Python: left as it is
                signal.signal(number, handler)


if __name__ == "__main__":
    sys.exit(main())
