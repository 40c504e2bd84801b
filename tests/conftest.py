"""Shared fixtures: models and data are built by the tests themselves; nothing is downloaded."""

from __future__ import annotations

import os
import shutil
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.shapes import make_shapes_image, make_shapes_scene  # noqa: F401  (re-exported for tests)

REPO_ROOT = Path(__file__).resolve().parents[1]

# Tests must never talk to a user's Prefect server or write to their home.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

# The programs the tests start get Ctrl-C as a terminal's foreground job does. A shell without job control starts
# a background command with SIGINT ignored, and a program inherits that (Python then installs no KeyboardInterrupt):
# a test session started so would see runs ignore the Ctrl-C they are sent. A handled signal is reset to its
# default in a new program, an ignored one is not.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN and threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGINT, signal.default_int_handler)


# The longest files first (seconds per file, setup included, measured in a `make test` at 6d9b592 on 2 cores):
# `make test` hands whole files to its workers in collection order (--dist loadfile --no-loadscope-reorder),
# so the workers end near the same time instead of one running a long file alone at the end. The third file
# needs no Prefect server: its worker exports while the first two wait for the session's server to start. A file
# missing here only runs later; the order changes no result.
LONGEST_FILES = (
    "tests/flows/test_server_and_resume.py",  # 180 s
    "tests/flows/test_flow.py",  # 151 s
    "tests/export/test_export.py",  # 88 s
    "tests/triton/test_triton.py",  # 137 s
    "tests/scale/test_scale_out.py",  # 119 s
    "tests/flows/test_serve.py",  # 93 s
    "tests/bench/test_bench.py",  # 95 s
    "tests/flows/test_cli.py",  # 78 s
    "tests/export/test_sam2_export.py",  # 74 s
    "tests/inputs/test_inputs.py",  # 44 s
    "tests/amg/test_parity.py",  # 43 s
    "tests/flows/test_review.py",  # 42 s
    "tests/amg/test_sam2_parity.py",  # 35 s
    "tests/core/test_clustering.py",  # 22 s
    "tests/flows/test_dense.py",  # 19 s (its test against Meta's generator is slow-marked)
    "tests/export/test_skip_upscaling.py",  # 16 s
    "tests/export/test_export_safety.py",  # 14 s
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: the others keep order


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]) -> Path:
    """A folder built once per test session, even when pytest-xdist runs the session in several worker processes.

    Workers share the parent of their base temp folder; the first to ask builds under a file lock, the others wait
    and reuse it (pytest-xdist's recipe for session fixtures that must run once). Exports are the costly case.
    """
    from filelock import FileLock

    out = shared_temp_root(tmp_path_factory) / f"built-once-{name}"
    with FileLock(str(out) + ".lock"):
        if not (out / ".built").is_file():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            build(out)
            (out / ".built").write_text("")
    return out


def exports_copied_from(monkeypatch: pytest.MonkeyPatch, module: object, repo: Path) -> None:
    """``module``'s ``export_encoder`` and ``export_decoder`` copy ``repo``'s ONNX files instead of tracing again.

    For tests of what an export does after tracing (its checks, messages, staging and manifest) on a model the
    session has exported already: ``repo`` must hold that same model (the stand-ins have no weights, so their
    export is always the same), and every later step, the real parity check included, runs on the copied files.
    """
    import json

    models = json.loads((repo / "manifest.json").read_text())["models"]

    def copier(key: str) -> Callable[..., float]:
        source = repo / models[key]["path"]

        def export(model: object, path: Path, opset: int | None = None) -> float:
            path.parent.mkdir(parents=True, exist_ok=True)
            for name in (source.name, source.name + ".data"):
                if (source.parent / name).is_file():
                    shutil.copyfile(source.parent / name, path.parent / name.replace(source.name, path.name))
            return 0.0

        return export

    monkeypatch.setattr(module, "export_encoder", copier("encoder"))
    monkeypatch.setattr(module, "export_decoder", copier("decoder"))


def shared_temp_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's base temp folder, shared by all pytest-xdist workers (the parent of each worker's own)."""
    root = tmp_path_factory.getbasetemp()
    return root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root


@pytest.fixture(scope="session", autouse=True)
def prefect_database_seed(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Where the session's migrated Prefect database goes: built on first use (tests/runs.py's
    ``seed_prefect_home``), copied into every new Prefect home a test starts a server in."""
    from tests.runs import PREFECT_DB_SEED_ENV

    os.environ[PREFECT_DB_SEED_ENV] = str(shared_temp_root(tmp_path_factory) / "prefect-database-seed")


@pytest.fixture(scope="session")
def stand_in_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository with the structured stand-in (not SAM) exported to ONNX, Triton configs on CPU."""
    from export.export_sam import run_export

    return built_once(tmp_path_factory, "stand_in_repo", lambda out: run_export("stand-in", out, cpu=True,
                                                                               log=lambda *_: None))


@pytest.fixture(scope="session")
def sam2_stand_in_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository with the structured SAM 2 stand-in (not SAM 2) exported to ONNX, Triton configs on CPU."""
    from export.export_sam import run_export

    return built_once(tmp_path_factory, "sam2_stand_in_repo", lambda out: run_export("sam2-stand-in", out, cpu=True,
                                                                                    log=lambda *_: None))


@pytest.fixture(scope="session")
def embedded_backend(stand_in_repo: Path):
    """The embedded onnxruntime backend on the stand-in repository (2 threads: the CI machine's size)."""
    from alps_client.backends.embedded import EmbeddedBackend
    from alps_client.config import BackendConfig

    backend = EmbeddedBackend(BackendConfig(model_repository=str(stand_in_repo), num_threads=2))
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def fake_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository selecting the numpy FAKE SAM (no export, no torch): for tests above the backend."""
    from alps_client.backends.fake import write_fake_repository

    return write_fake_repository(tmp_path_factory.mktemp("fake_repo"))


@pytest.fixture(scope="session")
def fake_backend(fake_repo: Path):
    """The numpy fake SAM backend (see alps_client/backends/fake.py)."""
    from alps_client.backends import make_backend
    from alps_client.config import BackendConfig

    return make_backend(BackendConfig(model_repository=str(fake_repo)))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SAM configuration (Meta's builder) with seeded random weights, saved as Meta's checkpoints are."""
    import torch

    from export.export_sam import TINY_TEST_ARGS
    from export.tv_shim import install_torchvision_shim

    install_torchvision_shim()
    from segment_anything.build_sam import _build_sam

    def build(folder: Path) -> None:
        torch.manual_seed(123)
        torch.save(_build_sam(checkpoint=None, **TINY_TEST_ARGS).state_dict(), folder / "sam_tiny_test.pth")

    return built_once(tmp_path_factory, "tiny_checkpoint", build) / "sam_tiny_test.pth"


@pytest.fixture(scope="session")
def tiny_int8_repo(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SAM's repository with int8 weights (export/quantize.py, the step of ``export_sam.py --quantize int8``)."""
    from export.quantize import quantize_repository

    return built_once(tmp_path_factory, "tiny_int8_repo",
                      lambda out: quantize_repository(tiny_repo, out, log=lambda *_: None))


@pytest.fixture(scope="session")
def tiny_repo(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SAM exported through the real checkpoint path (ONNX + Triton configs + manifest)."""
    from export.export_sam import run_export

    return built_once(tmp_path_factory, "tiny_repo", lambda out: run_export(
        "tiny-test", out, checkpoint=str(tiny_checkpoint), cpu=True, log=lambda *_: None))


@pytest.fixture(scope="session", autouse=True)
def started_processes_get_glibcs_malloc_defaults():
    """`make test` keeps large blocks in glibc's heap for the test processes (TEST_MALLOC in the Makefile); what
    they start (`alps` runs, servers, scripts under a memory limit) runs with glibc's defaults, as a user's does.

    Set for the tests' children too, a capped process that had encoded once could reuse the heap it kept instead of
    asking for more: onnxruntime's out-of-memory test saw no error (1 run in 3 by hand, once in the load check).
    pytest-xdist's controller runs no fixture, so its workers still get the settings."""
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        os.environ.pop(name, None)


@pytest.fixture(autouse=True)
def no_run_left_running():
    """A test that fails while its background `alps run` is held or running leaves nothing running behind it."""
    yield
    from tests.runs import kill_leftover_runs

    kill_leftover_runs()


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The URL of a real `prefect server start` on 127.0.0.1, with its own PREFECT_HOME: one for the whole session,
    shared by the pytest-xdist workers (as a team shares its server), stopped when the session ends.

    Subprocess runs given its URL start no server of their own (cheaper than one temporary server per run); flows
    run in a test process report to it too (tests/flows/conftest.py).
    """
    from tests.runs import session_prefect_server

    return session_prefect_server(shared_temp_root(tmp_path_factory))


def pytest_unconfigure(config: pytest.Config) -> None:
    """The session's first process (pytest-xdist's controller, after every worker ended) stops the shared server."""
    basetemp = getattr(getattr(config, "_tmp_path_factory", None), "_basetemp", None)  # None: nothing was made
    if hasattr(config, "workerinput") or basetemp is None:
        return
    from tests.runs import stop_session_prefect_server

    stop_session_prefect_server(basetemp)


@pytest.fixture(scope="session")
def fault_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six synthetic scenes (96x128) and one of another size (88x120: the fake's permanent-fault target)."""
    from PIL import Image

    from alps_client.synthetic import write_synthetic_dataset

    images = write_synthetic_dataset(tmp_path_factory.mktemp("fault_data"), 6, seed=5, size=(96, 128)) / "images"
    with Image.open(images / "scene_0000.png") as im:
        im.crop((4, 4, 124, 92)).save(images / "odd.png")
    return images


ODD_SHAPE = [88, 120]


@pytest.fixture(scope="session")
def fault_reference(fault_data: Path, fake_repo: Path, prefect_server: str, tmp_path_factory: pytest.TempPathFactory):
    """`alps run` on ``fault_data`` with the fault-free fake: what every faulty run must end up equal to.

    Built once for all workers (tests compare label maps only, and each worker's ``fault_data`` is the same seeded
    data): one run fewer.
    """
    from tests.runs import SMALL, cli_env, run_alps

    def build(work: Path) -> None:
        result = run_alps(["run", fault_data, "--out", work / "out", "--model-repository", fake_repo, *SMALL],
                          cli_env(work / "ph", prefect_server))
        assert result.returncode == 0, result.stderr[-3000:]

    return built_once(tmp_path_factory, "fault_reference", build) / "out"
