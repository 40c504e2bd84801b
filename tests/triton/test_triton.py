"""The Triton backend against a real Triton server: identical masks, shm, dynamic batching, failures, restart."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time

import numpy as np
import pytest

from alps_client.backends.triton import TritonBackend
from alps_client.config import AmgConfig, BackendConfig
from alps_client.errors import BackendUnavailableError
from alps_client.amg.generator import MaskGenerator
from alps_client.synthetic import write_synthetic_dataset
from tests.conftest import REPO_ROOT
from tests.shapes import make_shapes_image
from tests.triton.server import start_triton

AMG = AmgConfig(points_per_side=12)


def triton_backend(repo, url, **kwargs) -> TritonBackend:
    return TritonBackend(BackendConfig(kind="triton", model_repository=str(repo), triton_urls=(url,), **kwargs))


def same_records(a, b):
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["segmentation"], y["segmentation"])
        assert x["predicted_iou"] == y["predicted_iou"] and x["stability_score"] == y["stability_score"]


@pytest.mark.parametrize(("protocol", "shm"), [("grpc", False), ("grpc", True), ("http", False), ("http", True)])
def test_masks_through_triton_equal_embedded(triton_server, stand_in_repo, embedded_backend, protocol, shm):
    url = triton_server.grpc_url if protocol == "grpc" else triton_server.http_url
    backend = triton_backend(stand_in_repo, url, protocol=protocol, shared_memory=shm)
    try:
        for seed in (0, 1):
            image = make_shapes_image(seed)
            same_records(MaskGenerator(backend, AMG).generate(image), MaskGenerator(embedded_backend, AMG).generate(image))
    finally:
        backend.close()
    if shm:
        import tritonclient.grpc as grpcclient

        status = grpcclient.InferenceServerClient(triton_server.grpc_url).get_system_shared_memory_status(as_json=True)
        assert not status.get("regions"), "shared memory regions must be unregistered on close"


def test_dynamic_batching_forms_batches(triton_server, stand_in_repo):
    import tritonclient.grpc as grpcclient

    backend = TritonBackend(BackendConfig(kind="triton", model_repository=str(stand_in_repo),
                                          triton_urls=(triton_server.grpc_url,)), in_flight=8)
    try:
        backend.encode([make_shapes_image(s, size=(200, 300)) for s in range(16)])
    finally:
        backend.close()
    stats = grpcclient.InferenceServerClient(triton_server.grpc_url).get_inference_statistics("sam_encoder", as_json=True)
    batch_sizes = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats["model_stats"][0]["batch_stats"]}
    assert any(size > 1 and count > 0 for size, count in batch_sizes.items()), batch_sizes


def test_server_down_gives_one_clear_error(stand_in_repo):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(BackendUnavailableError, match=rf"127.0.0.1:{port} .*is not reachable.*--backend embedded"):
        triton_backend(stand_in_repo, f"127.0.0.1:{port}")


def test_model_not_loaded_is_named(triton_server, stand_in_repo, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(stand_in_repo, repo)
    manifest = json.loads((repo / "manifest.json").read_text())
    manifest["models"]["decoder"]["name"] = "sam_decoder_v2"
    (repo / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BackendUnavailableError, match="no ready model 'sam_decoder_v2'"):
        triton_backend(repo, triton_server.grpc_url)


def test_flow_survives_a_triton_restart(stand_in_repo, tmp_path):
    """Kill the server while `alps run --backend triton` runs, start it again: the run completes, all labelled."""
    server = start_triton(stand_in_repo, tmp_path / "t1")
    data = write_synthetic_dataset(tmp_path / "data", 6, seed=4, size=(96, 128))
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "ph"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    cmd = ["-m", "flows.cli", "run", str(data / "images"), "--out", str(out), "--model-repository", str(stand_in_repo),
           "--backend", "triton", "--triton-url", server.grpc_url, "--points-per-side", "8", "--n-clusters", "3",
           "--concurrency", "1", "--no-progress"]
    proc = subprocess.Popen([os.sys.executable, *cmd], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    restarted: list = []

    def kill_and_restart():
        shards = out / ".alps" / "shards"
        deadline = time.time() + 240
        while time.time() < deadline and len(list(shards.glob("*.npz"))) < 1:
            time.sleep(0.05)
        server.stop(signal.SIGKILL)
        time.sleep(2.0)
        restarted.append(start_triton(stand_in_repo, tmp_path / "t2", grpc_port=server.grpc_port,
                                      http_port=server.http_port))

    killer = threading.Thread(target=kill_and_restart)
    killer.start()
    try:
        output, _ = proc.communicate(timeout=600)
    finally:
        killer.join()
        for s in restarted:
            s.stop()
    assert proc.returncode == 0, output[-3000:]
    assert restarted, "the server was never killed"
    last = json.loads((out / ".alps" / "last_run.json").read_text())
    assert len(last["labelled"]) == 6 and not last["errors"]
