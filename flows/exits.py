"""How the ``alps`` commands end: their exit statuses, and the stop signals (Ctrl-C, SIGTERM, SIGHUP).

The statuses are listed in :mod:`flows.cli`'s docstring and docs/flow.md.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Any, NoReturn

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


def stop_on_sigterm_and_sighup() -> None:
    """SIGTERM and SIGHUP raise :class:`Terminated` in the main thread, as Ctrl-C raises KeyboardInterrupt."""
    _SIGNALLED.clear()
    if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
        signal.signal(signal.SIGTERM, _raise_terminated)
        if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # under nohup it stays ignored
            signal.signal(signal.SIGHUP, _raise_terminated)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # as Python's, and noted
            signal.signal(signal.SIGINT, _raise_interrupted)


def signalled_code() -> int | None:
    """130, 143 or 129 for the first stop signal this command received; None if none came."""
    return EXIT_OF_SIGNAL[_SIGNALLED[0]] if _SIGNALLED else None


STOP_WORDS = {EXIT_INTERRUPTED: "interrupted", EXIT_TERMINATED: "terminated (SIGTERM)",
              EXIT_HUNG_UP: "hung up (SIGHUP: its terminal closed)"}


def stop_code(err: BaseException | None) -> int | None:
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


def exit_now(code: int) -> NoReturn:
    """End the process without joining the threads of images still in flight.

    For a run that ended part way: a stalled backend call would otherwise hold the exit for as long as it hangs
    (and its retries after it). The run's API server is stopped by then and finished shards are on disk.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# How long `alps serve` may take to exit after SIGTERM before it is ended at once.
SIGTERM_GRACE_S = 30.0


def exit_surely_on_sigterm() -> None:
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

    def say_why() -> None:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(f"alps: error: serve did not stop within {SIGTERM_GRACE_S:g} s of SIGTERM: ended at "
                             "once; a run it held may be left Running (the next run into its OUT records it)\n")
            sys.stderr.flush()

    def end_now() -> None:  # the graceful exit did not happen: say so, and do not exit 0 as a clean stop does
        # Said from a thread of its own, waited for 1 s at most: a stderr whose reader stalled (a full pipe, a
        # paused terminal) would hold the write, and so the very exit this timer is for.
        saying = threading.Thread(target=say_why, daemon=True)
        saying.start()
        saying.join(1.0)
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
