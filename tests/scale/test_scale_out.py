"""Scale-out: the flow on a local Dask cluster (byte-identical outputs, a worker killed mid-run) and on two
Triton servers (load shared; one killed mid-run)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from alps_client.backends.triton import TritonBackend
from alps_client.config import AmgConfig, BackendConfig
from alps_client.amg.generator import MaskGenerator
from alps_client.synthetic import write_synthetic_dataset
from tests.conftest import REPO_ROOT
from tests.shapes import make_shapes_image
from tests.triton.server import start_triton


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("scale"), 6, seed=9, size=(96, 128)) / "images"


def alps(args, tmp_path, **popen):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "ph"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    cmd = [sys.executable, "-m", "flows.cli", "run", *map(str, args), "--points-per-side", "8", "--n-clusters", "3",
           "--no-progress"]
    return subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **popen)


def finish(proc, timeout=600):
    output, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, output[-3000:]
    return output


def labels(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted((out / "ann_dir").glob("*/*.png"))}


def when_shards(out, n, action):
    def watch():
        deadline = time.time() + 300
        while time.time() < deadline and len(list((out / ".alps" / "shards").glob("*.npz"))) < n:
            time.sleep(0.05)
        action()

    thread = threading.Thread(target=watch)
    thread.start()
    return thread


def test_dask_workers_give_byte_identical_dataset_even_when_one_is_killed(data, stand_in_repo, tmp_path):
    distributed = pytest.importorskip("distributed")
    single = tmp_path / "single"
    finish(alps([data, "--out", single, "--model-repository", stand_in_repo, "--concurrency", "1"], tmp_path))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            pids = list(client.run(os.getpid).values())
        out = tmp_path / "dask"
        proc = alps([data, "--out", out, "--model-repository", stand_in_repo, "--dask-address",
                     cluster.scheduler_address], tmp_path)
        killer = when_shards(out, 1, lambda: os.kill(pids[0], signal.SIGKILL))
        finish(proc)
        killer.join()
    last = json.loads((out / ".alps" / "last_run.json").read_text())
    assert sorted(last["labelled"] + last["skipped"]) == sorted(p.stem for p in data.glob("*.png"))
    assert not last["errors"]
    assert labels(out) == labels(single) and len(labels(out)) == 6


def test_two_triton_servers_share_the_load_and_one_may_die(data, stand_in_repo, tmp_path):
    import tritonclient.grpc as grpcclient

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
        proc = alps([data, "--out", out, "--model-repository", stand_in_repo, "--backend", "triton",
                     "--triton-url", a.grpc_url, "--triton-url", b.grpc_url, "--concurrency", "1"], tmp_path)
        killer = when_shards(out, 1, lambda: a.stop(signal.SIGKILL))
        finish(proc)
        killer.join()
        assert a.process.poll() is not None  # server A really died mid-run
        last = json.loads((out / ".alps" / "last_run.json").read_text())
        assert len(last["labelled"]) == 6 and not last["errors"]
    finally:
        a.stop()
        b.stop()


def test_shared_memory_needs_a_single_server(stand_in_repo):
    with pytest.raises(ValueError, match="one --triton-url"):
        TritonBackend(BackendConfig(kind="triton", model_repository=str(stand_in_repo),
                                    triton_urls=("127.0.0.1:1", "127.0.0.1:2"), shared_memory=True))


def test_all_servers_down(stand_in_repo):
    with pytest.raises(Exception, match="are not reachable"):
        TritonBackend(BackendConfig(kind="triton", model_repository=str(stand_in_repo),
                                    triton_urls=("127.0.0.1:9", "127.0.0.1:11")))
