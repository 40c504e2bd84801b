"""Flow tests: a session-scoped Prefect test harness for the flows called in this process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from alps_client.synthetic import write_synthetic_dataset
from tests.runs import ALPS, CWD, cli_env  # noqa: F401  (moved to tests/runs.py; some tests import them from here)


@pytest.fixture(scope="session", autouse=True)
def prefect_harness(tmp_path_factory):
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect_home"))
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def scenes(tmp_path_factory) -> Path:
    """Six small synthetic scenes (images/ and gt/) plus one zero-byte file among the images."""
    root = write_synthetic_dataset(tmp_path_factory.mktemp("scenes"), 6, seed=3, size=(96, 128), n_classes=4)
    (root / "images" / "broken.png").write_bytes(b"")
    return root
