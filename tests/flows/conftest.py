"""Flow tests: the flows called in this process report to the session's Prefect server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from alps_client.synthetic import write_synthetic_dataset
from tests.runs import ALPS, CWD, cli_env  # noqa: F401  (moved to tests/runs.py; some tests import them from here)


@pytest.fixture(scope="session", autouse=True)
def prefect_api_of_this_process(prefect_server: str, tmp_path_factory):
    """Flows called in this process report to the session's real Prefect server (``prefect_server``), as a user's
    flows report to theirs: one server for the in-process flows and the `alps` subprocesses alike, instead of a
    second one (Prefect's test harness) with a database of its own to migrate."""
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect_home"))
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: prefect_server}):
        yield


@pytest.fixture(scope="session")
def scenes(tmp_path_factory) -> Path:
    """Six small synthetic scenes (images/ and gt/) plus one zero-byte file among the images."""
    root = write_synthetic_dataset(tmp_path_factory.mktemp("scenes"), 6, seed=3, size=(96, 128), n_classes=4)
    (root / "images" / "broken.png").write_bytes(b"")
    return root
