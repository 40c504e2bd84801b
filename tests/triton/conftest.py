"""A real tritonserver (CPU, from nvidia-pytriton) serving the exported stand-in, for the whole session."""

from __future__ import annotations

import pytest

from tests.triton.server import start_triton


@pytest.fixture(scope="session")
def triton_server(stand_in_repo, tmp_path_factory):
    server = start_triton(stand_in_repo, tmp_path_factory.mktemp("triton"))
    yield server
    server.stop()
