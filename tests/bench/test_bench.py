"""The benchmark scripts run end to end on the stand-in and write what bench/README.md says they write.

Small sizes only: figures are not asserted (speed is measured in ``make bench``, not in tests), their presence,
units and consistency are. Results go to a temporary folder, never over the committed ``bench/results.json``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STAGES_OURS = {"encoder", "decoder", "postprocess", "gate", "features", "clustering", "writing"}
STAGES_REFERENCE = {"encoder", "decoder", "postprocess", "features", "clustering", "writing", "write_masks"}


def _bench(script: str, *args: str) -> None:
    subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], cwd=ROOT, check=True, capture_output=True)


def test_pipeline_bench_compares_ours_with_the_reference(stand_in_repo, tmp_path):
    common = ["--model-repository", str(stand_in_repo), "--images", "2", "--size", "128", "--points-per-side", "8",
              "--n-clusters", "2", "--workdir", str(tmp_path / "work"), "--results-dir", str(tmp_path)]
    _bench("bench_pipeline.py", "--name", "first", *common)
    _bench("bench_pipeline.py", "--name", "second", *common, "--reuse-reference", "first")

    results = json.loads((tmp_path / "results.json").read_text())
    first, second = results["first"], results["second"]
    assert first["model"] == "stand-in (STAND-IN, not SAM)"
    for side, stages in (("ours", STAGES_OURS), ("reference", STAGES_REFERENCE)):
        row = first[side]
        assert stages <= set(row["per_image"]), side
        assert row["n_images"] == 2 and row["peak_rss_mib"] > 0
        # The total also holds what no stage names (reading images, loading models).
        assert 0 < sum(row["per_image"].values()) <= row["seconds_per_image"]
        assert row["images_per_hour"] == 3600.0 / row["seconds_per_image"]
    assert first["speedup"] == first["reference"]["seconds_per_image"] / first["ours"]["seconds_per_image"]
    # Same stand-in, images and prompts on both sides: the masks and the labels agree.
    assert first["agreement"]["mask_agreement"] >= 0.99
    assert first["agreement"]["label_miou_vs_reference"] >= 0.9
    # --reuse-reference NAME takes that run's reference side as it is, and runs ours again.
    assert second["reference"] == first["reference"]
    assert second["ours"]["total_seconds"] != first["ours"]["total_seconds"]
    rendered = (tmp_path / "RESULTS.md").read_text()
    assert "## first" in rendered and "## second" in rendered and "speed-up x" in rendered


def test_scaling_bench_writes_points_and_plot(tmp_path):
    _bench("bench_scaling.py", "--sizes", "3", "12", "--results-dir", str(tmp_path))
    points = json.loads((tmp_path / "results.json").read_text())["scaling"]["points"]
    assert [p["images"] for p in points] == [3, 12]
    assert [p["pfls"] for p in points] == [60, 240]  # 20 synthetic PFLs per image
    assert all(p["seconds"] > 0 and p["peak_rss_mib"] > 0 for p in points)
    assert (tmp_path / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Scaling of clustering + writing" in (tmp_path / "RESULTS.md").read_text()


def test_ort_options_bench_varies_one_setting_at_a_time(stand_in_repo, tmp_path):
    _bench("bench_ort_options.py", "--model-repository", str(stand_in_repo), "--prompts", "16", "--repeats", "1",
           "--results-dir", str(tmp_path))
    entry = json.loads((tmp_path / "results.json").read_text())["ort_options"]
    rows = {(r["model"], r["setting"]): r for r in entry["rows"]}
    for model in ("encoder", "decoder"):
        assert {"backend defaults", "level=basic", "level=extended", "threads=1"} <= {s for m, s in rows if m == model}
    assert {s for m, s in rows if m == "decoder" and s.startswith("chunk=")} == {"chunk=4", "chunk=16", "chunk=32", "chunk=64"}
    assert ("encoder", "arena=True") in rows and ("decoder", "arena=False") in rows
    assert not any("precision" in s for _, s in rows)  # no int8 repository given
    assert all(r["seconds_per_image"] > 0 for (m, _), r in rows.items() if m == "encoder")
    assert all(r["ms_per_prompt"] > 0 for (m, _), r in rows.items() if m == "decoder")
    assert entry["prompts"] == 16 and entry["int8_agreement"] is None
    assert "## onnxruntime settings" in (tmp_path / "RESULTS.md").read_text()
