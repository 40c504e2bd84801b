"""Long run: does the resident memory of ``alps run`` grow with the number of images?

Runs the real command line (``python -m flows.cli run DATA --out OUT --model-repository REPO``, the embedded
onnxruntime backend, the run's own temporary Prefect API: ``PREFECT_API_URL`` is removed from its environment) on
an export of the structured STAND-IN model (not SAM; exported into the work folder on first use) over N synthetic
scenes of SIZE x SIZE pixels, and samples every ``--interval`` seconds (default 1 s):

- the run process's RSS, USS and PSS (MiB; ``psutil.memory_full_info``) and its VmHWM (peak RSS, MiB; the
  kernel updates it lazily, so the reported peak is the larger of it and the sampled RSS);
- the same summed over its children (the temporary Prefect API server is one), and the largest child's RSS;
- images done: shards in ``OUT/.alps/shards/*.npz`` (each written atomically once its image is labelled).

Reported (MiB): the run process's RSS at 10 / 50 / 90 / 100 % of the labelling phase (the first sample at or past
that share of the images), the growth slope in MiB per 1,000 images (least squares of RSS on images done, over the
samples after the first 20 % of the images and over the second half; USS and the children's RSS likewise), peak
RSS of the run process (VmHWM) and of the API server, and the peaks after the last shard (clustering and writing).

    .venv/bin/python bench/bench_long_run.py [--images 2500] [--size 160] [--points-per-side 8]

The series goes to ``bench/out/long-run/samples.csv`` (not committed), the entry to ``bench/results.json``
("long-run") with a downsampled series.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results import load_average, machine, model_label, record

MIB = 2**20
FIELDS = ("t", "done", "rss", "uss", "pss", "hwm", "children_rss", "children_uss", "children_pss", "api_rss")


def ensure_repository(repo: Path) -> dict[str, Any]:
    """The stand-in's export in ``repo`` (exported there when absent); its manifest."""
    manifest = repo / "manifest.json"
    if not manifest.is_file():
        from export.export_sam import run_export

        print(f"[long-run] exporting the structured stand-in (not SAM) to {repo} ...", flush=True)
        run_export("stand-in", repo, cpu=True, log=lambda *_: None)
    return json.loads(manifest.read_text())


def ensure_images(folder: Path, n_images: int, size: int) -> Path:
    """``n_images`` synthetic scenes of ``size`` px in ``folder/images`` (reused when the same were written before)."""
    from alps_client.synthetic import make_scene, write_png

    stamp = folder / "written.json"
    want = {"images": n_images, "size": size}
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        return folder / "images"
    shutil.rmtree(folder, ignore_errors=True)
    for i in range(n_images):
        write_png(folder / "images" / f"scene_{i:05d}.png", make_scene(i, (size, size), 4)[0])
    stamp.write_text(json.dumps(want))
    return folder / "images"


def images_done(shards: Path) -> int:
    """Shards written so far (atomic temp files start with a dot)."""
    try:
        return sum(1 for e in os.scandir(shards) if e.name.endswith(".npz") and not e.name.startswith("."))
    except FileNotFoundError:
        return 0


def _hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return math.nan


def sample(proc: Any, shards: Path, start: float) -> dict[str, float] | None:
    """One row of FIELDS (MiB), or None once the process is gone."""
    import psutil

    try:
        full = proc.memory_full_info()
        hwm = _hwm_mib(proc.pid)
        children = proc.children(recursive=True)
    except (psutil.NoSuchProcess, psutil.ZombieProcess, FileNotFoundError, ProcessLookupError):
        return None
    if not full.rss or not math.isfinite(hwm):  # exited, not yet reaped: its memory reads as none
        return None
    kids = []
    for child in children:
        try:
            kids.append(child.memory_full_info())
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            pass
    return {"t": time.monotonic() - start, "done": images_done(shards), "rss": full.rss / MIB, "uss": full.uss / MIB,
            "pss": full.pss / MIB, "hwm": hwm, "children_rss": sum(k.rss for k in kids) / MIB,
            "children_uss": sum(k.uss for k in kids) / MIB, "children_pss": sum(k.pss for k in kids) / MIB,
            "api_rss": max((k.rss for k in kids), default=0) / MIB}


def slope_per_1000(rows: list[dict[str, float]], field: str) -> float | None:
    """Least-squares slope of ``field`` (MiB) on images done, in MiB per 1,000 images; None with < 2 distinct x."""
    xs = [r["done"] for r in rows]
    if len(set(xs)) < 2:
        return None
    n = len(rows)
    mx, my = sum(xs) / n, sum(r[field] for r in rows) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (r[field] - my) for x, r in zip(xs, rows))
    return 1000 * sxy / sxx


def summarise(rows: list[dict[str, float]], n_images: int) -> dict[str, Any]:
    """The entry's figures from the samples (see the module docstring)."""
    labelling = [r for r in rows if r["done"] < n_images] + [next(r for r in rows if r["done"] >= n_images)]
    at = {}
    for share in (10, 50, 90, 100):
        first = next(r for r in rows if r["done"] >= math.ceil(share / 100 * n_images))
        at[f"{share}%"] = {"images": int(first["done"]), "seconds": round(first["t"], 1), "rss_mib": round(first["rss"], 1),
                           "uss_mib": round(first["uss"], 1), "children_rss_mib": round(first["children_rss"], 1)}
    after_warmup = [r for r in labelling if r["done"] >= 0.2 * n_images]
    second_half = [r for r in labelling if r["done"] >= 0.5 * n_images]
    slopes = {f"{field}_after_20%": slope_per_1000(after_warmup, field) for field in ("rss", "uss", "children_rss")}
    slopes["rss_second_half"] = slope_per_1000(second_half, "rss")
    slopes["uss_second_half"] = slope_per_1000(second_half, "uss")
    last_shard = labelling[-1]["t"]
    after = [r for r in rows if r["t"] > last_shard]
    first_done = next(r["t"] for r in rows if r["done"] > 0)
    return {
        "at": at,
        "slope_mib_per_1000_images": {k: None if v is None else round(v, 2) for k, v in slopes.items()},
        # VmHWM is updated lazily by the kernel: a sample's RSS may exceed the VmHWM read just after it.
        "peak_rss_mib": {"run": round(max(max(r["hwm"], r["rss"]) for r in rows), 1),
                         "run_sampled": round(max(r["rss"] for r in rows), 1),
                         "api_server": round(max(r["api_rss"] for r in rows), 1),
                         "children": round(max(r["children_rss"] for r in rows), 1),
                         "after_last_shard": round(max(r["rss"] for r in after), 1) if after else None,
                         "children_after_last_shard": round(max(r["children_rss"] for r in after), 1) if after else None},
        "seconds": {"to_first_shard": round(first_done, 1), "labelling": round(last_shard - first_done, 1),
                    "after_last_shard": round(rows[-1]["t"] - last_shard, 1), "total": round(rows[-1]["t"], 1)},
        "samples": len(rows),
    }


def downsample(rows: list[dict[str, float]], points: int = 24) -> list[dict[str, float]]:
    """About ``points`` rows spread over the series (first and last kept), rounded: for the entry."""
    step = max(1, len(rows) // points)
    picked = rows[::step] + ([rows[-1]] if (len(rows) - 1) % step else [])
    return [{k: round(v, 1) if k != "done" else int(v) for k, v in r.items() if k in ("t", "done", "rss", "uss",
                                                                                    "children_rss")} for r in picked]


def run_and_sample(command: list[str], out: Path, interval: float, log: Path, extra_env: dict[str, str] | None = None
                   ) -> tuple[int, list[dict[str, float]]]:
    """Start ``command`` (with ``extra_env`` added to its environment) and sample it until it exits; (status, samples)."""
    import psutil

    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | (extra_env or {})
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    shards = out / ".alps" / "shards"
    rows: list[dict[str, float]] = []
    with log.open("wb") as log_file:
        start = time.monotonic()
        popen = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log_file,
                                 stderr=subprocess.STDOUT)
        proc = psutil.Process(popen.pid)
        try:
            while popen.poll() is None:
                row = sample(proc, shards, start)
                if row is not None:
                    rows.append(row)
                time.sleep(interval)
        finally:
            if popen.poll() is None:  # interrupted: do not leave the run (and its API server) behind
                popen.terminate()
                popen.wait(30)
    return popen.returncode, rows


def malloc_settings() -> str:
    """How the run's malloc is set: by alps (alps_client/runs/allocator.py), unless this environment says otherwise."""
    from alps_client.runs.allocator import RELEASE_EVERY, RUN_ARENAS

    if os.environ.get("ALPS_GLIBC_MALLOC", "") not in ("", "0"):
        return f"glibc's defaults (ALPS_GLIBC_MALLOC={os.environ['ALPS_GLIBC_MALLOC']})"
    arenas = (f"MALLOC_ARENA_MAX={os.environ['MALLOC_ARENA_MAX']}" if "MALLOC_ARENA_MAX" in os.environ else
              f"{RUN_ARENAS} arenas")
    return f"alps: {arenas}, malloc_trim every {RELEASE_EVERY} images (alps_client/runs/allocator.py)"


def labelled_and_sampled(command: list[str], out: Path, args: argparse.Namespace, samples: Path,
                         extra_env: dict[str, str]) -> list[dict[str, float]]:
    """Run ``command`` into an emptied ``out`` and sample it (:func:`run_and_sample`); its samples, also to CSV."""
    shutil.rmtree(out, ignore_errors=True)
    log = samples.with_suffix(".log")
    rc, rows = run_and_sample(command, out, args.interval, log, extra_env)
    if rc != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"alps run exited with {rc} (log {log}): {tail[0]}")
    done = images_done(out / ".alps" / "shards")
    if done != args.images or not rows or rows[-1]["done"] < args.images:
        raise RuntimeError(f"alps run finished with {done} shards of {args.images} images, or before the first sample")
    with samples.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2500, help="synthetic scenes to label (2500)")
    parser.add_argument("--size", type=int, default=160, help="scene side, pixels (160)")
    parser.add_argument("--points-per-side", type=int, default=8, help="AMG grid (8)")
    parser.add_argument("--n-clusters", type=int, default=8)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples (1)")
    parser.add_argument("--model-repository", help="an existing stand-in export (default: exported into the workdir)")
    parser.add_argument("--workdir", default=str(ROOT / "bench" / "out" / "long-run"))
    parser.add_argument("--results-dir", default=str(ROOT / "bench"))
    parser.add_argument("--compare-glibc-malloc", action="store_true",
                        help="run again with glibc's malloc as it is (ALPS_GLIBC_MALLOC=1: arenas not capped, freed "
                             "memory not trimmed) and record both runs")
    args = parser.parse_args()
    if args.images < 2 or args.size < 32 or args.points_per_side < 1 or args.interval <= 0:
        raise ValueError("--images >= 2, --size >= 32, --points-per-side >= 1 and --interval > 0, please")
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    repo = Path(args.model_repository) if args.model_repository else work / "stand_in_repo"
    manifest = ensure_repository(repo)
    images = ensure_images(work / "data", args.images, args.size)
    out = work / "labelled"
    command = [sys.executable, "-m", "flows.cli", "run", str(images), "--out", str(out), "--model-repository", str(repo),
               "--points-per-side", str(args.points_per_side), "--n-clusters", str(args.n_clusters), "--no-progress"]
    print(f"[long-run] {' '.join(command)}", flush=True)
    load_start = load_average()
    rows = labelled_and_sampled(command, out, args, work / "samples.csv", {})
    glibc_rows = labelled_and_sampled(command, out, args, work / "samples-glibc-malloc.csv",
                                      {"ALPS_GLIBC_MALLOC": "1"}) if args.compare_glibc_malloc else None
    load_end = load_average()
    entry = {"model": model_label(manifest), "images": args.images, "size": args.size,
             "points_per_side": args.points_per_side, "n_clusters": args.n_clusters, "interval_s": args.interval,
             "command": " ".join(["alps", command[3], "DATA", command[5], "OUT", command[7], "REPO", *command[9:]]),
             "malloc": malloc_settings(), **summarise(rows, args.images), "series": downsample(rows), "load": [load_start, load_end],
             "machine": machine()}
    if glibc_rows is not None:  # the same run just after, with glibc's malloc as it is
        entry["glibc_malloc"] = {"malloc": "glibc's defaults (ALPS_GLIBC_MALLOC=1)",
                                 **summarise(glibc_rows, args.images), "series": downsample(glibc_rows)}
    print(json.dumps({k: v for k, v in entry.items() if k != "series"}, indent=1))
    record("long-run", entry, Path(args.results_dir))


if __name__ == "__main__":
    try:
        main()
    except (OSError, ValueError, RuntimeError, subprocess.SubprocessError) as error:
        sys.exit(f"bench_long_run: {error}")
