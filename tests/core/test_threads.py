"""The run's image threads: a pool like ThreadPoolExecutor whose threads never keep their process alive."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import pytest

from alps_client.runs.threads import DaemonThreadPool
from tests.conftest import REPO_ROOT


def test_calls_run_on_at_most_max_workers_threads_and_report_results_and_errors():
    started: list[str] = []
    release = threading.Event()
    both_running = threading.Barrier(3)
    initialised: list[str] = []

    def held(tag: str) -> str:
        started.append(threading.current_thread().name)
        if tag in ("a", "b"):
            both_running.wait(timeout=60)
        release.wait(timeout=60)
        return tag

    pool = DaemonThreadPool(2, initializer=lambda: initialised.append(threading.current_thread().name))
    futures = [pool.submit(held, tag) for tag in "abc"]
    both_running.wait(timeout=60)  # a and b run at once: two threads
    assert len(started) == 2 and not futures[2].running()  # c waits for a free thread, no third is started
    release.set()
    assert [f.result(timeout=60) for f in futures] == ["a", "b", "c"]
    assert sorted(set(started)) == sorted(initialised) and len(initialised) == 2
    failing = pool.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failing.result(timeout=60)
    pool.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(held, "d")


def test_shutdown_cancels_the_calls_not_started_and_may_leave_without_waiting():
    release = threading.Event()
    running = threading.Event()

    def held() -> None:
        running.set()
        release.wait(timeout=60)

    pool = DaemonThreadPool(1)
    first, queued = pool.submit(held), pool.submit(held)
    running.wait(timeout=60)
    pool.shutdown(wait=False, cancel_futures=True)
    assert queued.cancelled() and first.running()
    release.set()
    first.result(timeout=60)


def test_a_process_ends_while_a_pool_thread_is_held():
    """ThreadPoolExecutor's threads are joined at exit: a run stopped under a stalled backend call (here, a wait
    that never ends) kept its process alive; a flow run cancelled in the Prefect UI lived on until killed."""
    script = textwrap.dedent("""
        import threading
        from alps_client.runs.threads import DaemonThreadPool

        pool = DaemonThreadPool(2)
        running = threading.Event()
        pool.submit(lambda: (running.set(), threading.Event().wait()))
        running.wait()
        pool.shutdown(wait=False, cancel_futures=True)
        print("held")
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0 and done.stdout == "held\n", done.stderr
