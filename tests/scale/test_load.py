"""The run on a saturated machine (`pytest -m load`, `make test-load`): every good image labelled, label maps
byte-identical to a quiet run, exactly one Prefect API server per run, nothing left running afterwards.

On a busy 2-core machine Prefect's own temporary server missed its 20 s start-up window, and each Dask worker
started another one; this is the check that the run's own server and the Prefect-free workers hold up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import psutil
import pytest

from alps_client.synthetic import write_synthetic_dataset
from tests.runs import SMALL, cli_env, gone, labels, run_processes, start_alps

pytestmark = pytest.mark.load
N_IMAGES = 20


def run_watched(args, home, log):
    """Run `alps ARGS` to the end, sampling its processes; returns (exit code, seconds, server counts seen)."""
    started = time.monotonic()
    proc = start_alps(args, cli_env(home), log)
    seen, procs = [], set()
    while proc.poll() is None:
        found = run_processes(home)
        seen.append(len(found["servers"]))
        procs.update(found["servers"] + found["workers"])
        time.sleep(0.2)
    return proc.returncode, time.monotonic() - started, seen, list(procs)


@pytest.fixture
def busy_machine():
    """Two spinning processes per core, for as long as the test runs."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2 * (os.cpu_count() or 2))]
    try:
        assert psutil.cpu_percent(interval=2) > 90, "the machine is not saturated"
        yield
    finally:
        for p in spinners:
            p.kill()
            p.wait()


@pytest.fixture(scope="module")
def quiet_run(fake_repo, tmp_path_factory):
    work = tmp_path_factory.mktemp("quiet")
    data = write_synthetic_dataset(work / "data", N_IMAGES, seed=11, size=(160, 224)) / "images"
    code, seconds, _, _ = run_watched(["run", data, "--out", work / "out", "--model-repository", fake_repo, *SMALL],
                                      work / "ph", work / "run.log")
    assert code == 0, (work / "run.log").read_text()[-3000:]
    print(f"\nquiet run: {N_IMAGES} images in {seconds:.1f} s")
    return data, work / "out"


@pytest.mark.parametrize("where", [[], ["--dask-workers", "2"]], ids=["threads", "dask-2-workers"])
def test_a_saturated_machine_loses_nothing(quiet_run, fake_repo, busy_machine, tmp_path, where):
    data, reference = quiet_run
    out, home = tmp_path / "out", tmp_path / "ph"
    code, seconds, seen, procs = run_watched(["run", data, "--out", out, "--model-repository", fake_repo, *SMALL,
                                              *where], home, tmp_path / "run.log")
    print(f"\nloaded run ({' '.join(where) or 'threads'}): {N_IMAGES} images in {seconds:.1f} s, "
          f"API servers seen per sample: max {max(seen, default=0)} over {len(seen)} samples")
    assert code == 0, (tmp_path / "run.log").read_text()[-3000:]
    last = json.loads((out / ".alps" / "last_run.json").read_text())
    assert len(last["labelled"]) == N_IMAGES and not last["errors"] and not last["missing"]
    assert labels(out) == labels(reference)
    assert max(seen) == 1 and seen.count(1) > 0  # one server for the run, never more
    assert not gone(procs) and not any(run_processes(home).values())
