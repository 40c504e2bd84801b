"""``bench/results.json`` and its rendering to ``bench/RESULTS.md``: one place for every benchmark script.

Each script measures, then calls :func:`record` with its entry; ``RESULTS.md`` is re-rendered from the whole JSON
file every time, so it is never edited by hand. Every entry carries the commit it was measured at (``-dirty``
when tracked files differed from it) and the machine's load average while it ran.

    python bench/results.py --drop NAME     # remove a retired entry (then RESULTS.md is re-rendered)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def commit() -> str:
    """``git rev-parse --short HEAD``, with ``-dirty`` when tracked files (other than the results) differ from it.

    ``$ALPS_BENCH_COMMIT`` comes first where set: a copy of the tree on another machine may carry no git history, or
    an older one than the code it holds (then it would read as that older commit, ``-dirty``). Without either,
    "unknown".
    """
    if os.environ.get("ALPS_BENCH_COMMIT"):
        return os.environ["ALPS_BENCH_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        # The benchmark outputs themselves change during a run: they do not make the measured code dirty.
        outputs = [f":!bench/{name}" for name in ("results.json", "RESULTS.md", "scaling.png")]
        diff = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", ".", *outputs], cwd=ROOT, check=False)
        dirty = diff.returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}-dirty" if dirty else head


def load_average() -> float:
    """The 1-minute load average (as ``uptime`` prints it)."""
    return round(os.getloadavg()[0], 2)


def machine() -> dict[str, Any]:
    """CPU model, cores, memory and the versions that matter to the figures."""
    import onnxruntime

    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    versions = {"python": platform.python_version(), "onnxruntime": onnxruntime.__version__}
    try:
        import torch

        versions["torch"] = torch.__version__
    except ImportError:  # a GPU machine's environment may lack the CPU torch wheel
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), **versions,
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}


def model_label(manifest: dict[str, Any]) -> str:
    """How a results row names a model repository's model: type, random weights, stand-in, precision."""
    from alps_client.backends.manifest import family_name

    precisions = {"int8-dynamic": ", encoder int8 dynamic quantisation", "fp16": ", fp16"}
    precision = precisions.get(manifest.get("precision", ""), "")
    return (f"{manifest['model_type']}{' (random weights)' if manifest['random_init'] else ''}"
            + (f" (STAND-IN, not {family_name(manifest.get('model_family'))})" if manifest["is_stand_in"] else "")
            + precision)


def record(key: str, entry: dict[str, Any], results_dir: Path = ROOT / "bench") -> dict[str, Any]:
    """Merge ``entry`` into ``results_dir/results.json`` under ``key`` and re-render ``RESULTS.md`` beside it."""
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    results_path = results_dir / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results[key] = {"commit": commit(), **entry}
    _write(results_dir, results)
    return results


def _write(results_dir: Path, results: dict[str, Any]) -> None:
    (results_dir / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    (results_dir / "RESULTS.md").write_text(render(results))


def render(results: dict[str, Any]) -> str:
    """``RESULTS.md`` for the whole results file."""
    from bench.render import render_entry

    lines = ["# Benchmark results", "",
             ("Written by the scripts in `bench/` (see bench/README.md); never edited by hand. Compare ratios across "
             "machines, not absolute times: ratios are measured within one run. Each section names the commit it was "
             "measured at and the machine's 1-minute load average while it ran (2 cores: load 2 means both busy)."), ""]
    for name, entry in results.items():
        lines += render_entry(name, entry)
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description="Remove retired entries from bench/results.json.")
    parser.add_argument("--drop", nargs="+", required=True, metavar="NAME")
    parser.add_argument("--results-dir", default=str(ROOT / "bench"))
    args = parser.parse_args()
    results_dir = Path(args.results_dir)
    results = json.loads((results_dir / "results.json").read_text())
    for name in args.drop:
        results.pop(name, None)
    _write(results_dir, results)


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(ROOT))
    main()
