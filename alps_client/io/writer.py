"""The labelled dataset: mmsegmentation layout, COCO instances, centroids, classes, manifest and errors.

:func:`image_labels` is the pure step (masks + PFLs + centroids + class map -> class per mask and the label map);
:func:`write_dataset` does the I/O: it reads the shards one at a time (memory flat in the number of images),
paints each label map once and hands it to every output that needs it (``ann_dir``, previews, COCO, GeoTIFF /
stitched scenes / NIfTI volumes), writes everything into a staging folder and swaps it into ``OUT`` as a whole
(:mod:`alps_client.io.publish`). The same shards, centroids, class map and seed give byte-identical outputs.
Optional outputs fed the same way: ``vectors/`` (:mod:`alps_client.io.vectors`) and the review page ``report/``
(:mod:`alps_client.review`), so ``alps run`` and ``alps relabel`` produce them identically and swap them in with
the rest.
"""

from __future__ import annotations

import filecmp
import re
import shutil
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from alps_client.config import PipelineConfig
from alps_client.errors import InputChangedError, OutputDiskFullError
from alps_client.io import atomic
from alps_client.io.coco import CocoStream, coco_annotations, coco_image_entry
from alps_client.io.items import content_digest, printable
from alps_client.io.mmseg import FILE_NAME as MMSEG_CONFIG
from alps_client.io.mmseg import mmseg_config
from alps_client.io.publish import DATASET_FORMAT, not_written_again, publish, staging_dir
from alps_client.io.readers import pil_warnings_named, read_rgb
from alps_client.io.registry import earlier_splits, record_splits, split_identity
from alps_client.io.scenes import SceneOutputs
from alps_client.io.shards import ImageShard, read_shard, read_shard_meta
from alps_client.io.splits import assign_splits, images_outside_split_folders, split_shortfall
from alps_client.io.vectors import VectorOutput
from alps_client.labels.classes import ClassMap
from alps_client.labels.clustering import assign_clusters, centroids_sidecar
from alps_client.labels.painting import IGNORE, overlay, paint_label_map, palette
from alps_client.review.report import write_review
from alps_client.review.select import ReviewCollector
from alps_client.versions import versions


@dataclass
class ImageLabels:
    """What one image contributes to the dataset.

    Attributes:
        cluster_ids: ``(K,) int64`` nearest centroid of each kept mask.
        class_ids: ``(K,) int64`` class of each kept mask (255 = dropped).
        label: ``(H, W) uint8`` label map (255 = no label).
        cluster_label: ``(H, W) uint8`` the same map in cluster ids (``label`` is its lookup through the class map).
    """

    cluster_ids: npt.NDArray[np.int64]
    class_ids: npt.NDArray[np.int64]
    label: npt.NDArray[np.uint8]
    cluster_label: npt.NDArray[np.uint8]


def image_labels(shard: ImageShard, centroids: npt.NDArray[np.float32], class_map: ClassMap) -> ImageLabels:
    """Classify one shard's kept masks and paint its label map (pure).

    The masks are painted once, with their cluster ids; the class label map is that map looked up through the class
    map, which is exactly painting class ids (the mask on top of a pixel decides it either way), so a relabel
    changes every label map exactly as the mapping says.
    """
    cluster_ids = assign_clusters(shard.pfl, centroids)
    kept = shard.kept_masks()
    cluster_label = paint_label_map(shard.image_size, kept.rles, kept.areas, cluster_ids)
    return ImageLabels(cluster_ids, class_map.classes_of(cluster_ids), class_map.label_lut()[cluster_label],
                       cluster_label)


@dataclass
class DatasetSummary:
    """Small summary of a written dataset (safe to return from a Prefect task)."""

    out_dir: str
    n_images: int
    n_train: int
    n_val: int
    n_test: int
    n_classes: int
    n_masks_kept: int
    n_masks_gated: int
    n_errors: int
    labelled_pixel_fraction: float
    masks_per_class: list[int] = field(default_factory=list)
    pixels_per_class: list[int] = field(default_factory=list)
    scene_outputs: dict[str, int] = field(default_factory=dict)
    vectors: dict[str, int] = field(default_factory=dict)
    report: dict[str, int] = field(default_factory=dict)
    #: masks the gate kept in clusters `alps relabel` drops (painted 255, left out of COCO): in ``n_masks_kept``
    n_masks_in_dropped_clusters: int = 0
    #: images by what ran the model on them (:func:`labelled_on`)
    labelled_on: dict[str, int] = field(default_factory=dict)


#: what an image labelled before shards recorded where the model ran counts under, in ``labelled_on``
ON_UNRECORDED = "not recorded (labelled by an older alps)"
#: the manifest's ``centroids_from`` where nothing recorded how the centroids came about
CENTROIDS_UNRECORDED = "not recorded (fitted by an older alps)"


def labelled_on(metas: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Images by what ran the model on them (``onnxruntime CUDAExecutionProvider``, ``Triton server``...).

    A GPU asked for that would not start leaves the run on the CPU with a warning in its log; the dataset says it
    to whoever reads it later, and a dataset labelled over several runs on several machines counts each. Tiles and
    slices count as images; a tile of nodata alone, which no model saw, is not counted.
    """
    found = Counter(meta.get("extra", {}).get("runs_on", ON_UNRECORDED) for meta in metas
                    if not meta.get("extra", {}).get("empty"))
    return dict(sorted(found.items()))


def _group(meta: Mapping[str, Any]) -> str:
    """Images split together: the tiles of a scene, the slices of a volume; else the image alone."""
    return str(meta.get("extra", {}).get("scene") or meta["stem"])


def _input_path(meta: Mapping[str, Any]) -> str:
    """The input file an image comes from, relative to the dataset (its scene's name for shards without one)."""
    return str(meta.get("extra", {}).get("source_signature", {}).get("path") or _group(meta))


def split_group_of(input_path: str, split_group: str | None) -> str | None:
    """The group ``split_group`` puts an image of the input at ``input_path`` in; None without a pattern or a match.

    The pattern's first match in its input's path (its first capture group, if it has one: ``sub-([^/]+)``), so
    that a subject's sessions stay together. Without one the image is split with :func:`_group`'s (its scene or
    volume, or alone).
    """
    if split_group is None:
        return None
    pattern = re.compile(split_group)
    match = pattern.search(input_path)
    if match is None:
        return None
    return "\0" + (match.group(1) if pattern.groups else match.group(0))  # apart from any stem


def unmatched_split_group(unmatched: Sequence[str], n_inputs: int, split_group: str | None) -> str | None:
    """The line saying that ``--split-group`` matched none (or not all) of the ``n_inputs`` input paths.

    ``unmatched``: the paths it did not match; None when there is none.
    """
    if split_group is None or not unmatched:
        return None
    every = len(unmatched) == n_inputs
    return (f"--split-group {split_group!r} matched {'none' if every else 'not all'} of the input paths ("
            f"{len(unmatched)} without a match, e.g. {unmatched[0]!r}, relative to the dataset): those are split by "
            "their own scene or volume")


# Extensions of one format: a dataset of .jpg and .jpeg files is copied as .jpg.
_SAME_FORMAT = {".jpeg": ".jpg"}
# The extension of each format a copied source may hold, by PIL's name of the format its bytes are in.
_FORMAT_SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "TIFF": ".tif", "BMP": ".bmp", "WEBP": ".webp", "JPEG2000": ".jp2"}


def _format_suffix(source: str | Path) -> str:
    """The extension ``source``'s bytes call for: its own, unless it names another format (a JPEG saved as .png).

    A copy keeps its bytes: under its own extension, a JPEG named .png lay in ``img_dir`` as JPEG bytes under
    ``.png``, which loaders that pick a decoder by the extension cannot read.
    """
    suffix = Path(source).suffix.lower() or ".png"
    suffix = _SAME_FORMAT.get(suffix, suffix)
    try:
        with pil_warnings_named(Path(source)), Image.open(source) as im:  # JPEG: PIL parses the EXIF here
            actual = _FORMAT_SUFFIX.get(str(im.format))
    except (OSError, ValueError):  # unreadable here: the copy or the PNG written from it says what is wrong
        return suffix
    same = actual is None or actual == suffix or (actual, suffix) in ((".tif", ".tiff"), (".jp2", ".j2k"))
    return suffix if same else actual


def image_suffix(formats: Mapping[str, str]) -> str:
    """The one extension of the images in ``img_dir``: their sources' when all share one format, else ``.png``.

    ``formats``: each source's format as an extension (:func:`_format_suffix`), by stem.

    mmsegmentation finds a split's images by one ``img_suffix``: copies in mixed formats (JPEGs beside the PNGs of
    TIFF inputs or EXIF-rotated JPEGs) would leave some out of training, unseen. The sources given are what the
    model saw (8-bit RGB files as they are, or alps' own PNG of any other input), so a PNG written from one holds
    the same pixels. It finds each image's label map by ``img.replace(img_suffix, '.png')``, wherever the name
    holds the suffix: a stem that holds it (``photo.jpg`` of ``photo.jpg.jpg``) makes every image a PNG, under
    which the replace changes nothing.
    """
    suffixes = set(formats.values())
    suffix = suffixes.pop() if len(suffixes) == 1 else ".png"
    return ".png" if any(suffix in stem for stem in formats) else suffix


def _copy_and_preview(source: str | Path | None, stem: str, split: str, staging: Path, label: npt.NDArray[np.uint8],
                      n_classes: int, config: PipelineConfig, suffix: str, same_format: bool,
                      labelled_sha256: str | None = None) -> tuple[str, bool]:
    """Copy the image into ``img_dir`` as ``<stem><suffix>`` and write its preview.

    A source of another format (``same_format`` False) is written as the PNG of its pixels (``suffix`` is then
    ``.png``). ``labelled_sha256``: the sha256 the input file had when its image was labelled, where ``source`` is
    that file (not alps' own decoded copy).

    Returns:
        Its COCO file name, and False where ``source`` holds other bytes than ``labelled_sha256`` (its outputs are
        then not all written).
    """
    file_name = f"{stem}.png"
    if source is None:
        return file_name, True
    rgb = None
    if config.writer.copy_images:
        file_name = f"{stem}{suffix}"
        if same_format:
            copied = atomic.copy_file(source, staging / "img_dir" / split / file_name)
            if labelled_sha256 is not None and copied != labelled_sha256:
                return file_name, False
            labelled_sha256 = None  # (checked)
    if labelled_sha256 is not None and (config.writer.copy_images or config.writer.write_vis) and \
            content_digest(str(source)) != labelled_sha256:
        return file_name, False
    if config.writer.copy_images and not same_format:
        rgb = read_rgb(source)
        atomic.write_png(staging / "img_dir" / split / file_name, rgb)
    if config.writer.write_vis:
        rgb = read_rgb(source) if rgb is None else rgb
        if rgb.shape[:2] == label.shape:
            atomic.write_png(staging / "vis" / f"{stem}.png", overlay(rgb, label, n_classes))
    return file_name, True


def write_dataset(
    out_dir: str | Path,
    shard_paths: Sequence[str | Path],
    centroids: npt.NDArray[np.float32],
    config: PipelineConfig,
    model_manifest: Mapping[str, Any],
    errors: Sequence[Mapping[str, Any]],
    image_sources: Mapping[str, str | Path] | None = None,
    class_map: ClassMap | None = None,
    extra_manifest: Mapping[str, Any] | None = None,
    warn: Callable[[str], None] | None = None,
) -> DatasetSummary:
    """Write the labelled dataset to ``out_dir`` (its layout: README.md, "What a run writes").

    Args:
        out_dir: dataset root; its previous dataset outputs are replaced as a whole, other files are left alone.
        shard_paths: one shard per labelled image.
        centroids: ``(N, D)`` cluster centres; cluster = nearest centre.
        config: the run's configuration (split, previews, scene outputs; recorded in the manifest).
        model_manifest: the model repository manifest (recorded in the manifest).
        errors: rejected inputs, each ``{"path", "reason"}``.
        image_sources: stem -> file copied to ``img_dir/<split>/<stem><suffix>`` and used for previews; one for
            every labelled image unless ``config.writer`` has ``copy_images`` and ``write_vis`` off.
        class_map: cluster -> class mapping and class names; default one class per cluster.
        extra_manifest: more top-level manifest entries (e.g. the flow's record of images not labelled).
        warn: receives the line naming outputs of the previous dataset the new one does not have (its
            ``evaluation.json``, ``vectors/`` of a run with ``--vector``...), which the swap deletes, and the line
            saying that whole scenes left val empty or far from ``--val-fraction``.

    Returns:
        A small summary with counts and the class histogram.

    Raises:
        OutputDiskFullError: If the disk fills up: what was staged is removed, the previous dataset stays.
        ValueError: If ``image_sources`` lacks a labelled image that ``copy_images`` or ``write_vis`` needs.
        InputChangedError: If an input file copied or read for its preview holds other bytes than the sha256 its
            shard records (edited in place, its size and time kept): nothing is written, the previous dataset stays.
    """
    out = Path(out_dir)
    staging = staging_dir(out)
    try:
        summary = _stage_dataset(out, staging, shard_paths, centroids, config, model_manifest, errors, image_sources,
                                 class_map, extra_manifest, warn)
    except OutputDiskFullError as err:
        staged = sum(f.stat().st_size for f in staging.rglob("*") if f.is_file())
        shutil.rmtree(staging, ignore_errors=True)
        raise OutputDiskFullError(f"{err} (the {atomic.size_text(staged)} of the new dataset written so far are "
                                  "removed; the previous dataset, if any, stays)") from err
    except InputChangedError:
        shutil.rmtree(staging, ignore_errors=True)  # the previous dataset stays
        raise
    if _scores_the_staged_labels(out, staging):  # a rewrite that changed no label: its evaluation still holds
        shutil.copy2(out / "evaluation.json", staging / "evaluation.json")
    lost = not_written_again(out, staging)
    if lost and warn:
        warn(lost)
    publish(out, staging)
    return summary


def _scores_the_staged_labels(out: Path, staging: Path) -> bool:
    """Whether ``out``'s ``evaluation.json`` scores the staged dataset as well.

    So it does when the staged ``classes.json`` and every label map in ``ann_dir`` are the same, byte for byte (a
    rerun or relabel that changed nothing).
    """
    if not (out / "evaluation.json").is_file() or (staging / "evaluation.json").exists():
        return False
    pairs = [(out / "classes.json", staging / "classes.json")]
    old, new = (sorted(p.relative_to(root / "ann_dir") for p in (root / "ann_dir").rglob("*.png") if p.is_file())
                for root in (out, staging))
    if old != new:
        return False
    pairs += [(out / "ann_dir" / name, staging / "ann_dir" / name) for name in new]
    try:
        return all(a.stat().st_size == b.stat().st_size for a, b in pairs) and \
            all(filecmp.cmp(a, b, shallow=False) for a, b in pairs)
    except OSError:
        return False


def _stage_dataset(
    out: Path,
    staging: Path,
    shard_paths: Sequence[str | Path],
    centroids: npt.NDArray[np.float32],
    config: PipelineConfig,
    model_manifest: Mapping[str, Any],
    errors: Sequence[Mapping[str, Any]],
    image_sources: Mapping[str, str | Path] | None,
    class_map: ClassMap | None,
    extra_manifest: Mapping[str, Any] | None,
    warn: Callable[[str], None] | None = None,
) -> DatasetSummary:
    """Every output of :func:`write_dataset` written into ``staging``; returns the summary."""
    class_map = class_map or ClassMap.identity(len(centroids))
    if class_map.n_clusters != len(centroids):
        raise ValueError(f"the class map covers {class_map.n_clusters} clusters, the centroids {len(centroids)}")
    n_classes = class_map.n_classes
    paths = sorted((Path(p) for p in shard_paths), key=lambda p: p.name)
    metas = [read_shard_meta(p) for p in paths]
    # Tiles wholly in a scene's nodata hold nothing to train on: no image, no label map (255 in stitched maps).
    kept = [(p, m) for p, m in zip(paths, metas) if not m.get("extra", {}).get("empty")]
    paths, metas = [p for p, _ in kept], [m for _, m in kept]
    image_sources = image_sources or {}
    without_image = [m["stem"] for m in metas if m["stem"] not in image_sources]
    if without_image and (config.writer.copy_images or config.writer.write_vis):
        raise ValueError(  # the dataset had no img_dir/ nor vis/, its manifest and mmseg config saying otherwise
            f"image_sources names no image file for {len(without_image)} of the {len(metas)} labelled image(s) "
            f"({', '.join(without_image[:3])}{', ...' if len(without_image) > 3 else ''}), which copy_images and "
            "write_vis need: give stem -> image file for each, or a WriterConfig with copy_images=False and "
            "write_vis=False")
    seed, val_fraction, split_group = config.writer.seed, config.writer.val_fraction, config.writer.split_group
    split_by = split_identity(seed, val_fraction, split_group)
    earlier = earlier_splits(out, split_by)  # by input path: the name may have passed to another file
    path_of = {m["stem"]: _input_path(m) for m in metas}
    matched = {stem: split_group_of(path, split_group) for stem, path in path_of.items()}
    group_of = {m["stem"]: matched[m["stem"]] or _group(m) for m in metas}
    unmatched = sorted({path_of[stem] for stem, group in matched.items() if group is None})
    earlier_by_group: dict[str, str] = {}
    for stem, path in path_of.items():
        if path in earlier:
            earlier_by_group.setdefault(group_of[stem], earlier[path])
    grouped = [(m["stem"], group_of[m["stem"]], m.get("extra", {}).get("split")) for m in metas]
    splits = assign_splits(grouped, seed, val_fraction, earlier_by_group)
    for note in (images_outside_split_folders(grouped, splits, val_fraction),
                 split_shortfall(grouped, splits, val_fraction, split_group),
                 unmatched_split_group(unmatched, len(set(path_of.values())), split_group)):
        if note and warn:
            warn(note)
    now = {path_of[m["stem"]]: splits[m["stem"]] for m in metas}
    # An earlier split that differs now was moved to give this dataset something to train on (its other images
    # gone, for now): the record keeps it, so that the held-out images are held out again once they are back.
    # An image in a split folder (train/, val/) takes the folder's split: the record follows it there
    given = {path_of[stem] for stem, _, split in grouped if split}
    record_splits(out, now | {path: earlier[path] for path in now
                              if path not in given and earlier.get(path, now[path]) != now[path]}, split_by)
    coco = {split: CocoStream(staging / f"instances_{split}.json") for split in ("train", "val")}
    if "test" in splits.values():
        coco["test"] = CocoStream(staging / "instances_test.json")
    scenes = SceneOutputs(staging, metas, config.inputs, earlier=out)
    fmt = config.writer.vector_format
    vectors = VectorOutput(staging / "vectors", fmt, class_map, warn) if fmt else None
    review = ReviewCollector(centroids, config.writer.seed) if config.writer.write_report else None
    n_split = dict.fromkeys(coco, 0)
    image_id = annotation_id = 1
    masks_per_class = np.zeros(n_classes, np.int64)
    pixels_per_class = np.zeros(n_classes, np.int64)
    kept_total = gated_total = in_dropped = labelled = pixels = 0
    formats = {stem: _format_suffix(source) for stem, source in image_sources.items()}  # each file's header read once
    changed: list[tuple[str, str]] = []  # (stem, input) whose bytes are not those labelled: nothing is written then
    suffix = image_suffix(formats)
    for path, meta in zip(paths, metas):
        shard = read_shard(path)
        labels = image_labels(shard, centroids, class_map)
        split = splits[shard.stem]
        atomic.write_png(staging / "ann_dir" / split / f"{shard.stem}.png", labels.label)
        source = image_sources.get(shard.stem)
        file_name, as_labelled = _copy_and_preview(
            source, shard.stem, split, staging, labels.label, n_classes, config, suffix,
            formats.get(shard.stem) == suffix,
            shard.extra.get("content_sha256") if source is not None and str(source) == shard.source else None)
        if not as_labelled:
            changed.append((shard.stem, shard.source))
            continue
        annotations = coco_annotations(shard.kept_masks(), labels.class_ids, image_id, annotation_id)
        coco[split].add("images", [coco_image_entry(image_id, file_name, shard.image_size)])
        coco[split].add("annotations", annotations)
        scenes.add(meta, labels.label)
        if vectors is not None:
            vectors.add(shard, labels.cluster_ids, labels.class_ids, split)
        if review is not None:
            review.add(shard, labels.cluster_ids, labels.cluster_label)
        image_id += 1
        annotation_id += len(annotations)
        n_split[split] += 1
        named = labels.class_ids[labels.class_ids != IGNORE]
        in_dropped += len(labels.class_ids) - len(named)
        np.add.at(masks_per_class, named, 1)
        counts = np.bincount(labels.label.ravel(), minlength=256)
        pixels_per_class += counts[:n_classes]
        labelled += int(counts[:IGNORE].sum())
        pixels += labels.label.size
        kept_total += shard.n_kept
        gated_total += int(np.count_nonzero(~shard.keep & (shard.masks.areas > 0)))  # shards of older runs held
        # masks emptied by transparency or nodata too
    if changed:
        raise InputChangedError(
            f"{len(changed)} input(s) hold other bytes than when they were labelled, their size and modification time "
            f"kept (edited in place?), e.g. {printable(changed[0][1])}: their new pixels would lie beside their old "
            "labels, so no dataset is written", [stem for stem, _ in changed])
    for stream in coco.values():
        stream.close(class_map.names)
    scene_counts = scenes.close()
    atomic.write_with(staging / "centroids.npy", lambda f: np.save(f, centroids.astype(np.float32)))
    atomic.write_json(staging / "centroids.json", {**centroids_sidecar(dict(model_manifest)),
                                                   "l2_normalized": config.features.l2_normalize})
    colours = palette(n_classes)
    classes = [
        {"id": k, "name": name, "clusters": class_map.clusters_of(k), "color": colours[k].tolist(),
         "n_masks": int(masks_per_class[k]), "n_pixels": int(pixels_per_class[k])}
        for k, name in enumerate(class_map.names)
    ]
    atomic.write_json(staging / "classes.json", {"ignore_index": IGNORE, "classes": classes,
                                                 "dropped_clusters": class_map.dropped})
    if config.writer.copy_images:  # the config's images are img_dir's
        atomic.write_text(staging / MMSEG_CONFIG, mmseg_config(class_map.names, colours.tolist(), suffix,
                                                               sorted(set(splits.values()))))
    atomic.write_text(staging / "errors.jsonl", "".join(atomic.json_line(e) for e in errors))
    summary = DatasetSummary(
        out_dir=str(out), n_images=sum(n_split.values()), n_train=n_split["train"], n_val=n_split["val"],
        n_test=n_split.get("test", 0), n_classes=n_classes, n_masks_kept=kept_total, n_masks_gated=gated_total,
        n_errors=len(errors), labelled_pixel_fraction=labelled / pixels if pixels else 0.0,
        masks_per_class=masks_per_class.tolist(), pixels_per_class=pixels_per_class.tolist(),
        scene_outputs=scene_counts, vectors=vectors.close() if vectors is not None else {},
        n_masks_in_dropped_clusters=in_dropped, labelled_on=labelled_on(metas),
    )
    stretch = stretch_ranges(metas)
    if review is not None:
        summary.report = write_review(staging / "report", review, class_map, asdict(summary), model_manifest, errors,
                                      dict(zip((m["stem"] for m in metas), paths)), image_sources,
                                      out.resolve().name, config.gate.sigma,
                                      (extra_manifest or {}).get("missing") or [], stretch,
                                      config.inputs.intensity_window)
    atomic.write_json(staging / "manifest.json", dataset_manifest(config, model_manifest, class_map, summary,
                                                                 {**dict(extra_manifest or {}), "img_suffix": suffix,
                                                                  "stretch": stretch}))
    return summary


def stretch_ranges(metas: Sequence[Mapping[str, Any]]) -> dict[str, list[float]]:
    """The ``[low, high]`` each input of more than 8 bits was stretched between to 0..255, by its stem or scene.

    In the input's own units (HU for CT): what its shards record (``extra.input.stretch``), so that a user sees
    which window each volume got without opening them. A volume's slices and a scene's tiles share one; inputs
    of 8 bits (never stretched) are not listed.
    """
    ranges: dict[str, list[float]] = {}
    for meta in metas:
        found = (meta.get("extra", {}).get("input") or {}).get("stretch")
        if found:
            ranges.setdefault(_group(meta), [float(v) for v in found])
    return dict(sorted(ranges.items()))


# Top-level manifest entries the writer makes; others are extra entries (kept by `alps relabel`).
MANIFEST_KEYS = ("format", "layout", "config", "seed", "model", "model_is_stand_in", "classes", "versions", "counts",
                 "img_suffix", "stretch")


def dataset_manifest(config: PipelineConfig, model_manifest: Mapping[str, Any], class_map: ClassMap,
                     summary: DatasetSummary, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The dataset's ``manifest.json`` content (pure)."""
    return {
        "format": DATASET_FORMAT,
        "layout": "mmsegmentation custom dataset: img_dir/{train,val[,test]} (every image with img_suffix), "
                  "ann_dir/{train,val[,test]} (.png, uint8 class ids, 255 = no label)",
        "config": config.to_dict(),
        "seed": config.writer.seed,
        "model": dict(model_manifest),
        "model_is_stand_in": bool(model_manifest.get("is_stand_in", False)),
        "classes": class_map.to_json(),
        "versions": versions(),
        "counts": {k: v for k, v in asdict(summary).items() if k != "out_dir"},
        **dict(extra or {}),
    }
