"""`alps` as a user runs it (subprocesses): one line and an exit code for every failure, resume after one."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pydantic
import pytest

from alps_client.backends.fake import write_fake_repository
from alps_client.config import PipelineConfig, overlay_config
from flows.cli import main, make_parser
from flows.exits import EXIT_TERMINATED
from flows.run_arguments import build_config
from tests.conftest import ODD_SHAPE
from tests.mmseg_checks import mmseg_listing
from tests.runs import (
    ALPS,
    CWD,
    HOLD_LOCK,
    SMALL,
    cli_env,
    error_lines,
    flow_run_of,
    labels,
    prefect_api,
    run_alps,
    start_alps,
    wait_until,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{tmp}/absent"], "does not exist"),
        (["{tmp}/empty"], "no readable images"),
        (["{tmp}/dicom"], ("found 2 .dcm file(s): DICOM is not read: convert each series to a NIfTI volume "
                           "(dcm2niix -z y -o DIR SERIES) and label those; 1 .gif file(s): GIF is not read: convert to "
                           "PNG; 1 .mhd file(s): MetaImage is not read")),  # each format found, with its advice
        (["{tmp}/dicom/series/IM0002.dcm"], "found 1 .dcm file(s): DICOM is not read"),  # one file given: same
        (["{data}", "--model-repository", "{tmp}/nope"], "export/export_sam.py"),
        (["{data}", "--backend", "triton", "--shared-memory", "--triton-url", "h1:8001", "--triton-url", "h2:8001"],
         "one --triton-url with --shared-memory"),
        (["{data}", "--triton-url", "gpu1:8001"], "--triton-url applies to --backend triton, which is not given (the "
                                                   "run would label with the embedded onnxruntime backend)"),  # unsaid
        (["{data}", "--protocol", "http", "--shared-memory"], "--protocol and --shared-memory apply to --backend "
                                                               "triton, which is not given"),
        (["{data}", "--retries", "-1"], "--retries must be >= 0"),
        (["{data}", "--points-per-side", "100000"], "--points-per-side must lie in 1..1024"),  # retried, "resumable"
        (["{data}", "--pred-iou-thresh", "2"], "--pred-iou-thresh must lie in [0, 1], got 2.0"),  # labelled all, then 2
        (["{data}", "--stability-score-thresh", "-0.5"], "--stability-score-thresh must lie in [0, 1]"),
        (["{data}", "--seed", "-1"], "--seed must lie in 0..4294967295, got -1"),  # k-means refused it after labelling
        (["{data}", "--use-m2m"], "--use-m2m: SAM 2.1 only (its generator's parameters); "),  # the flag given
        (["{data}", "--config", "{tmp}/m2m.yaml"], "(--use-m2m: set by --config {tmp}/m2m.yaml)"),  # never given
        (["{data}", "--concurrency", "0"], "--concurrency must be >= 1"),
        (["{data}", "--dask-workers", "-1"], "--dask-workers must be >= 1"),  # hung starting Dask
        (["{data}", "--dask-workers", "2", "--dask-address", "tcp://127.0.0.1:1"], "give one of them"),  # 2 ignored
        (["{data}", "--cluster-backend", "cuml"], "cuml is not installed"),  # said once every image was labelled
        (["{data}", "--centroids", "{tmp}/absent.npy"], "not a readable .npy file"),  # was read after labelling
        (["{data}", "--centroids", "{tmp}/four.npy", "--n-clusters", "8"],
         "--n-clusters 8, but --centroids {tmp}/four.npy holds 4 centroids, one per cluster"),  # 8 was ignored unsaid
        (["{data}", "--config", "{tmp}/four.yaml", "--n-clusters", "8"], "one per cluster: leave --n-clusters out "
         "(--centroids: set by --config {tmp}/four.yaml (relative paths in it start in its folder))"),
        (["{data}", "--out", "{tmp}/a_file/o"], "cannot create or write the output folder (Not a directory)"),
        (["{data}", "--out", "{tmp}/link"], ("--out {tmp}/link: {tmp}/link is a symbolic link to {tmp}/nowhere, "
                                             "which does not exist; create it (mkdir -p {tmp}/nowhere) or give "
                                             "another --out")),
        (["{data}", "--out", "{tmp}/link/o"], "--out {tmp}/link/o: {tmp}/link is a symbolic link to {tmp}/nowhere"),
        (["{data}", "--stitch"], "--stitch applies to the tiles of --tile"),  # did nothing
        (["{data}", "--intensity-window", "1000", "-1000"],
         "--intensity-window must be (low, high) with low < high, got (1000.0, -1000.0)"),  # named by its flag
        (["{data}", "--intensity-window", "5", "nan"], "--intensity-window must be 2 finite numbers, got (5.0, nan)"),
        (["{data}", "--pred-iou-thresh", "nan"], "--pred-iou-thresh must be a finite number, got nan"),  # "or None"
        (["{data}", "--retry-delay-s", "-1"], "0 <= --retry-delay-s <= --retry-max-delay-s, got -1.0 and 30.0"),
        (["{data}", "--tile", "100", "--overlap", "200"], "--overlap must lie in [0, --tile), got 200"),
        (["{data}", "--split-group", "("], "--split-group '(' is not a regular expression: missing )"),
        (["{data}", "--out", "{tmp}/r\udce9sultats"], r"--out {tmp}/r\xe9sultats is not UTF-8 text"),  # a traceback
        (["{data}", "--model-repository", "{tmp}/m\udce9"], r"--model-repository {tmp}/m\xe9 is not UTF-8"),
        (["{data}", "--backend", "triton", "--triton-url", "h\udce9:1"], r"--triton-url h\xe9:1 is not UTF-8"),  # was --triton-urls
    ],
)
def test_a_request_that_cannot_run_gives_one_line_and_exit_2(fault_data, fake_repo, tmp_path, args, message, capsys):
    """In this process: these checks run before any server or import of Prefect's (``alps`` as a program: the
    flow script test below)."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    (tmp_path / "dicom" / "series").mkdir(parents=True)  # as scanners write them: with and without an extension
    (tmp_path / "dicom" / "series" / "IM0001").write_bytes(b"\0" * 128 + b"DICM" + b"\2\0")
    (tmp_path / "dicom" / "series" / "IM0002.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\2\0")
    (tmp_path / "dicom" / "series" / "scout.gif").write_bytes(b"GIF89a")
    (tmp_path / "dicom" / "atlas.mhd").write_text("ObjectType = Image\nElementDataFile = atlas.raw\n")
    (tmp_path / "a_file").write_text("an --out under a file (was a traceback from the API server's start)")
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")  # dangling: "File exists" was said
    four = np.random.default_rng(0).random((4, 256), np.float32)
    np.save(tmp_path / "four.npy", four / np.linalg.norm(four, axis=1, keepdims=True))  # as a run fits them
    (tmp_path / "m2m.yaml").write_text("amg: {use_m2m: true}\n")
    (tmp_path / "four.yaml").write_text("cluster: {centroids: four.npy}\n")
    args = [a.format(tmp=tmp_path, data=fault_data) for a in args]
    if "--model-repository" not in args:
        args += ["--model-repository", str(fake_repo)]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "o")]
    assert main(["run", *args]) == 2
    printed = capsys.readouterr()
    message = message.format(tmp=tmp_path)
    assert len(error_lines(printed.err)) == 1 and message in error_lines(printed.err)[0], printed.err
    assert "Traceback" not in printed.err + printed.out
    assert not (tmp_path / "o").exists()  # nothing new: not even the folder (an empty OUT/.alps was left)


def test_vectors_without_their_packages_are_refused_before_labelling(fault_data, fake_repo, tmp_path, monkeypatch,
                                                                     capsys):
    """`--vector` without shapely (the `geo` extra) failed after every image was labelled and clustered. The hint
    names the extra's packages together (it named one at a time: rasterio, then shapely, ...)."""
    monkeypatch.setitem(sys.modules, "shapely.geometry", None)  # as if not installed
    assert main(["run", str(fault_data), "--out", str(tmp_path / "o"), "--model-repository", str(fake_repo),
                 "--vector", "gpkg"]) == 2
    assert error_lines(capsys.readouterr().err) == [(
        "alps: error: shapely.geometry is not installed, but this feature needs it; install it with: pip install "
        "rasterio nibabel pyogrio shapely pyproj (alps's geo extra: pip install '.[geo]' in its source folder)")]
    assert not (tmp_path / "o" / ".alps" / "shards").exists()


def test_the_flow_script_is_the_same_command(tmp_path):
    """`python flows/alps_flow.py ...` runs `alps run ...` (no import cycle: the CLI takes the process's place)."""
    result = subprocess.run([sys.executable, "flows/alps_flow.py", str(tmp_path / "absent"), "--out", str(tmp_path / "o")],
                            check=False, cwd=CWD, env=cli_env(tmp_path / "ph"), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and error_lines(result.stderr) == [
        f"alps: error: dataset path {tmp_path / 'absent'} does not exist"]


def test_an_error_without_a_message_still_gives_one_named_line(capsys):
    from alps_client.runs.retry import describe
    from flows.console import fail

    assert fail(describe(RuntimeError())) == 2
    assert capsys.readouterr().err == "alps: error: RuntimeError\n"
    assert fail("a line\nanother", 3) == 3  # each line a named one
    assert capsys.readouterr().err == "alps: error: a line\nalps: error: another\n"


@pytest.mark.parametrize("err", [
    ImportError("libgomp-e985bcbb.so.1.0.0: failed to map segment from shared object"),  # k-means under ulimit -v
    MemoryError(),
])
def test_a_run_out_of_memory_after_labelling_is_resumable_not_a_bug(err, tmp_path, capsys):
    """All images labelled, then k-means' OpenMP library could not be mapped under a memory limit: exit 1,
    "internal error ... please report it", where a lack of memory is the machine's (exit 3, the same command)."""
    from types import SimpleNamespace

    from prefect.states import Failed

    from flows.run_cli import _outcome

    failed = Failed(data=err)  # the state a flow run that raised it ends in
    assert _outcome(failed, SimpleNamespace(out=str(tmp_path / "out"))) == 3
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("alps: error: the run ran out of memory (") and line.endswith(
        "run the same command again to resume") and "internal" not in line



def _raised_while_handling(stop: BaseException | None) -> BaseException:
    """An HTTP error raised while handling ``stop``, as Prefect's crash report through a dead API raises it."""
    import httpx

    try:
        try:
            if stop is not None:
                raise stop
        finally:
            raise httpx.ConnectError("All connection attempts failed")
    except httpx.ConnectError as err:
        return err


def test_a_stop_behind_an_api_error_keeps_its_exit_status():
    from prefect.exceptions import TerminationSignal

    from flows.exits import Terminated, stop_code

    assert stop_code(_raised_while_handling(KeyboardInterrupt())) == 130
    assert stop_code(_raised_while_handling(TerminationSignal(signal=15))) == 143
    assert stop_code(_raised_while_handling(Terminated())) == 143
    assert stop_code(_raised_while_handling(None)) is None  # the API died on its own
    looped = _raised_while_handling(ValueError("a"))
    looped.__context__.__context__ = looped  # a cycle ends the walk, without a stop found
    assert stop_code(looped) is None

def test_alps_triton_url_names_the_servers(monkeypatch):
    """The variable lists servers as a shell does (spaces, a trailing comma), and a message about them names it,
    not ``--triton-url``, which was not given. A run on the embedded backend does not read it."""
    monkeypatch.setenv("ALPS_TRITON_URL", " gpu1:8001, gpu2:8001,")
    args = make_parser().parse_args(["run", "data", "--out", "o", "--backend", "triton"])
    assert build_config(args).backend.triton_urls == ("gpu1:8001", "gpu2:8001")
    args = make_parser().parse_args(["run", "data", "--out", "o", "--backend", "triton", "--triton-url", "h:1"])
    assert build_config(args).backend.triton_urls == ("h:1",)  # the flag wins
    assert build_config(make_parser().parse_args(["run", "data", "--out", "o"])).backend.triton_urls != (
        "gpu1:8001", "gpu2:8001")  # embedded: the defaults, unread
    monkeypatch.setenv("ALPS_TRITON_URL", "http://127.0.0.1:8000")
    with pytest.raises(ValueError, match=r"^ALPS_TRITON_URL \(the environment\) must be host:port without a scheme, "
                                         r"got 'http://127.0.0.1:8000': give 127.0.0.1:8000 \(the scheme goes to "
                                         r"--protocol http\)$"):
        build_config(make_parser().parse_args(["run", "data", "--out", "o", "--backend", "triton"]))


def test_a_config_file_gives_every_setting_and_the_flags_given_override_it(tmp_path, monkeypatch, capsys):
    """Settings without a flag (k-means' batch, the stretch's percentiles) had no way in from the command line, and a
    dataset's recorded settings none to label another dataset as it was labelled."""
    from alps_client.errors import AlpsError

    def config(*flags: str) -> PipelineConfig:
        return build_config(make_parser().parse_args(["run", "data", "--out", "o", *flags]))

    settings = tmp_path / "settings"
    settings.mkdir()
    (settings / "alps.yaml").write_text("amg: {points_per_side: 16, pred_iou_thresh: 0.8}\ncluster:\n  batch_size: 8192"
                                        "\n  centroids: ../c.npy\ninputs: {stretch_percentiles: [1, 99]}\n"
                                        "backend: {model_repository: repo}\n")
    monkeypatch.chdir(tmp_path)  # relative paths in the file are the file's folder's, not the current one's
    given = config("--config", "settings/alps.yaml", "--points-per-side", "8", "--seed", "3")
    assert given.amg.points_per_side == 8 and given.amg.pred_iou_thresh == 0.8  # the flag wins, the file fills in
    assert given.cluster.batch_size == 8192 and given.inputs.stretch_percentiles == (1.0, 99.0)
    assert given.cluster.seed == given.writer.seed == 3 and given.gate == PipelineConfig().gate  # the rest: defaults
    assert given.backend.model_repository == str(settings / "repo") and given.cluster.centroids == str(
        settings / ".." / "c.npy")
    assert config("--config", "settings/alps.yaml", "--model-repository", "/m").backend.model_repository == "/m"
    (settings / "alps.json").write_text(json.dumps({"writer": {"copy_images": False}, "gate": {"sigma": 0.5}}))
    assert config("--config", "settings/alps.json").writer.copy_images is False  # JSON too
    # a dataset alps wrote (its folder or manifest.json): its config; a --tile of its own gets its own overlap
    recorded = PipelineConfig.from_dict({"inputs": {"tile": 896}, "amg": {"points_per_side": 12},
                                         "backend": {"model_repository": "/models/sam"}}).to_dict()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "manifest.json").write_text(json.dumps({"format": "alps-dataset/2", "config": recorded}))
    for source in ("out", "out/manifest.json"):
        assert config("--config", source) == PipelineConfig.from_dict(recorded)
    assert config("--config", "out").inputs.overlap == 384
    assert config("--config", "out", "--tile", "512").inputs.overlap == 219  # 3/7 of 512, not 896's 384
    assert config("--config", "out", "--tile", "512", "--overlap", "100").inputs.overlap == 100
    assert config("--config", "out", "--stitch").inputs.stitch  # the file's --tile is --stitch's
    with pytest.raises(ValueError, match="--stitch applies to the tiles of --tile"):
        config("--config", "settings/alps.json", "--stitch")
    # each problem of the file named, with what to do
    (settings / "bad.yaml").write_text("amg: {points_per_sde: 16}\n")
    with pytest.raises(AlpsError, match=r"--config \S+bad.yaml is not valid: config.amg.points_per_sde: not a "
                                        r"setting of config.amg \(its settings: points_per_side, .*correct the file"):
        config("--config", "settings/bad.yaml")
    (settings / "bad.yaml").write_text("gate: {sigma: 3}\n")
    with pytest.raises(AlpsError, match=r"config.gate: sigma must .* got 3"):
        config("--config", "settings/bad.yaml")
    (settings / "bad.yaml").write_text("gate: {sigma: 0.2}\ngate: {sigma: 0.4}\n")
    with pytest.raises(AlpsError, match=r"not valid YAML: key 'gate' given twice .* at line 2 column 1; correct the file and run again$"):
        config("--config", "settings/bad.yaml")
    (settings / "bad.yaml").write_text("- 16\n")
    with pytest.raises(AlpsError, match=r"must be a mapping of settings by part, .* got a list$"):
        config("--config", "settings/bad.yaml")
    with pytest.raises(AlpsError, match=r"--config settings: a folder without a manifest.json \(not a dataset alps "):
        config("--config", "settings")
    with pytest.raises(AlpsError, match=r"--config nowhere.yaml: no such file; give a JSON or YAML file"):
        config("--config", "nowhere.yaml")
    assert main(["run", "data", "--out", str(tmp_path / "o"), "--config", "settings/bad.yaml"]) == 2
    with pytest.raises(SystemExit) as twice:  # the second was read alone, unsaid
        main(["run", "data", "--out", str(tmp_path / "o"), "--config", "a.yaml", "--config", "b.yaml"])
    assert twice.value.code == 2 and "--config given twice (a.yaml and b.yaml)" in capsys.readouterr().err
    (settings / "twice.json").write_text('{"amg": {"points_per_side": 8}, "amg": {"pred_iou_thresh": 0.5}}')
    with pytest.raises(AlpsError, match=r"twice.json: cannot be read .*key 'amg' given twice"):  # was: the last
        config("--config", "settings/twice.json")
    (settings / "tab.yaml").write_text("gate:\n\tsigma: 0.5\n")
    with pytest.raises(AlpsError, match=r"not valid YAML: .* at line 2 column 1 \(indent with spaces, not tabs\)"):
        config("--config", "settings/tab.yaml")
    (settings / "tab.yaml").write_text("gate:\n  sigma:\t0.5\n")  # no indent: spaces would not help there
    with pytest.raises(AlpsError, match=r"at line 2 column 9 \(YAML takes no tab there: use a space\); correct"):
        config("--config", "settings/tab.yaml")
    (settings / "two.yaml").write_text("gate: {sigma: 0.5}\n---\namg: {points_per_side: 8}\n")
    with pytest.raises(AlpsError, match=r"two.yaml: not valid YAML: a second YAML document \('---'\) at line 2 "):
        config("--config", "settings/two.yaml")
    # a field of several types and a part left empty, each said as the file wrote it
    typed = {"cluster: {n_clusters: Auto}": "config.cluster.n_clusters: should be a valid integer or 'auto', got 'Auto'",
             "amg:": "config.amg: should be a mapping of config.amg's settings .*, got null",
             "backend: {kind: Triton}": "config.backend.kind: should be 'embedded' or 'triton', got 'Triton'",
             "inputs: {intensity_window: [0, 1, 2]}": "config.inputs.intensity_window: Tuple should have at most 2 "
                                                      "items after validation, not 3"}  # pydantic's own sentence
    for setting, said in typed.items():
        (settings / "typed.yaml").write_text(setting + "\n")
        with pytest.raises(AlpsError, match=f"typed.yaml is not valid: {said}; correct the file"):
            config("--config", "settings/typed.yaml")
    # the file's values as its check took them (YAML reads 3e-1 as text), and a flag's clash with them said so
    (settings / "values.yaml").write_text("gate: {sigma: 3e-1}\ninputs: {tile: 128, overlap: 100, stitch: true}\n"
                                          "writer: {write_vis: false, write_report: false}\n")
    assert config("--config", "settings/values.yaml").gate.sigma == 0.3
    with pytest.raises(ValueError, match=r"^--overlap must lie in \[0, --tile\), got 100 \(with the settings of "
                                         r"--config settings/values.yaml\)$"):
        config("--config", "settings/values.yaml", "--tile", "64")
    # what a file turns on, a flag turns off (and on)
    undone = config("--config", "settings/values.yaml", "--no-stitch", "--vis", "--report")
    assert not undone.inputs.stitch and undone.writer.write_vis and undone.writer.write_report
    assert not config("--no-stitch").inputs.stitch  # nothing to stitch without --tile: not refused
    (settings / "stitch.yaml").write_text("inputs: {stitch: true}\n")  # did nothing, as --stitch alone would
    with pytest.raises(ValueError, match=r"^--config settings/stitch.yaml sets inputs.stitch, which applies to the "
                                         r"tiles of --tile"):
        config("--config", "settings/stitch.yaml")
    assert not config("--config", "settings/stitch.yaml", "--no-stitch").inputs.stitch
    assert config("--config", "settings/stitch.yaml", "--tile", "64").inputs.stitch
    # an embedded run records Triton's defaults it never used: not taken for the servers of --backend triton
    embedded = PipelineConfig.from_dict({"backend": {"model_repository": "/m"}}).to_dict()
    assert list(embedded["backend"]["triton_urls"]) == ["127.0.0.1:8001"]
    (tmp_path / "out" / "manifest.json").write_text(json.dumps({"format": "alps-dataset/2", "config": embedded}))
    assert config("--config", "out", "--backend", "triton", "--protocol", "http").backend.triton_urls == (
        "127.0.0.1:8000",)  # was gRPC's port
    # a file's own Triton settings are used with --backend triton, and refused without it (never dropped unsaid)
    (settings / "triton.yaml").write_text("backend: {protocol: http, triton_urls: ['10.0.0.9:8000']}\n")
    served = config("--config", "settings/triton.yaml", "--backend", "triton")
    assert served.backend.triton_urls == ("10.0.0.9:8000",) and served.backend.protocol == "http"
    with pytest.raises(ValueError, match=r"^--config settings/triton.yaml sets backend.triton_urls and "
                                         r"backend.protocol, which apply to the Triton backend, not chosen"):
        config("--config", "settings/triton.yaml")
    (settings / "triton.yaml").write_text("backend: {protocol: HTTP}\n")
    with pytest.raises(AlpsError, match=r"config.backend.protocol"):
        config("--config", "settings/triton.yaml", "--backend", "triton")
    # a file's kind: triton is the backend: ALPS_TRITON_URL beats its servers, --triton-url both
    (settings / "triton.yaml").write_text("backend: {kind: triton, triton_urls: ['file-host:8001']}\n")
    monkeypatch.setenv("ALPS_TRITON_URL", "env-host:8001")
    assert config("--config", "settings/triton.yaml").backend.triton_urls == ("env-host:8001",)
    assert config("--config", "settings/triton.yaml", "--triton-url", "flag-host:1").backend.triton_urls == (
        "flag-host:1",)
    monkeypatch.delenv("ALPS_TRITON_URL")
    assert config("--config", "settings/triton.yaml").backend.triton_urls == ("file-host:8001",)
    (settings / "whole.json").write_text(json.dumps(PipelineConfig().to_dict()))  # every field: Triton's defaults
    assert config("--config", "settings/whole.json").backend.kind == "embedded"
    embedded = config("--config", "settings/triton.yaml", "--backend", "embedded")  # a served run's settings, here
    assert embedded.backend.kind == "embedded" and embedded.backend.triton_urls == PipelineConfig().backend.triton_urls
    # YAML's yes / true are no numbers (pydantic read them as 1: no gate, one cluster)
    for setting in ("gate: {sigma: yes}", "cluster: {n_clusters: true}"):
        (settings / "truth.yaml").write_text(setting + "\n")
        with pytest.raises(AlpsError, match=r"is not valid: config\.\w+\.\w+: true is no number"):
            config("--config", "settings/truth.yaml")
    (settings / "truth.yaml").write_text("on: {sigma: 0.2}\n")
    with pytest.raises(AlpsError, match=r"config.true: not a setting of config \(YAML reads a key on, off"):
        config("--config", "settings/truth.yaml")
    (tmp_path / "out" / "manifest.json").write_text(json.dumps({"format": "alps-dataset/2"}))
    with pytest.raises(AlpsError, match=r"this dataset's manifest records no config"):
        config("--config", "out")
    (tmp_path / "repo").mkdir()  # a model repository's manifest.json is no dataset's
    (tmp_path / "repo" / "manifest.json").write_text(json.dumps({"model_type": "vit_b", "model_family": "sam"}))
    with pytest.raises(AlpsError, match=r"^--config repo: not a dataset alps wrote \(its manifest.json is no "):
        config("--config", "repo")


def test_a_run_that_cannot_start_or_cannot_finish_is_completed_by_the_same_command(
        fault_data, fake_repo, fault_reference, prefect_server, tmp_path):
    out = tmp_path / "out"
    args = ["run", fault_data, "--out", out, *SMALL]
    # 1. The Prefect API does not answer: one line, exit 2, nothing labelled.
    dead = run_alps([*args, "--model-repository", fake_repo], cli_env(tmp_path / "ph", f"http://127.0.0.1:{free_port()}/api"))
    assert dead.returncode == 2, dead.stderr[-3000:]
    assert len(error_lines(dead.stderr)) == 1 and "PREFECT_API_URL" in dead.stderr
    assert "Traceback" not in dead.stderr and not (out / ".alps" / "shards").exists()

    # 2. The backend rejects one good image for good: exit 3, no dataset lacking it, the other six kept.
    env = cli_env(tmp_path / "ph", prefect_server)
    faulty = write_fake_repository(tmp_path / "faulty", faults={"permanent_shapes": [ODD_SHAPE]})
    failed = run_alps([*args, "--model-repository", faulty], env)
    assert failed.returncode == 3, failed.stderr[-3000:]
    (line,) = error_lines(failed.stderr)
    assert "1 of 7 image(s) not labelled: fake backend rejects images of 88x120" in line and "--allow-partial" in line
    assert "Traceback" not in failed.stderr + failed.stdout
    assert "NoneType: None" not in failed.stderr  # the image's failure is logged without an empty traceback
    # nor with Prefect's line before it, which said the same with the state's internals (ImageOutcome(failed odd))
    assert "Task run failed with state" not in failed.stderr and "ImageOutcome" not in failed.stderr
    assert "Finished in state Failed('odd: fake backend rejects images of 88x120" in failed.stderr
    assert not (out / "manifest.json").exists() and not (out / "ann_dir").exists()
    last = json.loads((out / ".alps" / "last_run.json").read_text())
    assert [m["stem"] for m in last["missing"]] == ["odd"] and last["errors"] == []  # missing, not a bad input
    assert len(list((out / ".alps" / "shards").glob("*.npz"))) == 6

    # 3. The same command, the fault gone: the missing image is labelled, the rest skipped, the dataset identical.
    again = run_alps([*args, "--model-repository", fake_repo], env)
    assert again.returncode == 0, again.stderr[-3000:]
    last = json.loads((out / ".alps" / "last_run.json").read_text())
    assert last["labelled"] == ["odd"] and len(last["skipped"]) == 6
    assert labels(out) == labels(fault_reference)


def test_allow_partial_lists_missing_images_apart_from_rejected_ones(fault_data, prefect_server, tmp_path):
    faulty = write_fake_repository(tmp_path / "faulty", faults={"permanent_shapes": [ODD_SHAPE]})
    data = tmp_path / "data"
    data.mkdir()
    for p in fault_data.glob("*.png"):
        (data / p.name).write_bytes(p.read_bytes())
    (data / "broken.png").write_bytes(b"")
    out = tmp_path / "out"
    result = run_alps(["run", data, "--out", os.path.relpath(out, CWD), "--model-repository", faulty, *SMALL,
                       "--allow-partial"], cli_env(tmp_path / "ph", prefect_server))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Labelled dataset: {out}  (" in result.stdout  # as the Prefect UI shows it: no folder relative to the run's
    assert "; 6 labelled now, 0 already done)" in result.stdout  # each count in its place (mutation audit)
    rejected, missing = result.stdout.split("1 input(s) rejected")[1].split("NOT labelled")
    assert "broken.png: zero-byte file" in rejected and "odd.png" not in rejected
    assert "odd.png: fake backend rejects images of 88x120" in missing
    assert [json.loads(ln)["path"] for ln in (out / "errors.jsonl").read_text().splitlines()] == [str(data / "broken.png")]
    manifest = json.loads((out / "manifest.json").read_text())
    assert not manifest["complete"] and [m["stem"] for m in manifest["missing"]] == ["odd"]
    assert sorted(p.stem for p in (out / "ann_dir").glob("*/*.png")) == [f"scene_{i:04d}" for i in range(6)]
    # The review page (of the run, of `alps report`, of `alps relabel`) said nothing of the image missing.
    classes = tmp_path / "classes.yaml"
    classes.write_text("classes: [{name: some, clusters: [0]}]\n")
    for command in ([], ["report", out], ["relabel", out, "--classes", classes, "--dry-run"],
                    ["relabel", out, "--classes", classes]):
        if command:
            result = run_alps(command, cli_env(tmp_path / "ph"))
            assert result.returncode == 0, result.stderr
            assert ("lacks 1 good image that its run could not label" in result.stderr) == (command[0] == "relabel")
            if "--dry-run" in command:  # its figures are the relabelled dataset's, which lacks the image too
                assert "the figures leave them out, as the relabelled dataset would" in result.stderr
        page = (out / "report" / "index.html").read_text()
        section = page.split('<section id="missing">')[1].split("</section>")[0]
        assert "Images not labelled (1)" in section and str(data / "odd.png") in section
        assert "fake backend rejects images of 88x120" in section and "lacks 1 good image(s)" in page


def test_a_run_whose_reader_leaves_goes_on_to_its_end(fault_data, fake_repo, prefect_server, tmp_path):
    """`alps run ... 2>&1 | head -1`: the next log line raised BrokenPipeError, and the run ended with exit 1, no
    word anywhere and nothing labelled. It now drops its console output, writes its dataset and exits 141."""
    out = tmp_path / "out"
    run = subprocess.Popen([*ALPS, "run", str(fault_data / "scene_0000.png"), "--out", str(out), "--model-repository",
                            str(fake_repo), *SMALL], cwd=CWD, env=cli_env(tmp_path / "ph", prefect_server), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT)
    first = run.stdout.readline()  # as `head -1` reads, then leaves
    run.stdout.close()
    assert b"flow run" in first.lower() and run.wait(timeout=600) == 141
    assert json.loads((out / "manifest.json").read_text())["complete"]
    assert [p.stem for p in (out / "ann_dir").glob("*/*.png")] == ["scene_0000"]


def test_alps_serve_needs_a_server_and_runs_deployments_on_one(fault_data, fake_repo, prefect_server, tmp_path):
    """A run that sets part of `config` keeps serve's backend for the rest (Prefect replaces a whole
    parameter: it ran on ./model_repository of serve's folder); a backend field the run sets wins."""
    result = run_alps(["serve"], cli_env(tmp_path / "ph"))
    assert result.returncode == 2 and "PREFECT_API_URL" in error_lines(result.stderr)[0]

    out = tmp_path / "served"
    env = cli_env(tmp_path / "ph", prefect_server, PREFECT_RUNNER_POLL_FREQUENCY="1")
    name = f"test-{tmp_path.name}"
    relative_out = os.path.relpath(out, CWD)  # the UI showed it as given: a folder relative to serve's
    proc = start_alps(["serve", "--name", name, "--model-repository", fake_repo, "--dataset", fault_data, "--out",
                       relative_out], env, tmp_path / "serve.log")
    try:
        with prefect_api(prefect_server) as api:
            def deployment():
                found = api.post("/deployments/filter", json={"deployments": {"name": {"any_": [name]}}}).json()
                return found[0]["id"] if found else None

            deployment_id = wait_until(deployment, "the deployment to be registered", proc=proc)
            defaults = api.get(f"/deployments/{deployment_id}").json()["parameters"]
            assert defaults["out"] == str(out)
            # The tile overlap follows the tile a run sets (3/7 of it): stored resolved (384), a run setting
            # only inputs.tile kept 384, and a tile of 384 px or less failed.
            assert defaults["config"]["inputs"]["overlap"] is None
            tiled = overlay_config(defaults["config"], {"inputs": {"tile": 128}})
            assert pydantic.TypeAdapter(PipelineConfig).validate_python(tiled).inputs.overlap == 55
            # Triton's port follows the protocol a run sets: stored resolved (127.0.0.1:8001, gRPC's), a run setting
            # only backend.protocol "http" sent HTTP to the gRPC port
            assert defaults["config"]["backend"]["triton_urls"] is None
            http = overlay_config(defaults["config"], {"backend": {"kind": "triton", "protocol": "http"}})
            assert pydantic.TypeAdapter(PipelineConfig).validate_python(http).backend.triton_urls == ("127.0.0.1:8000",)

            def start(parameters):
                return api.post(f"/deployments/{deployment_id}/create_flow_run",
                                json={"parameters": {"progress_bar": False, **parameters}}).json()["id"]

            def finished(run_id):
                state = api.get(f"/flow_runs/{run_id}").json()["state"]
                return state if state and state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None

            partial = start({"config": {"amg": {"points_per_side": 8}, "cluster": {"n_clusters": 4}}})
            elsewhere = tmp_path / "elsewhere"
            explicit = start({"config": {"backend": {"model_repository": str(elsewhere)}},
                              "out": str(tmp_path / "o2")})
            state = wait_until(lambda: finished(partial), "the partial-config run to finish", proc=proc)
            serve_log = (tmp_path / "serve.log").read_text()[-3000:]
            assert state["type"] == "COMPLETED", f"{state['message']}\n{serve_log}"

            def logged():  # the run's log lines in the UI, once its backend line is there
                logs = api.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": [partial]}}}).json()
                lines = [entry["message"] for entry in logs]
                return lines if any(line.startswith("Backend:") for line in lines) else None

            lines = wait_until(logged, "the run's backend line in its logs")
            assert ("Backend: embedded (onnxruntime in the run's process); "
                    f"model repository {fake_repo.resolve()}") in lines
            assert any(line.startswith("config: this run sets amg.points_per_side, cluster.n_clusters;")
                       for line in lines)
            explicit_state = wait_until(lambda: finished(explicit), "the other run to end", proc=proc)
        config = json.loads((out / "manifest.json").read_text())["config"]
        assert config["backend"]["model_repository"] == str(fake_repo.resolve())  # serve's, kept
        assert (config["amg"]["points_per_side"], config["cluster"]["n_clusters"]) == (8, 4)  # the run's
        assert len(list((out / "ann_dir").glob("*/*.png"))) == 7
        assert explicit_state["type"] == "FAILED"  # the run's own model_repository, over serve's
        assert f"no model repository at '{elsewhere}'" in explicit_state["message"]
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_a_prefect_api_url_without_its_api_path_is_said_in_one_line(fault_data, fake_repo, prefect_server, tmp_path):
    """`PREFECT_API_URL=http://127.0.0.1:4200` (the UI's address, without /api) passed the check and ended `alps run`
    and `alps serve` in a traceback (a 404 from Prefect's client), exit 1."""
    base = prefect_server.removesuffix("/api")
    for command in (["serve", "--name", "x"],
                    ["run", fault_data, "--out", tmp_path / "out", "--model-repository", fake_repo, *SMALL]):
        result = run_alps(command, cli_env(tmp_path / "ph", base), timeout=120)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert error_lines(result.stderr) == [f"alps: error: no Prefect API at {base} (PREFECT_API_URL): its /health "
                                              f"is not found (404); the API is under /api there: set "
                                              f"PREFECT_API_URL={base}/api"]


def test_serve_takes_the_triton_flags_that_its_hints_name(monkeypatch, capsys):
    """serve's --triton-url error said "the scheme goes to --protocol http", a flag serve did not have, nor
    --shared-memory, which docker/compose.yml's comments name: both could only be set run by run."""
    monkeypatch.setattr("flows.prefect_api.configured_api_url", lambda: f"http://127.0.0.1:{free_port()}/api")
    for flags, said in ((["--protocol", "http"], "--protocol applies to --backend triton, which is not given"),
                        (["--backend", "triton", "--triton-url", "http://h:8000"],
                         "(the scheme goes to --protocol http)")):
        assert main(["serve", *flags]) == 2
        assert said in capsys.readouterr().err
    args = make_parser().parse_args(["serve", "--backend", "triton", "--protocol", "http", "--shared-memory"])
    assert (args.protocol, args.shared_memory) == ("http", True)


@pytest.mark.parametrize(("flags", "said"), [
    (["--name", ""], "argument --name: expected a name without '/', '%' or spaces around it, got ''"),
    (["--name", "  "], "argument --name: expected a name"), (["--name", "a/b"], "argument --name: expected a name"),
    (["--limit", "0"], "argument --limit: expected a whole number of runs >= 1, got '0'"),
    (["--limit", "-1"], "argument --limit: expected a whole number of runs >= 1"),
])
def test_serve_refuses_a_name_or_limit_prefect_cannot_serve(flags, said, capsys):
    """`--name ""` registered `alps-label-dataset/alps-label-dataset` while saying `alps-label-dataset/`; `a/b` and
    `--limit -1` ended in a traceback after serve said it served; `--limit 0` served runs that stayed Late."""
    with pytest.raises(SystemExit) as stop:
        main(["serve", *flags])
    assert stop.value.code == 2
    assert f"alps serve: error: {said}" in capsys.readouterr().err


def test_serve_says_when_its_default_dataset_or_model_repository_is_not_there(fake_repo, tmp_path):
    """`alps serve --dataset TYPO` registered a deployment whose every default run failed, without a word; and with
    PREFECT_API_URL unreachable it said to unset it, which serve then refused ("needs a server that outlives it")."""
    from alps_client.config import BackendConfig
    from flows.prefect_api import PrefectApiError, check_reachable
    from flows.serve_cli import serve_default_warnings

    assert serve_default_warnings(str(tmp_path), BackendConfig(model_repository=str(fake_repo))) == []
    said = serve_default_warnings(str(tmp_path / "typo"), BackendConfig(model_repository=str(tmp_path / "repo")))
    assert said == [(f"--dataset {tmp_path / 'typo'} does not exist (yet): runs that keep this default will fail "
                     "until it does"),
                    (f"no model repository at {tmp_path / 'repo'} (no manifest.json; --model-repository): runs that "
                     "keep this default will fail until export/export_sam.py writes one there")]
    # A Triton server that does not answer: serve started without a word, and every run failed
    down = f"127.0.0.1:{free_port()}"
    said = serve_default_warnings(str(tmp_path), BackendConfig(kind="triton", model_repository=str(fake_repo),
                                                               triton_urls=(down,)))
    assert said == [f"no Triton server answers at {down} (yet): runs on this backend will fail until one does"]
    url = f"http://127.0.0.1:{free_port()}/api"
    with pytest.raises(PrefectApiError) as refused:
        check_reachable(url, timeout_s=2, temporary_one=False)
    assert "unset PREFECT_API_URL" not in str(refused.value) and "start that server" in str(refused.value)
    # A password in the URL stayed in the line, and so in logs and bug reports (security audit)
    with pytest.raises(PrefectApiError) as refused:
        check_reachable(url.replace("//", "//alice:s3cret@"), timeout_s=2)
    assert "s3cret" not in str(refused.value) and "//alice:***@127.0.0.1:" in str(refused.value)


def test_demo_labels_and_evaluates(fake_repo, prefect_server, tmp_path):
    result = subprocess.run([sys.executable, "-m", "flows.demo", "--workdir", str(tmp_path / "demo"),
                             "--model-repository", str(fake_repo), "--images", "3", "--size", "96"],
                            check=False, cwd=CWD, env=cli_env(tmp_path / "ph", prefect_server), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Labelled dataset" in result.stdout and "mIoU" in result.stdout
    assert "\nground " in result.stdout and "ground-truth classes: 4 declared in" in result.stdout  # names, ids
    assert len(list((tmp_path / "demo" / "labelled" / "ann_dir").glob("*/*.png"))) == 3
    config = tmp_path / "demo" / "labelled" / "mmseg_dataset.py"
    assert f'_base_ = ["{config}", ...]' in result.stdout and len(mmseg_listing(config.parent)) == 3


@pytest.mark.parametrize("stderr_stalled", [False, True])
def test_serve_ends_on_sigterm_even_when_prefects_exit_is_swallowed(tmp_path, stderr_stalled):
    """Prefect's runner answers SIGTERM with sys.exit(0); landing in a multiprocessing finaliser (a cancelled run's
    cleanup) that SystemExit was ignored and serve went on serving (seen under load: the test's terminate() timed
    out). Here the stop that serve's handler starts (SIGINT, as Ctrl-C) is ignored, as the swallowed exit was.
    With a stderr no one reads (its pipe full), the timer's line must not hold the exit (review)."""
    stall = ("import sys, threading\n"
             "threading.Thread(target=lambda: sys.stderr.write('x' * 1_000_000), daemon=True).start()\n")
    script = ((stall if stderr_stalled else "") +
              "import signal, time, prefect.runner.runner as r, flows.exits as exits\n"
              "exits.SIGTERM_GRACE_S = 1.0\n"
              "exits.exit_surely_on_sigterm()\n"
              "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"  # after: serve restores SIGINT (a script's `&`)
              "r.Runner.handle_sigterm(object())\n"
              "print('handled', flush=True); time.sleep(120); print('still serving')\n")
    serve = subprocess.Popen([sys.executable, "-c", script], cwd=CWD, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        code = serve.wait(timeout=100) if stderr_stalled else None  # stderr not read until it has exited
        stdout, stderr = serve.communicate(timeout=100)
    finally:
        serve.kill()
    assert stdout == "handled\n", (stdout, stderr[-2000:])
    # Ended by the timer, not stopped: not the 0 of a graceful stop, and said (it said nothing, exit 0)
    assert serve.returncode == EXIT_TERMINATED and code in (None, EXIT_TERMINATED), stderr[-2000:]
    if not stderr_stalled:
        assert stderr.splitlines()[-1] == ("alps: error: serve did not stop within 1 s of SIGTERM: ended at once; a "
                                          "run it held may be left Running (the next run into its OUT records it)")


def test_the_demo_keeps_to_the_stand_in_whatever_model_repository_holds(stand_in_repo, tmp_path, capsys):
    """After the README's own vit_h export into model_repository/, `make demo` ran vit_h on the CPU at Meta's grid,
    to other figures than the README's, unsaid."""
    from flows.demo import ensure_model_repository

    exported = tmp_path / "model_repository"
    exported.mkdir()
    (exported / "manifest.json").write_text(json.dumps({"model_type": "vit_h", "is_stand_in": False}))
    spare = shutil.copytree(stand_in_repo, tmp_path / "demo" / "model_repository")
    repo, model = ensure_model_repository(exported, spare)
    assert repo == spare and model["model_type"] == "stand-in"
    assert f"{exported} holds vit_h, not the stand-in the demo is made for: using {spare} instead" in \
        capsys.readouterr().out
    assert ensure_model_repository(spare, tmp_path / "unused") == (spare, model)


@pytest.mark.parametrize(("args", "message"), [
    (["run", "{tmp}", "--out", ""], "argument --out: an empty path (an unset shell variable?)"),  # wrote into the cwd
    (["run", "{tmp}", "--out", "{tmp}/o", "--model-repository", " "], "argument --model-repository: an empty path"),
    (["run", "", "--out", "{tmp}/o"], "argument dataset: an empty path"),
    (["evaluate", "{tmp}", ""], "argument gt_dir: an empty path"),
    (["relabel", "", "--classes", "c.yaml"], "argument out: an empty path"),
    (["run", "{tmp}", "--out", "{tmp}/o", "--n-clusters", "x"],
     "argument --n-clusters: expected a whole number or 'auto', got 'x'"),  # was "invalid _n_clusters value"
    (["run", "{tmp}", "--out", "{tmp}/o", "--prefect-startup-timeout", "0"],
     "argument --prefect-startup-timeout: expected a number of seconds > 0, got '0'"),  # accepted, then failed
])
def test_a_usage_error_names_the_argument_and_why(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        main([a.format(tmp=tmp_path) for a in args])
    assert stopped.value.code == 2 and message in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == []  # nothing written, in the current folder least of all


def test_no_command_shows_the_commands_and_flags_are_never_abbreviated(tmp_path, capsys):
    """``alps`` alone said "the following arguments are required: command"; ``--overw`` was taken for
    ``--overwrite`` (a relabel of everything) and ``--n-clust 4`` for ``--n-clusters``, which a new flag would
    break or change; an unknown flag of ``alps run`` was reported with the usage of ``alps``, not of ``alps run``."""
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: alps ") and all(f"    {command}" in err for command in ("run", "evaluate", "relabel"))
    for flag in ("--overw", "--n-clust"):
        with pytest.raises(SystemExit) as refused:
            main(["run", str(tmp_path), "--out", str(tmp_path / "o"), flag, "4"])
        err = capsys.readouterr().err
        assert refused.value.code == 2 and err.startswith("usage: alps run ")
        assert err.strip().endswith(f"alps run: error: unrecognized arguments: {flag} 4")
    with pytest.raises(SystemExit):
        main(["evaluate", str(tmp_path), str(tmp_path), "--match", "majority"])
    assert "alps evaluate: error: unrecognized arguments: --match majority" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_version_names_alps_and_the_packages_that_decide_outputs(capsys):
    """What a bug report needs, as the dataset's manifest records it: there was no ``alps --version``."""
    import importlib.metadata

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=CWD, capture_output=True, text=True, check=False)
    commit = f" (commit {head.stdout.strip()}" if head.returncode == 0 else ""  # each commit is 0.1.0: which one
    assert lines[0].startswith(f"alps {importlib.metadata.version('alps')}{commit}"), lines[0]
    found = dict(line.split() for line in lines[1:])
    assert found["onnxruntime"] == importlib.metadata.version("onnxruntime") and {"python", "prefect", "numpy"} <= set(found)
    assert "alps_commit" not in found  # said on the first line
    # `alps --version | head -1`: the reader gone before the lines were written gave a traceback (exit 1)
    proc = subprocess.Popen([*ALPS, "--version"], cwd=CWD, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the command has started: every write finds the pipe closed
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141 and b"Traceback" not in err, err.decode()[-2000:]
    # `alps --version >&-`: stdout closed from the start printed nothing and exited 0
    closed = subprocess.run([*ALPS, "--version"], cwd=CWD, stderr=subprocess.PIPE, text=True, check=False,
                            preexec_fn=lambda: os.close(1))
    assert closed.returncode == 74 and "its console output could not be written (stdout was closed)" in closed.stderr
    both = subprocess.run([*ALPS, "--help"], cwd=CWD, check=False, preexec_fn=lambda: (os.close(1), os.close(2)))
    assert both.returncode == 74


def test_a_model_with_random_weights_is_said_in_the_run_and_on_the_review_page(fake_repo, scenes, prefect_server,
                                                                                tmp_path):
    """An export made with --random-init (no checkpoint): the run logged "Model: vit_b (fp32)" as for a trained
    SAM, and the summary and the review page said nothing, although its classes mean nothing."""
    import shutil

    repo = shutil.copytree(fake_repo, tmp_path / "repo")
    manifest = json.loads((repo / "manifest.json").read_text())
    (repo / "manifest.json").write_text(json.dumps({**manifest, "is_stand_in": False, "random_init": True}))
    out = tmp_path / "out"
    relative = os.path.relpath(repo, CWD)  # recorded as given, it named no folder from anywhere else
    result = run_alps(["run", scenes / "images", "--out", out, "--model-repository", relative, *SMALL],
                      cli_env(tmp_path / "ph", prefect_server))
    assert result.returncode == 0, result.stderr[-3000:]
    for record in (out / "manifest.json", out / ".alps" / "last_run.json"):
        assert json.loads(record.read_text())["config"]["backend"]["model_repository"] == str(repo)
    assert "has RANDOM weights (exported with --random-init, no checkpoint)" in result.stderr + result.stdout  # log
    assert "with RANDOM weights (--random-init), not a trained SAM: the labels mean nothing" in result.stdout
    assert "STAND-IN" not in result.stdout
    page = (out / "report" / "index.html").read_text()
    assert "RANDOM weights, not a trained SAM" in page and "these classes mean nothing" in page
    with prefect_api(prefect_server) as api:  # and the run's summary in the UI (docs audit: "model: tiny-test")
        run = flow_run_of(api, out)

        def summary():
            arts = api.post("/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run["id"]]},
                                                                     "key": {"any_": ["alps-summary"]}}}).json()
            return arts[0] if arts else None

        model = next(row for row in json.loads(wait_until(summary, "the run's summary artifact")["data"])
                     if row["metric"] == "model")
    assert "RANDOM weights (--random-init)" in model["value"], model


def test_a_machine_whose_loopback_is_down_is_told_so_at_once(fault_data, fake_repo, tmp_path):
    """In a network namespace without its loopback up (``unshare -n``, a container started so) the run's own API
    server listened on 127.0.0.1 unreachable: the run waited all of --prefect-startup-timeout, then asked "a busy
    machine?"."""
    if subprocess.run(["unshare", "-n", "true"], check=False, capture_output=True).returncode:
        pytest.skip("`unshare -n` is not allowed here (it needs root or user namespaces)")
    out = tmp_path / "out"
    result = subprocess.run(["unshare", "-n", *ALPS, "run", fault_data, "--out", out, "--model-repository", fake_repo,
                             *SMALL, "--prefect-startup-timeout", "600"], check=False, cwd=CWD,
                            env=cli_env(tmp_path / "ph"), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = error_lines(result.stderr)
    assert "127.0.0.1" in line and "loopback" in line and "PREFECT_API_URL" in line and "busy" not in line, line
    assert not out.exists()


# `alps run` twice on OUT in a small tmpfs of its own mount namespace; argv: the tmpfs's mount options, RESULTS,
# the mount point, then the run's command. The disk fills for real; the second run has room (the tmpfs remounted
# larger). Each run's exit status and output, and what OUT holds after the first, land in RESULTS, outside the
# tmpfs, which ends with the namespace.
_ON_A_SMALL_DISK = r"""
set -u
options=$1 results=$2 disk=$3; shift 3
mount -t tmpfs -o "$options" tmpfs "$disk" || exit 90
"$@" > "$results/first.log" 2>&1; echo $? > "$results/first.rc"
ls "$disk/out/.alps/shards" > "$results/shards"; ls -A "$disk/out" > "$results/out"
mount -o remount,size=64m,nr_inodes=100000 "$disk"
"$@" > "$results/again.log" 2>&1; echo $? > "$results/again.rc"
cp -a "$disk/out" "$results/out-copy"
"""


def _why_no_small_disk() -> str | None:
    """Why no tmpfs of a few pages can be mounted in a mount namespace of this process's, or None if one can."""
    import tempfile

    if shutil.which("unshare") is None:
        return "no `unshare` here (util-linux)"
    if os.sysconf("SC_PAGE_SIZE") != 4096:  # the sizes below count 4 KiB pages
        return f"pages of {os.sysconf('SC_PAGE_SIZE')} bytes, not 4 KiB"
    with tempfile.TemporaryDirectory() as point:
        tried = subprocess.run(["unshare", "--fork", "--kill-child", "-m", "--propagation", "private", "mount", "-t",
                                "tmpfs", "-o", "size=8k", "tmpfs", point], check=False, capture_output=True,
                               text=True, timeout=60)
    return None if tried.returncode == 0 else f"no tmpfs can be mounted here ({tried.stderr.strip()[-200:]})"


NO_SMALL_DISK = _why_no_small_disk()


@pytest.mark.skipif(NO_SMALL_DISK is not None, reason=str(NO_SMALL_DISK))
@pytest.mark.parametrize(("options", "filled_while"), [("size=60k", "labelling"), ("size=300k", "writing the dataset"),
                                                      ("size=64m,nr_inodes=20", "labelling or writing")])
def test_a_real_full_disk_stops_the_run_resumably_and_the_same_command_finishes(fault_data, fake_repo, fault_reference,
                                                                               prefect_server, tmp_path, options,
                                                                               filled_while):
    """OUT on a file system that fills up (a tmpfs of 60 KiB: part way through the shards; of 300 KiB: after every
    shard, while the dataset is written; of 20 files: out of inodes, bytes to spare), not a simulated ENOSPC: exit 3
    and one line naming the file and the space left, no image counted a bad input, nothing of the dataset
    half-written; with room again, the same command labels what is left and writes the dataset of an
    uninterrupted run."""
    results, disk = tmp_path / "results", tmp_path / "disk"
    results.mkdir()
    disk.mkdir()
    run = [*ALPS, "run", str(fault_data), "--out", str(disk / "out"), "--model-repository", str(fake_repo), *SMALL,
           "--concurrency", "1"]
    # --fork --kill-child and a session of its own: a test stopped or timed out ends the runs and their mount
    script = subprocess.Popen(["unshare", "--fork", "--kill-child", "-m", "--propagation", "private", "bash", "-c",
                               _ON_A_SMALL_DISK, "disk", options, str(results), str(disk), *run], cwd=CWD,
                              env=cli_env(tmp_path / "ph", prefect_server), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        said_by_script = script.communicate(timeout=600)[0]
    finally:
        if script.poll() is None:
            os.killpg(script.pid, signal.SIGKILL)
            script.wait()
    assert script.returncode == 0 and (results / "again.rc").is_file(), said_by_script[-3000:]
    first = (results / "first.log").read_text()
    assert (results / "first.rc").read_text().strip() == "3", first[-3000:]
    (line,) = error_lines(first)
    shards = (results / "shards").read_text().split()
    said = (r"no free inodes left on the disk while writing .+, [\d.]+ MiB free there but no room for another file"
            if "nr_inodes" in options else r"no space left on the disk while writing .+, \d+ (B|KiB) free there")
    assert re.search(said, line), line
    assert "run the same command again" in line and "rejected" not in line, line
    if filled_while == "labelling":
        assert 1 <= len(shards) < 7 and "/.alps/shards/" in line, (shards, line)  # met mid-run, images kept
    elif filled_while == "writing the dataset":
        assert len(shards) == 7 and "/.alps/staging/" in line, (shards, line)  # every image labelled first
    # nothing of a dataset (nor a temporary file) is left beside .alps
    assert (results / "out").read_text().split() == [".alps"]
    again = (results / "again.log").read_text()
    assert (results / "again.rc").read_text().strip() == "0", again[-3000:]
    copy = results / "out-copy"
    assert json.loads((copy / ".alps" / "last_run.json").read_text())["skipped"] == sorted(
        s.removesuffix(".npz") for s in shards)
    assert labels(copy) == labels(fault_reference)


def test_a_run_refused_after_its_start_leaves_no_new_out_folder(fault_data, fake_repo, prefect_server, tmp_path):
    """A run into a new --out refused once started (a backend it cannot open: a Triton server unreachable, here
    Triton asked to serve the numpy fake) left OUT/.alps with its lock and names: exit 2 said nothing new. The
    parents it made go too; a folder that existed, or holds more than the run's records, stays."""
    from flows.run_cli import _folders_to_make, _leave_no_folder

    out = tmp_path / "new" / "nested" / "out"
    result = run_alps(["run", fault_data, "--out", out, "--model-repository", fake_repo, "--backend", "triton"],
                      cli_env(tmp_path / "ph", prefect_server))
    assert result.returncode == 2 and "only runs embedded" in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "new").exists()
    out = tmp_path / "out"
    assert _folders_to_make(str(out / "a")) == [out / "a", out]
    (tmp_path / "real" / "a").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real" / "a")
    assert _folders_to_make(os.path.abspath(tmp_path / "link" / ".." / "out")) == [out]  # as the run names it
    (out / ".alps").mkdir(parents=True)
    for record in ("lock", "names.json"):
        (out / ".alps" / record).write_text("")
    for kept, keep_api_log in (("prefect-api.log", True),  # the line of an API server that could not start names it
                               ("last_run.json", False),  # "none of the inputs could be read; reasons in ..."
                               ("mine.txt", False), ("mine", False), (".alps/mine", False)):  # someone else's
        path = out / ".alps" / kept if kept in ("prefect-api.log", "last_run.json") else out / kept
        path.mkdir() if kept.endswith("mine") else path.write_text("")
        _leave_no_folder(str(out), [out], keep_api_log)
        assert path.exists(), kept
        path.rmdir() if kept.endswith("mine") else path.unlink()
    _leave_no_folder(str(out), [])  # it existed
    assert out.is_dir()
    holding = tmp_path / "holding"  # another run that started into the folder meanwhile: not yet any shard
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out), str(holding)], cwd=CWD)
    try:
        wait_until(holding.exists, "the other run holding the lock", proc=holder)
        _leave_no_folder(str(out), [out])
        assert (out / ".alps" / "lock").is_file()
    finally:
        holder.kill()
        holder.wait()
    (out / ".alps" / "prefect-api.log").write_text("a healthy server's")
    _leave_no_folder(str(out), [out])
    assert not out.exists()


def test_console_output_that_cannot_be_written_or_encoded_never_ends_a_command_in_a_traceback(fault_data, fake_repo,
                                                                                             tmp_path):
    """stdout on a full disk (`>/dev/full`) ended a finished command in an OSError traceback (exit 1), `--help`
    lost its output with exit 0, a refused request on such a stderr gave exit 1; a stdout of another encoding than
    UTF-8 (`PYTHONIOENCODING=ascii`) failed on a non-ASCII file name after the work was done (run, evaluate,
    relabel), or gave exit 2 naming nothing (`--dry-run`). Characters are escaped now, and a lost output exits 74
    with a line on stderr."""
    import shutil

    data = tmp_path / "données"
    data.mkdir()
    shutil.copy(fault_data / "scene_0000.png", data / "café_東京.png")
    (data / "損壊.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # rejected, by its name
    dry_run = [*ALPS, "run", str(data), "--out", str(tmp_path / "out"), "--model-repository", str(fake_repo),
               "--dry-run"]
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    said = subprocess.run(dry_run, cwd=CWD, env=env, capture_output=True, timeout=300, check=False)
    assert said.returncode == 0 and b"Traceback" not in said.stderr, said.stderr.decode()[-2000:]
    assert b"donn\\xe9es/\\u640d\\u58ca.png: not an image" in said.stdout, said.stdout.decode()
    with open("/dev/full", "w") as full:
        lost = subprocess.run(dry_run, cwd=CWD, stdout=full, stderr=subprocess.PIPE, timeout=300, check=False)
        helped = subprocess.run([*ALPS, "run", "--help"], cwd=CWD, stdout=full, stderr=subprocess.PIPE, timeout=300,
                                check=False)
        refused = subprocess.run([*ALPS, "run", str(tmp_path / "absent"), "--out", str(tmp_path / "o")], cwd=CWD,
                                 stdout=subprocess.PIPE, stderr=full, timeout=300, check=False)
    for proc in (lost, helped):
        assert proc.returncode == 74 and proc.stderr.decode().splitlines() == [(
            "alps: error: its console output could not be written (No space left on device); the command itself "
            "went on to its end")], proc.stderr.decode()[-2000:]
    assert refused.returncode == 2


def test_ctrl_c_that_a_library_turns_into_another_error_is_still_a_stop(fault_data, fake_repo, tmp_path):
    """Ctrl-C as Prefect set up its logging, at the run's start, came back as a PydanticSerializationError naming
    the KeyboardInterrupt: exit 1 and a traceback, about 1 try in 40 on a loaded machine. The signal is noted as
    it lands, so the error raised in its place is the stop it was: exit 130, one line. (In a process of its own: a
    stopped run ends its process at once.)"""
    script = textwrap.dedent("""
        import contextlib, os, signal, sys
        import flows.prefect_api
        from flows.cli import main

        @contextlib.contextmanager
        def interrupted_at_start(*args, **kwargs):
            try:
                os.kill(os.getpid(), signal.SIGINT)  # its handler runs here, in the main thread
                raise AssertionError("no KeyboardInterrupt")
            except KeyboardInterrupt as err:
                raise ValueError(f"Unable to serialize unknown type: {type(err)}") from None
            yield

        flows.prefect_api.prefect_api = interrupted_at_start
        sys.exit(main(sys.argv[1:]))
    """)
    proc = subprocess.run([sys.executable, "-c", script, "run", str(fault_data), "--out", str(tmp_path / "o"),
                           "--model-repository", str(fake_repo)], cwd=CWD, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 130 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert error_lines(proc.stderr)[-1].startswith("alps: error: interrupted"), proc.stderr[-3000:]


def test_a_python_reading_file_names_in_ascii_is_refused_with_the_way_out(tmp_path):
    """Under a C locale with UTF-8 mode and locale coercion off, every non-ASCII image failed writing its shard
    (exit 3, "run the same command again", failing alike each time), and report and relabel said label maps that
    exist were missing. One line now, before anything is read."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("LC_", "LANG"))}
    env.update(LC_ALL="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0")
    proc = subprocess.run([*ALPS, "run", str(tmp_path), "--out", str(tmp_path / "o")], cwd=CWD, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2 and error_lines(proc.stderr) == [(
        "alps: error: alps needs file names read as UTF-8, and this Python reads them as ascii (a C or POSIX locale "
        "with PYTHONUTF8=0 or PYTHONCOERCECLOCALE=0): every non-ASCII name would fail; run it with PYTHONUTF8=1 (or "
        "LC_ALL=C.UTF-8)")], proc.stderr
    assert not (tmp_path / "o").exists()


def test_no_color_leaves_no_escape_on_a_terminal(fault_data, fake_repo, prefect_server, tmp_path):
    """With NO_COLOR set (no-color.org), Prefect's console log on a terminal still set each flow run's name in bold
    (an escape sequence in a log a user asked to keep plain)."""
    import pty

    def console_of_a_run(out: Path, **extra: str) -> bytes:
        leader, follower = pty.openpty()
        env = cli_env(tmp_path / "ph", prefect_server, **extra)
        run = subprocess.Popen([*ALPS, "run", str(fault_data / "scene_0000.png"), "--out", str(out),
                                "--model-repository", str(fake_repo), *SMALL], cwd=CWD, env=env, stdin=subprocess.DEVNULL,
                               stdout=follower, stderr=follower)
        os.close(follower)
        said = b""
        with contextlib.suppress(OSError):  # EIO once the run has exited and its terminal closed
            while chunk := os.read(leader, 65536):
                said += chunk
        os.close(leader)
        assert run.wait(timeout=600) == 0, said.decode(errors="replace")[-3000:]
        return said

    plain = console_of_a_run(tmp_path / "plain", NO_COLOR="1")  # without NO_COLOR, 10 escapes at 807a1b8
    assert b"\x1b[" not in plain and b"Labelled dataset" in plain, plain.decode(errors="replace")[-3000:]


@pytest.mark.parametrize(("flags", "missing"), [(["--backend", "triton"], "tritonclient.grpc"),
                                                (["--backend", "triton", "--protocol", "http"], "tritonclient.http"),
                                                (["--dask-workers", "2"], "distributed")])
def test_a_dry_run_refuses_what_the_run_would_for_a_missing_package(fault_data, fake_repo, tmp_path, monkeypatch,
                                                                    capsys, flags, missing):
    """`--backend triton --dry-run` and `--dask-workers 2 --dry-run` said what the run would do, exit 0, without
    tritonclient or distributed installed; the run itself then exited 2 once its flow had started."""
    monkeypatch.setitem(sys.modules, missing, None)  # as if not installed
    for dry in (["--dry-run"], []):
        code = main(["run", str(fault_data), "--out", str(tmp_path / "o"), "--model-repository", str(fake_repo),
                     *flags, *dry])
        err = capsys.readouterr().err
        assert code == 2 and error_lines(err)[0].startswith(f"alps: error: {missing} is not installed"), err
        assert not (tmp_path / "o").exists()


def test_a_command_leaves_its_callers_signal_handlers_as_they_were(tmp_path, capsys):
    """A command sets its own Ctrl-C, SIGTERM and SIGHUP handlers; called in a process of the user's (a notebook, a
    test), it left them set after it returned: Ctrl-C there then went through alps's handler."""
    numbers = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    before = [signal.getsignal(number) for number in numbers]
    assert main(["evaluate", str(tmp_path / "absent"), str(tmp_path / "absent")]) == 2
    assert error_lines(capsys.readouterr().err) == [
        f"alps: error: ground-truth folder {tmp_path / 'absent'} does not exist: give the folder that holds the label "
        "maps"]
    assert [signal.getsignal(number) for number in numbers] == before


def test_a_run_into_an_out_another_run_writes_is_refused_before_any_server(fault_data, fake_repo, tmp_path, capsys):
    """A run on a user's own API (PREFECT_API_URL) leaves no server record in OUT: a second run into the same OUT
    started its own API server and a flow run (recorded Failed), wrote OUT/.alps/prefect-api.log, and was refused
    by the lock 15 s later. The lock is asked first now: refused at once, nothing written."""
    from alps_client.io.out_lock import out_lock

    out = tmp_path / "out"
    with out_lock(out, "alps run"):  # as a run on a shared API holds it
        before = sorted(p.name for p in (out / ".alps").iterdir())
        for dry in ([], ["--dry-run"]):
            code = main(["run", str(fault_data), "--out", str(out), "--model-repository", str(fake_repo), *dry])
            assert code == 2 and error_lines(capsys.readouterr().err) == [(
                f"alps: error: {out} is being written by alps run (pid {os.getpid()}); wait for it to finish, or use "
                "another --out")]
        assert sorted(p.name for p in (out / ".alps").iterdir()) == before == ["lock"]
