"""Flow tests: the flows called in this process report to the session's Prefect server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from alps_client.synthetic import write_synthetic_dataset
from flows.prefect_api import drain_prefect_workers
from tests.runs import ALPS, CWD, cli_env  # noqa: F401  (re-exported for tests that import them here)


@pytest.fixture(scope="session", autouse=True)
def prefect_api_for_flows_in_this_process(prefect_server: str, tmp_path_factory):
    """Flows run in this process report to the session's Prefect server, as a user's flows report to theirs.

    Not Prefect's test harness: that starts one more server per test process (its own temporary database), and
    each costs ~7 s of CPU to start and more while it idles. Tests find their runs by their output folder.

    Without flow-run heartbeats: Prefect's heartbeat thread sleeps in whole seconds and every flow run joins it at
    its end, which made each of these small runs 0.8 s longer (2.1 s -> 1.25 s, 6 images; test_flow.py and
    test_review.py alone: 142 s -> 100 s). The `alps run` processes that tests start keep them, as users have them.
    """
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect_home"))
    import prefect.context
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    # Also as the process-wide settings: threads started outside this context (the labelling threads) see them.
    with temporary_settings(updates={PREFECT_API_URL: prefect_server, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}), \
            prefect.context._temporary_global_settings_context(prefect.context.get_settings_context()):
        yield
        drain_prefect_workers()  # before the session's server stops


@pytest.fixture(scope="session")
def scenes(tmp_path_factory) -> Path:
    """Six small synthetic scenes (images/ and gt/) plus one zero-byte file among the images."""
    root = write_synthetic_dataset(tmp_path_factory.mktemp("scenes"), 6, seed=3, size=(96, 128), n_classes=4)
    (root / "images" / "broken.png").write_bytes(b"")
    return root
