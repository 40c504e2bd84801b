"""Flow tests: a session-scoped Prefect test harness (only these tests start Prefect)."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

from alps_client.synthetic import write_synthetic_dataset
from tests.conftest import REPO_ROOT


@pytest.fixture(scope="session", autouse=True)
def prefect_harness(tmp_path_factory):
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect_home"))
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture(scope="session")
def scenes(tmp_path_factory) -> Path:
    """Six small synthetic scenes (images/ and gt/) plus one zero-byte file among the images."""
    root = write_synthetic_dataset(tmp_path_factory.mktemp("scenes"), 6, seed=3, size=(96, 128), n_classes=4)
    (root / "images" / "broken.png").write_bytes(b"")
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli_env(prefect_home: Path, api_url: str | None = None) -> dict[str, str]:
    """Environment for `alps` subprocesses: their own Prefect home, no analytics, optional API server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(prefect_home), PREFECT_SERVER_ANALYTICS_ENABLED="false", PYTHONUNBUFFERED="1")
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


ALPS = [sys.executable, "-m", "flows.cli"]
CWD = str(REPO_ROOT)
