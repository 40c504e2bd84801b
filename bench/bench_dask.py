"""Images/hour with the per-image stage on 1 thread vs 2 local Dask worker processes (same machine, same data).

    .venv/bin/python bench/bench_dask.py --model-repository bench/out/stand_in_repo

Uses the labelling time the flow records (``OUT/.alps/last_run.json``), so Prefect's start-up is not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-repository", required=True)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--points-per-side", type=int, default=16)
    args = parser.parse_args()
    from alps_client.synthetic import write_synthetic_dataset

    work = Path(tempfile.mkdtemp(prefix="alps-dask-bench-"))
    data = write_synthetic_dataset(work / "data", args.images, seed=0, size=(256, 256)) / "images"
    env = {**os.environ, "PREFECT_HOME": str(work / "ph"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    rows = {}
    for name, extra in {"1 thread": ["--concurrency", "1"], "2 Dask workers": ["--dask-workers", "2"]}.items():
        out = work / name.replace(" ", "_")
        subprocess.run([sys.executable, "-m", "flows.cli", "run", str(data), "--out", str(out), "--model-repository",
                        args.model_repository, "--points-per-side", str(args.points_per_side), "--n-clusters", "4",
                        "--num-threads", "1", "--no-progress", *extra], cwd=ROOT, env=env, check=True,
                       capture_output=True)
        seconds = json.loads((out / ".alps" / "last_run.json").read_text())["seconds"]["label"]
        rows[name] = {"label_seconds": seconds, "images_per_hour": 3600 * args.images / seconds}
        print(name, rows[name], flush=True)
    from bench.results import record

    record("dask", {"rows": rows, "images": args.images, "cores": os.cpu_count(),
                    "note": "stand-in, 1 onnxruntime thread per worker; labelling time only"})


if __name__ == "__main__":
    main()
