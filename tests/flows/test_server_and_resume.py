"""A real Prefect server end to end; the run's own temporary API (one per run, none left behind); kill and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import psutil
import pytest

from alps_client.backends.fake import write_fake_repository
from flows.prefect_api import PrefectApiError, stop_stale_server
from tests.runs import (
    SERVER_APP,
    SMALL,
    cli_env,
    error_lines,
    gone,
    labels,
    prefect_api,
    run_alps,
    run_processes,
    start_alps,
    start_prefect_server,
    stop_prefect_server,
    wait_until,
)


def test_flow_run_against_a_real_prefect_server(prefect_server, stand_in_repo, tmp_path):
    """The structured stand-in exported to ONNX, the embedded backend, a real `prefect server start`."""
    from alps_client.synthetic import write_synthetic_dataset

    images = write_synthetic_dataset(tmp_path / "data", 3, seed=3, size=(96, 128)) / "images"
    (images / "broken.png").write_bytes(b"")
    out = tmp_path / "out"
    result = run_alps(["run", images, "--out", out, "--model-repository", stand_in_repo, *SMALL, "--num-threads", "1"],
                      cli_env(tmp_path / "client_home", prefect_server))
    assert result.returncode == 0, result.stderr[-3000:]
    with prefect_api(prefect_server) as api:
        runs = api.post("/flow_runs/filter", json={"limit": 200}).json()
        (run,) = [r for r in runs if r["parameters"].get("out") == str(out)]
        assert run["state_type"] == "COMPLETED"

        def artifacts():
            arts = api.post("/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run["id"]]}}}).json()
            return arts if {"alps-summary", "alps-class-histogram", "alps-errors"} <= {a["key"] for a in arts} else None

        arts = wait_until(artifacts, "the run's artifacts (recorded asynchronously)", timeout=120)
    assert {"alps-summary", "alps-class-histogram", "alps-previews", "alps-errors"} <= {a["key"] for a in arts}
    errors = next(a for a in arts if a["key"] == "alps-errors")
    assert "zero-byte file" in json.dumps(errors["data"])


def paused_repo(tmp_path, after: int = 2):
    """A fake repository whose encodes after the first ``after`` wait for ``<faults>/release``."""
    faults = tmp_path / "faults"
    return write_fake_repository(tmp_path / "paused", faults={"dir": str(faults), "pause_after": after}), faults


def test_a_killed_run_leaves_no_server_and_the_next_run_resumes(fault_data, fake_repo, fault_reference, prefect_server,
                                                                tmp_path):
    """No PREFECT_API_URL: the run starts its own API server; `kill -9` of the run takes the server with it."""
    repo, faults = paused_repo(tmp_path)
    out, home = tmp_path / "out", tmp_path / "ph"
    shards = out / ".alps" / "shards"
    proc = start_alps(["run", fault_data, "--out", out, "--model-repository", repo, *SMALL, "--concurrency", "1"],
                      cli_env(home), tmp_path / "run.log")
    wait_until(lambda: list(faults.glob("waiting-*")) and len(list(shards.glob("*.npz"))) == 2,
               "two images labelled and the third held", proc=proc)
    servers = run_processes(home)["servers"]
    assert len(servers) == 1  # exactly one Prefect API for the run
    os.kill(proc.pid, signal.SIGKILL)  # the run only, not its process group
    proc.wait()
    finished = {p.stem for p in shards.glob("*.npz")}
    assert len(finished) == 2  # killed mid-run: 2 of 7 done, before and after the kill
    assert not gone(servers) and not run_processes(home)["servers"]  # the server died with its run

    # The rerun on the session's server (cheaper); the next run cleaning up a record is tested below.
    again = run_alps(["run", fault_data, "--out", out, "--model-repository", fake_repo, *SMALL],
                     cli_env(home, prefect_server))
    assert again.returncode == 0, again.stderr[-3000:]
    last = json.loads((out / ".alps" / "last_run.json").read_text())
    assert set(last["skipped"]) == finished and len(last["labelled"]) == 5  # finished work is not redone
    assert labels(out) == labels(fault_reference)
    assert not run_processes(home)["servers"]


def test_the_run_restarts_its_api_server_if_it_dies(fault_data, fault_reference, tmp_path):
    repo, faults = paused_repo(tmp_path)
    out, home = tmp_path / "out", tmp_path / "ph"
    record = out / ".alps" / "prefect-api.json"
    proc = start_alps(["run", fault_data, "--out", out, "--model-repository", repo, *SMALL, "--concurrency", "1"],
                      cli_env(home), tmp_path / "run.log")
    wait_until(lambda: list(faults.glob("waiting-*")), "the third image to be held", proc=proc)
    first = json.loads(record.read_text())
    os.kill(first["pid"], signal.SIGKILL)
    restarted = wait_until(lambda: record.is_file() and json.loads(record.read_text())["pid"] != first["pid"],
                           "the API server to be started again", proc=proc)
    assert restarted and len(run_processes(home)["servers"]) == 1
    (faults / "release").touch()
    assert proc.wait(timeout=600) == 0, (tmp_path / "run.log").read_text()[-3000:]
    assert "starting it again" in (tmp_path / "run.log").read_text()
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
        assert leftover.wait(timeout=30) is not None and not (work / "prefect-api.json").exists()
    finally:
        leftover.kill()


def test_two_runs_into_one_output_folder_are_refused(tmp_path):
    work = tmp_path / "out" / ".alps"
    work.mkdir(parents=True)
    me = psutil.Process()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        (work / "prefect-api.json").write_text(json.dumps({
            "pid": me.pid, "create_time": me.create_time(),  # not a server: never stopped
            "owner_pid": other.pid, "owner_create_time": psutil.Process(other.pid).create_time()}))
        with pytest.raises(PrefectApiError, match=f"another alps run \\(pid {other.pid}\\)"):
            stop_stale_server(work / "prefect-api.json")
    finally:
        other.kill()


# ~3 min: after the kill, Prefect's clients retry every state update and every event (about 7 s each) before the
# run may end; by hand with `make test-slow`.
@pytest.mark.slow
def test_a_users_prefect_server_dying_mid_run_fails_the_run_loudly_and_the_next_run_resumes(
        fault_data, fake_repo, fault_reference, prefect_server, tmp_path):
    """The user's own long-lived API (PREFECT_API_URL) killed while an image is in flight: no image becomes a
    rejected input, the run exits 3 with one line saying how to resume, and the same command, given a server that
    answers, finishes the dataset without redoing what was labelled."""
    repo, faults = paused_repo(tmp_path)
    out, home = tmp_path / "out", tmp_path / "ph"
    shards = out / ".alps" / "shards"
    server, url = start_prefect_server(tmp_path / "server_home")
    try:
        proc = start_alps(["run", fault_data, "--out", out, "--model-repository", repo, *SMALL, "--concurrency", "1"],
                          cli_env(home, url), tmp_path / "run.log")
        wait_until(lambda: list(faults.glob("waiting-*")) and len(list(shards.glob("*.npz"))) == 2,
                   "two images labelled and the third held", proc=proc)
    finally:
        stop_prefect_server(server, signal.SIGKILL)
    assert proc.poll() is None  # the server died under a live run, mid-run
    (faults / "release").touch()
    assert proc.wait(timeout=600) == 3, (tmp_path / "run.log").read_text()[-3000:]
    (error,) = error_lines((tmp_path / "run.log").read_text())
    assert f"the Prefect API {url} stopped answering" in error and "run the same command again" in error
    assert not (out / "errors.jsonl").exists() and not (out / "manifest.json").exists()
    finished = {p.stem for p in shards.glob("*.npz")}
    assert len(finished) >= 2

    again = run_alps(["run", fault_data, "--out", out, "--model-repository", fake_repo, *SMALL],
                     cli_env(home, prefect_server))
    assert again.returncode == 0, again.stderr[-3000:]
    last = json.loads((out / ".alps" / "last_run.json").read_text())
    assert set(last["skipped"]) == finished and len(last["labelled"]) == 7 - len(finished)
    assert labels(out) == labels(fault_reference)


STOPS = [  # (signal, to the whole process group?, where the images are labelled, on the user's API?, exit status)
    pytest.param(signal.SIGINT, True, [], True, 130, id="ctrl-c-threads-users-api"),
    pytest.param(signal.SIGINT, True, ["--dask-workers", "1"], False, 130, id="ctrl-c-dask-worker-own-api"),
    pytest.param(signal.SIGTERM, False, [], False, 143, id="sigterm-threads-own-api"),
]


@pytest.mark.parametrize(("sig", "group", "where", "users_api", "status"), STOPS)
def test_a_stopped_run_exits_at_once_leaves_nothing_running_and_the_next_run_resumes(
        fault_data, fake_repo, fault_reference, prefect_server, tmp_path, sig, group, where, users_api, status):
    """Ctrl-C in a terminal (SIGINT to the process group: local Dask workers and the run's own API server get it
    too) or ``kill PID`` / ``docker stop`` / a scheduler's time limit (SIGTERM to the run) while an image is held
    in the backend. The user's own API server is not in the group and lives on."""
    repo, faults = paused_repo(tmp_path)
    out, home = tmp_path / "out", tmp_path / "ph"
    shards = out / ".alps" / "shards"
    proc = start_alps(["run", fault_data, "--out", out, "--model-repository", repo, *SMALL, "--concurrency", "1",
                       *where], cli_env(home, prefect_server if users_api else None), tmp_path / "run.log")
    wait_until(lambda: list(faults.glob("waiting-*")) and len(list(shards.glob("*.npz"))) >= 2,
               "two images labelled and a third held", proc=proc)
    started = run_processes(home)
    assert len(started["servers"]) == (0 if users_api else 1) and len(started["workers"]) == (1 if where else 0)
    if group:
        os.killpg(proc.pid, sig)
    else:
        os.kill(proc.pid, sig)
    assert proc.wait(timeout=120) == status, (tmp_path / "run.log").read_text()[-3000:]
    (error,) = error_lines((tmp_path / "run.log").read_text())
    stopped = "interrupted" if sig == signal.SIGINT else "terminated (SIGTERM)"
    assert error.startswith(f"alps: error: {stopped}") and "run the same command again" in error
    assert not gone(started["servers"] + started["workers"]) and not any(run_processes(home).values())
    finished = {p.stem for p in shards.glob("*.npz")}
    assert 2 <= len(finished) < 7 and not (out / "manifest.json").exists()
    if not users_api:
        return  # resuming does not depend on how the run was stopped: once is enough

    again = run_alps(["run", fault_data, "--out", out, "--model-repository", fake_repo, *SMALL],
                     cli_env(home, prefect_server))
    assert again.returncode == 0, again.stderr[-3000:]
    assert set(json.loads((out / ".alps" / "last_run.json").read_text())["skipped"]) == finished
    assert labels(out) == labels(fault_reference)
