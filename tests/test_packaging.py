"""The runtime client stays light: alps_client imports neither torch nor prefect."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO_ROOT

MODULES = [
    "alps_client.backends.embedded", "alps_client.backends.triton", "alps_client.amg.generator", "alps_client.pipeline",
    "alps_client.labels.clustering", "alps_client.io.writer", "alps_client.evaluate", "alps_client.io.discovery", "alps_client.io.readers",
    "alps_client.io.scenes", "alps_client.synthetic",
]


def test_client_imports_without_torch_or_prefect():
    code = "import sys\n" + "".join(f"import {m}\n" for m in MODULES) + (
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'prefect', 'segment_anything'})\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"alps_client pulled in: {result.stdout.strip()}"
