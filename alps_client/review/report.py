"""``OUT/report/``: the cluster review page, its thumbnails and a classes file to edit, from shards and centroids.

The dataset writer feeds a :class:`~alps_client.review.select.ReviewCollector` as it paints each image and calls
:func:`write_review` at the end, so ``alps run`` and ``alps relabel`` write the report inside the same staged
write as the rest of the dataset. :func:`build_report` (``alps report OUT``) rebuilds it alone from what a run
keeps (shards, centroids, manifest): no model, no SAM. The second pass reads only the few images the page shows.
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from alps_client.backends.manifest import family_name
from alps_client.io import atomic
from alps_client.io.dataset import WrittenDataset, load_dataset
from alps_client.io.items import counted
from alps_client.io.out_lock import out_lock
from alps_client.io.publish import REPORT_OLD, REPORT_STAGING
from alps_client.io.shards import read_shard
from alps_client.io.splits import describe_split_counts
from alps_client.labels.classes import ClassMap, in_dropped_clusters
from alps_client.labels.clustering import assign_clusters
from alps_client.labels.painting import IGNORE, paint_label_map, palette
from alps_client.labels.relabel import classes_yaml
from alps_client.masks import decode_coco_rle
from alps_client.review.page import ClassView, ClusterView, render_page
from alps_client.review.render import highlight, load_rgb, mask_crop, save_jpeg
from alps_client.review.select import N_IMAGES, N_NEAR, N_RANDOM, ReviewCollector

ERRORS_SHOWN = 100
DROPPED_COLOUR = (160, 160, 160)


def _thumbnails(report: Path, collector: ReviewCollector, class_map: ClassMap, shard_paths: Mapping[str, str | Path],
                image_sources: Mapping[str, str | Path]) -> tuple[dict[int, list], dict[int, list]]:
    """Write every crop and lit image; returns ``cluster -> [(src, kind, w, h)]`` and ``cluster -> [(src, stem, w, h)]``."""
    picks: dict[str, list[tuple[int, int, str, int]]] = defaultdict(list)
    lit: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for k, stats in enumerate(collector.clusters):
        for j, (kind, pick) in enumerate(stats.shown()):
            picks[pick.stem].append((k, j, kind, pick.index))
        for j, stem in enumerate(stats.top_images()):
            lit[stem].append((k, j))
    colours = palette(class_map.n_classes)
    crops: dict[int, list] = defaultdict(list)
    images: dict[int, list] = defaultdict(list)
    for stem in collector.stems_needed():
        shard = read_shard(shard_paths[stem])
        kept = shard.kept_masks()
        rgb = load_rgb(image_sources.get(stem), shard.image_size)
        chosen = picks.get(stem, [])
        masks = decode_coco_rle([kept.rles[i] for *_, i in chosen]) if chosen else []
        for (k, j, kind, i), mask in zip(chosen, masks):
            thumb = mask_crop(rgb, mask, kept.bboxes[i])
            src = f"crops/k{k:03d}_{j:02d}.jpg"
            save_jpeg(report / src, thumb)
            crops[k].append((j, src, kind, thumb.shape[1], thumb.shape[0]))
        if stem in lit:
            cluster_ids = assign_clusters(shard.pfl, collector.centroids)
            cluster_label = paint_label_map(shard.image_size, kept.rles, kept.areas, cluster_ids)
            for k, j in lit[stem]:
                c = class_map.cluster_to_class[k]
                thumb = highlight(rgb, cluster_label == k, DROPPED_COLOUR if c == IGNORE else colours[c])
                src = f"images/k{k:03d}_{j}.jpg"
                save_jpeg(report / src, thumb)
                images[k].append((j, src, stem, thumb.shape[1], thumb.shape[0]))
    ordered = {k: [v[1:] for v in sorted(items)] for k, items in crops.items()}
    return ordered, {k: [v[1:] for v in sorted(items)] for k, items in images.items()}


def write_review(report: str | Path, collector: ReviewCollector, class_map: ClassMap, counts: Mapping[str, Any],
                 model: Mapping[str, Any], errors: Sequence[Mapping[str, str]], shard_paths: Mapping[str, str | Path],
                 image_sources: Mapping[str, str | Path], title: str, sigma: float,
                 missing: Sequence[Mapping[str, str]] = (), stretch: Mapping[str, Sequence[float]] | None = None,
                 window: Sequence[float] | None = None) -> dict[str, int]:
    """Write ``report/index.html``, its thumbnails and ``report/classes.yaml``; returns file count and bytes.

    Args:
        report: the report folder to write (fresh).
        collector: the pass over the dataset.
        class_map: the dataset's classes.
        counts: the dataset summary (``n_images``, ``n_train``, ..., ``masks_per_class``, ``pixels_per_class``).
        model: the model repository manifest.
        errors: rejected inputs.
        shard_paths: stem -> shard of every image.
        image_sources: stem -> image file (crops are cut from it; grey when missing).
        title: the dataset's name on the page.
        sigma: the gate's threshold (shown with the gate's counts).
        missing: good images the run could not label, of a dataset written with ``--allow-partial``.
        stretch: ``[low, high]`` each input of more than 8 bits was stretched between (the manifest's ``stretch``).
        window: the run's ``--intensity-window``, if given.
    """
    report = Path(report)
    crops, images = _thumbnails(report, collector, class_map, shard_paths, image_sources)
    colours = [tuple(int(v) for v in c) for c in palette(class_map.n_classes)]
    labelled = sum(counts["pixels_per_class"]) or 1
    masked = collector.mask_pixels or 1

    def cluster_view(k: int) -> ClusterView:
        s = collector.clusters[k]  # a kept cluster's share adds up to its class's (the same labelled pixels)
        share = s.pixels / (masked if class_map.cluster_to_class[k] == IGNORE else labelled)
        return ClusterView(k, s.n_masks, share, s.mean_area, crops.get(k, []), images.get(k, []))

    views = [ClassView(c, name, colours[c], counts["masks_per_class"][c], counts["pixels_per_class"][c],
                       counts["pixels_per_class"][c] / labelled, [cluster_view(k) for k in class_map.clusters_of(c)])
             for c, name in enumerate(class_map.names)]
    if class_map.dropped:
        views.append(ClassView(IGNORE, "dropped", DROPPED_COLOUR, 0, 0, 0.0, [cluster_view(k) for k in class_map.dropped]))
    stand_in, random_init = bool(model.get("is_stand_in")), bool(model.get("random_init"))
    sam = family_name(model.get("model_family"))
    checkpoint = (model.get("checkpoint") or {}).get("path")
    dropped = f", {len(class_map.dropped)} dropped" if class_map.dropped else ""
    facts = [
        ("images", f"{counts['n_images']} ({describe_split_counts(counts)})"),
        ("model", f"{model.get('model_type', '?')} ({model.get('model_family', 'sam')}, "
                  f"{model.get('precision', 'fp32')})"
                  + (f": STAND-IN, not {sam}" if stand_in else f": RANDOM weights, not a trained {sam}" if random_init
                     else f", from {Path(checkpoint).name}" if checkpoint else "")),
        ("gate", (f"{counts['n_masks_kept']} masks kept{in_dropped_clusters(counts)}, "
                  f"{counts['n_masks_gated']} dropped (covering more than sigma = {sigma} of their image)")),
        ("coverage", f"{100 * counts['labelled_pixel_fraction']:.1f}% of pixels labelled"),
        ("classes", f"{class_map.n_classes} from {class_map.n_clusters} clusters{dropped}"),
        *([("model ran on", ", ".join(f"{runs_on} ({n} images)" for runs_on, n in counts["labelled_on"].items()))]
          if counts.get("labelled_on") else []),
        ("rejected inputs", len(errors)),
        *([("images not labelled", f"{len(missing)} (written with --allow-partial: run `alps run` again)")]
          if missing else []),
        *([("intensity", intensity_fact(stretch, window))] if stretch else []),
        ("shown per cluster", f"{N_NEAR} masks nearest the centre, {N_RANDOM} at random, {N_IMAGES} images"),
    ]
    warnings = []
    if stand_in:
        warnings.append(f"The model is the structured STAND-IN (segments by colour), not {sam}: these classes "
                        "demonstrate the pipeline only.")
    elif random_init:
        warnings.append("The model has RANDOM weights (exported with --random-init): these classes mean nothing.")
    template = classes_yaml(class_map, "Classes of this dataset: rename, merge (several clusters in one class), "
                                       "drop.\nThen: alps relabel OUT --classes classes.yaml", collector.centroids)
    if missing:
        warnings.append(f"This dataset lacks {len(missing)} good image(s) that could not be labelled (written with "
                        "--allow-partial; listed below): its classes and counts leave them out. The same `alps run` "
                        "labels them.")
    page = render_page(title, facts, views, [dict(e) for e in errors[:ERRORS_SHOWN]], len(errors), template, warnings,
                       [dict(m) for m in missing[:ERRORS_SHOWN]], len(missing))
    atomic.write_text(report / "index.html", page)
    atomic.write_text(report / "classes.yaml", template)
    files = [p for p in report.rglob("*") if p.is_file()]
    return {"files": len(files), "bytes": sum(p.stat().st_size for p in files)}


def intensity_fact(stretch: Mapping[str, Sequence[float]], window: Sequence[float] | None) -> str:
    """How volumes and rasters of more than 8 bits became the greys SAM saw (the review page's ``intensity`` line).

    Examples:
        >>> intensity_fact({"ct1": [-1000.0, 1000.0]}, (-1000.0, 1000.0))
        '1 input (volumes, rasters of more than 8 bits) mapped to 0..255 over one window, -1000..1000 (--intensity-window)'
    """
    n = f"{counted(len(stretch), 'input')} (volumes, rasters of more than 8 bits)"
    if window is not None:
        return f"{n} mapped to 0..255 over one window, {window[0]:g}..{window[1]:g} (--intensity-window)"
    stem, (low, high) = next(iter(stretch.items()))
    return (f"{n} mapped to 0..255 each over its own range, its percentiles (its minimum and maximum where those "
            f"are one value), e.g. {stem}: {low:g}..{high:g}: one value may get another grey in each; one window "
            "for all: --intensity-window")


def build_report(out: str | Path) -> dict[str, int]:
    """Rebuild ``OUT/report/`` alone from the dataset's shards, centroids and manifest (``alps report OUT``).

    The new report is written beside the old one and moved into place when complete; ``manifest.json``'s
    ``counts.report`` then counts its files and bytes.

    Raises:
        AlpsError: If ``out`` holds no dataset or its shards are missing (the message says what to run), or
            another process is writing it.
    """
    with out_lock(out, "alps report", create=False):  # held before reading: a run may be replacing the dataset
        return _rebuild(load_dataset(out))


def _rebuild(data: WrittenDataset) -> dict[str, int]:
    collector = ReviewCollector(data.centroids, data.config.writer.seed)
    for stem, path in sorted(data.shard_paths.items()):
        shard = read_shard(path)
        cluster_ids = assign_clusters(shard.pfl, data.centroids)
        kept = shard.kept_masks()
        collector.add(shard, cluster_ids, paint_label_map(shard.image_size, kept.rles, kept.areas, cluster_ids))
    staging = data.out / REPORT_STAGING
    shutil.rmtree(staging, ignore_errors=True)
    size = write_review(staging, collector, data.class_map, data.manifest["counts"], data.model, data.errors,
                        data.shard_paths, data.image_sources, data.out.resolve().name, data.config.gate.sigma,
                        data.manifest.get("missing") or [], data.manifest.get("stretch"),
                        data.config.inputs.intensity_window)
    old = data.out / REPORT_OLD
    shutil.rmtree(old, ignore_errors=True)
    if (data.out / "report").exists():
        (data.out / "report").rename(old)
    staging.rename(data.out / "report")
    shutil.rmtree(old, ignore_errors=True)
    if data.manifest.get("counts", {}).get("report") != size:  # a dataset written or relabelled with --no-report
        atomic.write_json(data.out / "manifest.json",
                          {**data.manifest, "counts": {**data.manifest.get("counts", {}), "report": size}})
    return size
