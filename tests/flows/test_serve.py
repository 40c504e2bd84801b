"""`alps serve`: runs started as the Prefect UI starts them (a deployment's Custom run, Retry, Cancel) on a real
Prefect server, and serve itself stopped."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import psutil
import pytest

from alps_client.backends.fake import write_fake_repository
from tests.runs import cli_env, gone, prefect_api, start_alps, wait_for_exit, wait_until
from tests.stops import assert_resumes, assert_stop_recorded, finished_stems, paused_repo

SMALL_CONFIG = {"amg": {"points_per_side": 8}, "cluster": {"n_clusters": 4}}  # SMALL, as a run's `config`


def start_serve(repo: Path, dataset: Path, out: Path, env: dict[str, str], tmp_path: Path,
                sigint_ignored: bool = False) -> subprocess.Popen:
    """`alps serve` of the deployment ``serve-<tmp_path's name>`` on the model repository ``repo``."""
    return start_alps(["serve", "--name", f"serve-{tmp_path.name}", "--model-repository", repo, "--dataset", dataset,
                       "--out", out], env, tmp_path / "serve.log", sigint_ignored)


def start_deployment_run(api, serve: subprocess.Popen, tmp_path: Path, parameters: dict) -> str:
    """The id of a run of :func:`start_serve`'s deployment (once registered) created with ``parameters``, as the
    UI's Custom run does."""
    name = f"serve-{tmp_path.name}"

    def deployment():
        found = api.post("/deployments/filter", json={"deployments": {"name": {"any_": [name]}}}).json()
        return found[0]["id"] if found else None

    deployment_id = wait_until(deployment, "the deployment to be registered", proc=serve)
    return api.post(f"/deployments/{deployment_id}/create_flow_run",
                    json={"parameters": {"progress_bar": False, **parameters}}).json()["id"]


def run_ended(api):
    """A check of a flow run's id: its final state (REST form), or None while it is not final."""
    def ended(run_id):
        state = api.get(f"/flow_runs/{run_id}").json()["state"]
        return state if state and state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None

    return ended


def test_a_served_run_retried_in_the_ui_leaves_no_stale_missing_images(fault_data, prefect_server, tmp_path):
    """A served run that failed (an image not labelled: a transient fault, no retries) retried as the UI's Retry
    button does (the flow run set to AwaitingRetry): the retry labels everything, and the run's alps-missing
    artifact says so; the failed attempt's table of images not labelled stood beside a summary of 0 missing
    (found by a helper's UI audit)."""
    repo = write_fake_repository(tmp_path / "flaky", faults={"dir": str(tmp_path / "faults"), "transient": 1})
    env = cli_env(tmp_path / "ph", prefect_server, PREFECT_RUNNER_POLL_FREQUENCY="1")
    serve = start_serve(repo, fault_data, tmp_path / "out", env, tmp_path)
    try:
        with prefect_api(prefect_server) as api:
            ended = run_ended(api)
            run_id = start_deployment_run(api, serve, tmp_path, {"config": {**SMALL_CONFIG, "backend": {"retries": 0}}})
            assert wait_until(lambda: ended(run_id), "the first attempt to end", proc=serve)["type"] == "FAILED"
            api.post(f"/flow_runs/{run_id}/set_state", json={"state": {"type": "SCHEDULED", "name": "AwaitingRetry"}})
            wait_until(lambda: api.get(f"/flow_runs/{run_id}").json()["run_count"] == 2, "the retry to start",
                       proc=serve)
            state = wait_until(lambda: ended(run_id), "the retry to end", proc=serve)
            assert state["type"] == "COMPLETED", state
            latest = api.post("/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run_id]},
                                                                       "key": {"any_": ["alps-missing"]}},
                                                         "sort": "CREATED_DESC"}).json()
            assert len(latest) == 2 and "none missing" not in json.dumps(latest[1]["data"]), latest
            assert "none missing" in json.dumps(latest[0]["data"]), latest[0]
    finally:
        serve.terminate()
        serve.wait(timeout=60)


INVALID_CONFIGS = [  # (a run's config, what its one line must say)
    ({"cluster": {"n_clusters": 0}}, "config.cluster: n_clusters must be an integer in 1..255"),
    ({"writer": {"val_fraction": 1.5}}, "config.writer: val_fraction must lie in [0, 1), got 1.5"),
    ({"amg": {"bogus_field": 3}}, "config.amg.bogus_field: not a setting of config.amg (its settings: points_per_side"),
]


def test_a_served_run_given_an_invalid_config_fails_with_one_line_naming_the_field(fake_repo, fault_data,
                                                                                   prefect_server, tmp_path):
    """Prefect validated the config before the flow started: the run had no log line, and its state message was
    pydantic's, cut short (found by a helper's UI audit). The flow says now what is wrong, in its state message and
    its log; the UI's form (the parameter's schema) is still that of the configuration."""
    env = cli_env(tmp_path / "ph", prefect_server, PREFECT_RUNNER_POLL_FREQUENCY="1")
    serve = start_serve(fake_repo, fault_data, tmp_path / "out", env, tmp_path)
    try:
        with prefect_api(prefect_server) as api:
            ended = run_ended(api)
            runs = [(start_deployment_run(api, serve, tmp_path, {"config": config}), line)
                    for config, line in INVALID_CONFIGS]
            for run_id, line in runs:
                state = wait_until(lambda run_id=run_id: ended(run_id), "the run to end", proc=serve)
                message = state["message"]
                assert state["type"] == "FAILED" and message.startswith("the run's config laid over the deployment's "
                                                                        "default is not valid: "), state
                assert line in message and "\n" not in message and "pydantic" not in message, message

                def logged(run_id=run_id, message=message):
                    logs = api.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": [run_id]}}}).json()
                    return [entry["message"] for entry in logs if message in entry["message"]]

                assert len(wait_until(logged, "the run's log line (recorded asynchronously)", timeout=60)) == 1
            deployment = api.get(f"/flow_runs/{runs[0][0]}").json()["deployment_id"]
            schema = api.get(f"/deployments/{deployment}").json()["parameter_openapi_schema"]
            assert schema["properties"]["config"]["anyOf"] == [{"$ref": "#/definitions/PipelineConfig"},
                                                               {"type": "null"}]
    finally:
        serve.terminate()
        serve.wait(timeout=60)


def test_a_served_run_cancelled_in_the_ui_stops_and_the_next_run_resumes(fault_data, fake_repo, fault_reference,
                                                                         prefect_server, tmp_path):
    """The Cancel button of a flow run that `alps serve` started, mid-run: the run ends cancelled, serve goes on
    serving, the next run labels what is left. Its process used to outlive the cancellation, held by the image in
    flight (a thread pool joined at exit), until Prefect's runner killed it 30 s later (see
    tests/core/test_threads.py)."""
    repo, faults = paused_repo(tmp_path)
    out = tmp_path / "out"
    env = cli_env(tmp_path / "ph", prefect_server, PREFECT_RUNNER_POLL_FREQUENCY="1")
    serve = start_serve(repo, fault_data, out, env, tmp_path)
    with prefect_api(prefect_server) as api:
        ended = run_ended(api)
        run_id = start_deployment_run(api, serve, tmp_path, {"concurrency": 1, "config": SMALL_CONFIG})
        wait_until(lambda: list(faults.glob("waiting-*")) and len(finished_stems(out)) == 2,
                   "two images labelled and the third held", proc=serve)
        finished = finished_stems(out)
        (flow_process,) = [p for p in psutil.Process(serve.pid).children(recursive=True)
                           if "spawn_main" in " ".join(p.cmdline())]
        api.post(f"/flow_runs/{run_id}/set_state", json={"state": {"type": "CANCELLING"}, "force": True})
        state = wait_until(lambda: ended(run_id), "the cancelled run to end", proc=serve)
        assert state["type"] == "CANCELLED", state
        assert not gone([flow_process]) and serve.poll() is None  # its process ended; serve goes on
        assert finished_stems(out) == finished and not (out / "manifest.json").exists()
    (faults / "release").touch()
    serve.terminate()
    serve.wait(timeout=60)
    assert_resumes(fault_data, fake_repo, fault_reference, out, env, finished)


@pytest.mark.parametrize("sigint_ignored", [False, True])
def test_serve_stopped_by_sigterm_stops_its_run_in_flight(fault_data, prefect_server, tmp_path, sigint_ignored):
    """`kill` of `alps serve` (systemd, `docker stop`) while its run holds an image: serve printed an asyncio
    traceback, its run stayed Running, and its process labelled on after serve was gone (found by a helper's UI
    audit). Now as Ctrl-C: serve ends without a traceback, the run ends crashed saying why, its image in flight
    cancelled, and its process ends too. Started with SIGINT ignored (a script's `alps serve &`, `nohup`), serve
    was ended by its 30 s timer, its run's process labelling on and holding OUT."""
    repo, faults = paused_repo(tmp_path)
    out = tmp_path / "out"
    env = cli_env(tmp_path / "ph", prefect_server, PREFECT_RUNNER_POLL_FREQUENCY="1")
    serve = start_serve(repo, fault_data, out, env, tmp_path, sigint_ignored)
    try:
        with prefect_api(prefect_server) as api:
            run_id = start_deployment_run(api, serve, tmp_path, {"concurrency": 1, "config": SMALL_CONFIG})
            wait_until(lambda: list(faults.glob("waiting-*")) and len(finished_stems(out)) == 2,
                       "two images labelled and the third held", proc=serve)
            (flow_process,) = [p for p in psutil.Process(serve.pid).children(recursive=True)
                               if "spawn_main" in " ".join(p.cmdline())]
            serve.terminate()
            assert wait_for_exit(serve, 120, tmp_path / "serve.log") == 0  # it stopped: its timer exits 143
            assert not gone([flow_process])  # it does not label on after serve
            assert "Traceback" not in (tmp_path / "serve.log").read_text()
            state = wait_until(lambda: run_ended(api)(run_id), "the run to end", timeout=60)
            assert state["type"] == "CRASHED", state
            assert_stop_recorded(api, run_id, finished_stems(out))
    finally:
        (faults / "release").touch()
        if serve.poll() is None:
            serve.kill()


def test_every_parameter_of_a_run_is_described_in_the_ui():
    """The deployment's form in the UI showed bare titles ("Progress Bar", "Dask Workers")."""
    from prefect.utilities.callables import parameter_schema

    from flows.alps_flow import alps_flow

    described = {name: field.get("description") for name, field in parameter_schema(alps_flow).properties.items()}
    assert described.keys() >= {"dataset", "out", "config", "concurrency", "allow_partial"}
    assert all(described.values()), [name for name, text in described.items() if not text]
