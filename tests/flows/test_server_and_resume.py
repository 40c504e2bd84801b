"""A real `prefect server start` end to end, and a run killed mid-way then resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import httpx
import pytest

from tests.flows.conftest import ALPS, CWD, cli_env, free_port


def run_args(dataset, out, repo, *extra):
    return [*ALPS, "run", str(dataset), "--out", str(out), "--model-repository", str(repo), "--points-per-side", "8",
            "--n-clusters", "4", "--no-progress", "--num-threads", "1", *extra]


@pytest.fixture
def prefect_server(tmp_path):
    port = free_port()
    home = tmp_path / "server_home"
    env = cli_env(home)
    proc = subprocess.Popen(["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env={**env, "PATH": os.path.dirname(os.sys.executable) + os.pathsep + env["PATH"]},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    try:
        for _ in range(120):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("prefect server did not become healthy in 60 s")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_flow_run_against_a_real_prefect_server(prefect_server, stand_in_repo, scenes, tmp_path):
    result = subprocess.run(run_args(scenes / "images", tmp_path / "out", stand_in_repo), capture_output=True, text=True,
                            cwd=CWD, env=cli_env(tmp_path / "client_home", prefect_server), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = httpx.post(f"{prefect_server}/flow_runs/filter", json={"limit": 10}, timeout=10).json()
    assert len(runs) == 1 and runs[0]["state_type"] == "COMPLETED"
    for _ in range(60):  # artifacts are recorded asynchronously
        arts = httpx.post(f"{prefect_server}/artifacts/filter",
                          json={"artifacts": {"flow_run_id": {"any_": [runs[0]["id"]]}}}, timeout=10).json()
        keys = {a["key"] for a in arts}
        if {"alps-summary", "alps-class-histogram", "alps-errors"} <= keys:
            break
        time.sleep(0.5)
    assert {"alps-summary", "alps-class-histogram", "alps-previews", "alps-errors"} <= keys
    errors = next(a for a in arts if a["key"] == "alps-errors")
    assert "zero-byte file" in json.dumps(errors["data"])


def test_killed_run_resumes_without_recomputing(stand_in_repo, scenes, tmp_path):
    env = cli_env(tmp_path / "home")
    reference = subprocess.run(run_args(scenes / "images", tmp_path / "reference", stand_in_repo), cwd=CWD, env=env,
                               capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr[-3000:]

    out = tmp_path / "resumed"
    shards = out / ".alps" / "shards"
    proc = subprocess.Popen(run_args(scenes / "images", out, stand_in_repo, "--concurrency", "1"), cwd=CWD, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and len(list(shards.glob("*.npz"))) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p.stem for p in shards.glob("*.npz")}
    assert 2 <= len(finished) < 6, "the run must be killed mid-way"
    assert not (out / "ann_dir").exists()

    again = subprocess.run(run_args(scenes / "images", out, stand_in_repo), cwd=CWD, env=env,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    last = json.loads((out / ".alps" / "last_run.json").read_text())
    assert finished <= set(last["skipped"]) and not finished & set(last["labelled"])
    ours = {p.relative_to(out / "ann_dir"): p.read_bytes() for p in (out / "ann_dir").glob("*/*.png")}
    theirs = {p.relative_to(tmp_path / "reference" / "ann_dir"): p.read_bytes()
              for p in (tmp_path / "reference" / "ann_dir").glob("*/*.png")}
    assert len(ours) == 6 and ours == theirs
