"""The ALPS Prefect flow: discover -> label every image (masks, gate, PFL -> shard) -> cluster -> write -> report.

Run it with ``alps run DATASET --out OUT`` or ``python flows/alps_flow.py DATASET --out OUT`` (same flags).
Tasks return small metadata (paths, counts); arrays stay in the shards on disk. Work files live in
``OUT/.alps/``; a rerun skips images whose shard matches the model and configuration.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python flows/alps_flow.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefect import flow, get_run_logger, task
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff

from alps_client.backends import SamBackend, make_backend
from alps_client.backends.manifest import load_manifest
from alps_client.config import BackendConfig, PipelineConfig
from alps_client.errors import AlpsError, BackendUnavailableError, ConfigMismatchError, InputImageError
from alps_client.io import atomic
from alps_client.io.discovery import discover_inputs
from alps_client.io.items import InputItem
from alps_client.io.shards import read_shard_meta, shard_fingerprint, shard_path, shard_status
from flows import artifacts
from flows.review_cli import report_link_artifact

_BACKENDS: dict[BackendConfig, SamBackend] = {}
_BACKENDS_LOCK = threading.Lock()


def work_dir(out: str | Path) -> Path:
    """``OUT/.alps``: shards, prepared images and run records."""
    return Path(out) / ".alps"


def get_backend(config: BackendConfig) -> SamBackend:
    """One backend per configuration and process, shared by the task threads (sessions are thread-safe)."""
    with _BACKENDS_LOCK:
        if config not in _BACKENDS:
            _BACKENDS[config] = make_backend(config)
        return _BACKENDS[config]


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only errors that may go away: an unavailable server or a timeout."""
    try:
        state.result()
    except (BackendUnavailableError, TimeoutError, ConnectionError):
        return True
    except Exception:
        return False
    return False


@task(name="discover-inputs")
def discover(dataset: str, config: PipelineConfig) -> dict[str, Any]:
    """Items to label (as small dicts) and rejected files."""
    items, errors = discover_inputs(dataset, config.inputs)
    return {"items": [i.to_dict() for i in items], "errors": [e.to_json() for e in errors]}


@task(name="label-image", retries=4, retry_delay_seconds=exponential_backoff(backoff_factor=2), retry_condition_fn=_transient)
def label_one(item: dict[str, Any], out: str, config: PipelineConfig, fingerprint: str) -> dict[str, Any]:
    """Label one image and write its shard; returns a small summary (or the reason it was rejected)."""
    from alps_client.amg import make_mask_generator
    from alps_client.io.readers import load_item
    from alps_client.pipeline import label_image

    it = InputItem(**{**item, "window": tuple(item["window"]) if item.get("window") else None})
    shard = shard_path(work_dir(out) / "shards", it.stem)
    if shard_status(shard, fingerprint) == "current":
        meta = read_shard_meta(shard)
        return {"status": "skipped", "stem": it.stem, "shard": str(shard), "image": meta["extra"].get("image_file"),
                "n_masks": meta["n_masks"], "n_kept": meta["n_kept"], "n_gated": meta["n_masks"] - meta["n_kept"]}
    try:
        loaded = load_item(it, config.inputs)
    except InputImageError as err:
        return {"status": "error", "path": err.path, "reason": err.reason}
    image_file = it.source
    if not loaded.plain_copy:
        image_file = str(work_dir(out) / "images" / f"{it.stem}.png")
        atomic.write_png(image_file, loaded.rgb)
    generator = make_mask_generator(get_backend(config.backend), config.amg)
    extra = {"image_file": image_file, "kind": it.kind, "scene": it.scene, "window": it.window, "split": it.split,
             "geo": loaded.geo, "input": loaded.extra}
    summary = label_image(loaded.rgb, it.stem, it.source, generator, config, shard, fingerprint, loaded.valid, extra)
    return {"status": "labelled", "stem": it.stem, "shard": str(shard), "image": image_file,
            "n_masks": summary.n_masks, "n_kept": summary.n_kept, "n_gated": summary.n_gated,
            "timings": summary.timings}


@task(name="cluster")
def cluster(shards: list[str], out: str, config: PipelineConfig, model_family: str = "sam") -> str:
    """Fit the centroids over all shards; returns the path of the saved centroids."""
    import numpy as np

    from alps_client.labels.clustering import fit_centroids

    centroids = fit_centroids(shards, config.cluster, model_family)
    path = work_dir(out) / "centroids.npy"
    atomic.write_with(path, lambda f: np.save(f, centroids))
    return str(path)


@task(name="write-dataset")
def write(out: str, shards: list[str], centroids_path: str, config: PipelineConfig, model_manifest: dict[str, Any],
          errors: list[dict[str, str]], image_sources: dict[str, str]) -> dict[str, Any]:
    """Paint label maps once and write the dataset, GeoTIFF labels, stitched scenes and NIfTI volumes; returns
    the summary counts.
    """
    import numpy as np

    from alps_client.io.writer import write_dataset

    summary = write_dataset(out, shards, np.load(centroids_path), config, model_manifest, errors, image_sources)
    return summary.__dict__


def check_existing_shards(out: str, items: list[dict[str, Any]], fingerprint: str, overwrite: bool) -> int:
    """Count finished images; refuse to mix shards of another model or configuration unless ``overwrite``."""
    done = stale = 0
    for item in items:
        status = shard_status(shard_path(work_dir(out) / "shards", item["stem"]), fingerprint)
        done += status == "current"
        stale += status == "stale"
    if stale and not overwrite:
        raise ConfigMismatchError(
            f"{out} holds {stale} image(s) labelled with another model or configuration; "
            "use a new --out, or --overwrite to relabel them"
        )
    return done


def make_task_runner(concurrency: int, dask_address: str | None = None, dask_workers: int | None = None) -> Any:
    """Threads in this process (default), or a Dask cluster: an existing scheduler or local worker processes."""
    if dask_address or dask_workers:
        from prefect_dask import DaskTaskRunner

        if dask_address:
            return DaskTaskRunner(address=dask_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": dask_workers, "threads_per_worker": 1, "processes": True,
                                              "dashboard_address": None})
    return ThreadPoolTaskRunner(max_workers=max(1, concurrency))


@flow(name="alps-label-dataset", log_prints=True)
def alps_flow(dataset: str, out: str, config: PipelineConfig | None = None, overwrite: bool = False,
              concurrency: int = 2, progress_bar: bool = True, dask_address: str | None = None,
              dask_workers: int | None = None) -> dict[str, Any]:
    """Pseudo-label every image under ``dataset`` into ``out`` (ALPS); returns the run summary.

    The per-image stage runs on threads of this process, or on a Dask cluster (``dask_address`` of a scheduler,
    or ``dask_workers`` local worker processes): workers read images from the shared path, write shards to
    ``out`` and return only metadata. Outputs do not depend on where or in which order images were labelled.
    """
    logger = get_run_logger()
    config = config or PipelineConfig()
    started = time.perf_counter()
    manifest = load_manifest(config.backend.model_repository)
    logger.info("Model: %s (%s) from %s", manifest.model_type, manifest.precision, manifest.root)
    if manifest.is_stand_in:
        logger.warning("Model: the structured STAND-IN (not SAM) from %s: labels demonstrate the pipeline only",
                       manifest.root)
    if config.cluster.centroids:  # before any image is labelled: centroids of another family cannot be used
        from alps_client.labels.clustering import check_centroids_family

        check_centroids_family(config.cluster.centroids, manifest.model_family)
    fingerprint = shard_fingerprint(manifest.fingerprint, config.labelling_dict())
    found = discover(dataset, config)
    items, errors = found["items"], list(found["errors"])
    if not items:
        raise AlpsError(f"no readable images under {dataset} (looked for png, jpg, jpeg, tif, tiff, bmp, webp, "
                        f"nii, nii.gz; {len(errors)} file(s) rejected)")
    already = check_existing_shards(out, items, fingerprint, overwrite)
    logger.info("%d image(s) to label, %d already labelled (will be skipped), %d rejected input(s)",
                len(items), already, len(errors))
    runner_results: list[dict[str, Any]] = []
    progress = artifacts.Progress(len(items), progress_bar)
    with make_task_runner(concurrency, dask_address, dask_workers) as runner:
        futures = [runner.submit(label_one, parameters={"item": it, "out": out, "config": config,
                                                         "fingerprint": fingerprint}) for it in items]
        for future in as_completed(futures):
            try:
                result = future.result()
            except Exception as err:  # retries exhausted: record the image and go on
                index = futures.index(future)
                result = {"status": "error", "path": items[index]["source"], "reason": f"labelling failed: {err}"}
            runner_results.append(result)
            progress.advance(result)
    progress.close()
    label_seconds = time.perf_counter() - started
    done = sorted((r for r in runner_results if r["status"] in ("labelled", "skipped")), key=lambda r: r["stem"])
    errors += sorted(({"path": r["path"], "reason": r["reason"]} for r in runner_results if r["status"] == "error"),
                     key=lambda e: e["path"])
    for e in errors:
        logger.warning("rejected %s: %s", e["path"], e["reason"])
    if not done:
        raise AlpsError(f"none of the {len(items)} input(s) could be labelled; see the reasons above")
    if len({r["stem"] for r in done}) != len(done):  # a task re-run on another worker reports once per stem
        done = list({r["stem"]: r for r in done}.values())
    shards = [r["shard"] for r in done]
    t = time.perf_counter()
    centroids = cluster(shards, out, config, manifest.model_family)
    cluster_seconds = time.perf_counter() - t
    t = time.perf_counter()
    summary = write(out, shards, centroids, config, manifest.raw, errors, {r["stem"]: r["image"] for r in done})
    extras = summary["scene_outputs"]
    write_seconds = time.perf_counter() - t
    run = {
        "dataset": dataset, "out": out, "model": manifest.model_type, "stand_in": manifest.is_stand_in,
        "labelled": [r["stem"] for r in done if r["status"] == "labelled"],
        "skipped": [r["stem"] for r in done if r["status"] == "skipped"],
        "errors": errors, "summary": summary, "scene_outputs": extras,
        "seconds": {"label": label_seconds, "cluster": cluster_seconds, "write": write_seconds,
                    "total": time.perf_counter() - started},
        "stage_seconds": artifacts.stage_totals(done),
    }
    atomic.write_json(work_dir(out) / "last_run.json", run)
    artifacts.publish(run, out)
    report_link_artifact(out)
    logger.info("Labelled dataset written to %s: %d images, %d classes, %d rejected input(s)",
                out, summary["n_images"], summary["n_classes"], len(errors))
    return {k: v for k, v in run.items() if k not in ("labelled", "skipped")} | {
        "n_labelled": len(run["labelled"]), "n_skipped": len(run["skipped"])}


if __name__ == "__main__":
    from flows.cli import main

    sys.exit(main(["run", *sys.argv[1:]]))
