"""Ours vs the reference ALPS pipeline, side by side on the same model, images and prompts, in one run.

    make bench        # stand-in model, 1024-px synthetic scenes, Meta's AMG defaults
    make bench-full   # vit_b --random-init (fp32 and int8 against one reference run), Meta's grid
    # your own images and SAM checkpoint (exported here, fp32 and int8):
    .venv/bin/python bench/bench_pipeline.py --checkpoint sam_vit_b_01ec64.pth --model-type vit_b --int8 \
        --images my_images/ --max-images 8 --name my-data

Each side runs in its own process (so peak RSS is its own): the reference (:mod:`bench.reference_alps`, PyTorch)
and ours for every model repository given (``--model-repository``, and ``--int8-repository`` or ``--int8``). Per
stage seconds per image, images/hour, peak RSS, the two-way agreement of masks and labels with the reference
(:mod:`bench.agreement`), how many masks survive each filter of Meta's generator, and the share of prompts our
decoder upscaled are merged into ``bench/results.json`` under ``--name`` and rendered to ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def prepare_repositories(args: argparse.Namespace, work: Path) -> dict[str, str]:
    """``side name -> model repository``: the ones given, or exported here from ``--checkpoint`` / ``--random-init``."""
    repos: dict[str, str] = {}
    if args.checkpoint or args.random_init:
        from export.errors import ExportError
        from export.export_sam import run_export
        from export.quantize import quantize_repository

        fp32, int8 = work / "repo-fp32", work / "repo-int8"
        reuse = args.keep_export and holds_model(fp32, args.model_type, args.checkpoint, args.random_init)
        if reuse:
            print(f"bench_pipeline: --keep-export: reusing {fp32} (the same model type and weights)")
        else:
            try:
                run_export(args.model_type, fp32, checkpoint=args.checkpoint, random_init=args.random_init, cpu=True)
            except ExportError as err:
                raise SystemExit(f"bench_pipeline: error: {err}") from err
        repos["ours"] = str(fp32)
        if args.int8:
            # Quantised from the fp32 export: reusable only beside the very fp32 export it was made from.
            if not (reuse and holds_model(int8, args.model_type, args.checkpoint, args.random_init)):
                quantize_repository(fp32, int8)
            repos["ours-int8"] = str(int8)
    elif args.model_repository:
        repos["ours"] = args.model_repository
    else:
        raise SystemExit("bench_pipeline: give --model-repository, or --checkpoint/--random-init with --model-type")
    if args.int8_repository and "ours-int8" not in repos:
        repos["ours-int8"] = args.int8_repository
    return repos


def holds_model(repository: Path, model_type: str, checkpoint: str | None, random_init: bool) -> bool:
    """Whether ``repository`` holds an export of this model: the same model type, and the same checkpoint (by
    sha256) or random weights alike. What ``--keep-export`` checks before reusing an export in the work folder."""
    from export.triton_repo import checkpoint_record

    path = Path(repository) / "manifest.json"
    if not path.is_file():
        return False
    manifest = json.loads(path.read_text())
    recorded, wanted = manifest.get("checkpoint") or {}, checkpoint_record(checkpoint) or {}
    return (manifest.get("model_type") == model_type and bool(manifest.get("random_init")) == bool(random_init)
            and recorded.get("sha256") == wanted.get("sha256"))


def prepare_images(args: argparse.Namespace, work: Path) -> tuple[list[Path], str, list[dict[str, str]]]:
    """The image files both sides read, how to describe them, and the inputs of ``--images`` refused.

    ``--images`` is read as ``alps run`` reads a dataset (sub-folders, 16-bit and grey images stretched, EXIF
    rotation applied, NIfTI slices): the pixels alps labels are written once as 8-bit RGB PNGs named by their
    place in the list (``00000.png``...), so both sides see the same pixels and no input's name (``a`` beside
    ``a_1``, ``scan[1]``, ``a.png`` beside ``a.jpg``) can stand for another's files.
    """
    if args.images:
        return _decoded_inputs(Path(args.images), args.max_images, work / "data" / "images")
    from alps_client.synthetic import write_synthetic_dataset

    data = write_synthetic_dataset(work / "data", args.synthetic, seed=0, size=(args.size, args.size), n_classes=4)
    return sorted((data / "images").glob("*.png")), f"synthetic scenes {args.size}x{args.size}", []


def _decoded_inputs(folder: Path, limit: int | None, into: Path) -> tuple[list[Path], str, list[dict[str, str]]]:
    """``folder``'s inputs, decoded by alps' reader into ``into`` (see :func:`prepare_images`); at most ``limit``."""
    from alps_client.errors import InputImageError
    from alps_client.io import atomic
    from alps_client.io.discovery import discover_inputs
    from alps_client.io.readers import load_item

    if not folder.is_dir():
        raise SystemExit(f"bench_pipeline: error: --images {folder} is not a folder")
    items, errors = discover_inputs(folder)
    rejected = [{"path": e.path, "reason": e.reason} for e in errors]
    paths: list[Path] = []
    into.mkdir(parents=True, exist_ok=True)
    for item in items:
        if limit and len(paths) == limit:
            break
        try:
            rgb = load_item(item).rgb
        except InputImageError as err:
            rejected.append({"path": err.path, "reason": err.reason})
            continue
        paths.append(into / f"{len(paths):05d}.png")
        atomic.write_png(paths[-1], rgb)
    for bad in rejected:
        print(f"bench_pipeline: left out {bad['path']}: {bad['reason']}", file=sys.stderr)
    if not paths:
        raise SystemExit(f"bench_pipeline: error: no image alps can label in {folder} (alps run reads PNG, JPEG, "
                         "TIFF/GeoTIFF, BMP, WebP, JPEG 2000 and NIfTI, in sub-folders too)")
    return paths, str(folder), rejected


def calibrate_iou_threshold(repository: str, image_path: Path, points_per_side: int, share: float) -> float:
    """The ``pred_iou_thresh`` that ``share`` of the candidate masks (3 per grid prompt) of the first image pass.

    For models whose predicted IoUs say nothing (random weights: all within +-0.1 of 0), so that the IoU filter
    passes a stated share of the candidates instead of none.
    """
    from alps_client.amg.grids import build_point_grid
    from alps_client.backends.embedded import EmbeddedBackend
    from alps_client.backends.preprocess import apply_coords
    from alps_client.config import BackendConfig
    from bench.sides import load_images

    (image,) = load_images([image_path]).values()
    backend = EmbeddedBackend(BackendConfig(model_repository=repository))
    (embedding,) = backend.encode([image])
    points = build_point_grid(points_per_side) * np.array([image.shape[1], image.shape[0]])
    coords = apply_coords(points, image.shape[:2]).astype(np.float32)[:, None, :]
    ious = backend.decode(embedding, coords, np.ones((len(coords), 1), np.float32)).iou_predictions
    backend.close()
    threshold = float(np.quantile(ious, 1.0 - share))
    if threshold <= 0.0:  # Meta's generator (and ours) skip the IoU filter for thresholds <= 0
        raise SystemExit(f"bench_pipeline: --pred-iou-pass-share {share} needs pred_iou_thresh {threshold:.4f} <= 0, "
                         f"which turns the IoU filter off; at most {float((ious > 0).mean()):.2f} of this model's "
                         "candidates can pass a positive threshold (or give --pred-iou-thresh 0: every one passes)")
    return threshold


def run_sides(args: argparse.Namespace, work: Path, repos: dict[str, str], image_list: Path) -> dict[str, dict[str, Any]]:
    """Run ours (each repository) and the reference, each in its own process; reference between ours variants."""
    names = list(repos)
    order = [names[0], "reference", *names[1:]]
    sides: dict[str, dict[str, Any]] = {}
    for side in order:
        out = work / side
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        cmd = [sys.executable, __file__, *_side_args(args), "--side", "reference" if side == "reference" else "ours",
               "--side-repository", repos.get(side, repos[names[0]]), "--image-list", str(image_list),
               "--work", str(out), "--result", str(out / "result.json")]
        print(f"[bench] {args.name}: running {side} ...", flush=True)
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
        sides[side] = json.loads((out / "result.json").read_text())
    for r in sides.values():
        n = r["n_images"]
        r["per_image"] = {k: v / n for k, v in r["seconds"].items()}
        r["seconds_per_image"] = r["total_seconds"] / n
        r["images_per_hour"] = 3600.0 / r["seconds_per_image"]
    return {side: sides[side] for side in order}


def _side_args(args: argparse.Namespace) -> list[str]:
    """The settings a side's process needs (it re-parses them)."""
    return ["--name", args.name, "--threads", str(args.threads), "--concurrency", str(args.concurrency),
            "--points-per-side", str(args.points_per_side),
            "--pred-iou-thresh", str(args.pred_iou_thresh), "--stability-score-thresh",
            str(args.stability_score_thresh), "--sigma", str(args.sigma), "--n-clusters", str(args.n_clusters)]


def agreement(work: Path, side: str, stems: list[str]) -> dict[str, Any]:
    """Two-way agreement of ``side``'s masks and labels with the reference's (:mod:`bench.agreement`)."""
    from alps_client.io.shards import read_shard
    from alps_client.masks import encode_coco_rle
    from bench.agreement import label_confusion, match_masks, summarise

    matches, kept = [], 0
    confusion = np.zeros((256, 256), np.int64)
    for stem in stems:
        shard = read_shard(work / side / "shards" / f"{stem}.npz")
        kept += int(np.asarray(shard.keep).sum())
        paths = sorted((work / "reference" / "masks").glob(f"{stem}_*.png"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
        theirs = encode_coco_rle(np.stack([np.asarray(Image.open(p)) > 0 for p in paths])) if paths else []
        matches.append(match_masks(list(shard.masks.rles), theirs))
        ref = np.asarray(Image.open(work / "reference" / "labels" / f"{stem}.png")).astype(np.int64) - 1
        written = list((work / side / "out" / "ann_dir").glob(f"*/{stem}.png"))
        # No dataset is written when no mask reached the gate anywhere: every pixel unlabelled.
        ours_label = np.asarray(Image.open(written[0])) if written else np.full(ref.shape, 255, np.uint8)
        confusion += label_confusion(ours_label, np.where(ref < 0, 255, ref).astype(np.uint8))
    reference_kept = len(list((work / "reference" / "features").glob("*.npy")))
    return summarise(matches, confusion, kept, reference_kept)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True, help="the entry's name in bench/results.json")
    models = parser.add_argument_group("model (a repository, or a checkpoint exported here)")
    models.add_argument("--model-repository", help="model repository written by export/export_sam.py")
    models.add_argument("--int8-repository", help="the same model exported with --quantize int8: a second 'ours'")
    models.add_argument("--checkpoint", help="Meta's SAM checkpoint: exported into the work folder first")
    models.add_argument("--random-init", action="store_true", help="export --model-type with random weights")
    models.add_argument("--model-type", default="vit_b", help="with --checkpoint/--random-init (default %(default)s)")
    models.add_argument("--int8", action="store_true", help="with --checkpoint/--random-init: also bench its int8 export")
    models.add_argument("--keep-export", action="store_true",
                        help="reuse the export already in the work folder if it is of the same model type and weights "
                        "(export again after updating alps: the export's code is not compared)")
    data = parser.add_argument_group("images (a folder, or synthetic scenes)")
    data.add_argument("--images", help="a folder of your own images (png, jpg, tif, bmp, webp)")
    data.add_argument("--max-images", type=_positive, help="the first N images of --images (by path)")
    data.add_argument("--synthetic", type=int, default=4, help="without --images: N synthetic scenes (%(default)s)")
    data.add_argument("--size", type=int, default=1024, help="synthetic scene side in pixels (%(default)s)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=2,
                        help="ours: images in flight on one backend, as `alps run --concurrency` (default %(default)s)")
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--pred-iou-thresh", type=float, default=0.88)
    parser.add_argument("--pred-iou-pass-share", type=float,
                        help="set pred_iou_thresh so that this share of the first image's candidate masks pass "
                        "(for random weights, whose predicted IoUs are all near 0)")
    parser.add_argument("--stability-score-thresh", type=float, default=0.95)
    parser.add_argument("--sigma", type=float, default=0.3)
    parser.add_argument("--n-clusters", type=int, default=4)
    parser.add_argument("--note", default="", help="a sentence printed above the entry's table")
    parser.add_argument("--workdir", default="bench/out")
    parser.add_argument("--results-dir", default=str(ROOT / "bench"), help="where results.json and RESULTS.md go")
    for hidden in ("--side", "--side-repository", "--image-list", "--work", "--result", "--providers"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.amg = {"points_per_side": args.points_per_side, "pred_iou_thresh": args.pred_iou_thresh,
                "stability_score_thresh": args.stability_score_thresh}
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.side:
        from bench.sides import run_side

        run_side(args)
        return
    from bench.render import render_entry
    from bench.results import load_average, machine, model_label, record

    work = Path(args.workdir) / args.name
    for stale in ("data", "ours", "ours-int8", "reference"):
        shutil.rmtree(work / stale, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    paths, source, rejected = prepare_images(args, work)  # before an export: a wrong folder costs no minutes
    repos = prepare_repositories(args, work)
    image_list = work / "images.json"
    image_list.write_text(json.dumps([str(p.resolve()) for p in paths]))
    if args.pred_iou_pass_share is not None:
        args.pred_iou_thresh = calibrate_iou_threshold(repos["ours"], paths[0], args.points_per_side,
                                                       args.pred_iou_pass_share)
        args.amg["pred_iou_thresh"] = args.pred_iou_thresh
        print(f"[bench] pred_iou_thresh {args.pred_iou_thresh:.5f}: {args.pred_iou_pass_share:.0%} of the first "
              "image's candidate masks pass", flush=True)
    load_start = load_average()
    sides = run_sides(args, work, repos, image_list)
    manifests = {s: json.loads((Path(r) / "manifest.json").read_text()) for s, r in repos.items()}
    ours = list(repos)
    entry = {
        "kind": "pipeline",
        "note": args.note,
        "variants": {s: model_label(m) for s, m in manifests.items()},
        "images": {"source": source, "count": len(paths), **({"left_out": rejected} if rejected else {})},
        "amg": args.amg, "sigma": args.sigma, "threads": args.threads, "concurrency": args.concurrency,
        "pred_iou_pass_share": args.pred_iou_pass_share,
        "order": list(sides), "sides": sides,
        "speedup": {s: sides["reference"]["seconds_per_image"] / sides[s]["seconds_per_image"] for s in ours},
        "agreement": {s: agreement(work, s, [p.stem for p in paths]) for s in ours},
        "funnel": sides["reference"].get("funnel"),
        "load": [min(load_start, *(v for s in sides.values() for v in s["load"])),
                 max(load_start, *(v for s in sides.values() for v in s["load"]), load_average())],
        "machine": machine(),
    }
    results = record(args.name, entry, Path(args.results_dir))
    print("\n".join(render_entry(args.name, results[args.name])))


if __name__ == "__main__":
    main()
