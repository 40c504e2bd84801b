"""The exporter's safety: checkpoints load as tensors only, and a failed parity check is one line, nothing written."""

from __future__ import annotations

import functools
import os
import pathlib
import subprocess
import sys

from export import onnx_export
from export.export_sam import main
from tests.conftest import REPO_ROOT


class _Planted:
    """Unpickling this touches a file: what a hostile checkpoint could do with any code."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_a_checkpoint_with_pickled_code_is_refused_and_never_run(tmp_path):
    import torch

    from export.export_sam import TINY_TEST_ARGS
    from export.tv_shim import install_torchvision_shim

    install_torchvision_shim()
    from segment_anything.build_sam import _build_sam

    marker = tmp_path / "code-ran"
    state = _build_sam(checkpoint=None, **TINY_TEST_ARGS).state_dict()
    torch.save({**state, "planted": _Planted(marker)}, tmp_path / "hostile.pth")
    # torch < 2.6 loads with weights_only=False unless told otherwise: this variable makes torch 2.13 do the same
    # for callers that do not pass weights_only (as segment-anything's builder), so the test fails without the fix.
    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    result = subprocess.run([sys.executable, "export/export_sam.py", "--model-type", "tiny-test", "--checkpoint",
                             str(tmp_path / "hostile.pth"), "--cpu", "--out", str(tmp_path / "repo")],
                            check=False, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("export_sam: error:")]
    assert len(lines) == 1 and "holds more than tensors" in lines[0]
    assert not marker.exists()


def test_a_failed_parity_check_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    """Also: the staging folder of an export that was killed is removed, that of one still running is kept."""
    repo = tmp_path / "repo"
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()  # its pid names no process now: the export it stands for was killed
    killed = repo / f".export-{gone.pid}-x1" / "sam_encoder" / "1"
    killed.mkdir(parents=True)
    (killed / "model.onnx.data").write_bytes(b"\0" * 1024)
    running = repo / f".export-{os.getpid()}-x2"
    running.mkdir()
    # The real check, with no tolerance at all: the stand-in's float rounding (~1e-8) fails it.
    monkeypatch.setattr(onnx_export, "check_parity",
                        functools.partial(onnx_export.check_parity, encoder_rtol=0.0, decoder_atol=0.0))
    assert main(["--model-type", "stand-in", "--cpu", "--out", str(repo)]) == 1
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("export_sam: error:")]
    assert len(lines) == 1 and "parity failed" in lines[0] and "Traceback" not in err
    assert not (repo / "manifest.json").exists()
    assert not any(repo.glob("sam_*"))
    assert [p.name for p in repo.iterdir()] == [running.name]

