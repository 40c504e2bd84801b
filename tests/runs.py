"""Helpers for tests that run `alps` in subprocesses: environment, errors, label maps, the processes of a run."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import REPO_ROOT

ALPS = [sys.executable, "-m", "flows.cli"]
CWD = str(REPO_ROOT)
SMALL = ["--points-per-side", "8", "--n-clusters", "4", "--no-progress"]
SERVER_APP = "prefect.server.api.server:create_app"
# The folder of the session's migrated Prefect database (set by tests/conftest.py's ``prefect_database_seed``).
PREFECT_DB_SEED_ENV = "ALPS_TEST_PREFECT_DB_SEED"


def _prefect_env(prefect_home: Path, **extra: str) -> dict[str, str]:
    """This environment without Prefect settings or a Triton URL: its own ``PREFECT_HOME``, no analytics."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "ALPS_TRITON_URL"}
    env.update(PREFECT_HOME=str(prefect_home), PREFECT_SERVER_ANALYTICS_ENABLED="false", **extra)
    return env


def _prefect_cli_env(prefect_home: Path) -> dict[str, str]:
    """:func:`_prefect_env` for Prefect's command line: this environment's ``prefect`` first on the path."""
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    return _prefect_env(prefect_home, PATH=path)


def seed_prefect_home(prefect_home: Path) -> None:
    """Give a new ``PREFECT_HOME`` a copy of the session's migrated Prefect database.

    A server started on an empty home first creates its SQLite database through Prefect's schema migrations
    (~14 s of CPU here, and most of a start-up); on a copy it starts as on a user's second run. The migrations
    run once per test session, by Prefect's own CLI (``prefect server database upgrade``), so the schema is the
    installed Prefect's.
    """
    seed_prefect_database(Path(prefect_home) / "prefect.db")


def seed_prefect_database(database: Path) -> None:
    """Copy the session's migrated Prefect database to ``database`` (a SQLite file), unless it exists; built on
    first use (see :func:`seed_prefect_home`)."""
    seed_dir = os.environ.get(PREFECT_DB_SEED_ENV)
    if not seed_dir or database.exists():
        return
    from filelock import FileLock

    seed = Path(seed_dir) / "prefect.db"
    seed.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{seed}.lock"):
        if not seed.is_file():  # built aside, then renamed: an interrupted build leaves no half database behind
            building = Path(seed_dir) / "building"
            shutil.rmtree(building, ignore_errors=True)
            subprocess.run(["prefect", "server", "database", "upgrade", "-y"], env=_prefect_cli_env(building),
                           check=True, capture_output=True, timeout=600)
            os.replace(building / "prefect.db", seed)
    database.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(seed, database)


def cli_env(prefect_home: Path, api_url: str | None = None, seed_database: bool = True,
            **extra: str) -> dict[str, str]:
    """Environment for `alps` subprocesses: their own Prefect home, no analytics, optional API server.

    Without ``api_url`` the run starts its own API server in ``prefect_home``: the home gets the session's migrated
    database (:func:`seed_prefect_home`) unless it has one or ``seed_database`` is False (a first run on a machine:
    the server creates its database itself).
    """
    # PYTHONFAULTHANDLER: a run that hangs is aborted by wait_for_exit, its threads' stacks written to its log.
    env = _prefect_env(prefect_home, PYTHONUNBUFFERED="1", PYTHONFAULTHANDLER="1", **extra)
    if api_url:
        env["PREFECT_API_URL"] = api_url
    elif seed_database:
        seed_prefect_home(prefect_home)
    return env


# Runs a command and ends it (SIGTERM) once the process ARGV[1] is gone: the session's server outlives the worker
# that started it, not the test session.
_END_WITH_OWNER = """
import os, subprocess, sys, time
owner, child = int(sys.argv[1]), subprocess.Popen(sys.argv[2:])
while child.poll() is None:
    try:
        os.kill(owner, 0)
    except ProcessLookupError:
        child.terminate()
        break
    time.sleep(1)
sys.exit(child.wait())
"""


def start_prefect_server(home: Path, owner_pid: int | None = None) -> tuple[subprocess.Popen, str]:
    """A real `prefect server start` on 127.0.0.1 and a free port, its own process group and ``PREFECT_HOME``;
    returns it once healthy, with its API URL. With ``owner_pid``, it also stops when that process is gone."""
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    seed_prefect_home(home)
    command = ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    if owner_pid is not None:
        command = [sys.executable, "-c", _END_WITH_OWNER, str(owner_pid), *command]
    proc = subprocess.Popen(command, env=_prefect_cli_env(home), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"

    def healthy() -> bool:
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(healthy, "the Prefect server to become healthy", timeout=180, proc=proc)
    except AssertionError:
        stop_prefect_server(proc)
        raise
    return proc, url


def stop_prefect_server(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Signal the server's whole process group (the CLI and its uvicorn child) and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    proc.wait(timeout=60)


SESSION_SERVER_RECORD = "prefect-server.json"


def session_prefect_server(folder: Path) -> str:
    """The URL of the test session's Prefect server, shared by all pytest-xdist workers: the first to ask starts
    it (under a file lock) and records it in ``folder``, the session's shared temporary folder. It ends with the
    session: :func:`stop_session_prefect_server` at its end, or when the session's first process is gone (killed)."""
    import json

    from filelock import FileLock

    record = folder / SESSION_SERVER_RECORD
    with FileLock(f"{record}.lock"):
        if not record.is_file():
            # A worker's parent is the session's first process (pytest-xdist's controller).
            owner = os.getppid() if os.environ.get("PYTEST_XDIST_WORKER") else os.getpid()
            proc, url = start_prefect_server(folder / "prefect-server-home", owner_pid=owner)
            record.write_text(json.dumps({"pid": proc.pid, "url": url}))
        return json.loads(record.read_text())["url"]


def stop_session_prefect_server(folder: Path) -> None:
    """Stop the server :func:`session_prefect_server` recorded in ``folder``, if any (its whole process group)."""
    import json

    record = folder / SESSION_SERVER_RECORD
    if not record.is_file():
        return
    pid = json.loads(record.read_text())["pid"]
    with contextlib.suppress(ProcessLookupError, psutil.NoSuchProcess):
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:  # NoSuchProcess once it is gone
            if time.monotonic() > deadline:
                os.killpg(pid, signal.SIGKILL)
                break
            time.sleep(0.1)
    record.unlink()


def run_alps(args: list, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    """`alps ARGS` to completion, output captured."""
    return subprocess.run([*ALPS, *map(str, args)], check=False, cwd=CWD, env=env, capture_output=True, text=True, timeout=timeout)


_STARTED: list[subprocess.Popen] = []


def start_alps(args: list, env: dict[str, str], log: Path, sigint_ignored: bool = False) -> subprocess.Popen:
    """`alps ARGS` in the background (its own session), output to ``log``; killed after the test if it is still
    running then (:func:`kill_leftover_runs`).

    ``sigint_ignored``: started with SIGINT ignored, as a shell script's ``cmd &`` and ``nohup`` start it (set in a
    Python that then execs `alps`, as a shell does: no ``preexec_fn`` in this threaded process).
    """
    command = [*ALPS, *map(str, args)]
    if sigint_ignored:
        ignoring = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); os.execv(sys.argv[1], sys.argv[1:])"
        command = [sys.executable, "-c", ignoring, *command]
    with log.open("w") as f:
        proc = subprocess.Popen(command, cwd=CWD, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    _STARTED.append(proc)
    return proc


def wait_for_exit(proc: subprocess.Popen, timeout: float, log: Path) -> int:
    """The exit status of a run started by :func:`start_alps`, within ``timeout`` seconds.

    A run still going then fails the test with every thread's Python stack (aborted with SIGABRT: Python's fault
    handler, on in :func:`cli_env`, writes them to its log): a run that sleeps through a stop is seen rarely, on
    a busy machine, and what it was waiting in is the one thing that tells why.
    """
    with contextlib.suppress(subprocess.TimeoutExpired):
        return proc.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError):  # it ended just after the time limit: still too late
        os.kill(proc.pid, signal.SIGABRT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)
    text = log.read_text(errors="replace")
    stacks = text.find("Fatal Python error")
    pytest.fail(f"the run (pid {proc.pid}) did not end within {timeout:g} s; its log ends (its threads' stacks "
                f"last):\n{text[max(0, stacks - 3000) if stacks >= 0 else -3000:]}")


def kill_leftover_runs() -> None:
    """Kill what :func:`start_alps` started and is still running (a test that failed before stopping its run,
    e.g. one held in the backend for 600 s): its whole process group; its API server dies with it."""
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)


def prefect_api(url: str):
    """A client for the Prefect REST API at ``url`` that behaves like Prefect's own: it retries 429/502/503 (the
    server answers 503 while its SQLite database is locked by another writer) and raises on any other error."""
    from prefect.client.base import PrefectHttpxSyncClient

    return PrefectHttpxSyncClient(base_url=url, timeout=30)


def flow_run_of(api, out: Path) -> dict:
    """The one flow run (REST form) whose ``out`` parameter is ``out``, through the client ``api``: the session's
    server holds every test's runs, so the newest are searched."""
    runs = api.post("/flow_runs/filter", json={"limit": 200, "sort": "EXPECTED_START_TIME_DESC"}).json()
    (run,) = [r for r in runs if r["parameters"].get("out") == str(out)]
    return run


def error_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("alps: error:")]


def labels(out: Path) -> dict[str, bytes]:
    """Every label map of a dataset, by path relative to ``ann_dir``."""
    return {p.relative_to(out / "ann_dir").as_posix(): p.read_bytes() for p in sorted((out / "ann_dir").glob("*/*.png"))}


def wait_until(condition: Callable[[], object], what: str, timeout: float = 300, proc: subprocess.Popen | None = None):
    """Poll ``condition`` until it is truthy (returned); fail after ``timeout`` s or if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run exited ({proc.returncode}) before {what}")
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def run_processes(prefect_home: Path) -> dict[str, list[psutil.Process]]:
    """Live processes started for runs with this ``PREFECT_HOME``: Prefect API servers and Dask workers."""
    found: dict[str, list[psutil.Process]] = {"servers": [], "workers": []}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            if (SERVER_APP not in cmd and "spawn_main" not in cmd) or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get("PREFECT_HOME") != str(prefect_home):
                continue
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        found["servers" if SERVER_APP in cmd else "workers"].append(proc)
    return found


def gone(procs: list[psutil.Process], timeout: float = 60) -> list[psutil.Process]:
    """Those of ``procs`` still alive after waiting up to ``timeout`` s for them to exit."""
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    return alive


@contextlib.contextmanager
def run_log(logger: str = "prefect.flow_runs") -> Iterator[list[str]]:
    """The messages the flow runs in this block log (Prefect's run logger; ``prefect.task_runs``: their tasks')."""
    logged: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: logged.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger(logger).addHandler(handler)
    try:
        yield logged
    finally:
        logging.getLogger(logger).removeHandler(handler)


# `python -c HOLD_LOCK OUT FLAG`: holds OUT's write lock as `alps run` would, FLAG touched once it does.
HOLD_LOCK = """
import sys, time
from pathlib import Path
from alps_client.io.out_lock import out_lock
with out_lock(sys.argv[1], "alps run"):
    Path(sys.argv[2]).touch()
    time.sleep(600)
"""
