"""Flow tests: a session-scoped Prefect test harness for the flows called in this process."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from unittest import mock

import pytest

from alps_client.synthetic import write_synthetic_dataset
from tests.runs import (  # noqa: F401  (ALPS, CWD, cli_env: re-exported for tests that import them here)
    ALPS,
    CWD,
    cli_env,
    seed_prefect_database,
)


@pytest.fixture(scope="session", autouse=True)
def prefect_harness(tmp_path_factory):
    """Prefect's test harness (its own server on a temporary database) for the flows run in this process.

    The harness keeps its database in a new ``mkdtemp()`` folder: given a copy of the session's migrated database
    there, its server starts without running Prefect's migrations (~12 s of CPU per test process). Should Prefect
    stop calling ``mkdtemp`` there, the harness migrates its own database, as before: slower, not wrong.
    """
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect_home"))
    from prefect.testing import utilities

    def seeded_mkdtemp(*args, **kwargs) -> str:
        folder = tempfile.mkdtemp(*args, **kwargs)
        seed_prefect_database(Path(folder) / "prefect-test.db")
        return folder

    with mock.patch.object(utilities, "mkdtemp", seeded_mkdtemp), \
            utilities.prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def scenes(tmp_path_factory) -> Path:
    """Six small synthetic scenes (images/ and gt/) plus one zero-byte file among the images."""
    root = write_synthetic_dataset(tmp_path_factory.mktemp("scenes"), 6, seed=3, size=(96, 128), n_classes=4)
    (root / "images" / "broken.png").write_bytes(b"")
    return root
