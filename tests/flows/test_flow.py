"""The flow under prefect_test_harness: outputs, task runs, artifacts; resume; bad paths."""

from __future__ import annotations

import json
import subprocess
import time

import numpy as np
import pytest
from PIL import Image

from alps_client.config import AmgConfig, BackendConfig, ClusterConfig, PipelineConfig
from flows.alps_flow import alps_flow
from tests.flows.conftest import ALPS, CWD, cli_env


def small_config(repo) -> PipelineConfig:
    return PipelineConfig(backend=BackendConfig(model_repository=str(repo), num_threads=1),
                          amg=AmgConfig(points_per_side=8), cluster=ClusterConfig(n_clusters=4))


def test_flow_writes_dataset_and_records_runs_and_artifacts(stand_in_repo, scenes, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterId

    out = tmp_path / "out"
    result = alps_flow(str(scenes / "images"), str(out), small_config(stand_in_repo), progress_bar=False)
    assert result["summary"]["n_images"] == 6 and result["n_labelled"] == 6
    assert [e["reason"] for e in result["errors"]] == ["zero-byte file"]
    anns = sorted((out / "ann_dir").glob("*/*.png"))
    assert sorted(p.stem for p in anns) == sorted(f"scene_{i:04d}" for i in range(6))
    for p in anns:
        label = np.asarray(Image.open(p))
        assert label.dtype == np.uint8 and set(np.unique(label)) <= set(range(4)) | {255}
        assert (out / "img_dir" / p.parent.name / f"{p.stem}.png").is_file() and (out / "vis" / p.name).is_file()
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert errors[0]["path"].endswith("broken.png")
    assert json.loads((out / "manifest.json").read_text())["model_is_stand_in"]

    async def recorded():
        async with get_client() as client:
            runs = await client.read_flow_runs(limit=50)
            run = next(r for r in runs if r.parameters.get("out") == str(out) and r.state and r.state.is_completed())
            tasks = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
            arts = await client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
            return tasks, arts

    import asyncio

    for _ in range(60):  # task runs and artifacts are recorded asynchronously
        tasks, arts = asyncio.run(recorded())
        names = [t.name for t in tasks]
        keys = {a.key for a in arts}
        if sum(n.startswith("label-image") for n in names) >= 6 and {"alps-summary", "alps-errors"} <= keys:
            break
        time.sleep(0.5)
    assert sum(n.startswith("label-image") for n in names) == 6  # the zero-byte file is rejected at discovery
    assert any(n.startswith("cluster") for n in names) and any(n.startswith("write-dataset") for n in names)
    assert {"alps-summary", "alps-class-histogram", "alps-previews", "alps-errors", "alps-progress"} <= keys
    summary = next(a for a in arts if a.key == "alps-summary")
    assert "STAND-IN" in json.dumps(summary.data)


def test_rerun_skips_finished_images_and_refuses_mixed_configs(stand_in_repo, scenes, tmp_path):
    from alps_client.errors import ConfigMismatchError

    out = tmp_path / "out"
    cfg = small_config(stand_in_repo)
    first = alps_flow(str(scenes / "images"), str(out), cfg, progress_bar=False)
    before = {p.name: p.read_bytes() for p in (out / "ann_dir").glob("*/*.png")}
    second = alps_flow(str(scenes / "images"), str(out), cfg, progress_bar=False)
    assert first["n_labelled"] == 6 and second["n_labelled"] == 0 and second["n_skipped"] == 6
    assert before == {p.name: p.read_bytes() for p in (out / "ann_dir").glob("*/*.png")}
    other = PipelineConfig(backend=cfg.backend, amg=AmgConfig(points_per_side=6), cluster=cfg.cluster)
    with pytest.raises(ConfigMismatchError, match="another model or configuration"):
        alps_flow(str(scenes / "images"), str(out), other, progress_bar=False)


@pytest.mark.parametrize(
    ("make_path", "message"),
    [(lambda tmp: tmp / "absent", "does not exist"), (lambda tmp: tmp, "no readable images")],
)
def test_bad_dataset_paths_give_one_line_and_nonzero_exit(stand_in_repo, tmp_path, make_path, message):
    (tmp_path / "notes.txt").write_text("not an image")
    result = subprocess.run([*ALPS, "run", str(make_path(tmp_path)), "--out", str(tmp_path / "o"),
                             "--model-repository", str(stand_in_repo), "--no-progress"],
                            capture_output=True, text=True, cwd=CWD, env=cli_env(tmp_path / "ph"), timeout=300)
    assert result.returncode == 2
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("alps: error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr[-3000:]


def test_missing_model_repository(tmp_path, scenes):
    result = subprocess.run([*ALPS, "run", str(scenes / "images"), "--out", str(tmp_path / "o"),
                             "--model-repository", str(tmp_path / "nope")],
                            capture_output=True, text=True, cwd=CWD, env=cli_env(tmp_path / "ph"), timeout=300)
    assert result.returncode == 2 and "export/export_sam.py" in result.stderr
