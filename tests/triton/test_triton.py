"""The Triton backend against a real Triton server: identical masks, shm, dynamic batching, failures, restart."""

from __future__ import annotations

import gc
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import weakref

import numpy as np
import psutil
import pytest

from alps_client.amg.generator import MaskGenerator
from alps_client.backends.triton import TritonBackend
from alps_client.backends.triton_shm import SHM_DIR, region_name
from alps_client.config import AmgConfig, BackendConfig
from alps_client.errors import BackendUnavailableError
from alps_client.synthetic import write_synthetic_dataset
from tests.conftest import REPO_ROOT
from tests.runs import SMALL, cli_env, start_alps, wait_for_exit, wait_until
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
    closed = weakref.ref(backend)
    del backend
    gc.collect()
    assert closed() is None  # atexit held every backend ever built, with its threads' clients (code review)
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_server_down_gives_one_clear_error(stand_in_repo):
    port = free_port()
    with pytest.raises(BackendUnavailableError, match=rf"127.0.0.1:{port} .*is not reachable.*--backend embedded"):
        triton_backend(stand_in_repo, f"127.0.0.1:{port}")


def test_alps_run_with_the_server_down_says_it_once_naming_where_the_address_came_from(stand_in_repo, prefect_server,
                                                                                       tmp_path):
    """The cause was said three times: a warning that the server "left the rotation" (it never joined), Prefect's
    "Finished in state Failed(...)" and the error line; none said that the address was ALPS_TRITON_URL's."""
    port = free_port()
    data = write_synthetic_dataset(tmp_path / "data", 2, seed=4, size=(96, 128))
    for given, env in ((["--triton-url", f"127.0.0.1:{port}"], {}), ([], {"ALPS_TRITON_URL": f"127.0.0.1:{port}"})):
        proc = start_alps(["run", data / "images", "--out", tmp_path / "out", "--model-repository", stand_in_repo,
                           "--backend", "triton", *given, *SMALL], cli_env(tmp_path / "ph", prefect_server, **env),
                          tmp_path / "run.log")
        assert wait_for_exit(proc, 300, tmp_path / "run.log") == 2
        log = (tmp_path / "run.log").read_text()
        (line,) = [ln for ln in log.splitlines() if "Connection refused" in ln]  # the cause, once
        assert line.startswith(f"alps: error: Triton server at 127.0.0.1:{port} (grpc) is not reachable"), log
        assert "--backend embedded" in line and ("ALPS_TRITON_URL" in line) == bool(env), line
        assert "left the rotation" not in log and "Finished in state Failed" not in log
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_url_mistake_with_the_server_up_says_what_to_check_not_to_start_it(triton_server, stand_in_repo, protocol):
    """With the server up, a scheme in --triton-url or the other protocol's port was reported as 'not reachable;
    start it with docker compose', the real cause only in a warning above."""
    url, other_port = ((triton_server.grpc_url, triton_server.http_url) if protocol == "grpc"
                       else (triton_server.http_url, triton_server.grpc_url))
    for scheme in ("http", "grpc"):
        with pytest.raises(ValueError, match=rf"--triton-url must be host:port without a scheme, got "
                                             rf"'{scheme}://{url}': give {url} \(the scheme goes to --protocol {scheme}\)"):
            triton_backend(stand_in_repo, f"{scheme}://{url}", protocol=protocol)
    with pytest.raises(BackendUnavailableError, match=rf"a server answers at {other_port}, but not in {protocol} "
                                                      r"\(.*\): check --protocol and the port .*gRPC on 8001, HTTP on "
                                                      r"8000") as err:
        triton_backend(stand_in_repo, other_port, protocol=protocol)
    assert "docker compose" not in str(err.value)


def test_model_not_loaded_is_named(triton_server, stand_in_repo, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(stand_in_repo, repo)
    manifest = json.loads((repo / "manifest.json").read_text())
    manifest["models"]["decoder"]["name"] = "sam_decoder_v2"
    (repo / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BackendUnavailableError, match="no ready model 'sam_decoder_v2'"):
        triton_backend(repo, triton_server.grpc_url)


def test_a_server_serving_another_export_is_refused(triton_server, stand_in_repo, tmp_path, caplog):
    """Same model names and tensors, other files (Triton still serving the stand-in after another export was
    written where the client looks): the run must not label with one model while reporting another."""
    from alps_client.errors import ModelSignatureError

    served = json.loads((stand_in_repo / "manifest.json").read_text())["models"]
    configs = [(stand_in_repo / m["name"] / "config.pbtxt").read_text() for m in served.values()]
    assert all(f'string_value: "{m["sha256"]}"' in c for m, c in zip(served.values(), configs))  # the export's stamp
    repo = tmp_path / "repo"
    shutil.copytree(stand_in_repo, repo)
    manifest = json.loads((repo / "manifest.json").read_text())
    manifest["models"]["encoder"]["sha256"] = "0" * 64
    (repo / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelSignatureError, match=r"serves another 'sam_encoder' than .* \(sha256 [0-9a-f]{12}… vs "
                                                   r"000000000000…\): restart Triton"):
        triton_backend(repo, triton_server.grpc_url)
    http = triton_backend(stand_in_repo, triton_server.http_url, protocol="http")  # the same export, over HTTP
    http.close()
    assert "does not say which export" not in caplog.text


def test_only_the_manifests_version_folder_is_served_and_asked_for(stand_in_repo, tmp_path):
    """A newer version folder copied into the served repository (Triton's usual roll-out): Triton served it in place
    of the manifest's (its default serves the latest), and the client, checking only the model-level config's
    sha256, labelled with it. Version 2 here is another model's file: a request that reaches it fails."""
    import tritonclient.grpc as grpcclient

    repo = tmp_path / "repo"
    shutil.copytree(stand_in_repo, repo)
    for model, other in (("sam_encoder", "sam_decoder"), ("sam_decoder", "sam_encoder")):
        assert "version_policy: { specific: { versions: [ 1 ] } }" in (repo / model / "config.pbtxt").read_text()
        (repo / model / "2").mkdir()
        shutil.copy2(repo / other / "1" / "model.onnx", repo / model / "2" / "model.onnx")
    # The decoder's config serves every version: the client must still ask for the manifest's, in every call.
    config = repo / "sam_decoder" / "config.pbtxt"
    config.write_text(config.read_text().replace("{ specific: { versions: [ 1 ] } }", "{ all: { } }"))
    server = start_triton(repo, tmp_path / "t")
    try:
        status = grpcclient.InferenceServerClient(server.grpc_url)
        assert status.is_model_ready("sam_encoder", "1") and not status.is_model_ready("sam_encoder", "2")
        assert status.is_model_ready("sam_decoder", "2")  # served, and not ours
        backend = triton_backend(repo, server.grpc_url)
        try:
            image = make_shapes_image(0)
            assert len(MaskGenerator(backend, AMG).generate(image)) > 0
        finally:
            backend.close()
    finally:
        server.stop()


def another_export(stand_in_repo, root):
    """A copy of the stand-in's repository whose encoder config carries another export's sha256 (a re-export)."""
    from export.triton_repo import stamp_model_config

    shutil.copytree(stand_in_repo, root)
    stamp_model_config(root / "sam_encoder" / "config.pbtxt", "f" * 64)
    return root


def error_of(backend):
    """What encoding one image raises (None if it does not)."""
    try:
        backend.encode([make_shapes_image(0)])
    except Exception as err:  # noqa: BLE001 (the test looks at which)
        return err
    return None


def test_a_server_entering_the_rotation_with_another_export_ends_the_run(triton_server, stand_in_repo, tmp_path,
                                                                         monkeypatch):
    """A server down at start and up later on another export (one restarted mid-run on another: the CLI test
    of a restart below): it joined the rotation unchecked, and the run labelled on with the new model, its manifest naming the
    old one. Now each server is checked when it enters the rotation, and a mismatch ends the run: no retry."""
    from alps_client.backends import triton as triton_module
    from alps_client.errors import ServedModelChangedError
    from alps_client.runs.retry import FailureStreak, describe, is_transient

    other = another_export(stand_in_repo, tmp_path / "other")
    monkeypatch.setattr(triton_module, "OUT_OF_ROTATION_S", 0.0)  # take it back at once, not after 5 s
    port = free_port()
    backend = TritonBackend(BackendConfig(kind="triton", model_repository=str(stand_in_repo),
                                          triton_urls=(triton_server.grpc_url, f"127.0.0.1:{port}")))
    late = start_triton(other, tmp_path / "t3", grpc_port=port)
    try:
        # Round-robin, the other server answering while gRPC has not reconnected to the late one (its back-off).
        err = wait_until(lambda: error_of(backend), "a request to the late server", 60)
        assert isinstance(err, ServedModelChangedError), err
        assert re.match(rf"Triton server at 127.0.0.1:{port} now serves another export than the run started with "
                        r".*sam_encoder.*run the same command again", str(err)), err
        assert not is_transient(err)
        streak = FailureStreak(10)
        streak.record("failed", describe(err), err.ends_run)
        assert streak.tripped and "now serves another export" in streak.reason()  # the run starts no other image
    finally:
        backend.close()
        late.stop()


def test_server_failures_are_classified_by_status_and_type(triton_server, stand_in_repo):
    """Real errors of a real server: a rejected request is permanent, a dead server transient, by code not text."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    from alps_client.backends.triton_status import classify

    def error_of(call):
        with pytest.raises(Exception) as err:
            call()
        return err.value

    for module, url in ((grpcclient, triton_server.grpc_url), (httpclient, triton_server.http_url)):
        client = module.InferenceServerClient(url)
        bad = module.InferInput("point_coords", [1, 1, 3], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 1, 3), np.float32))
        assert classify(error_of(lambda c=client, b=bad: c.infer("sam_decoder", [b]))) == "permanent"
        assert classify(error_of(lambda c=client, b=bad: c.infer("no_such_model", [b]))) == "not_found"
        dead = module.InferenceServerClient(f"127.0.0.1:{free_port()}")
        assert classify(error_of(dead.is_server_live)) == "transient"
    assert classify(ValueError("UNAVAILABLE")) is None  # not a Triton error, whatever its text


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_request_slower_than_the_timeout_says_to_raise_it_not_to_start_the_server(triton_server, stand_in_repo,
                                                                                    protocol):
    """A server that is up but slower than --timeout-s (vit_h on a CPU server, a long queue) was told to be started
    with docker compose; each retry timed out the same way.

    The server is held (SIGSTOP) while the request waits: a timeout of 0.1 ms on a live server was met once on a
    busy machine (HTTP; most likely the client, descheduled after sending, found the answer there when it next ran,
    with no wait left to time out)."""
    from dataclasses import replace

    from alps_client.runs.retry import is_transient

    url = triton_server.grpc_url if protocol == "grpc" else triton_server.http_url
    backend = triton_backend(stand_in_repo, url, protocol=protocol)
    try:
        backend.config = replace(backend.config, timeout_s=0.5)  # the requests' own clients are made after this
        os.kill(triton_server.process.pid, signal.SIGSTOP)
        with pytest.raises(BackendUnavailableError, match=r"slower than --timeout-s 0.5 s .*: raise --timeout-s$") \
                as err:
            backend.encode([make_shapes_image(0)])
        assert "docker compose" not in str(err.value) and is_transient(err.value)
    finally:
        os.kill(triton_server.process.pid, signal.SIGCONT)
        backend.close()
    with pytest.raises(BackendUnavailableError, match="start it with `docker compose") as err:
        triton_backend(stand_in_repo, f"127.0.0.1:{free_port()}", protocol=protocol)
    assert "--timeout-s" not in str(err.value)  # a server that is not there is told to be started


def test_a_rejected_request_is_not_retried(triton_server, stand_in_repo):
    from alps_client.errors import BackendRequestError

    backend = triton_backend(stand_in_repo, triton_server.grpc_url)
    try:
        embedding = backend.encode([make_shapes_image(0)])[0]
        bad = np.zeros((1, 1, 3), np.float32)  # 3 coordinates per point: the server rejects the request
        with pytest.raises(BackendRequestError, match="rejected the request to model 'sam_decoder'"):
            backend._call(backend.manifest.decoder, lambda client: backend._infer(
                backend.manifest.decoder, {"image_embeddings": embedding.features[None], "point_coords": bad,
                                           "point_labels": np.ones((1, 1), np.float32)}, ["iou_predictions"]))
    finally:
        backend.close()


def test_a_server_out_of_memory_is_retried_not_a_rejected_request(triton_server, stand_in_repo):
    """Triton answers INTERNAL when its onnxruntime cannot allocate (the text is onnxruntime's, as the embedded
    backend sees it): that is memory, which other work may free, so the run tries the image again."""
    from tritonclient.utils import InferenceServerException

    from alps_client.errors import BackendOutOfMemoryError
    from alps_client.runs.retry import is_transient

    backend = triton_backend(stand_in_repo, triton_server.grpc_url)
    text = ("onnx runtime error 6: Non-zero status code returned while running Conv node. Status Message: "
            "bfc_arena.cc:360 AllocateRawInternal Failed to allocate memory for requested buffer of size 12582912")

    def short_of_memory(client):
        raise InferenceServerException(text, status="StatusCode.INTERNAL")

    try:
        with pytest.raises(BackendOutOfMemoryError, match="could not allocate memory for model 'sam_encoder'") as err:
            backend._call(backend.manifest.encoder, short_of_memory)
        assert is_transient(err.value)
        assert backend.encode([make_shapes_image(0)])[0].features.shape == (256, 64, 64)  # the server is still in
    finally:
        backend.close()


@pytest.mark.parametrize("export", ["same", "another"])
def test_a_run_through_a_triton_restart_finishes_or_stops_on_another_export(stand_in_repo, prefect_server, tmp_path,
                                                                            export):
    """Kill the server (found through ALPS_TRITON_URL) mid-run and start it again: on the same export the run
    completes, all labelled; on another export it exited 0 with images of both models, its manifest naming the
    first: now it stops, exit 3, saying why and how to resume, and writes no dataset."""
    server = start_triton(stand_in_repo, tmp_path / "t1")
    data = write_synthetic_dataset(tmp_path / "data", 6, seed=4, size=(96, 128))
    out = tmp_path / "out"
    shards = out / ".alps" / "shards"
    env = cli_env(tmp_path / "ph", prefect_server, ALPS_TRITON_URL=server.grpc_url)
    proc = start_alps(["run", data / "images", "--out", out, "--model-repository", stand_in_repo, "--backend", "triton",
                       *SMALL, "--concurrency", "1", "--retry-delay-s", "1"], env, tmp_path / "run.log")
    served = stand_in_repo if export == "same" else another_export(stand_in_repo, tmp_path / "other")
    restarted = None
    try:
        wait_until(lambda: list(shards.glob("*.npz")), "the first image labelled", proc=proc)
        regions = list(SHM_DIR.glob(f"{server.shm_prefix}*"))
        server.stop(signal.SIGKILL)
        done_at_kill = len(list(shards.glob("*.npz")))
        assert regions and not any(r.exists() for r in regions)  # a killed server's shared memory is not left in RAM
        restarted = start_triton(served, tmp_path / "t2", grpc_port=server.grpc_port, http_port=server.http_port)
        status = wait_for_exit(proc, 600, tmp_path / "run.log")
    finally:
        if proc.poll() is None:
            proc.kill()
        if restarted is not None:
            restarted.stop()
    assert done_at_kill < 6  # the kill landed mid-run
    log = (tmp_path / "run.log").read_text()
    if export == "same":
        assert status == 0, log[-3000:]
        last = json.loads((out / ".alps" / "last_run.json").read_text())
        assert len(last["labelled"]) == 6 and not last["errors"] and not last["missing"]
        return
    assert status == 3, log[-3000:]
    (error,) = [ln for ln in log.splitlines() if ln.startswith("alps: error:")]
    assert "now serves another export than the run started with" in error and "run the same command again" in error
    assert not (out / "manifest.json").exists()  # no dataset written: nothing recorded under the first model


def test_a_killed_test_run_takes_its_server_along_and_the_next_start_frees_its_memory(stand_in_repo, tmp_path):
    """A test process killed with SIGKILL (a CI timeout) takes its tritonserver along; when the server's Python
    backend stubs are killed too (a whole process tree or container), the /dev/shm regions they could not remove
    (hundreds of MB of RAM per suite) are removed by the next server's start."""
    script = (f"from pathlib import Path; from tests.triton.server import start_triton; "
              f"s = start_triton(Path({str(stand_in_repo)!r}), Path({str(tmp_path)!r}), models=('sam_decoder',)); "
              f"print(s.process.pid, s.shm_prefix, flush=True); input()")
    owner = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    stubs = []
    try:
        server_pid, prefix = owner.stdout.readline().split()
        regions = list(SHM_DIR.glob(f"{prefix}*"))
        stubs = psutil.Process(int(server_pid)).children(recursive=True)
        assert regions and stubs  # the Python backend's regions and stubs of the loaded model
        for stub in stubs:
            stub.suspend()  # a stub whose server died removes its regions, after a while: not this one
        owner.kill()
        owner.wait()
        wait_until(lambda: _gone(int(server_pid)), "the server gone with its test process")
        for stub in stubs:
            stub.kill()
        assert all(r.exists() for r in regions)  # what the kills left
        start_triton(stand_in_repo, tmp_path / "next", models=()).stop()
        assert not any(r.exists() for r in regions)
    finally:
        if owner.poll() is None:
            owner.kill()
        for stub in stubs:
            if not _gone(stub.pid):
                stub.kill()


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # dead, not yet reaped by its new parent
    except psutil.NoSuchProcess:
        return True


def _unread_requests(port: int) -> bool:
    """Whether a connection to ``port`` on this host holds bytes its server has not read (/proc/net/tcp)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for row in f.read().splitlines()[1:]:
                fields = row.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                rx_queue = int(fields[4].split(":")[1], 16)
                if local_port == port and fields[3] == "01" and rx_queue > 0:  # 01: ESTABLISHED
                    return True
    return False


def test_ctrl_c_under_a_stalled_server_exits_at_once(stand_in_repo, prefect_server, tmp_path):
    """A Triton server that stopped answering (SIGSTOP: hung, swapping, a GPU reset) with a request of the run in
    it: Ctrl-C held the run until the request timed out (120 s by default, then each request behind it), as its
    backend waited for its requests to be released."""
    server = start_triton(stand_in_repo, tmp_path / "t")
    data = write_synthetic_dataset(tmp_path / "data", 6, seed=4, size=(96, 128))
    out = tmp_path / "out"
    proc = start_alps(["run", data / "images", "--out", out, "--model-repository", stand_in_repo, "--backend", "triton",
                       "--triton-url", server.grpc_url, *SMALL], cli_env(tmp_path / "ph", prefect_server),
                      tmp_path / "run.log")
    try:
        wait_until(lambda: list((out / ".alps" / "shards").glob("*.npz")), "the first image labelled", proc=proc)
        os.kill(server.process.pid, signal.SIGSTOP)
        wait_until(lambda: _unread_requests(server.grpc_port), "a request waiting in the stalled server", proc=proc)
        os.killpg(proc.pid, signal.SIGINT)
        assert wait_for_exit(proc, 60, tmp_path / "run.log") == 130, (tmp_path / "run.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        os.kill(server.process.pid, signal.SIGCONT)
        server.stop()
    (error,) = [ln for ln in (tmp_path / "run.log").read_text().splitlines() if ln.startswith("alps: error:")]
    assert error.startswith("alps: error: interrupted") and "run the same command again" in error


def test_a_hung_server_holds_neither_close_nor_a_new_backend_with_shared_memory(stand_in_repo, tmp_path):
    """A server that stopped answering (SIGSTOP: hung, wedged) under a --shared-memory run: only requests had a
    deadline, and close() blocked for ever unregistering shared memory (the run never exited, never resumed), as
    did a new backend's first control call. Every call now has one; close() frees its local regions regardless."""
    import threading

    server = start_triton(stand_in_repo, tmp_path / "t")
    backend = triton_backend(stand_in_repo, server.grpc_url, shared_memory=True, timeout_s=2.0)
    ended: dict[str, object] = {}

    def in_thread(name, call):
        def run():
            try:
                ended[name] = call()
            except Exception as err:  # noqa: BLE001 (the test looks at which)
                ended[name] = err
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    try:
        backend.encode([make_shapes_image(0)])
        regions = [SHM_DIR / r.name for r in backend._shm._all()]
        assert regions and all(r.exists() for r in regions)
        os.kill(server.process.pid, signal.SIGSTOP)
        closing = in_thread("close", backend.close)
        starting = in_thread("start", lambda: triton_backend(stand_in_repo, server.grpc_url, shared_memory=True,
                                                             timeout_s=2.0))
        for thread in (closing, starting):  # each takes a deadline or two (2 s) with the fix; without, for ever
            thread.join(timeout=60)
        assert not closing.is_alive(), "close() blocked on the hung server"
        assert not starting.is_alive(), "a new backend blocked on the hung server"
        assert ended["close"] is None and not any(r.exists() for r in regions)  # freed here all the same
        assert isinstance(ended["start"], BackendUnavailableError), ended["start"]
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
        backend.close()
        server.stop()


def test_sam2_masks_through_triton_equal_embedded(sam2_stand_in_repo, stand_in_repo, tmp_path):
    """SAM 2.1's repository (image of any size, high-resolution features, mask input for use_m2m) served as is."""
    from alps_client.amg import Sam2MaskGenerator
    from alps_client.backends.embedded import EmbeddedBackend

    server = start_triton(sam2_stand_in_repo, tmp_path)
    backend = triton_backend(sam2_stand_in_repo, server.grpc_url, shared_memory=True)
    embedded = EmbeddedBackend(BackendConfig(model_repository=str(sam2_stand_in_repo), num_threads=2))
    try:
        amg = AmgConfig(points_per_side=8, use_m2m=True)
        image = make_shapes_image(2, size=(150, 230))
        ours = Sam2MaskGenerator(backend, amg).generate(image)
        same_records(ours, Sam2MaskGenerator(embedded, amg).generate(image))
        # A SAM repository given while the server serves SAM 2.1: named, with the next step (found by a helper's
        # SAM 2.1 audit: "the server's model repository differs from the manifest's", no server, no next step)
        from alps_client.errors import ModelSignatureError

        with pytest.raises(ModelSignatureError, match=rf"^Triton server at {server.grpc_url} serves another model than "
                                                       r".+ describes: its 'sam_(en|de)coder' has no (in|out)put .+"
                                                       r": restart Triton on that model repository"):
            triton_backend(stand_in_repo, server.grpc_url)
    finally:
        backend.close()
        server.stop()


KILLED_CLIENT = """
import sys, time
from alps_client.backends.triton import TritonBackend
from alps_client.config import BackendConfig
from tests.shapes import make_shapes_image
backend = TritonBackend(BackendConfig(kind="triton", model_repository=sys.argv[1], triton_urls=(sys.argv[2],),
                                      shared_memory=True))
backend.encode([make_shapes_image(0)])
print("encoded", flush=True)
time.sleep(600)
"""


def test_shared_memory_of_a_killed_client_is_freed_by_the_next_one(triton_server, stand_in_repo):
    """A client killed with SIGKILL leaves its regions in /dev/shm and registered on the server (RAM on both
    sides); the next backend with shared memory removes them, and nothing of a process still running."""
    import tritonclient.grpc as grpcclient

    server = grpcclient.InferenceServerClient(triton_server.grpc_url)

    def registered() -> set[str]:
        return set(server.get_system_shared_memory_status(as_json=True).get("regions", {}))

    # Killed with its process group: Python's resource tracker (a helper process that unlinks a dead client's
    # files, never its registrations) goes too, as when a container or a whole job is killed.
    client = subprocess.Popen([sys.executable, "-c", KILLED_CLIENT, str(stand_in_repo), triton_server.grpc_url],
                              cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert client.stdout.readline().strip() == "encoded"
    finally:
        os.killpg(client.pid, signal.SIGKILL)
        client.wait()
    owner = region_name(client.pid).rsplit("_", 1)[0] + "_"
    left = {p.name for p in SHM_DIR.glob(f"{owner}*")}
    assert left and left <= registered()  # what the kill left: files and registrations
    running = SHM_DIR / region_name()  # owned by this process, which runs
    running.write_bytes(b"\0")
    backend = triton_backend(stand_in_repo, triton_server.grpc_url, shared_memory=True)
    try:
        backend.encode([make_shapes_image(1)])
        assert not list(SHM_DIR.glob(f"{owner}*")) and not left & registered()
        assert running.exists()
    finally:
        backend.close()
        running.unlink()


def forget_shared_memory(grpc_url: str) -> bool:
    """Unregister every region, as a restarted server forgets them; False while one is still in use.

    Under load the server may still hold the region of a response it has just sent (measured once in a full
    suite run: 'Failed to unregister the following system shared memory regions').
    """
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    try:
        grpcclient.InferenceServerClient(grpc_url).unregister_system_shared_memory()  # all of them
    except InferenceServerException as err:
        if "Failed to unregister" not in str(err):
            raise
        return False
    return True


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_shared_memory_forgotten_by_the_server_is_registered_again(triton_server, stand_in_repo, protocol):
    """What a restarted server does to our regions (forgets them), done by hand: the next image goes through."""
    from alps_client.runs.retry import is_transient

    url = triton_server.grpc_url if protocol == "grpc" else triton_server.http_url
    backend = triton_backend(stand_in_repo, url, protocol=protocol, shared_memory=True)
    try:
        expected = backend.encode([make_shapes_image(2)])[0].features
        wait_until(lambda: forget_shared_memory(triton_server.grpc_url), "the server to forget every region", 60)
        try:
            again = backend.encode([make_shapes_image(2)])[0].features
        except BackendUnavailableError as err:  # transient: the run retries the image
            assert is_transient(err)
            again = backend.encode([make_shapes_image(2)])[0].features
        np.testing.assert_array_equal(again, expected)
    finally:
        backend.close()
