"""A tiny SAM checkpoint and its export, shared by the export tests (one export per session)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny SAM configuration with seeded random weights, saved as Meta's checkpoints are (a state_dict)."""
    import torch

    from export.export_sam import TINY_TEST_ARGS
    from export.tv_shim import install_torchvision_shim

    install_torchvision_shim()
    from segment_anything.build_sam import _build_sam

    torch.manual_seed(123)
    sam = _build_sam(checkpoint=None, **TINY_TEST_ARGS)
    path = tmp_path_factory.mktemp("ckpt") / "sam_tiny_test.pth"
    torch.save(sam.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def tiny_repo(tiny_checkpoint, tmp_path_factory) -> Path:
    """``tiny_checkpoint`` exported to a model repository (fp32, CPU configs)."""
    from export.export_sam import run_export

    out = tmp_path_factory.mktemp("tiny_repo")
    run_export("tiny-test", out, checkpoint=str(tiny_checkpoint), cpu=True, log=lambda *_: None)
    return out
