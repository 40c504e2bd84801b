"""The exporter's safety: checkpoints load as tensors only, and a failed parity check is one line, nothing written."""

from __future__ import annotations

import functools
import os
import pathlib
import subprocess
import sys

import pytest

from export import onnx_export, triton_repo
from export.export_sam import main
from tests.conftest import REPO_ROOT, exports_copied_from


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


def test_a_failed_parity_check_is_one_line_and_writes_nothing(stand_in_repo, tmp_path, monkeypatch, capsys):
    """Also: the staging folder of an export that was killed is removed, that of one still running is kept."""
    exports_copied_from(monkeypatch, onnx_export, stand_in_repo)
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


def test_a_failed_sam2_check_is_the_same_one_line(sam2_stand_in_repo, tmp_path, monkeypatch, capsys):
    """SAM 2.1's parity failure was a 20-line traceback (SAM's path alone wrapped its check); now it is SAM's one
    line, exit code 1, and nothing is written."""
    from export import sam2_export, sam2_onnx, sam2_parity

    exports_copied_from(monkeypatch, sam2_onnx, sam2_stand_in_repo)

    strict = functools.partial(sam2_parity.check_parity, encoder_rtol=0.0, decoder_atol=0.0)
    monkeypatch.setattr(sam2_export, "check_parity", strict)  # the real check, no tolerance: float rounding fails it
    assert main(["--model-type", "sam2-stand-in", "--cpu", "--out", str(tmp_path / "repo")]) == 1
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("export_sam: error:")]
    assert len(lines) == 1 and "ONNX/PyTorch parity failed" in lines[0] and "Traceback" not in err, err
    assert not (tmp_path / "repo" / "manifest.json").exists()


def test_a_file_onnxruntime_cannot_load_fails_the_check_in_one_line(tmp_path):
    """onnxruntime's own exceptions are not RuntimeErrors: the wrapping both export paths share let them through
    as tracebacks (here: a file that is not ONNX at all, as the checks open it)."""
    from export.errors import ExportCheckError, check_failures_as_one_line

    (tmp_path / "broken.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(ExportCheckError, match=r"^onnxruntime cannot run the exported model \(.+\); the export is "
                                               r"not usable and nothing was written") as err, \
            check_failures_as_one_line():
        onnx_export.check_session(tmp_path / "broken.onnx")
    assert "\n" not in str(err.value)
    with pytest.raises(MemoryError), check_failures_as_one_line():  # anything else is not a failed check
        raise MemoryError



def test_arguments_export_cannot_honour_are_refused_before_exporting(tmp_path, capsys):
    """--max-batch-size 0 failed with a traceback after the whole export (in the Triton config); --opset 17 was
    recorded in the manifest while the files stayed at opset 18 (the exporter's conversion down failed part-way);
    so was --opset 99, past the newest opset onnx knows (the conversion up failed, logged as noise, exit 0)."""
    newest = onnx_export.max_opset()
    for args, said in ((["--max-batch-size", "0"], "--max-batch-size must be 1 or more"),
                       (["--opset", "17"], f"--opset 17: the ONNX exporter writes opset {onnx_export.OPSET} or newer"),
                       (["--opset", "99"], (f"--opset 99: the installed onnx converts to opsets 18 to {newest}; give "
                                           "--opset in that range")),
                       (["--model-type", "sam2-stand-in", "--opset", str(newest + 1)],
                        f"--opset {newest + 1}: the installed onnx converts to opsets 18 to {newest}")):
        assert main(["--model-type", "stand-in", "--cpu", "--out", str(tmp_path / "repo"), *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"export_sam: error: {said}") and len(err.splitlines()) == 1
    assert not (tmp_path / "repo").exists()


def test_an_opset_the_exporter_did_not_reach_is_refused_and_the_manifest_records_the_files(stand_in_repo, tmp_path):
    """A conversion that fails within onnx's range is only logged by onnxscript, and the graph stays at opset 18:
    writing it was an export "at" the opset asked for. The manifest records the opset read from the files."""
    import json

    import pytest
    import torch

    from export.errors import ExportError

    program = torch.onnx.export(torch.nn.Linear(2, 2).eval(), (torch.zeros(2, 2),), dynamo=True,
                                opset_version=onnx_export.OPSET, verbose=False)  # what a failed conversion hands back
    path = tmp_path / "sam_encoder" / "1" / "model.onnx"
    with pytest.raises(ExportError, match=rf"^--opset 20: the ONNX exporter could not convert sam_encoder's graph to "
                                          rf"opset 20 \(it stayed at opset {onnx_export.OPSET}\); give a lower --opset"):
        onnx_export._save(program, path, 20)
    assert not path.exists()
    onnx_export._save(program, path, onnx_export.OPSET)
    assert onnx_export.written_opset(path) == onnx_export.OPSET
    manifest = json.loads((stand_in_repo / "manifest.json").read_text())
    assert {onnx_export.written_opset(stand_in_repo / manifest["models"][key]["path"])
            for key in ("encoder", "decoder")} == {manifest["export"]["opset"]}


def test_a_full_disk_during_export_is_one_line_and_keeps_the_previous_repository(stand_in_repo, tmp_path,
                                                                                 monkeypatch, capsys):
    """The staged repository met a full disk (ENOSPC from the ONNX save): a traceback before."""
    import errno
    import shutil

    repo = pathlib.Path(shutil.copytree(stand_in_repo, tmp_path / "repo"))
    before = {p.relative_to(repo): p.read_bytes() for p in repo.rglob("*") if p.is_file()}

    def no_space(model, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(onnx_export, "export_encoder", no_space)
    assert main(["--model-type", "stand-in", "--cpu", "--out", str(repo)]) == 1
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("export_sam: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("export_sam: error: no space left on the disk while writing ") and "free space" in lines[0]
    assert {p.relative_to(repo): p.read_bytes() for p in repo.rglob("*") if p.is_file()} == before


def test_an_export_over_another_model_says_which_it_replaced(sam2_stand_in_repo, stand_in_repo, tmp_path, capsys,
                                                             monkeypatch):
    """Exporting into a repository that held another model replaced it without a word; datasets labelled with the
    old model are then refused by `alps run` (another model's shards), which the user could not trace back."""
    import json
    import shutil

    exports_copied_from(monkeypatch, onnx_export, stand_in_repo)
    repo = pathlib.Path(shutil.copytree(sam2_stand_in_repo, tmp_path / "repo"))
    old = json.loads((repo / "manifest.json").read_text())
    assert main(["--model-type", "stand-in", "--cpu", "--out", str(repo)]) == 0
    said = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("It replaced")]
    assert said == [(f"It replaced {old['note']}, exported {old['created']}: `alps run` refuses to add to datasets "
                     "labelled with that model (use a new --out, or --overwrite to relabel them); export into another "
                     "folder to keep both models.")]
    assert json.loads((repo / "manifest.json").read_text())["model_family"] == "sam"
    assert triton_repo.previous_manifest(tmp_path / "new") is None  # a new folder: nothing to say
    # The same model exported again (the same bytes): datasets labelled with it go on, nothing to say.
    same = json.loads((repo / "manifest.json").read_text())
    assert triton_repo.replaced_model(same, {**same, "created": "later"}) is None
