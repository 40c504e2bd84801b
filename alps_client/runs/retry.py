"""The run's one retry layer: which failures are worth another try, how often, and how they are named.

A backend call never waits and retries by itself (the Triton backend fails over between servers within one
request, then raises). An image whose processing fails *transiently* is tried again here, whole, after
``BackendConfig.retry_delays()``; a *permanent* failure (a request the server rejected, a bug, a full disk)
is not retried: it fails the image at once. Transient means, by type: :class:`BackendUnavailableError` (or any
``AlpsError`` with ``transient = True``, such as :class:`BackendOutOfMemoryError` when onnxruntime or a server
could not allocate), ``ConnectionError``, ``TimeoutError``, ``MemoryError`` (other work in flight may free it),
a lost connection to the Dask scheduler, and a Dask future cancelled under the image (the scheduler lost, or
restarted by its user). A Dask worker that dies mid-image is handled by Dask itself (the image is rerun on
another worker); an image that took down several workers in turn (Dask's ``KilledWorker``) is permanent.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")

TRANSIENT_TYPES: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError, MemoryError)


def _dask_transient() -> dict[str, type[BaseException]]:
    """Dask's transient failures by name (none where Dask is not loaded: no Dask error can have been raised)."""
    if "distributed" not in sys.modules:
        return {}
    try:
        from distributed.client import FutureCancelledError
        from distributed.comm.core import CommClosedError
    except ImportError:
        return {}
    # FutureCancelledError: the run's own cancellations (a stopped run) are told apart by the caller, which
    # checks whether the labeller was closed before it retries.
    return {"connection lost": CommClosedError, "cancelled": FutureCancelledError}


def is_transient(err: BaseException) -> bool:
    """Whether trying the same image again later can succeed (see the module docstring)."""
    flag = getattr(err, "transient", None)
    if isinstance(flag, bool):
        return flag
    return isinstance(err, TRANSIENT_TYPES + tuple(_dask_transient().values()))


def describe(err: BaseException) -> str:
    r"""One line naming an error: its message's first line, with the type for unexpected errors; never empty.

    Examples:
        >>> describe(RuntimeError(""))
        'RuntimeError'
        >>> describe(ValueError("bad\nvalue"))
        'ValueError: bad'
    """
    from alps_client.errors import AlpsError

    cancelled = _dask_transient().get("cancelled")
    if cancelled is not None and isinstance(err, cancelled):  # its text leads with Dask's task key, new at each try
        return f"Dask cancelled it ({getattr(err, 'reason', 'unknown')})"
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    if not lines:
        return type(err).__name__
    return lines[0] if isinstance(err, AlpsError) else f"{type(err).__name__}: {lines[0]}"


def call_with_retries(fn: Callable[[], T], delays: Sequence[float],
                      on_retry: Callable[[int, float, BaseException], None] | None = None,
                      sleep: Callable[[float], None] = time.sleep) -> T:
    """``fn()``, tried again after each of ``delays`` (seconds) while it fails transiently.

    Args:
        fn: the work.
        delays: one wait per retry, e.g. ``BackendConfig.retry_delays()``.
        on_retry: called as ``on_retry(retry_number, delay, error)`` before each wait (for the log).
        sleep: how to wait (tests pass a recorder).

    Raises:
        Exception: The last error, once it is permanent or the retries are spent.
    """
    for retry, delay in enumerate(delays, start=1):
        try:
            return fn()
        except Exception as err:  # classified here: a permanent error propagates at once
            if not is_transient(err):
                raise
            if on_retry is not None:
                on_retry(retry, delay, err)
            sleep(delay)
    return fn()  # the last try: whatever it raises propagates


class FailureStreak:
    """Images that failed in a row (after their retries): a run stops starting images once there are too many.

    One image failing is that image's problem; ``limit`` of them in a row, with nothing labelled in between, means
    the machinery is down (a server, the workers) and every image left would fail the same way, each after
    waiting out its retries: about a minute per image with the defaults, days for a large dataset. Rejected
    inputs and finished images end a streak. A failure that says so itself (a full output disk) stops the run at
    once, whatever the limit.

    Examples:
        >>> streak = FailureStreak(2)
        >>> streak.record("failed", "server unavailable"); streak.tripped
        False
        >>> streak.record("failed", "server unavailable"); streak.tripped
        True
        >>> streak.reason()  # doctest: +ELLIPSIS
        'the run stopped starting images after 2 in a row failed (last: server unavailable): the backend, ...'
        >>> full = FailureStreak(10)
        >>> full.record("failed", "no space left on the disk while writing x.npz", ends_run=True); full.reason()
        'the run stopped starting images: no space left on the disk while writing x.npz'
        >>> full.record("failed", "worker lost"); full.reason()  # an image in flight failing after: still the disk
        'the run stopped starting images: no space left on the disk while writing x.npz'

    Once tripped it stays so, with the reason that tripped it: the images queued behind end as "not started" and
    one still in flight may end labelled, and neither says why the run stopped. The image threads record their
    own ends (one at a time), before a thread takes the next queued image: so that image sees the streak tripped.

        >>> streak.record("failed", "not started: the run stopped starting images"); streak.record("labelled")
        >>> streak.tripped, streak.reason()  # doctest: +ELLIPSIS
        (True, 'the run stopped starting images after 2 in a row failed (last: server unavailable): the backend, ...')
    """

    def __init__(self, limit: int) -> None:
        """``limit``: failures in a row that stop the run; 0 never stops it."""
        self.limit = limit
        self.count = 0
        self.last = ""
        self.ending = ""  # the reason of the failure that ended the run by itself, if one did
        self._lock = threading.Lock()

    def record(self, status: str, reason: str = "", ends_run: bool = False) -> None:
        """One more image ended with ``status`` (``failed`` extends the streak, anything else ends it).

        ``ends_run``: this failure stops the run by itself, for good (a full output disk).
        """
        with self._lock:
            self._record(status, reason, ends_run)

    def _record(self, status: str, reason: str, ends_run: bool) -> None:
        if self.tripped:  # latched; only a failure that stops the run for good (a full disk) still says so
            if ends_run and not self.ending:
                self.ending = reason
            return
        if status == "failed":
            self.count += 1
            self.last = reason
            if ends_run and not self.ending:
                self.ending = reason
        else:
            self.count = 0

    @property
    def tripped(self) -> bool:
        """Whether the run should start no more images."""
        return bool(self.ending) or 0 < self.limit <= self.count

    def reason(self) -> str:
        """One line for the log and the error: why no more images are started."""
        if self.ending:
            return f"the run stopped starting images: {self.ending}"
        return (f"the run stopped starting images after {self.limit} in a row failed (last: {self.last}): the "
                "backend, the workers or the disk looks down")
