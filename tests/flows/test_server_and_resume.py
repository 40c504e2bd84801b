"""A real Prefect server end to end; the run's own temporary API (one per run, none left behind); kill and resume."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from flows.prefect_api import PrefectApiError, stop_stale_server
from tests.runs import (
    CWD,
    SERVER_APP,
    SMALL,
    cli_env,
    error_lines,
    flow_run_of,
    gone,
    labels,
    prefect_api,
    run_alps,
    run_processes,
    start_prefect_server,
    stop_prefect_server,
    wait_for_exit,
    wait_until,
)
from tests.stops import assert_resumes, assert_stop_recorded, finished_stems, start_held_run


def test_flow_run_against_a_real_prefect_server(prefect_server, stand_in_repo, tmp_path):
    """The structured stand-in exported to ONNX, the embedded backend, a real `prefect server start`."""
    from alps_client.synthetic import write_synthetic_dataset

    images = write_synthetic_dataset(tmp_path / "data", 3, seed=3, size=(96, 128)) / "images"
    (images / "broken.png").write_bytes(b"")
    out = tmp_path / "out"
    result = run_alps(["run", images, "--out", out, "--model-repository", stand_in_repo, *SMALL, "--num-threads", "1"],
                      cli_env(tmp_path / "client_home", prefect_server))
    assert result.returncode == 0, result.stderr[-3000:]
    # where the model ran, said at the start of every embedded run (a GPU that could not start falls back to the CPU)
    assert "Model runs on onnxruntime's CPUExecutionProvider in this process" in result.stdout + result.stderr
    with prefect_api(prefect_server) as api:
        run = flow_run_of(api, out)
        assert run["state_type"] == "COMPLETED"

        def artifacts():
            arts = api.post("/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run["id"]]}}}).json()
            return arts if {"alps-summary", "alps-class-histogram", "alps-errors"} <= {a["key"] for a in arts} else None

        arts = wait_until(artifacts, "the run's artifacts (recorded asynchronously)", timeout=120)
    assert {"alps-summary", "alps-class-histogram", "alps-previews", "alps-errors"} <= {a["key"] for a in arts}
    errors = next(a for a in arts if a["key"] == "alps-errors")
    assert "zero-byte file" in json.dumps(errors["data"])


def test_a_killed_run_leaves_no_server_and_the_next_run_resumes(fault_data, fake_repo, fault_reference, prefect_server,
                                                                tmp_path):
    """No PREFECT_API_URL: the run starts its own API server; `kill -9` of the run takes the server with it."""
    home = tmp_path / "ph"
    proc, out, _ = start_held_run(fault_data, tmp_path, cli_env(home))
    servers = run_processes(home)["servers"]
    assert len(servers) == 1  # exactly one Prefect API for the run
    with contextlib.closing(sqlite3.connect(home / "prefect.db")) as db:  # it registered no block type (a run
        assert db.execute("SELECT count(*) FROM block_type").fetchone() == (0,)  # uses none): a faster start
    os.kill(proc.pid, signal.SIGKILL)  # the run only, not its process group
    proc.wait()
    finished = finished_stems(out)
    assert len(finished) == 2  # killed mid-run: 2 of 7 done, before and after the kill
    assert not gone(servers) and not run_processes(home)["servers"]  # the server died with its run

    # The rerun on the session's server (cheaper), over the killed run's record of its own server (the next run
    # cleaning up that server is tested below).
    assert_resumes(fault_data, fake_repo, fault_reference, out, cli_env(home, prefect_server), finished)
    assert not run_processes(home)["servers"]


def test_a_run_killed_outright_on_a_users_api_is_recorded_crashed_by_the_next_run_into_its_out(
        fault_data, fake_repo, fault_reference, prefect_server, tmp_path):
    """`kill -9` (or the out-of-memory killer) of a run reporting to the user's own API left its flow run *Running*
    for ever: no one was left to record its end, and the docs said to delete it by hand. The next run into the same
    OUT holds OUT's lock, so the killed run's process is gone: it records that run Crashed, saying why, and labels
    on. A run of another OUT is left as it is."""
    env = cli_env(tmp_path / "ph", prefect_server)
    other = tmp_path / "other"
    other.mkdir()
    proc, out, _ = start_held_run(fault_data, other, env)  # held for ever: another OUT's run, alive
    try:
        killed_proc, killed_out, _ = start_held_run(fault_data, tmp_path, env)
        os.kill(killed_proc.pid, signal.SIGKILL)
        killed_proc.wait()
        finished = finished_stems(killed_out)
        with prefect_api(prefect_server) as api:
            killed = flow_run_of(api, killed_out)
            assert killed["state_type"] == "RUNNING"  # as Prefect left it
        assert_resumes(fault_data, fake_repo, fault_reference, killed_out, env, finished)
        with prefect_api(prefect_server) as api:
            runs = api.post("/flow_runs/filter", json={"limit": 200, "sort": "EXPECTED_START_TIME_DESC"}).json()
            of_out = {r["id"]: r for r in runs if r["parameters"].get("out") == str(killed_out)}
            (resumed,) = [r for r in of_out.values() if r["id"] != killed["id"]]
            assert resumed["state_type"] == "COMPLETED"
            state = of_out[killed["id"]]["state"]
            assert state["type"] == "CRASHED" and f"the run {resumed['name']} into the same OUT" in state["message"], state
            assert flow_run_of(api, out)["state_type"] == "RUNNING"  # another OUT's, alive: untouched
            logs = api.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": [resumed["id"]]}}}).json()
            assert any(f"flow run {killed['name']} of {killed_out} was left Running" in entry["message"]
                       for entry in logs), [entry["message"] for entry in logs]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_only_a_process_known_gone_makes_a_run_left_running(monkeypatch):
    """What ``record_runs_left_running`` judges by (review): a process that cannot be looked at (another user's),
    or lives in another pid namespace, boot or machine, is never taken for gone; nor is a tag it cannot read."""
    from flows import prefect_api as api

    own = api._process_tag()
    assert api._process_gone([own]) is None  # alive
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    started = psutil.Process(ended.pid).create_time()
    ended.wait()
    space = own.removeprefix(api.PROCESS_TAG_PREFIX).rsplit(":", 2)[0]
    dead = f"{api.PROCESS_TAG_PREFIX}{space}:{ended.pid}:{started:.3f}"
    assert api._process_gone(["alps", dead]) == f"{space.split('/')[0]} pid {ended.pid}"
    elsewhere = f"{api.PROCESS_TAG_PREFIX}another-host/{space.split('/', 1)[1]}:{ended.pid}:{started:.3f}"
    assert api._process_gone([elsewhere]) is None
    assert api._process_gone([f"{api.PROCESS_TAG_PREFIX}garbled"]) is None

    def denied(pid):
        raise psutil.AccessDenied(pid)

    monkeypatch.setattr(psutil, "Process", denied)
    assert api._process_gone([dead]) is None


def test_the_run_restarts_its_api_server_if_it_dies(fault_data, fault_reference, tmp_path):
    home = tmp_path / "ph"
    proc, out, faults = start_held_run(fault_data, tmp_path, cli_env(home))
    record = out / ".alps" / "prefect-api.json"
    first = json.loads(record.read_text())
    os.kill(first["pid"], signal.SIGKILL)
    restarted = wait_until(lambda: record.is_file() and json.loads(record.read_text())["pid"] != first["pid"],
                           "the API server to be started again", proc=proc)
    assert restarted and len(run_processes(home)["servers"]) == 1
    (faults / "release").touch()
    assert wait_for_exit(proc, 600, tmp_path / "run.log") == 0, (tmp_path / "run.log").read_text()[-3000:]
    assert "starting it again" in (tmp_path / "run.log").read_text()
    # Prefect's "View at http://127.0.0.1:PORT/runs/..." named the UI of a server that serves none and ends with
    # the run: a dead link at every run.
    assert "View at" not in (tmp_path / "run.log").read_text()
    assert labels(out) == labels(fault_reference)
    assert not run_processes(home)["servers"]


def test_a_server_left_by_a_killed_run_is_stopped_by_the_next_one(tmp_path):
    """Where the kernel cannot stop it (no PR_SET_PDEATHSIG), the record in OUT/.alps names it for the next run."""
    work = tmp_path / "out" / ".alps"
    work.mkdir(parents=True)
    leftover = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", SERVER_APP])
    owner = subprocess.Popen([sys.executable, "-c", "pass"])
    owner.wait()
    try:
        record = {"pid": leftover.pid, "create_time": psutil.Process(leftover.pid).create_time(),
                  "owner_pid": owner.pid, "owner_create_time": 0.0}
        (work / "prefect-api.json").write_text(json.dumps(record))
        stop_stale_server(work / "prefect-api.json")
        leftover.wait(timeout=30)  # raises TimeoutExpired if it was left running
        assert not (work / "prefect-api.json").exists()
    finally:
        leftover.kill()


def test_two_runs_into_one_output_folder_are_refused(tmp_path, monkeypatch):
    """Also: the refused run leaves the other run's record (its stop on the way out deleted it, so a third run
    was not refused at once but started a server and a flow run; found by a helper's chaos audit)."""
    import flows.prefect_api as api_module

    work = tmp_path / "out" / ".alps"
    work.mkdir(parents=True)
    me = psutil.Process()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        (work / "prefect-api.json").write_text(json.dumps({
            "pid": me.pid, "create_time": me.create_time(),  # not a server: never stopped
            "owner_pid": other.pid, "owner_create_time": psutil.Process(other.pid).create_time()}))
        record = (work / "prefect-api.json").read_bytes()
        busy = re.escape(f"{tmp_path / 'out'} is being written by alps run (pid {other.pid}); wait for it to "
                         "finish, or use another --out")  # as OUT's lock says it (docs/flow.md)
        with pytest.raises(PrefectApiError, match=f"^{busy}$"):
            stop_stale_server(work / "prefect-api.json")
        monkeypatch.setattr(api_module, "configured_api_url", lambda: None)  # the run would start its own server
        with pytest.raises(PrefectApiError, match=f"^{busy}$"), \
                api_module.prefect_api(work):
            pass
        assert (work / "prefect-api.json").read_bytes() == record
    finally:
        other.kill()


# A stand-in for the API server: it ignores SIGTERM, as uvicorn holds it until its start-up ends.
_HOLDS_SIGTERM = """
import os, subprocess, sys, time
from flows.prefect_api import _DIE_WITH_PARENT
server = subprocess.Popen([sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), "-c",
                           "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                           "print('ready', flush=True); time.sleep(600)"], stdout=subprocess.PIPE, text=True)
assert server.stdout.readline().strip() == "ready"
print(server.pid, flush=True)
time.sleep(600)
"""


def test_the_api_server_dies_with_its_run_even_while_it_starts():
    """kill -9 of a run while its server started left the server running until its start-up ended (~12 s on a
    busy machine: the parent-death signal was SIGTERM, which uvicorn holds meanwhile; found by a helper's chaos
    audit). The kernel sends SIGKILL now."""
    run = subprocess.Popen([sys.executable, "-c", _HOLDS_SIGTERM], cwd=CWD, stdout=subprocess.PIPE, text=True)
    server = None
    try:
        server = psutil.Process(int(run.stdout.readline()))
        run.kill()
        run.wait()
        assert not gone([server], timeout=60)
    finally:
        run.kill()
        if server is not None and server.is_running():
            server.kill()


def test_an_api_server_that_cannot_start_says_why_and_a_taken_port_is_given_up(fault_data, fake_repo, tmp_path):
    """A PREFECT_HOME that cannot be created: the server exits 3, as uvicorn does for a port taken, and the run
    tried three ports, then blamed them ("could not find a free local port"); the error the server logged is
    said now (found by a helper's chaos audit). A port really taken is still given up for another."""
    home = tmp_path / "no" / "such" / "home"  # Prefect makes PREFECT_HOME, not its parents
    result = run_alps(["run", fault_data, "--out", tmp_path / "out", "--model-repository", fake_repo, *SMALL],
                      cli_env(home, seed_database=False))
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = error_lines(result.stderr)
    assert "free local port" not in result.stderr
    assert "unable to open database file" in line and f"PREFECT_HOME, {home}" in line, line

    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        started = subprocess.run([sys.executable, "-c", _START_ON_A_TAKEN_PORT, str(taken.getsockname()[1]),
                                  str(tmp_path / "work")], cwd=CWD, env=cli_env(tmp_path / "ph"),
                                 capture_output=True, text=True, timeout=600, check=False)
    assert started.returncode == 0, started.stderr[-3000:]
    assert started.stdout.split() == ["answered", "on", "another", "port"], started.stdout
    assert "address already in use" in (tmp_path / "work" / "prefect-api.log").read_text().lower()


# LocalApiServer whose first port is one taken (argv[1]): it must start on another.
_START_ON_A_TAKEN_PORT = """
import sys
from pathlib import Path
import httpx
import flows.prefect_api as api
ports = [int(sys.argv[1])]
free = api._free_port
api._free_port = lambda: ports.pop() if ports else free()
server = api.LocalApiServer(Path(sys.argv[2]))
server.start()
try:
    assert httpx.get(server.url + "/health", timeout=30).status_code == 200
    print("answered on", "another port" if server.port != int(sys.argv[1]) else "the taken port")
finally:
    server.stop()
"""


def test_a_full_disk_at_the_runs_api_server_start_is_one_line_and_leaves_no_server(tmp_path):
    """``OUT``'s disk full when the run writes its API server's record: a traceback and exit 1, "a bug". Now the
    refusal of a run that cannot start (PrefectApiError: exit 2, one line), naming the file, and the server it
    started is stopped. The run's own server sends Prefect no telemetry unless the user asked for it."""
    env = cli_env(tmp_path / "ph")
    del env["PREFECT_SERVER_ANALYTICS_ENABLED"]  # as a user's shell has it: unset
    started = subprocess.run([sys.executable, "-c", _START_ON_A_FULL_DISK, str(tmp_path / "work")], cwd=CWD,
                             env=env, capture_output=True, text=True, timeout=600, check=False)
    assert started.returncode == 0, started.stderr[-3000:]
    refused, server_gone, analytics = started.stdout.splitlines()
    assert refused == (f"PrefectApiError: no space left on the disk while writing {tmp_path / 'work' / 'prefect-api.json'}"
                       ", ") + refused.split(", ", 1)[1] and refused.endswith(" free there: free space on that disk")
    assert server_gone == "server stopped: True"
    assert analytics == "analytics: false, or as the user set it: true"


def test_a_full_prefect_home_is_named_when_the_runs_api_fails(tmp_path):
    """``PREFECT_HOME`` on a full disk: the run's server answers every write with a 500 and the run said only "the
    Prefect API of this run stopped answering", so running it again failed the same way. The server's log holds
    the cause (lines as SQLite and SQLAlchemy wrote them on a full tmpfs here); a log without it adds nothing."""
    from prefect.settings import get_current_settings

    from flows.prefect_api import LOG_NAME, server_disk_full

    assert server_disk_full(tmp_path) == ""  # no log at all
    (tmp_path / LOG_NAME).write_text("INFO: started\nsqlalchemy.exc.OperationalError: (sqlite3.OperationalError) "
                                     "attempt to write a readonly database\n")
    assert server_disk_full(tmp_path) == ""
    with (tmp_path / LOG_NAME).open("a") as log:
        log.write("sqlite3.OperationalError: database or disk is full\n"
                  "sqlalchemy.exc.OperationalError: (sqlite3.OperationalError) database or disk is full\n")
    assert server_disk_full(tmp_path) == (
        f"; its server's log ({tmp_path / LOG_NAME}) says its database or disk is full: free space in PREFECT_HOME "
        f"({get_current_settings().home}), where Prefect keeps its database")


_START_ON_A_FULL_DISK = """
import errno, os, sys
from pathlib import Path
import alps_client.io.atomic as atomic
import flows.prefect_api as api

def full(path, *args, **kwargs):
    raise atomic.disk_full_error(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))

atomic.write_json = full
server = api.LocalApiServer(Path(sys.argv[1]))
try:
    server.start()
except api.PrefectApiError as err:
    print(f"PrefectApiError: {err}")
print("server stopped:", server.process is not None and server.process.poll() is not None)
mine = server._environment()["PREFECT_SERVER_ANALYTICS_ENABLED"]
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "true"
print(f"analytics: {mine}, or as the user set it: {server._environment()['PREFECT_SERVER_ANALYTICS_ENABLED']}")
"""


# ~3 min: after the kill, Prefect's clients retry every state update and every event (about 7 s each) before the
# run may end; by hand with `make test-slow`.
@pytest.mark.slow
def test_a_users_prefect_server_dying_mid_run_leaves_the_labelling_going_on(fault_data, fake_repo, fault_reference,
                                                                            prefect_server, tmp_path):
    """The user's own long-lived API (PREFECT_API_URL) killed while an image is in flight. The labelling needs no
    API and goes on: its progress artifact's updates waited out Prefect's retries in the labelling loop, minutes
    each (7 of 20 images were labelled in 2.5 min, then exit 3). Every image is labelled now and the dataset
    written; the run says the API stopped answering after its dataset was written, and exits 0 (it said to run it
    again to resume a complete dataset). No image becomes a rejected input; the dataset is the fault-free one."""
    home = tmp_path / "ph"
    server, url = start_prefect_server(tmp_path / "server_home")
    try:
        proc, out, faults = start_held_run(fault_data, tmp_path, cli_env(home, url))
    finally:
        stop_prefect_server(server, signal.SIGKILL)
    assert proc.poll() is None  # the server died under a live run, mid-run
    (faults / "release").touch()
    assert wait_for_exit(proc, 600, tmp_path / "run.log") == 0, (tmp_path / "run.log").read_text()[-3000:]
    log = (tmp_path / "run.log").read_text()
    assert f"alps: warning: the Prefect API {url} stopped answering" in log and "the dataset is complete" in log
    assert json.loads((out / "manifest.json").read_text())["complete"]
    assert (out / "errors.jsonl").read_text() == ""
    assert labels(out) == labels(fault_reference)


def test_a_run_stopped_after_its_users_api_died_exits_without_waiting_for_the_image_in_flight(fault_data, tmp_path):
    """The user's own API killed while an image is held in the backend, then the run stopped (SIGTERM): Prefect
    cannot record the crash and gives up after its retries (one here, instead of a minute of them); the run then
    says it was terminated and exits, without waiting for the image still held (for 600 s)."""
    home = tmp_path / "ph"
    server, url = start_prefect_server(tmp_path / "server_home")
    try:
        proc, out, faults = start_held_run(fault_data, tmp_path, cli_env(home, url, PREFECT_CLIENT_MAX_RETRIES="1"))
    finally:
        stop_prefect_server(server, signal.SIGKILL)
    try:
        assert proc.poll() is None  # the API died under a live run, mid-run
        os.kill(proc.pid, signal.SIGTERM)
        assert wait_for_exit(proc, 300, tmp_path / "run.log") == 143, (tmp_path / "run.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert list(faults.glob("waiting-*")) and not (faults / "release").exists()  # still held when the run ended
    (error,) = error_lines((tmp_path / "run.log").read_text())
    assert error.startswith("alps: error: terminated (SIGTERM)") and f"the Prefect API {url} did not answer" in error
    assert "run the same command again" in error
    assert len(finished_stems(out)) == 2 and not (out / "manifest.json").exists()  # resumable, as after any stop


def signal_another_thread(pid: int, sig: int) -> None:
    """Send ``sig`` to a thread of process ``pid`` other than its main one (Linux ``tgkill``).

    What a signal that lands just before the main thread blocks leaves behind (likeliest on a busy machine, when
    the thread is switched out right there), made certain: Python's C-level handler has run and flagged the signal
    for the main thread, whose wait does not end for it.
    """
    import ctypes

    tid = next(int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid)
    if ctypes.CDLL(None, use_errno=True).tgkill(pid, tid, sig) != 0:
        raise OSError(ctypes.get_errno(), f"tgkill({pid}, {tid}, {sig})")


def main_thread_waiting(pid: int):
    """A check that is true once the main thread of ``pid`` has slept, using no CPU, over its last 4 calls."""
    seen: list[tuple[str, int]] = []

    def check() -> bool:
        fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        seen.append((fields[0], int(fields[11]) + int(fields[12])))  # state, utime + stime (clock ticks)
        return len(seen) >= 4 and seen[-1][0] == "S" and len(set(seen[-4:])) == 1

    return check


STOPS = [  # (signal, sent to "group" (the run's process group) / "process" / "another-thread" (of the run's process:
    #          see signal_another_thread), where the images are labelled, on the user's API?, exit status)
    pytest.param(signal.SIGINT, "group", [], True, 130, id="ctrl-c-threads-users-api"),
    pytest.param(signal.SIGINT, "group", ["--dask-workers", "1"], False, 130, id="ctrl-c-dask-worker-own-api"),
    pytest.param(signal.SIGTERM, "process", [], False, 143, id="sigterm-threads-own-api"),
    # An SSH session that dropped: the process ended at once, its run left "Running" on a user's own API. Caught
    # as on a busy machine: a run slept through the signal until its image in flight finished, see
    # signal_another_thread (every stop is handled in the same wait, so one signal is enough).
    pytest.param(signal.SIGHUP, "another-thread", [], True, 129, id="sighup-caught-off-main-threads-users-api"),
]


@pytest.mark.parametrize(("sig", "to", "where", "users_api", "status"), STOPS)
def test_a_stopped_run_exits_at_once_leaves_nothing_running_and_the_next_run_resumes(
        fault_data, fake_repo, fault_reference, prefect_server, tmp_path, sig, to, where, users_api, status):
    """Ctrl-C in a terminal (SIGINT to the process group: local Dask workers and the run's own API server get it
    too) or ``kill PID`` / ``docker stop`` / a scheduler's time limit (SIGTERM to the run) while an image is held
    in the backend. The user's own API server is not in the group and lives on."""
    home = tmp_path / "ph"
    proc, out, _ = start_held_run(fault_data, tmp_path, cli_env(home, prefect_server if users_api else None), *where)
    started = run_processes(home)
    assert len(started["servers"]) == (0 if users_api else 1) and len(started["workers"]) == (1 if where else 0)
    try:
        if to == "group":
            os.killpg(proc.pid, sig)
        elif to == "process":
            os.kill(proc.pid, sig)
        else:
            wait_until(main_thread_waiting(proc.pid), "the run's main thread waiting for its image in flight",
                       proc=proc)
            signal_another_thread(proc.pid, sig)
        assert wait_for_exit(proc, 120, tmp_path / "run.log") == status, (tmp_path / "run.log").read_text()[-3000:]
    finally:  # a run that did not stop is not left running
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    log = (tmp_path / "run.log").read_text()
    assert "Traceback" not in log and "Crash detected!" in log, log[-3000:]  # its workers' too (Dask's)
    assert "INFO    | distributed" not in log  # Dask's start-up and shut-down chatter
    (error,) = error_lines(log)
    stopped = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated (SIGTERM)",
               signal.SIGHUP: "hung up (SIGHUP"}[sig]
    assert error.startswith(f"alps: error: {stopped}") and "run the same command again" in error
    assert not gone(started["servers"] + started["workers"]) and not any(run_processes(home).values())
    finished = finished_stems(out)
    assert 2 <= len(finished) < 7 and not (out / "manifest.json").exists()
    if users_api:  # the UI does not show it running for ever
        with prefect_api(prefect_server) as api:
            run = flow_run_of(api, out)
            assert run["state_type"] == "CRASHED", run["state_type"]
            assert_stop_recorded(api, run["id"], finished)
    if sig == signal.SIGINT and users_api:  # resuming does not depend on how the run was stopped: once is enough
        assert_resumes(fault_data, fake_repo, fault_reference, out, cli_env(home, prefect_server), finished)


_START_AND_STOP = """
import sys
from pathlib import Path
from flows.prefect_api import LocalApiServer
server = LocalApiServer(Path(sys.argv[1]), startup_timeout_s=300)
server.start()
server.stop()
"""


# ~2 min: two rounds of five servers migrating one new database each, one after the other; by hand with
# `make test-slow`. The race it guards against showed in 1 round of 2 with four servers (and in 1-2 runs of 3 for
# whole `alps run`s started at once).
@pytest.mark.slow
def test_runs_started_at_once_on_a_new_prefect_home_each_start_their_api(tmp_path):
    """Runs started at once on a new PREFECT_HOME: each run's server set up (migrated) the home's database as it
    started, and some ended in exit 2 and an alembic or sqlite error ("Online migration expected to match one row",
    "index ix_flow__created already exists"). The servers of one home now start one at a time."""
    for round_ in range(2):
        env = cli_env(tmp_path / f"ph{round_}", seed_database=False)
        starts = [subprocess.Popen([sys.executable, "-c", _START_AND_STOP, str(tmp_path / f"out{round_}{i}" / ".alps")],
                                   cwd=CWD, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                  for i in range(5)]
        said = [start.communicate(timeout=600)[0] for start in starts]
        assert [start.returncode for start in starts] == [0] * 5, said
