"""Embedded onnxruntime backend: chunked decoding, signature checks, clear errors."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alps_client.backends.embedded import CPU_PROMPTS_PER_CALL, EmbeddedBackend
from alps_client.backends.manifest import load_manifest
from alps_client.config import BackendConfig
from alps_client.errors import DependencyNotFoundError, ModelRepositoryError, ModelSignatureError
from alps_client.runs.retry import is_transient
from tests.shapes import make_shapes_image


def test_chunked_decode_equals_one_call(embedded_backend, monkeypatch):
    image = make_shapes_image(seed=2)
    (embedding,) = embedded_backend.encode([image])
    assert embedding.features.shape == (256, 64, 64) and embedding.features.dtype == np.float32
    rng = np.random.RandomState(0)
    coords = rng.uniform(0, 700, (10, 1, 2)).astype(np.float32)
    labels = np.ones((10, 1), np.float32)
    whole = embedded_backend.decode(embedding, coords, labels)
    monkeypatch.setattr(type(embedded_backend), "prompt_batch_size", property(lambda self: 3))
    chunked = embedded_backend.decode(embedding, coords, labels)
    assert whole.low_res_masks.shape == (10, 3, 256, 256) and whole.iou_predictions.shape == (10, 3)
    np.testing.assert_array_equal(whole.low_res_masks, chunked.low_res_masks)
    np.testing.assert_array_equal(whole.iou_predictions, chunked.iou_predictions)


def test_bad_prompt_shapes(embedded_backend):
    (embedding,) = embedded_backend.encode([make_shapes_image()])
    with pytest.raises(ValueError, match=r"point_coords must be \(B, N, 2\)"):
        embedded_backend.decode(embedding, np.zeros((4, 2), np.float32), np.zeros((4,), np.float32))


def test_missing_repository_says_how_to_build_one(tmp_path):
    with pytest.raises(ModelRepositoryError, match="export/export_sam.py --model-type stand-in"):
        EmbeddedBackend(BackendConfig(model_repository=str(tmp_path / "absent")))


def test_missing_repository_is_named_in_the_command_to_build_one(tmp_path):
    with pytest.raises(ModelRepositoryError, match=re.escape(f"--out {tmp_path / 'absent'}`")):  # not a literal {root}
        load_manifest(tmp_path / "absent")


@pytest.mark.parametrize(("edit", "said"), [
    (lambda m: [m], r"not a manifest \(a JSON list, not an object\)"),
    (lambda m: {k: v for k, v in m.items() if k != "model_type"}, r"incomplete manifest \(no 'model_type'\)"),
    (lambda m: {**m, "models": {**m["models"], "decoder": {k: v for k, v in m["models"]["decoder"].items()
                                                            if k != "sha256"}}}, r"incomplete manifest \(no 'sha256'\)"),
    (lambda m: {**m, "image_size": "big"}, r"incomplete manifest \(ValueError: invalid literal"),
], ids=["list", "no-model-type", "no-sha256", "bad-image-size"])
def test_an_edited_manifest_is_one_line(stand_in_repo, tmp_path, edit, said):
    """A manifest edited by hand or cut: a KeyError / AttributeError traceback before."""
    repo = Path(shutil.copytree(stand_in_repo, tmp_path / "repo"))
    (repo / "manifest.json").write_text(json.dumps(edit(json.loads((repo / "manifest.json").read_text()))))
    with pytest.raises(ModelRepositoryError, match=said) as info:
        load_manifest(repo)
    assert str(info.value).endswith("re-run export/export_sam.py") and "\n" not in str(info.value)


def test_model_files_replaced_under_their_manifest_are_refused_before_any_image(stand_in_repo, tmp_path):
    """Another export's model.onnx copied over a repository: the run said it used the manifest's model, and its
    earlier shards (made with the old files, fingerprinted by the manifest's sha256s) were skipped as current."""
    from alps_client.config import PipelineConfig
    from alps_client.runs.plan import check_request

    repo = Path(shutil.copytree(stand_in_repo, tmp_path / "repo"))
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(make_shapes_image()).save(images / "a.png")
    config = PipelineConfig(backend=BackendConfig(model_repository=str(repo)))
    check_request(images, config)  # the export as written
    onnx = repo / "sam_decoder" / "1" / "model.onnx"
    onnx.write_bytes(onnx.read_bytes() + b"\0")  # what any other bytes look like to the manifest
    with pytest.raises(ModelRepositoryError, match=rf"{onnx}: these model files are not the ones its manifest's "
                                                   r"export wrote \(sha256 [0-9a-f]{12}\.\.\., the manifest says"):
        check_request(images, config)


def test_manifest_naming_a_tensor_the_model_lacks(stand_in_repo, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(stand_in_repo, repo)
    manifest = json.loads((repo / "manifest.json").read_text())
    manifest["models"]["decoder"]["inputs"]["point_coords"]["name"] = "coords"
    (repo / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelSignatureError, match="manifest input 'coords'"):
        EmbeddedBackend(BackendConfig(model_repository=str(repo)))


OUT_OF_MEMORY_SCRIPT = '''
import resource, sys
import numpy as np
from alps_client.backends.embedded import EmbeddedBackend
from alps_client.config import BackendConfig
from alps_client.errors import BackendOutOfMemoryError
from alps_client.runs.retry import is_transient


def address_space():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))


backend = EmbeddedBackend(BackendConfig(model_repository=sys.argv[1], num_threads=1))
image = np.zeros((64, 64, 3), np.uint8)
backend.encode([image])
_, hard = resource.getrlimit(resource.RLIMIT_AS)
resource.setrlimit(resource.RLIMIT_AS, (address_space() + 16 * 2**20, hard))  # a machine whose memory ran out
try:
    backend.encode([image])
    print("no error")
except BackendOutOfMemoryError as err:
    print("transient" if is_transient(err) else "permanent", err)
resource.setrlimit(resource.RLIMIT_AS, (hard, hard))  # the other work is gone
print("encoded again:", backend.encode([image])[0].features.shape)
'''


def test_onnxruntime_out_of_memory_is_a_transient_failure_the_same_backend_recovers_from(stand_in_repo, tmp_path):
    """A real onnxruntime session in a process whose address space is capped: its allocation failure (FAIL:
    bad_alloc, no error type of its own) is retried by the run, not a permanent failure of the image."""
    import subprocess
    import sys

    script = tmp_path / "oom.py"
    script.write_text(OUT_OF_MEMORY_SCRIPT)
    result = subprocess.run([sys.executable, str(script), str(stand_in_repo)], capture_output=True, text=True,
                            timeout=300, check=False)
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stderr[-2000:]
    assert lines[0].startswith("transient onnxruntime could not allocate memory for the encoder ("), lines
    assert lines[1] == "encoded again: (256, 64, 64)"


def test_a_closed_backend_says_so_and_is_not_retried(stand_in_repo):
    """A run stopped under an image closes the backend while the image is in it: its next call must say that,
    not fail on a missing session (a bare ``KeyError: 'decoder'`` read as the image's failure)."""
    from alps_client.errors import BackendClosedError
    from alps_client.runs.retry import is_transient

    backend = EmbeddedBackend(BackendConfig(model_repository=str(stand_in_repo), num_threads=1))
    (embedding,) = backend.encode([make_shapes_image()])
    backend.close()
    with pytest.raises(BackendClosedError, match="no decoder session") as err:
        backend.decode(embedding, np.zeros((1, 1, 2), np.float32), np.ones((1, 1), np.float32))
    assert not is_transient(err.value)
    with pytest.raises(BackendClosedError, match="no encoder session"):
        backend.encode([make_shapes_image()])


def test_a_gpu_provider_that_cannot_start_is_an_error_not_a_silent_cpu_run(stand_in_repo):
    """onnxruntime goes on with the next provider when the first cannot start (here: a CPU-only onnxruntime; on a
    GPU machine: CUDA's libraries missing). Asked for CUDA, the backend must say so, not run on the CPU with the
    GPU's prompt batches; left to choose, it runs on the CPU and says why."""
    message = r"could not start CUDAExecutionProvider for .*sam_encoder.*model\.onnx.*onnxruntime-gpu\[cuda,cudnn\]"
    with pytest.raises(DependencyNotFoundError, match=message) as err:
        EmbeddedBackend(BackendConfig(model_repository=str(stand_in_repo), num_threads=1),
                        providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert not is_transient(err.value)  # a missing library: retrying cannot help


def test_left_to_choose_a_gpu_that_cannot_start_it_runs_on_the_cpu_and_says_so(stand_in_repo, monkeypatch, caplog):
    import onnxruntime as ort

    cpu_only = ort.get_available_providers()
    assert "CUDAExecutionProvider" not in cpu_only  # a CPU-only onnxruntime, made to list CUDA, which cannot start
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *cpu_only])
    with caplog.at_level("WARNING", logger="alps_client.backends.embedded"):
        backend = EmbeddedBackend(BackendConfig(model_repository=str(stand_in_repo), num_threads=1))
    assert backend.providers == ["CPUExecutionProvider"]
    assert not backend.on_gpu and backend.prompt_batch_size == CPU_PROMPTS_PER_CALL
    assert "could not start CUDAExecutionProvider" in caplog.text and "running on the CPU" in caplog.text
    (embedding,) = backend.encode([make_shapes_image()])
    out = backend.decode(embedding, np.full((2, 1, 2), 100, np.float32), np.ones((2, 1), np.float32))
    assert out.low_res_masks.shape == (2, 3, 256, 256)


def test_the_cpu_provider_is_reported_as_running(stand_in_repo):
    backend = EmbeddedBackend(BackendConfig(model_repository=str(stand_in_repo), num_threads=1),
                              providers=["CPUExecutionProvider"])
    assert backend.providers == ["CPUExecutionProvider"] and not backend.on_gpu


def test_sessions_do_not_spin_wait(embedded_backend, stand_in_repo):
    """The run's sessions and the exporter's check sessions leave idle cores to other work (session_settings says
    why): onnxruntime spins by default."""
    from export.onnx_export import check_session

    key = "session.intra_op.allow_spinning"
    for name, session in embedded_backend._sessions.items():
        assert session.get_session_options().get_session_config_entry(key) == "0", name
    check = check_session(load_manifest(str(stand_in_repo)).encoder.onnx_path, threads=1)
    assert check.get_session_options().get_session_config_entry(key) == "0"
