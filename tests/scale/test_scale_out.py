"""Scale-out: local Dask workers (one Prefect API, a worker killed mid-image, nothing left behind) and two Triton
servers (load shared; one killed mid-run, logged once)."""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import psutil
import pytest

from alps_client.amg.generator import MaskGenerator
from alps_client.backends.fake import write_fake_repository
from alps_client.backends.triton import TritonBackend
from alps_client.config import AmgConfig, BackendConfig
from alps_client.errors import BackendUnavailableError
from alps_client.synthetic import write_synthetic_dataset
from tests.conftest import ODD_SHAPE
from tests.runs import (
    SMALL,
    cli_env,
    error_lines,
    gone,
    labels,
    run_alps,
    run_processes,
    start_alps,
    wait_for_exit,
    wait_until,
)
from tests.shapes import make_shapes_image
from tests.triton.server import start_triton


def test_dask_workers_use_the_runs_one_api_and_survive_a_worker_killed_mid_image(fault_data, fault_reference,
                                                                                  tmp_path):
    pytest.importorskip("distributed")
    faults = tmp_path / "faults"
    repo = write_fake_repository(tmp_path / "paused", faults={"dir": str(faults), "pause_after": 2})
    out, home = tmp_path / "out", tmp_path / "ph"
    shards = out / ".alps" / "shards"
    # Dask's scheduler serves HTTP on 8787 unless told otherwise: a second run at once, or a user's own Dask,
    # made it warn (UserWarning: Port 8787 is already in use).
    taken = socket.socket()
    with suppress(OSError):  # in use already: taken all the same
        taken.bind(("127.0.0.1", 8787))
    proc = start_alps(["run", fault_data, "--out", out, "--model-repository", repo, *SMALL, "--dask-workers", "2"],
                      # no PREFECT_API_URL: the run starts its own, in a new home (it creates its database)
                      cli_env(home, seed_database=False), tmp_path / "run.log")
    wait_until(lambda: len(list(faults.glob("waiting-*"))) == 2 and len(list(shards.glob("*.npz"))) == 2,
               "two images labelled and both workers held on the next two", proc=proc)
    started = run_processes(home)
    assert len(started["servers"]) == 1 and len(started["workers"]) == 2  # workers start no API of their own
    victim = int(min(faults.glob("waiting-*")).name.split("-")[2])
    assert victim in {w.pid for w in started["workers"]}
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: not psutil.pid_exists(victim), "the worker to die")
    assert len(list(shards.glob("*.npz"))) == 2  # the kill landed mid-run, on an image in flight
    (faults / "release").touch()
    assert wait_for_exit(proc, 600, tmp_path / "run.log") == 0, (tmp_path / "run.log").read_text()[-3000:]
    taken.close()
    log = (tmp_path / "run.log").read_text()
    # ("Port 8787 is already in use", not any 8787: flow-run ids are random hex, "a8787947-..." failed it once)
    assert "Port 8787" not in log and "INFO    | distributed" not in log, log[-3000:]  # nor Dask's INFO chatter
    assert "Backend: embedded (onnxruntime in 2 Dask worker processes)" in log  # was "in the run's process"
    last = json.loads((out / ".alps" / "last_run.json").read_text())
    assert len(last["labelled"]) == 7 and not last["errors"] and not last["missing"]
    assert labels(out) == labels(fault_reference)
    left = run_processes(home)
    assert not gone(started["servers"] + started["workers"]) and not left["servers"] and not left["workers"]


def test_two_triton_servers_share_the_load_and_one_may_die(stand_in_repo, prefect_server, tmp_path):
    import tritonclient.grpc as grpcclient

    data = write_synthetic_dataset(tmp_path / "data", 6, seed=9, size=(96, 128)) / "images"
    a = start_triton(stand_in_repo, tmp_path / "a")
    b = start_triton(stand_in_repo, tmp_path / "b")
    try:
        backend = TritonBackend(BackendConfig(kind="triton", model_repository=str(stand_in_repo),
                                              triton_urls=(a.grpc_url, b.grpc_url)))
        MaskGenerator(backend, AmgConfig(points_per_side=16)).generate(make_shapes_image(0))  # 4 prompt chunks
        backend.close()
        for server in (a, b):
            stats = grpcclient.InferenceServerClient(server.grpc_url).get_inference_statistics("sam_decoder", as_json=True)
            assert int(stats["model_stats"][0]["inference_stats"]["success"].get("count", 0)) > 0, server.grpc_url

        out = tmp_path / "out"
        shards = out / ".alps" / "shards"
        proc = start_alps(["run", data, "--out", out, "--model-repository", stand_in_repo, *SMALL, "--backend",
                           "triton", "--triton-url", a.grpc_url, "--triton-url", b.grpc_url, "--concurrency", "1"],
                          cli_env(tmp_path / "ph", prefect_server), tmp_path / "run.log")
        wait_until(lambda: list(shards.glob("*.npz")), "the first image labelled", proc=proc)
        a.stop(signal.SIGKILL)
        done_at_kill = len(list(shards.glob("*.npz")))
        assert wait_for_exit(proc, 600, tmp_path / "run.log") == 0, (tmp_path / "run.log").read_text()[-3000:]
        assert done_at_kill < 6  # server A died mid-run
        last = json.loads((out / ".alps" / "last_run.json").read_text())
        assert len(last["labelled"]) == 6 and not last["errors"] and not last["missing"]
        log = (tmp_path / "run.log").read_text()
        assert log.count(f"Triton server {a.grpc_url} left the rotation") == 1, log[-3000:]  # said once, with why
    finally:
        a.stop()
        b.stop()


def test_shared_memory_needs_a_single_server(stand_in_repo):
    with pytest.raises(ValueError, match="one --triton-url"):
        TritonBackend(BackendConfig(kind="triton", model_repository=str(stand_in_repo),
                                    triton_urls=("127.0.0.1:1", "127.0.0.1:2"), shared_memory=True))


def test_all_servers_down(stand_in_repo):
    with pytest.raises(BackendUnavailableError, match="are not reachable"):
        TritonBackend(BackendConfig(kind="triton", model_repository=str(stand_in_repo),
                                    triton_urls=("127.0.0.1:9", "127.0.0.1:11")))


def test_a_users_dask_cluster_in_another_folder_gets_absolute_paths_and_a_bad_address_is_one_line(
        fault_data, fake_repo, prefect_server, tmp_path):
    """Workers started in another folder (as on another machine) resolved a relative --out in their own folder
    (the shards went there, then the run failed) and found no relative --model-repository; an address that is
    not a scheduler's was an internal error."""
    pytest.importorskip("distributed")
    import subprocess
    import sys

    from tests.runs import CWD, run_alps

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    address = f"tcp://127.0.0.1:{port.getsockname()[1]}"
    port.close()
    dask = os.path.join(os.path.dirname(sys.executable), "dask")
    scheduler = subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1],
                                  "--dashboard-address", "127.0.0.1:0"], cwd=elsewhere, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
    worker = subprocess.Popen([dask, "worker", address, "--host", "127.0.0.1", "--nthreads", "1",
                               "--no-dashboard"], cwd=elsewhere, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    env = cli_env(tmp_path / "ph", prefect_server)
    try:
        out = os.path.relpath(tmp_path / "out", CWD)
        repo = os.path.relpath(fake_repo, CWD)
        result = run_alps(["run", fault_data, "--out", out, "--model-repository", repo, *SMALL,
                           "--dask-address", address], env)
        assert result.returncode == 0, result.stderr[-3000:]
        assert len(list((tmp_path / "out" / ".alps" / "shards").glob("*.npz"))) == 7
        assert not list(elsewhere.rglob("*.npz"))  # nothing written where the workers were started
        bad = run_alps(["run", fault_data, "--out", tmp_path / "out2", "--model-repository", fake_repo, *SMALL,
                        "--dask-address", "http://127.0.0.1:8786"], env)
        errors = error_lines(bad.stderr)
        assert bad.returncode == 2 and len(errors) == 1 and "--dask-address http://127.0.0.1:8786: not a Dask " \
            "scheduler's address" in errors[0], bad.stderr[-3000:]
        # An HTTP port given as the scheduler's (the dashboard's): Dask's connect waited for a handshake forever.
        with http_server() as web_port:
            web = run_alps(["run", fault_data, "--out", tmp_path / "out3", "--model-repository", fake_repo, *SMALL,
                            "--dask-address", f"tcp://127.0.0.1:{web_port}"],
                           {**env, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "3s"}, timeout=120)
        errors = error_lines(web.stderr)
        assert web.returncode == 2 and len(errors) == 1 and "not a Dask scheduler's address (something answers " \
            "there, but not as a Dask scheduler" in errors[0], web.stderr[-3000:]
        assert not (tmp_path / "out3" / ".alps" / "shards").exists()
    finally:  # SIGTERM: a nanny killed with SIGKILL leaves its worker's semaphores in /dev/shm
        for proc in (worker, scheduler):
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@contextmanager
def http_server() -> Iterator[int]:
    """A plain HTTP server on a free local port, serving in a thread: a port that is not a Dask scheduler's."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_an_image_that_kills_the_dask_workers_fails_in_one_line_and_a_rerun_labels_it(
        fault_data, fault_reference, fake_repo, prefect_server, tmp_path):
    """An image that took down worker after worker (out of memory, in effect) failed with Dask's KilledWorker text,
    which names a task key and a worker address new at each run; the other images are kept, the run is not done."""
    pytest.importorskip("distributed")
    crashing = write_fake_repository(tmp_path / "crashing", faults={"crash_shapes": [ODD_SHAPE]})
    out = tmp_path / "out"
    args = ["run", fault_data, "--out", out, *SMALL, "--dask-workers", "2"]
    # One worker death allowed per image (Dask's default is three): two die on the odd image, not four.
    env = {**cli_env(tmp_path / "ph", prefect_server), "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "1"}
    failed = run_alps([*args, "--model-repository", crashing], env)
    assert failed.returncode == 3, failed.stderr[-3000:]
    (line,) = error_lines(failed.stderr)
    assert "1 of 7 image(s) not labelled: 2 Dask workers died in turn labelling it, most often out of memory" in line
    assert "label-" not in line and "tcp://" not in line and "KilledWorker" not in failed.stderr + failed.stdout
    last = json.loads((out / ".alps" / "last_run.json").read_text())
    assert [m["stem"] for m in last["missing"]] == ["odd"] and last["errors"] == []  # not called a bad input
    # A worker killed right after its last image may not have sent that image's result: rerun elsewhere, the image
    # finds its shard written, and was labelled by this run all the same (it was counted as done before).
    assert last["labelled"] == [f"scene_{i:04d}" for i in range(6)] and last["skipped"] == []
    assert not (out / "manifest.json").exists()

    again = run_alps([*args, "--model-repository", fake_repo], env)
    assert again.returncode == 0, again.stderr[-3000:]
    last = json.loads((out / ".alps" / "last_run.json").read_text())
    assert last["labelled"] == ["odd"] and len(last["skipped"]) == 6
    assert labels(out) == labels(fault_reference)
