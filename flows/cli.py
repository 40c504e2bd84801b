"""The ``alps`` command line: ``alps run``, ``alps evaluate``, ``alps serve``, ``alps report``, ``alps relabel``.

Flags are named after the configuration fields (``--points-per-side`` <-> ``AmgConfig.points_per_side``);
unset flags are dropped so the dataclass defaults stay the only defaults. Exit status: 0 when the dataset is
written (even with rejected inputs, which are listed), 2 with one clear line when nothing can be done.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

from alps_client.config import (
    AmgConfig,
    BackendConfig,
    ClusterConfig,
    FeatureConfig,
    GateConfig,
    InputConfig,
    PipelineConfig,
    WriterConfig,
)
from flows.review_cli import add_relabel_parser, add_report_parser, add_vector_argument

AMG_FLAGS: list[tuple[str, type]] = [
    ("points_per_side", int), ("points_per_batch", int), ("pred_iou_thresh", float),
    ("stability_score_thresh", float), ("stability_score_offset", float), ("mask_threshold", float),
    ("box_nms_thresh", float), ("crop_n_layers", int), ("crop_nms_thresh", float), ("crop_overlap_ratio", float),
    ("crop_n_points_downscale_factor", int), ("min_mask_region_area", int),
]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _n_clusters(value: str) -> int | str:
    return value if value == "auto" else int(value)


def _bands(value: str) -> tuple[int, ...]:
    return tuple(int(v) for v in value.split(","))


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``alps run`` (and ``python flows/alps_flow.py``)."""
    p.add_argument("dataset", help="folder (or file) of images to label")
    p.add_argument("--out", required=True, help="output dataset folder")
    b = p.add_argument_group("backend")
    b.add_argument("--backend", dest="kind", choices=["embedded", "triton"], help="default: embedded (onnxruntime)")
    b.add_argument("--model-repository", help="exported model repository (default: model_repository)")
    b.add_argument("--triton-url", dest="triton_urls", action="append",
                   help="Triton host:port (repeatable; default 127.0.0.1:8001, or $ALPS_TRITON_URL)")
    b.add_argument("--protocol", choices=["grpc", "http"])
    b.add_argument("--shared-memory", action="store_true", default=None, help="Triton system shared memory (same host)")
    b.add_argument("--num-threads", type=int, help="onnxruntime threads (embedded)")
    a = p.add_argument_group("automatic mask generation (Meta's names and defaults)")
    for name, typ in AMG_FLAGS:
        a.add_argument(_flag(name), dest=name, type=typ)
    c = p.add_argument_group("ALPS")
    c.add_argument("--sigma", type=float, help="gate: drop masks covering more than sigma of the image (0.3)")
    c.add_argument("--l2-normalize", dest="l2_normalize", action=argparse.BooleanOptionalAction, default=None)
    c.add_argument("--n-clusters", type=_n_clusters, help="number of pseudo classes, or 'auto' (16)")
    c.add_argument("--max-n-clusters", type=int)
    c.add_argument("--cluster-backend", choices=["auto", "sklearn", "cuml", "dask"])
    c.add_argument("--centroids", help="centroids.npy of an earlier run: label with its classes")
    c.add_argument("--val-fraction", type=float)
    c.add_argument("--seed", type=int)
    c.add_argument("--no-vis", dest="write_vis", action="store_false", default=None)
    add_vector_argument(c, "default: none")
    c.add_argument("--no-report", dest="write_report", action="store_false", default=None,
                   help="do not write the cluster review page OUT/report/index.html")
    i = p.add_argument_group("inputs")
    i.add_argument("--bands", type=_bands, help="three 1-based bands of multispectral rasters, e.g. 4,3,2")
    i.add_argument("--tile", type=int, help="cut large images into tiles of this size (iSAID: 896)")
    i.add_argument("--overlap", type=int, help="tile overlap in pixels (iSAID: 384)")
    i.add_argument("--stitch", action="store_true", default=None, help="also write one label map per tiled scene")
    i.add_argument("--slice-axis", type=int, choices=[0, 1, 2])
    i.add_argument("--write-nifti-labels", action="store_true", default=None,
                   help="stack label slices of NIfTI inputs into label volumes")
    r = p.add_argument_group("run")
    r.add_argument("--concurrency", type=int, default=2, help="images in flight (default 2)")
    r.add_argument("--dask-address", help="run the per-image stage on this Dask scheduler (tcp://host:8786); "
                                          "also used by --cluster-backend dask")
    r.add_argument("--dask-workers", type=int, help="run the per-image stage on N local Dask worker processes")
    r.add_argument("--overwrite", action="store_true", help="relabel images labelled with another model/config")
    r.add_argument("--no-progress", dest="progress_bar", action="store_false")


def _sub(cls: type, values: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names and v is not None})


def build_config(args: argparse.Namespace) -> PipelineConfig:
    """One PipelineConfig from parsed flags; unset flags keep the dataclass defaults."""
    v = dict(vars(args))
    if v.get("triton_urls") is None and os.environ.get("ALPS_TRITON_URL"):
        v["triton_urls"] = os.environ["ALPS_TRITON_URL"].split(",")
    if v.get("triton_urls") is not None:
        v["triton_urls"] = tuple(v["triton_urls"])
    seed = v.get("seed")
    cluster = {**v, "n_clusters": v.get("n_clusters"), "backend": v.get("cluster_backend"), "seed": seed}
    return PipelineConfig(
        backend=_sub(BackendConfig, v),
        inputs=_sub(InputConfig, v),
        amg=_sub(AmgConfig, v),
        gate=_sub(GateConfig, v),
        features=_sub(FeatureConfig, v),
        cluster=_sub(ClusterConfig, cluster),
        writer=_sub(WriterConfig, {**v, "seed": seed}),
    )


def _fail(message: str) -> int:
    print(f"alps: error: {message}", file=sys.stderr)
    return 2


def cmd_run(args: argparse.Namespace) -> int:
    from alps_client.errors import AlpsError
    from alps_client.backends.manifest import load_manifest

    try:
        config = build_config(args)
    except ValueError as err:
        return _fail(str(err))
    if not Path(args.dataset).exists():
        return _fail(f"dataset path {args.dataset} does not exist")
    try:
        load_manifest(config.backend.model_repository)
        if config.backend.kind == "triton":
            from alps_client.backends import make_backend

            make_backend(config.backend).close()  # readiness check: one clear line if the server is not there
    except AlpsError as err:
        return _fail(str(err))
    from alps_client.io.discovery import discover_inputs

    items, rejected = discover_inputs(args.dataset, config.inputs)  # headers only: fail before Prefect starts
    if not items:
        return _fail(f"no readable images under {args.dataset} (looked for png, jpg, jpeg, tif, tiff, bmp, webp, "
                     f"nii, nii.gz; {len(rejected)} file(s) rejected)")
    from prefect.exceptions import FailedRun

    from flows.alps_flow import alps_flow

    try:
        result = alps_flow(args.dataset, args.out, config, overwrite=args.overwrite,
                           concurrency=args.concurrency, progress_bar=args.progress_bar,
                           dask_address=args.dask_address, dask_workers=args.dask_workers)
    except (AlpsError, FailedRun) as err:
        cause = err
        while cause.__cause__ is not None and not isinstance(cause, AlpsError):
            cause = cause.__cause__
        return _fail(str(cause).splitlines()[0])
    s = result["summary"]
    print(f"\nLabelled dataset: {args.out}  ({s['n_images']} images: {s['n_train']} train / {s['n_val']} val, "
          f"{s['n_classes']} classes, {s['n_masks_kept']} masks kept, {s['n_masks_gated']} gated; "
          f"{result['n_labelled']} labelled now, {result['n_skipped']} already done)")
    if s.get("report"):
        print(f"Review the clusters: {(Path(args.out).resolve() / 'report' / 'index.html').as_uri()}")
    if result["stand_in"]:
        print("Model: the structured STAND-IN, not SAM. Export SAM with export/export_sam.py for real labels.")
    if result["errors"]:
        print(f"{len(result['errors'])} input(s) rejected, listed in {Path(args.out) / 'errors.jsonl'}:")
        for e in result["errors"][:10]:
            print(f"  {e['path']}: {e['reason']}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from alps_client.errors import AlpsError
    from alps_client.evaluate import evaluate_dataset, format_table, write_report

    try:
        report = evaluate_dataset(args.out, args.gt_dir, args.matching, args.exclude_unlabelled_images)
    except AlpsError as err:
        return _fail(str(err))
    print(format_table(report))
    json_path = Path(args.json or Path(args.out) / "evaluation.json")
    write_report(report, json_path)
    print(f"Written to {json_path}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from flows.alps_flow import alps_flow

    if not os.environ.get("PREFECT_API_URL"):
        print("alps serve: no PREFECT_API_URL set; start a server with `make server` and "
              "`export PREFECT_API_URL=http://127.0.0.1:4200/api` to see the deployment in the UI", file=sys.stderr)
    backend = {"kind": args.kind, "model_repository": args.model_repository,
               "triton_urls": tuple(args.triton_urls) if args.triton_urls else None}
    config = PipelineConfig(backend=_sub(BackendConfig, backend))
    parameters: dict[str, Any] = {"config": config}
    if args.dataset:
        parameters.update(dataset=args.dataset, out=args.out)
    alps_flow.serve(name=args.name, tags=["alps"], parameters=parameters, limit=args.limit)
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alps", description="ALPS pseudo-labelling with SAM (Prefect flow)")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="label a dataset")
    add_run_arguments(run)
    run.set_defaults(func=cmd_run)
    ev = sub.add_parser("evaluate", help="mIoU of pseudo-labels against ground truth (every class, every miss counted)")
    ev.add_argument("out", help="a dataset written by `alps run`")
    ev.add_argument("gt_dir", help="ground-truth label PNGs with the same stems")
    ev.add_argument("--matching", choices=["hungarian", "majority"], default="hungarian")
    ev.add_argument("--json", help="report path (default OUT/evaluation.json)")
    ev.add_argument("--exclude-unlabelled-images", action="store_true",
                    help="leave out ground-truth images that have no pseudo-label (default: count them as unlabelled)")
    ev.set_defaults(func=cmd_evaluate)
    serve = sub.add_parser("serve", help="register a deployment (flow.serve) to start runs from the Prefect UI")
    serve.add_argument("--name", default="alps")
    serve.add_argument("--dataset", help="default dataset parameter")
    serve.add_argument("--out", help="default output parameter")
    serve.add_argument("--limit", type=int, default=1, help="concurrent runs")
    serve.add_argument("--backend", dest="kind", choices=["embedded", "triton"])
    serve.add_argument("--model-repository")
    serve.add_argument("--triton-url", dest="triton_urls", action="append")
    serve.set_defaults(func=cmd_serve)
    add_report_parser(sub)
    add_relabel_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Console entry point (``alps``)."""
    args = make_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
