"""Embedded onnxruntime backend: chunked decoding, signature checks, clear errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from alps_client.backends.embedded import EmbeddedBackend
from alps_client.config import BackendConfig
from alps_client.errors import ModelRepositoryError, ModelSignatureError
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
