"""Helpers for tests that stop `alps run` mid-run and resume it: a run held on its third image, what a stopped run
must have recorded, and the rerun that must finish it."""

from __future__ import annotations

import json
from pathlib import Path

from alps_client.backends.fake import write_fake_repository
from tests.runs import SMALL, labels, run_alps, start_alps, wait_until


def paused_repo(tmp_path, after: int = 2):
    """A fake repository whose encodes after the first ``after`` wait for ``<faults>/release``."""
    faults = tmp_path / "faults"
    return write_fake_repository(tmp_path / "paused", faults={"dir": str(faults), "pause_after": after}), faults


def finished_stems(out: Path) -> set[str]:
    """Stems of the images whose shards are written in ``out``."""
    return {p.stem for p in (out / ".alps" / "shards").glob("*.npz")}


def start_held_run(fault_data: Path, tmp_path: Path, env: dict[str, str], *extra: str):
    """``alps run`` on the fault data, one image at a time, returned once two images are labelled and the third is
    held in the backend (mid-run, provably): the run, its output folder, and the faults folder (touch ``release``
    in it to let the run go on)."""
    repo, faults = paused_repo(tmp_path)
    out = tmp_path / "out"
    proc = start_alps(["run", fault_data, "--out", out, "--model-repository", repo, *SMALL, "--concurrency", "1",
                       *extra], env, tmp_path / "run.log")
    wait_until(lambda: list(faults.glob("waiting-*")) and len(finished_stems(out)) == 2,
               "two images labelled and the third held", proc=proc)
    return proc, out, faults


def assert_stop_recorded(api, flow_run_id: str, finished: set[str]) -> None:
    """What a stopped run sent to its user's API before it exited (recorded asynchronously, so waited for): the
    image held in flight ends cancelled, saying so, none is left running, and the log says why the run crashed.

    Its in-flight task run stayed Running for ever and the log's last lines (the crash, why) never arrived: the
    process ended with os._exit before Prefect sent them (found by a helper's UI audit)."""
    from flows.labelling import STOPPED_UNDER_IT

    def task_runs():
        found = api.post("/task_runs/filter", json={"flow_runs": {"id": {"any_": [flow_run_id]}}}).json()
        images = {r["name"].removeprefix("label-image: "): r["state"] for r in found
                  if r["name"].startswith("label-image: ")}
        return images if sum(s["type"] == "CANCELLED" for s in images.values()) == 1 else None

    images = wait_until(task_runs, "the image in flight recorded as cancelled", timeout=60)
    assert {stem for stem, s in images.items() if s["type"] == "COMPLETED"} == finished, images
    (held,) = [stem for stem, s in images.items() if s["type"] == "CANCELLED"]
    assert images[held]["message"] == f"{held}: {STOPPED_UNDER_IT}"
    assert all(s["type"] in ("COMPLETED", "CANCELLED") for s in images.values()), images

    def log_lines():
        logs = api.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": [flow_run_id]}}}).json()
        text = "\n".join(entry["message"] for entry in logs)
        return text if "Finished in state Crashed" in text else None

    text = wait_until(log_lines, "the run's last log lines", timeout=60)
    assert "Crash detected!" in text and "1 image(s) in flight end cancelled" in text, text


def assert_resumes(fault_data: Path, fake_repo: Path, fault_reference: Path, out: Path, env: dict[str, str],
                   finished: set[str]) -> None:
    """The same command again skips the ``finished`` images, labels the others, and writes the label maps of an
    uninterrupted run."""
    again = run_alps(["run", fault_data, "--out", out, "--model-repository", fake_repo, *SMALL], env)
    assert again.returncode == 0, again.stderr[-3000:]
    last = json.loads((out / ".alps" / "last_run.json").read_text())
    reference = labels(fault_reference)
    assert set(last["skipped"]) == finished and len(last["labelled"]) == len(reference) - len(finished)
    assert labels(out) == reference
