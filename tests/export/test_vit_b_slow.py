"""vit_b-sized checks, run by hand with `make test-slow` (minutes and ~9 GB of memory on 2 cores)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.shapes import make_shapes_image

pytestmark = pytest.mark.slow


def test_vit_b_random_init_export_and_embedded_run(tmp_path, capsys):
    from alps_client.backends.embedded import EmbeddedBackend
    from alps_client.config import BackendConfig
    from export.export_sam import run_export

    run_export("vit_b", tmp_path, random_init=True, cpu=True)
    assert "RANDOM weights" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["random_init"] and "RANDOM" in manifest["note"]
    assert manifest["parity"]["encoder_max_rel_diff"] <= 1e-3
    backend = EmbeddedBackend(BackendConfig(model_repository=str(tmp_path), num_threads=2))
    (embedding,) = backend.encode([make_shapes_image(size=(300, 400))])
    out = backend.decode(embedding, np.full((5, 1, 2), 500, np.float32), np.ones((5, 1), np.float32))
    assert out.low_res_masks.shape == (5, 3, 256, 256) and np.isfinite(out.low_res_masks).all()
