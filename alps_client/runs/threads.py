"""A thread pool whose threads never hold up the end of their process, and a wait that looks for stop signals.

``concurrent.futures.ThreadPoolExecutor`` joins its threads when the interpreter exits, and so does Python for any
non-daemon thread. A stopped run drops the images in flight, but one of them can sit in a backend call for minutes
(a stalled Triton request, a CPU decoder): the ``alps`` command leaves with ``os._exit``, a flow run that Prefect
started (``alps serve``, a worker) cannot, and its process outlived its cancellation until Prefect's runner killed
it 30 s later. These threads are daemons: the process ends when its main thread does.
"""

from __future__ import annotations

import ctypes
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

T = TypeVar("T")

# The longest a thread waiting for finished work sleeps before it looks for a stop signal, seconds. Python runs a
# signal's handler (Ctrl-C's KeyboardInterrupt, SIGTERM's) in the main thread between two steps of its code: a
# signal caught just before that thread went to sleep in a wait (switched out right there, likeliest on a busy
# machine) was handled only when the wait ended, which for an image held by a stalled server is never.
SIGNAL_CHECK_S = 0.5


def get_interruptibly(items: queue.SimpleQueue[T]) -> T:
    """``items.get()``, waking every ``SIGNAL_CHECK_S`` so that the main thread never sleeps through a stop."""
    while True:
        try:
            return items.get(timeout=SIGNAL_CHECK_S)
        except queue.Empty:
            _run_caught_signal_handlers()


def _run_caught_signal_handlers() -> None:
    """Run the Python handlers of the signals caught so far, raising what they raise (main thread only).

    A signal the kernel hands to another thread is caught there, and CPython (3.11) then does not always tell the
    main thread's interpreter loop to look: its handler waited for an unrelated event. ``PyErr_CheckSignals``
    looks regardless (ctypes raises the exception it leaves set).
    """
    if threading.current_thread() is threading.main_thread():
        ctypes.pythonapi.PyErr_CheckSignals()


class DaemonThreadPool(Executor):
    """Up to ``max_workers`` daemon threads, started as work arrives, running submitted calls in order.

    Args:
        max_workers: threads at most (>= 1).
        initializer: called first in each thread (as ``ThreadPoolExecutor``'s).
    """

    def __init__(self, max_workers: int, initializer: Callable[[], object] | None = None) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        self._max_workers = max_workers
        self._initializer = initializer
        self._work: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple, dict] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()
        self._shut_down = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Run ``fn(*args, **kwargs)`` on a thread of the pool; its future."""
        future: Future[Any] = Future()
        with self._lock:
            if self._shut_down:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._work.put((future, fn, args, kwargs))
            if self._idle:
                self._idle -= 1
            elif len(self._threads) < self._max_workers:
                thread = threading.Thread(target=self._serve, name=f"alps-image-{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()
        return future

    def _serve(self) -> None:
        if self._initializer is not None:
            self._initializer()
        while (job := self._work.get()) is not None:
            future, fn, args, kwargs = job
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args, **kwargs)
                except BaseException as err:  # noqa: BLE001 (the caller's to see, as ThreadPoolExecutor does)
                    future.set_exception(err)
                else:
                    future.set_result(result)
            with self._lock:
                self._idle += 1

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Start no more calls; ``cancel_futures`` cancels those not started; ``wait`` waits for those running."""
        with self._lock:
            self._shut_down = True
            if cancel_futures:
                while True:
                    try:
                        job = self._work.get_nowait()
                    except queue.Empty:
                        break
                    if job is not None:
                        job[0].cancel()
            for _ in self._threads:
                self._work.put(None)
        if wait:
            for thread in self._threads:
                thread.join()
