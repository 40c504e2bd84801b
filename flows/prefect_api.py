"""One Prefect API per run: the configured one, or one temporary local server that the run starts and stops.

Prefect's own temporary server gives up after 20 s (too short on a busy machine), and every process without an
API URL starts its own: on a busy 2-core machine a run died at start, and a Dask run started three servers. So:

- ``PREFECT_API_URL`` set (environment or Prefect profile): it is used; if it does not answer, the run stops at
  once with one line (exit 2).
- Otherwise the run starts **one** server (Prefect's own app, as its temporary server runs it: UI off, the
  services a run needs), waits for it as long as ``startup_timeout_s`` allows, points this process at it, and
  stops it at the end, also on failure. Per-image work on Dask workers never talks to Prefect
  (:mod:`alps_client.runs.dask_labeller`), so no worker needs an API.
- Nothing outlives the run: the server dies with the run's process even on ``kill -9`` (Linux
  ``PR_SET_PDEATHSIG``), and ``OUT/.alps/prefect-api.json`` names it, so the next run into ``OUT`` stops a server
  left by a killed run where that signal is not available. If the server dies mid-run, it is started again
  on the same port (the run's client retries meanwhile), so at most one runs at any time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from alps_client.errors import AlpsError
from alps_client.io.items import one_line
from alps_client.io.out_lock import busy, lock_exclusive

logger = logging.getLogger("alps_client.prefect_api")

RECORD_NAME = "prefect-api.json"
LOG_NAME = "prefect-api.log"
SERVER_APP = "prefect.server.api.server:create_app"
DEFAULT_STARTUP_TIMEOUT_S = 180.0
_UVICORN_STARTUP_FAILED = 3  # a port taken, or the app's own start-up (its database) failed


class PrefectApiError(AlpsError):
    """The run's Prefect API cannot be reached or started."""


def said_url(url: str) -> str:
    """``url`` as messages say it: a password in it (``http://user:secret@host/api``) as ``***``.

    Examples:
        >>> said_url("http://alice:s3cret@127.0.0.1:4200/api")
        'http://alice:***@127.0.0.1:4200/api'
        >>> said_url("http://127.0.0.1:4200/api")
        'http://127.0.0.1:4200/api'
    """
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{parts.netloc.rpartition('@')[2]}"))


def configured_api_url() -> str | None:
    """``PREFECT_API_URL`` from the environment or the active Prefect profile, or None."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def server_disk_full(work_dir: Path) -> str:
    """``'; ...'`` naming a full ``PREFECT_HOME`` when the run's own server logged that its database found no room.

    Its API then answers every write with a 500, which is all the run sees. ``''`` when the log says nothing so.
    """
    try:
        with (Path(work_dir) / LOG_NAME).open("rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - 256 * 1024))  # its last lines: this run's
            tail = log.read().decode(errors="replace")
    except OSError:
        return ""
    if "database or disk is full" not in tail and "No space left on device" not in tail:
        return ""
    from prefect.settings import get_current_settings

    return (f"; its server's log ({Path(work_dir) / LOG_NAME}) says its database or disk is full: free space in "
            f"PREFECT_HOME ({get_current_settings().home}), where Prefect keeps its database")


def check_reachable(url: str, timeout_s: float = 10.0, temporary_one: bool = True) -> None:
    """Any HTTP answer from ``url`` counts (auth or routes are Prefect's business); no answer raises.

    ``temporary_one``: the caller can do without that server (``alps run`` starts its own), which the message
    offers; ``alps serve`` cannot, so it is not offered there.

    Raises:
        PrefectApiError: If nothing answers at ``url``, or what answers has no Prefect API there (404 at its
            ``/health``: ``http://host:4200`` without the ``/api`` that Prefect serves it under).
    """
    import httpx

    base, said = url.rstrip("/"), said_url(url)  # a password in it stays out of messages and logs
    try:
        if httpx.get(f"{base}/health", timeout=timeout_s).status_code == 404:
            under_api = httpx.get(f"{base}/api/health", timeout=timeout_s).status_code == 200
            raise PrefectApiError(
                f"no Prefect API at {said} (PREFECT_API_URL): its /health is not found (404); "
                + (f"the API is under /api there: set PREFECT_API_URL={said.rstrip('/')}/api" if under_api else
                   "give the URL of a Prefect server's API, e.g. http://127.0.0.1:4200/api")
            )
    except httpx.HTTPError as err:
        other = (", or unset PREFECT_API_URL to let alps start a temporary one for the run" if temporary_one else
                 ", or set PREFECT_API_URL to the API of one that runs")
        raise PrefectApiError(
            f"the Prefect API at {said} (PREFECT_API_URL) is not reachable ({type(err).__name__}); start that "
            f"server (e.g. `make server`){other}"
        ) from err


def _free_port() -> int:
    """A free port on 127.0.0.1, where the run's own API server listens, once a connection to it was accepted.

    Raises:
        PrefectApiError: If 127.0.0.1 cannot be reached (the loopback interface is down: a network namespace or a
            container started without it): the server would listen where no client reaches it.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = int(s.getsockname()[1])
        try:
            socket.create_connection(("127.0.0.1", port), timeout=10).close()
        except OSError as err:
            raise PrefectApiError(
                f"this machine's loopback address 127.0.0.1, where the run's own Prefect API listens, cannot be "
                f"reached ({err.strerror or type(err).__name__}): bring the loopback interface up (`ip link set lo "
                "up`; a container or network namespace started without it), or start a Prefect server this machine "
                "reaches and set PREFECT_API_URL"
            ) from None
        return port


# Runs first in the server's process, then becomes the server (exec): the kernel sends it SIGKILL when the run's
# process dies, even by SIGKILL (Linux PR_SET_PDEATHSIG survives exec). Not SIGTERM: uvicorn holds that until its
# start-up ends, and a run killed while its server started left the server running ~12 s more. A run that ends
# normally stops its server with SIGTERM. Elsewhere, the next run stops it instead.
_DIE_WITH_PARENT = """
import ctypes, os, signal, sys
try:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
except (OSError, AttributeError):
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


def _alive_as_recorded(pid: int, create_time: float, needle: str) -> Any:
    """The ``psutil.Process`` of ``pid`` if it is still the recorded one, else None.

    The same start time and ``needle`` in its command line: a reused pid is never touched.
    """
    import psutil

    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - create_time) < 1.0 and needle in " ".join(proc.cmdline()):
            return proc
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        pass
    return None


def stop_stale_server(record_path: Path) -> None:
    """Stop the server a killed run left (named by ``record_path``) and forget it.

    Raises:
        PrefectApiError: If the run that started it is still running (two runs into one ``OUT``).
    """
    import psutil

    if not record_path.is_file():
        return
    try:
        record = json.loads(record_path.read_text())
    except (OSError, json.JSONDecodeError):
        record_path.unlink(missing_ok=True)
        return
    owner = _alive_as_recorded(record.get("owner_pid", -1), record.get("owner_create_time", 0.0), "")
    if owner is not None and owner.pid != os.getpid():
        # the words of OUT's lock, which this run would meet next
        out = record_path.parents[1]
        raise PrefectApiError(str(busy(out, f"alps run (pid {owner.pid})", ", or use another --out")))
    server = _alive_as_recorded(record.get("pid", -1), record.get("create_time", 0.0), SERVER_APP)
    if server is not None:
        logger.warning("stopping the temporary Prefect API server left by an earlier run (pid %d)", server.pid)
        server.terminate()
        try:
            server.wait(timeout=15)
        except psutil.TimeoutExpired:
            server.kill()
    record_path.unlink(missing_ok=True)


START_LOCK_NAME = ".alps-server-start.lock"


@contextlib.contextmanager
def one_start_at_a_time(wait_s: float) -> Iterator[None]:
    """Hold ``PREFECT_HOME``'s start lock for the block: one temporary API server of that home starts at a time.

    Each server sets up (migrates) the home's database as it starts: three runs started at once on a new
    ``PREFECT_HOME`` (a shared workstation's first day, a fresh container) raced in the migration, and one or two
    ended in exit 2 and an alembic or sqlite error ("index ix_flow__created already exists"). The others wait for
    the lock ``wait_s`` at most, then start anyway; a home that is not there or cannot be written takes no lock (the
    server's own start says why).
    """
    from prefect.settings import get_current_settings

    home = Path(get_current_settings().home).expanduser()
    try:  # Prefect made the home as its settings loaded, or said why it could not: the server's start says it too
        fd = os.open(home / START_LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield
        return
    try:
        # held past wait_s, a file system without locks, or no flock at all: start all the same
        with contextlib.suppress(OSError, ImportError):
            lock_exclusive(fd, wait_s)
        yield
    finally:
        os.close(fd)  # releases the lock


class LocalApiServer:
    """The run's temporary Prefect API server (see the module docstring).

    Args:
        work_dir: ``OUT/.alps``: the pid record and the server's log go there.
        startup_timeout_s: how long to wait for the server to answer, at start and after a restart.
    """

    def __init__(self, work_dir: Path, startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S) -> None:
        self.work_dir = Path(work_dir)
        self.startup_timeout_s = startup_timeout_s
        self.record_path = self.work_dir / RECORD_NAME
        self.log_path = self.work_dir / LOG_NAME
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._log_start = 0  # where the log of the server's latest start begins
        self._recorded = False  # the record in work_dir is this run's (a run refused for another's OUT has none)
        self._stopping = threading.Event()
        self._watchdog: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The API URL (``http://127.0.0.1:PORT/api``)."""
        return f"http://127.0.0.1:{self.port}/api"

    def _command(self) -> list[str]:
        return [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), "-m", "uvicorn", "--factory", SERVER_APP,
                "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "error", "--lifespan", "on"]

    def _environment(self) -> dict[str, str]:
        from prefect.settings import get_current_settings

        env = {**os.environ, **get_current_settings().to_environment_variables(exclude_unset=True)}
        env.pop("PREFECT_API_URL", None)
        # As Prefect's temporary server: no UI, only the services a run needs. No block types registered either:
        # a run uses none, and registering them is ~1.7 s of CPU at every start in a new PREFECT_HOME (a container,
        # a CI job), a quarter of the server's start.
        env.update(PREFECT_UI_ENABLED="0", PREFECT__SERVER_EPHEMERAL="1", PREFECT__SERVER_FINAL="1",
                   PREFECT_API_BLOCKS_REGISTER_ON_START="false")
        # A server of the run's own sends Prefect no telemetry (offline, it logged an error at every start), unless
        # the user asked for it.
        env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        return env

    def _spawn(self) -> None:
        with self.log_path.open("ab") as log:
            self._log_start = log.tell()
            self.process = subprocess.Popen(self._command(), env=self._environment(), stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def _wait_ready(self) -> bool:
        """Poll the health endpoint until it answers (True), or the port turned out taken (False).

        Raises:
            PrefectApiError: If the server exits or does not answer within ``startup_timeout_s``.
        """
        import httpx

        deadline = time.monotonic() + self.startup_timeout_s
        # One client for every poll: each new one loads the CA bundle (~30 ms of CPU, ~0.5 s over a start).
        with httpx.Client(timeout=5) as client:
            while time.monotonic() < deadline:
                code = self.process.poll() if self.process else 1
                if code == _UVICORN_STARTUP_FAILED and self._port_was_taken():
                    return False
                if code is not None:
                    raise PrefectApiError(f"the temporary Prefect API server exited with code {code} while "
                                          f"starting{self._failure()}; its log is {self.log_path}")
                try:
                    if client.get(f"{self.url}/health").status_code == 200:
                        return True
                except httpx.HTTPError:
                    pass  # not listening yet
                time.sleep(0.25)
        self._terminate()
        raise PrefectApiError(
            f"the temporary Prefect API server did not answer within {self.startup_timeout_s:.0f} s (a busy "
            "machine?); raise --prefect-startup-timeout, or start a server (`make server`) and set "
            f"PREFECT_API_URL (server log: {self.log_path})"
        )

    def _start_log(self) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_start)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def _port_was_taken(self) -> bool:
        """Whether the latest start failed on its port (uvicorn exits 3 for that and for any start-up failure)."""
        return "address already in use" in self._start_log().lower()

    def _failure(self) -> str:
        """``': <the error it logged>'`` for a server that failed to start, or ``''``.

        E.g. its database could not be opened: a PREFECT_HOME that cannot be created.
        """
        errors = [line.strip() for line in self._start_log().splitlines()
                  if re.match(r"[\w.]+(Error|Exception): ", line.strip())]
        if not errors:
            return ""
        if "unable to open database file" not in errors[-1]:
            return f": {one_line(errors[-1])}"
        from prefect.settings import get_current_settings

        return (f": {one_line(errors[-1])} (its database goes in PREFECT_HOME, {get_current_settings().home}: a "
                "folder this user can create and write)")

    def _write_record(self) -> None:
        import psutil

        from alps_client.io.atomic import write_json

        proc = self.process
        if proc is None:
            return
        self._recorded = True
        write_json(self.record_path, {
            "pid": proc.pid, "create_time": psutil.Process(proc.pid).create_time(), "url": self.url,
            "owner_pid": os.getpid(), "owner_create_time": psutil.Process().create_time(),
        })

    def start(self) -> None:
        """Start the server (after stopping one a killed run left) and wait until it answers.

        Raises:
            PrefectApiError: If it cannot be started in time, another run owns ``OUT``, or ``OUT``'s disk has no
                room for its log and record (the run would find none for its images either).
        """
        from alps_client.errors import OutputDiskFullError, disk_full
        from alps_client.io.atomic import disk_full_error

        try:
            self._start()
        except (OutputDiskFullError, OSError) as err:
            if isinstance(err, OSError) and not disk_full(err):
                raise
            self._terminate()
            full = err if isinstance(err, OutputDiskFullError) else disk_full_error(err.filename or self.log_path, err)
            raise PrefectApiError(str(full)) from err

    def _start(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        stop_stale_server(self.record_path)
        with one_start_at_a_time(self.startup_timeout_s):
            for _ in range(3):  # the free port was taken between choosing and binding it: choose again
                self.port = _free_port()
                self._spawn()
                if self._wait_ready():
                    break
            else:
                raise PrefectApiError("could not find a free local port for the temporary Prefect API server")
        self._write_record()
        self._watchdog = threading.Thread(target=self._watch, name="alps-prefect-api-watchdog", daemon=True)
        self._watchdog.start()

    def _watch(self) -> None:
        """Start the server again on the same port if it dies mid-run (the run's client retries meanwhile)."""
        while not self._stopping.wait(1.0):
            code = self.process.poll() if self.process else None
            if code is None or self._stopping.is_set():
                continue
            logger.warning("the temporary Prefect API server stopped (exit code %s) during the run; starting it "
                           "again on port %d", code, self.port)
            try:
                self._spawn()
                if self._wait_ready():
                    self._write_record()
                    continue
                logger.error("port %d was taken meanwhile: the run cannot reach its Prefect API any more", self.port)
            except PrefectApiError as err:
                logger.error("%s", err)
            return

    def _terminate(self) -> None:
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def stop(self) -> None:
        """Stop the server and forget its record (idempotent)."""
        self._stopping.set()
        if self._watchdog is not None and self._watchdog is not threading.current_thread():
            self._watchdog.join()
        self._terminate()
        if self._recorded:
            self.record_path.unlink(missing_ok=True)


# Tags a run puts on its flow run once it holds OUT's lock: which OUT (on which machine), and which process.
OUT_TAG_PREFIX = "alps-out:"
PROCESS_TAG_PREFIX = "alps-process:"


def out_tag(out: str | Path) -> str:
    """The tag of the flow runs that write ``out`` on this machine (a digest of both: tags are short)."""
    key = f"{socket.gethostname()}\0{os.path.abspath(out)}"
    return OUT_TAG_PREFIX + hashlib.sha256(key.encode()).hexdigest()[:16]


def _process_space() -> str:
    """Where this process's pids mean something: the host, its boot, its pid namespace (a container's own)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:  # not Linux: the host alone
        boot, namespace = "", 0
    return f"{socket.gethostname()}/{boot}/{namespace}"


def _process_tag() -> str:
    import psutil

    me = psutil.Process()
    return f"{PROCESS_TAG_PREFIX}{_process_space()}:{me.pid}:{me.create_time():.3f}"


def _process_gone(tags: list[str]) -> str | None:
    """``host pid N`` of the process a flow run's tags name if it is gone, else None.

    None too where the tags name none (or cannot be read), or a process of another machine, boot or pid namespace
    (not to be looked at from here), or one that cannot be looked at (another user's): never taken for gone.
    """
    import psutil

    for tag in tags:
        if not tag.startswith(PROCESS_TAG_PREFIX):
            continue
        try:
            space, pid_text, time_text = tag.removeprefix(PROCESS_TAG_PREFIX).rsplit(":", 2)
            pid, create_time = int(pid_text), float(time_text)
        except ValueError:
            return None
        if space != _process_space():
            return None
        try:
            if abs(psutil.Process(pid).create_time() - create_time) < 1.0:
                return None  # alive: a run finishing after it let OUT's lock go
        except psutil.AccessDenied:
            return None
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            pass
        return f"{space.split('/')[0]} pid {pid}"
    return None


def record_runs_left_running(out: str | Path, recorded: Callable[[str], None]) -> None:
    """Tag this flow run as writing ``out``, and record as Crashed the earlier ones whose process is gone.

    A run killed outright (``kill -9``, the out-of-memory killer, a machine that went down) cannot record its end:
    its flow run stayed *Running* (a Cancel then *Cancelling*) for ever on an API that outlives it. Called with
    OUT's lock held: no other run writes ``out`` now, and a tagged run whose process is gone (the same pid started
    at the same time) ended without a word. A run of another machine is left as it is. ``recorded`` is told the
    name of each run recorded Crashed, as it is.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.context import FlowRunContext
    from prefect.states import Crashed

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return
    own, tag = context.flow_run, out_tag(out)
    with get_client(sync_client=True) as client:
        # a flow run run again (a retry from the UI) keeps one pair of tags: this process's
        tags = [t for t in client.read_flow_run(own.id).tags if not t.startswith((OUT_TAG_PREFIX, PROCESS_TAG_PREFIX))]
        client.update_flow_run(own.id, tags=[*tags, tag, _process_tag()])
        left = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            tags=FlowRunFilterTags(all_=[tag]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.CANCELLING]))))
        for run in left:
            process = None if run.id == own.id else _process_gone(run.tags)
            if process is None:
                continue
            client.set_flow_run_state(run.id, Crashed(message=(
                f"its process ({process}) ended without recording its end (kill -9, the out-of-memory killer, a "
                f"machine that went down); the run {own.name} into the same OUT found it so and labels on from its "
                "finished images")), force=True)
            recorded(run.name)


# How long the run's end waits for its queued logs and events to reach a user's API (PREFECT_API_URL).
USERS_API_DRAIN_S = 10.0


def drain_prefect_workers(timeout_s: float = 30.0) -> None:
    """Send the run's queued logs and events before the server goes (else they fail after it has)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(RuntimeError):  # never started in this process
            worker.drain_all(timeout=timeout_s)


@contextlib.contextmanager
def prefect_api(work_dir: Path, startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S) -> Iterator[str]:
    """The run's Prefect API: the configured one (checked), or a temporary server stopped on exit.

    Yields:
        The API URL this process uses inside the block.

    Raises:
        PrefectApiError: If the configured API does not answer, or no temporary server could be started.
    """
    url = configured_api_url()
    if url:
        import httpx

        check_reachable(url)
        answering = True
        try:
            yield url
        except httpx.HTTPError:
            answering = False  # the server stopped answering mid-run: what is queued would wait for it, then fail
            raise
        finally:
            # A stopped run ends its process with os._exit (flows/exits.py), which sends nothing queued: the end of the
            # task runs it cancelled, its crash and the lines saying why never reached the user's server. Bounded:
            # a server that dies meanwhile does not hold the exit.
            if answering:
                drain_prefect_workers(USERS_API_DRAIN_S)
        return
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

    server = LocalApiServer(work_dir, startup_timeout_s)
    try:
        server.start()
        # No UI URL: the server serves no UI, and is gone with the run, so Prefect's "View at ..." led nowhere.
        with temporary_settings(updates={PREFECT_API_URL: server.url, PREFECT_UI_URL: ""}):
            try:
                yield server.url
            finally:
                drain_prefect_workers()
    finally:
        server.stop()
