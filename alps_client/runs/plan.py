"""Run set-up, in one place: check the request, discover the inputs, refuse to mix outputs of another model."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from alps_client._imports import lazy_import
from alps_client.amg import default_written_otherwise
from alps_client.backends.manifest import ModelManifest, check_model_files, load_manifest
from alps_client.config import InputConfig, PipelineConfig, dotted_fields
from alps_client.errors import AlpsError, ConfigMismatchError, NoInputsError
from alps_client.io.discovery import NOT_READ_FORMATS, discover_inputs, list_input_files
from alps_client.io.items import (
    IMAGE_EXTENSIONS,
    RASTER_EXTENSIONS,
    VOLUME_EXTENSIONS,
    InputError,
    InputItem,
    by_reason,
    extension_of,
    printable,
    source_signature,
)
from alps_client.io.layout import WORK_DIR, shard_dir, work_dir
from alps_client.io.publish import DATASET_ENTRIES, foreign_entries, is_alps_output
from alps_client.io.registry import read_registry
from alps_client.io.shards import (
    SHARD_READ_ERRORS,
    ShardStatus,
    read_shard_meta,
    read_shard_status,
    shard_fingerprint,
    shard_path,
)
from alps_client.io.volumes import slice_pixel_size

if TYPE_CHECKING:
    from alps_client.runs.moves import Move

LOOKED_FOR = ", ".join(e.lstrip(".") for e in IMAGE_EXTENSIONS + VOLUME_EXTENSIONS)


def decoded_image(out: str | Path, stem: str) -> Path:
    """``OUT/.alps/images/<stem>.png``: the RGB decoded from an input that ``img_dir`` cannot take as it is."""
    return work_dir(out) / "images" / f"{stem}.png"


@dataclass(frozen=True)
class RunPlan:
    """What a run will do, decided before any image is labelled.

    Attributes:
        dataset: the input folder (or file).
        out: the output dataset folder.
        config: the run's configuration (``pred_iou_thresh`` in the form ``out``'s shards were made with, where it
            is the model family's default: :func:`as_out_labelled`).
        manifest: the model repository's manifest.
        fingerprint: shard fingerprint of the model and the labelling configuration.
        items: the images (tiles, slices) to label, in discovery order.
        rejected: inputs rejected at discovery (unreadable, not images...).
        done: stems of the items whose shard is already current (a rerun skips them).
        left_out: folders inside the dataset holding alps outputs (this run's ``out`` among them), not searched.
        n_changed: items with a shard of this model and configuration whose input file changed since (labelled
            again).
        multipage: ``(path, count)`` of each TIFF input with several pages and each NIfTI input with several
            volumes, of which the first alone is labelled.
        n_damaged: items whose shard cannot be read whole (labelled again).
        gone: inputs (relative to the dataset) of the dataset ``out`` holds that are no longer there: the dataset
            this run writes leaves them out.
        moved: inputs found under new paths, the same bytes (:mod:`alps_client.runs.moves`): counted in ``done``,
            their shards renamed when the run starts.
        retimed: inputs whose file has another modification time only, the same bytes
            (:func:`~alps_client.runs.moves.find_retimed`): counted in ``done``, their shards' signatures updated
            when the run starts.
        stretched: ``(path, (row, column) pixel size)`` of each volume whose slices have pixels at least
            :data:`STRETCHED_PIXELS` times as tall as wide or the reverse: SAM sees its anatomy stretched.
        labelling: what ``fingerprint`` hashes (:func:`labelling_identity`, the batch, stitching and label volumes
            as ``out``'s shards have them: :func:`neutral_settings_as_out`), recorded in each shard.
        n_pooled_otherwise: items whose shard's features an earlier alps pooled partly from padding
            (:class:`Pooling`), their input unchanged (labelled again; not in ``n_changed``).
    """

    dataset: str
    out: str
    config: PipelineConfig
    manifest: ModelManifest
    fingerprint: str
    items: list[InputItem]
    rejected: list[InputError]
    done: frozenset[str]
    left_out: tuple[str, ...] = ()
    n_changed: int = 0
    multipage: tuple[tuple[str, int], ...] = ()
    n_damaged: int = 0
    gone: tuple[str, ...] = ()
    moved: tuple[Move, ...] = ()
    stretched: tuple[tuple[str, tuple[float, float]], ...] = ()
    labelling: dict[str, Any] | None = None
    retimed: tuple[Move, ...] = ()
    #: items whose shards were made with another --stitch or --write-nifti-labels (alike but for their
    #: fingerprint): stamped with the run's when it starts (:func:`~alps_client.runs.moves.restamp`)
    restamped: tuple[str, ...] = ()
    n_pooled_otherwise: int = 0

    @property
    def n_done(self) -> int:
        """How many items are already labelled."""
        return len(self.done)

    @property
    def pooling(self) -> Pooling:
        """How this run pools features (:class:`Pooling`)."""
        return Pooling(self.manifest.model_family, self.config.features.feature_size)

    def scenes_within(self, stems: set[str]) -> list[str]:
        """The scenes (input files, :func:`printable`) whose every tile is among ``stems``."""
        tiles: dict[str, list[str]] = {}
        for item in self.items:
            if item.kind == "tile":
                tiles.setdefault(item.source, []).append(item.stem)
        return [printable(source) for source, of_scene in tiles.items() if set(of_scene) <= stems]

    def changed_since_labelled(self, stems: set[str]) -> dict[str, ShardStatus]:
        """Those of ``stems`` whose shard no longer matches its input file, by the shard's status now.

        ``changed``: the input changed or went away since; ``missing`` or ``damaged``: the shard itself went away
        or was altered (``OUT`` deleted or moved during the run); ``stale``: another labelling wrote it since.
        """
        statuses = {item.stem: item_status(self.out, item, self.fingerprint, self.pooling).status
                    for item in self.items if item.stem in stems}
        return {stem: status for stem, status in statuses.items() if status != "current"}

    def sources(self, stems: set[str]) -> dict[str, str]:
        """Input file of each item in ``stems`` (of its scene or volume, for tiles and slices), by the scene's stem.

        Relative to the dataset folder and ``/``-separated (:attr:`InputItem.relative`): what the dataset's
        manifest records, so that every label map leads back to its file, and `alps evaluate` pairs ground truth
        with images by their paths.
        """
        return {item.scene or item.stem: item.relative for item in self.items if item.stem in stems}

    def scene_sizes(self, scenes: set[str]) -> dict[str, list[int]]:
        """``[H, W]`` of each tiled scene among ``scenes`` (the keys of :meth:`sources`), from its file's header.

        What the dataset's manifest records, so that `alps evaluate` assembles a scene at its own size when tiles
        at its border were left out (wholly nodata) and refuses ground truth of another size. A scene whose file
        cannot be read now is left out (evaluate then assembles it from the tiles there are).
        """
        from alps_client.io.readers import image_size_of

        sizes: dict[str, list[int]] = {}
        for item in self.items:
            if item.kind == "tile" and item.scene in scenes and item.scene not in sizes:
                try:
                    sizes[item.scene] = list(image_size_of(item.source))
                except (AlpsError, OSError):
                    continue
        return sizes


NAMED_REJECTED = 10  # rejected files named when none is left to label


def describe_items(items: list[InputItem]) -> str:
    """What a run labels, said as what it is: ``13 image(s)``, then ``(12 tiles of 1 scene, 1 whole image)``."""
    parts = []
    for kind, whole, plural in (("tile", "scene", "scenes"), ("slice", "volume", "volumes")):
        of_kind = [item for item in items if item.kind == kind]
        if of_kind:
            n_files = len({item.source for item in of_kind})
            parts.append(f"{len(of_kind)} {kind}s of {n_files} {whole if n_files == 1 else plural}")
    if parts and (n_whole := sum(item.kind == "image" for item in items)):
        parts.append(f"{n_whole} whole image{'s' if n_whole > 1 else ''}")
    return f"{len(items)} image(s)" + (f" ({', '.join(parts)})" if parts else "")


def _same_folder(a: str | Path, b: str | Path) -> bool:
    """Whether ``a`` and ``b`` name one folder: by their real paths, or by device and inode (a bind mount)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist (yet)
        return False


def _output_entry_holding(root: Path, out: Path) -> Path | None:
    """The entry of ``out`` that is, or holds, ``root``; None if none is.

    The entries are those a write into ``out`` replaces (``img_dir``, ``vis``...) and its work folder (``.alps``).
    """
    entries = [out / name for name in (*DATASET_ENTRIES, WORK_DIR) if os.path.isdir(out / name)]  # unreadable: none
    if not entries:
        return None
    real = Path(os.path.realpath(root))
    for folder in (real, *real.parents):
        for entry in entries:
            if _same_folder(folder, entry):
                return entry
    return None


def check_request(dataset: str | Path, config: PipelineConfig, out: str | Path | None = None) -> ModelManifest:
    """The checks that need no server and no image decoding; returns the model manifest.

    Raises:
        NoInputsError: If ``dataset`` does not exist or holds no file with an image extension (outside ``out``).
        AlpsError: If ``out`` is the dataset folder itself.
        ModelRepositoryError: If the model repository is missing or inconsistent.
        AlpsError: If SAM 2.1-only generator parameters are asked of another model family.
        AlpsError: If ``--centroids`` is not a readable ``(N, 256)`` array, or was fitted on another model family.
        DependencyNotFoundError: If the k-means backend, the Triton backend or ``--vector`` needs a package that is
            not installed.
        AlpsError: If ``out`` holds files named like dataset outputs that alps did not write (a user's own
            ``ann_dir/``), or cannot be created or written (checked last: a refused request leaves nothing).
    """
    root = Path(dataset).expanduser()
    if not root.exists():
        raise NoInputsError(f"dataset path {dataset} does not exist")
    if out is not None and _same_folder(out, root if root.is_dir() else root.parent):
        what = "the dataset folder itself" if root.is_dir() else f"the folder of the image {dataset}"
        raise AlpsError(f"--out {out} is {what}: the dataset written there (img_dir/, ann_dir/, vis/, report/) would "
                        "be taken for images to label by the next run; give another --out (a folder inside the "
                        "dataset is fine: runs leave it out)")
    if out is not None and (entry := _output_entry_holding(root, Path(out))) is not None:
        raise AlpsError(f"the dataset {dataset} lies in {entry}, which a run into --out {out} replaces with its own "
                        "outputs (its files would be labelled, then deleted): copy the images elsewhere and label "
                        "that copy, or give another --out")
    if root.is_dir() and is_alps_output(root):
        raise AlpsError(f"the dataset {dataset} is an alps output (it holds {WORK_DIR}/ or an alps manifest.json): "
                        "its copies, label maps and previews are no images to label; give the folder of the images "
                        "themselves")
    left_out: list[Path] = []
    not_read: dict[str, int] = {}  # files of formats alps does not read, by format, found by the same walk

    def count_not_read(path: Path, fmt: str) -> None:
        not_read[fmt] = not_read.get(fmt, 0) + 1

    unlisted: list[str] = []
    if not list_input_files(root, out, left_out.append, count_not_read, lambda path, why: unlisted.append(
            f"{printable(str(path))}: {why}")):
        outputs = f"; left out {len(left_out)} folder(s) holding alps outputs, e.g. {left_out[0]}" if left_out else ""
        folders = f"; {len(unlisted)} folder(s) not searched, e.g. {unlisted[0]}" if unlisted else ""
        raise NoInputsError(f"no readable images under {dataset} (looked for {LOOKED_FOR}{outputs}{folders})"
                            f"{_formats_found(not_read)}")
    manifest = load_manifest(config.backend.model_repository)
    check_model_files(manifest)  # before its sha256s decide which shards are current
    if manifest.model_family != "sam2" and (config.amg.use_m2m or not config.amg.multimask_output):
        given = " and ".join(flag for flag, on in (("--use-m2m", config.amg.use_m2m),
                                                   ("--no-multimask-output", not config.amg.multimask_output)) if on)
        raise AlpsError(f"{given}: SAM 2.1 only (its generator's parameters); {manifest.root} holds "
                        f"{manifest.model_type} ({manifest.model_family})")
    if config.cluster.centroids:  # read now, not after every image is labelled
        from alps_client.labels.clustering import (
            check_centroids_features,
            check_centroids_model,
            load_centroids,
        )

        centroids = load_centroids(config.cluster.centroids, model_family=manifest.model_family)
        check_centroids_model(config.cluster.centroids, manifest.raw, warn=lambda _: None)  # the run warns
        check_centroids_features(config.cluster.centroids, centroids, config.features.l2_normalize)
    from alps_client.labels.clustering import check_backend_dependencies

    check_backend_dependencies(config.cluster)  # found missing after every image was labelled
    if config.backend.kind == "triton":  # found missing once the flow made its backend (a --dry-run said nothing)
        lazy_import(f"tritonclient.{config.backend.protocol}")
    if config.writer.vector_format:
        from alps_client.io.vectors import check_vector_dependencies

        check_vector_dependencies()
    if out is not None:
        check_no_foreign_outputs(out)
        check_writable(out)
    return manifest


def check_no_foreign_outputs(out: str | Path) -> None:
    """Refuse an ``out`` holding a user's own ``ann_dir/``, ``report/``, ``manifest.json``... (see below).

    ``out`` is not an alps output yet, and writing the dataset replaces those entries as a whole: they would be
    deleted.

    Raises:
        AlpsError: naming the entries and what to do.
    """
    foreign = foreign_entries(out)
    if foreign:
        raise AlpsError(
            f"--out {out} holds {', '.join(foreign)}, not written by alps (the folder has no .alps work folder and "
            "no alps manifest.json): a run replaces these as a whole with its own dataset, deleting them; give a new "
            "or empty --out, or move them elsewhere"
        )


def check_writable(out: str | Path) -> None:
    """Create ``OUT/.alps`` and write a file there, so that an unusable ``--out`` is one line before any server.

    Raises:
        AlpsError: naming the folder and the system's reason.
    """
    try:
        work_dir(out).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=work_dir(out)):
            pass
    except OSError as err:
        link = _dangling_link(Path(out))
        if link is not None:  # mkdir said "File exists" of a link to nowhere
            target = link.parent / os.readlink(link)
            raise AlpsError(f"--out {out}: {link} is a symbolic link to {target}, which does not exist; create it "
                            f"(mkdir -p {target}) or give another --out") from err
        raise AlpsError(f"--out {out}: cannot create or write the output folder ({err.strerror or err}); give a "
                        "folder you can write to") from err


def _dangling_link(path: Path) -> Path | None:
    """The first of ``path`` and its parents that is a symbolic link to nothing, or None."""
    return next((p for p in (path, *path.parents) if p.is_symlink() and not p.exists()), None)


def unused_input_settings(config: PipelineConfig, items: list[InputItem]) -> list[str]:
    """One line per input setting the request gave that none of its inputs uses (the run ignores it).

    A dataset may mix kinds (``--bands`` applies to its TIFFs, ``--write-nifti-labels`` to its volumes), so these
    are warnings, not refusals: a user who asked for a stitched map or a label volume is told that none comes.
    """
    inputs, lines = config.inputs, []
    kinds = {item.kind for item in items}
    if inputs.bands is not None and not any(extension_of(item.source) in RASTER_EXTENSIONS for item in items):
        lines.append(f"--bands {','.join(map(str, inputs.bands))}: no TIFF or JPEG 2000 among the inputs; it applies "
                     "to multiband rasters only")
    if inputs.tile is not None and "tile" not in kinds:
        stitch = ", and --stitch has nothing to stitch" if inputs.stitch else ""
        why = ("the inputs are NIfTI volumes, whose slices are labelled whole (--tile cuts images and rasters)"
               if kinds == {"slice"} else f"no image or raster is larger than {inputs.tile} pixels")
        lines.append(f"--tile {inputs.tile}: {why}, so none is cut{stitch}")
    elif inputs.tile is not None and "slice" in kinds:
        lines.append(f"--tile {inputs.tile}: the NIfTI volumes' slices are labelled whole (--tile cuts images and "
                     "rasters)")
    if inputs.write_nifti_labels and "slice" not in kinds:
        lines.append("--write-nifti-labels: no NIfTI volume among the inputs, so no label volume is written")
    if inputs.slice_axis != InputConfig.slice_axis and "slice" not in kinds:
        lines.append(f"--slice-axis {inputs.slice_axis}: no NIfTI volume among the inputs, so nothing is sliced")
    return lines


def _formats_found(counts: dict[str, int]) -> str:
    """``; found N .dcm file(s): <what to do>; M .gif file(s): ...`` for each format in ``counts``, most first."""
    found = [f"{count} {fmt} file(s): {NOT_READ_FORMATS[fmt]}"
             for fmt, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    return f"; found {'; '.join(found)}" if found else ""


class ItemState(NamedTuple):
    """Where an item stands in ``OUT``: see :func:`item_status`."""

    status: ShardStatus
    signature: dict[str, Any]
    shard: Path
    meta: dict[str, Any] | None
    #: its shard's features were pooled by an earlier alps, partly from padding (:meth:`Pooling.outdated`)
    pooled_otherwise: bool = False


@dataclass(frozen=True)
class Pooling:
    """How a run pools features: what tells a shard whose features an earlier alps pooled otherwise.

    Before :data:`~alps_client.labels.features.POOLING` 2 the features of masks at the bottom or right edge of
    some images (a 768-px side) were pooled partly from padding cells. Such a shard is labelled again, as a
    changed input is, so that a resumed dataset never mixes the two poolings; others are kept.
    """

    model_family: str
    feature_size: int

    def outdated(self, meta: dict[str, Any] | None) -> bool:
        """Whether the shard ``meta`` describes holds masks whose features were pooled partly from padding."""
        from alps_client.labels.features import read_padding_before_pooling_2

        if not meta or not meta.get("n_masks") or meta.get("extra", {}).get("pooling") is not None:
            return False
        size = meta.get("image_size")
        return isinstance(size, list) and len(size) == 2 and \
            read_padding_before_pooling_2((int(size[0]), int(size[1])), self.model_family, self.feature_size)


def item_status(out: str | Path, item: InputItem, fingerprint: str, pooling: Pooling) -> ItemState:
    """The status of ``item``'s shard in ``out``, the signature of its input file now, the shard's path and metadata.

    See :func:`~alps_client.io.shards.read_shard_status`; the signature is ``{}`` when the file cannot be looked at
    (reading it will say why), so a shard made from it is never taken as current. The metadata is None when there
    is no readable shard. A shard whose features an earlier alps pooled otherwise (``pooling``) is ``changed``.
    """
    try:
        signature = source_signature(item.source, item.relative)
    except OSError:
        signature = {}
    shard = shard_path(shard_dir(out), item.stem)
    return _judged(read_shard_status(shard, fingerprint, signature), signature, shard, pooling)


def _judged(status_meta: tuple[ShardStatus, dict[str, Any] | None], signature: dict[str, Any], shard: Path,
            pooling: Pooling) -> ItemState:
    status, meta = status_meta
    otherwise = status in ("current", "changed") and pooling.outdated(meta)
    return ItemState("changed" if otherwise else status, signature, shard, meta, otherwise)


def dataset_sources(out: str | Path) -> dict[str, str]:
    """The inputs of the dataset in ``out`` with the names it gave them: path relative to the dataset -> name.

    Read from the ``sources`` of its ``manifest.json``; empty when there is none (a first run, or a dataset from
    before ``sources``).
    """
    try:
        sources = json.loads((Path(out) / "manifest.json").read_text()).get("sources") or {}
    except (OSError, ValueError, AttributeError):
        return {}
    return {relative: name for name, relative in sources.items() if isinstance(relative, str)}


def labelling_identity(model: str, config: PipelineConfig) -> dict[str, Any]:
    """What a shard's fingerprint hashes, in the clear: the model's fingerprint and the labelling configuration."""
    return {"model": model, "config": config.labelling_dict()}


def _what_differs(out: str | Path, meta: dict[str, Any] | None, labelling: dict[str, Any]) -> str:
    """The settings in which a stale shard's labelling differs from this run's (``amg.points_per_side 32 there``).

    Read from the shard (alps records its labelling in each) or, for shards from before, from the configuration
    ``OUT/manifest.json`` was written with (the model then goes unnamed). Empty when neither says.
    """
    there = (meta or {}).get("extra", {}).get("labelling")
    if there is None:
        try:
            written = json.loads((Path(out) / "manifest.json").read_text())["config"]
            there = {"config": {key: written[key] for key in labelling["config"]}}
        except (OSError, ValueError, KeyError, TypeError):
            return ""
    now = json.loads(json.dumps(labelling))  # as a shard keeps it: tuples are lists there
    recorded = dotted_fields({key: value for key, value in there.items() if key != "config"}
                             | there.get("config", {}))
    now = dotted_fields({key: value for key, value in now.items() if key in there and key != "config"}
                        | now["config"])
    differing = [key for key in sorted(recorded.keys() | now.keys()) if recorded.get(key) != now.get(key)]
    # Settings that never change a shard are not why it differs, unless nothing else does: a shard from before
    # shards recorded their labelling is judged by the manifest, and a neutral setting then makes it stale
    neutral = {f"{section}.{name}" for section, name in SHARD_NEUTRAL_SETTINGS}
    differing = [key for key in differing if key not in neutral] or differing
    return "; ".join(f"{key} {recorded.get(key, 'unset')} there, {now.get(key, 'unset')} now" for key in differing)


def as_out_labelled(out: str | Path, config: PipelineConfig, manifest: ModelManifest) -> PipelineConfig:
    """``config``, or the same labelling written as the first shard in ``out`` of either form was made with.

    ``--pred-iou-thresh 0.8`` on SAM 2.1 labels as leaving it out does (:func:`default_written_otherwise`), but
    their shards' fingerprints differ: a rerun in the other form skips what was labelled instead of refusing it as
    another configuration, whichever form an earlier alps recorded. Reads shards only until one of either form.
    """
    other_amg = default_written_otherwise(config.amg, manifest.model_family)
    if other_amg is None or not shard_dir(out).is_dir():
        return config
    other = dataclasses.replace(config, amg=other_amg)
    fingerprints = {shard_fingerprint(manifest.fingerprint, form.labelling_dict()): form for form in (config, other)}
    for path in sorted(shard_dir(out).glob("*.npz")):
        try:
            form = fingerprints.get(read_shard_meta(path).get("fingerprint"))
        except SHARD_READ_ERRORS:  # damaged: relabelled in any form
            continue
        if form is not None:
            return form
    return config


# Settings a shard's fingerprint holds that never change a shard: the batch of prompts per decoder call (memory
# alone), the form of Meta's records (the pipeline keeps RLEs whatever it says), and what the write makes of the
# shards (stitched scenes, label volumes).
SHARD_NEUTRAL_SETTINGS = (("amg", "points_per_batch"), ("amg", "output_mode"), ("inputs", "stitch"),
                          ("inputs", "write_nifti_labels"))


def neutral_settings_as_out(out: str | Path, labelling: dict[str, Any]) -> dict[str, Any]:
    """``labelling`` (:func:`labelling_identity`), with the :data:`SHARD_NEUTRAL_SETTINGS` of ``out``'s shards.

    A rerun with another ``--points-per-batch`` (lowered after a run ran out of memory), or adding ``--stitch`` or
    ``--write-nifti-labels`` to a dataset, was refused as another labelling configuration, and with
    ``--overwrite`` ran SAM again over every image for the same shards. The run's own shards take those settings
    of the shards already there, so that ``out`` keeps one fingerprint; the write uses the run's. Reads the first
    shard that can be read.
    """
    if not shard_dir(out).is_dir():
        return labelling
    for path in sorted(shard_dir(out).glob("*.npz")):
        try:
            meta = read_shard_meta(path)
        except SHARD_READ_ERRORS:  # damaged: relabelled
            continue
        there = ((meta.get("extra") or {}).get("labelling") or {}).get("config", {})
        theirs = _labelling_with(labelling, {(section, name): there[section][name]
                                             for section, name in SHARD_NEUTRAL_SETTINGS
                                             if name in there.get(section, {})})
        if theirs == labelling:
            return labelling
        same = shard_fingerprint(theirs["model"], theirs["config"]) == meta.get("fingerprint")
        return theirs if same else labelling
    return labelling


def _labelling_with(labelling: dict[str, Any], settings: dict[tuple[str, str], Any]) -> dict[str, Any]:
    """``labelling`` with ``(section, name) -> value`` set in its configuration (a copy; ``labelling`` unchanged)."""
    config = {section: dict(values) for section, values in labelling["config"].items()}
    for (section, name), value in settings.items():
        config[section][name] = value
    return {**labelling, "config": config}


def alike_fingerprints(labelling: dict[str, Any]) -> frozenset[str]:
    """The fingerprints of shards alike to ``labelling``'s but for ``--stitch`` and ``--write-nifti-labels``.

    An OUT may hold both (an older alps's ``--overwrite`` to add ``--stitch``, stopped part way): the first shard's
    values are the run's (:func:`neutral_settings_as_out`), and the others' shards were refused as another
    labelling configuration.
    """
    found = set()
    for stitch in (False, True):
        for volumes in (False, True):
            alike = _labelling_with(labelling, {("inputs", "stitch"): stitch,
                                                ("inputs", "write_nifti_labels"): volumes})
            found.add(shard_fingerprint(alike["model"], alike["config"]))
    return frozenset(found)


def check_existing_shards(out: str | Path, items: list[InputItem], fingerprint: str, labelling: dict[str, Any],
                          overwrite: bool, pooling: Pooling
                          ) -> tuple[frozenset[str], list[tuple[InputItem, ItemState]], int, list[str]]:
    """Find the finished items, count changed and damaged ones; refuse stale shards unless ``overwrite``.

    Stale: made with another model or labelling configuration; the refusal names the settings in which they differ
    from ``labelling`` (:func:`labelling_identity` of this run), where the shards or ``OUT/manifest.json`` say.
    A shard alike but for ``--stitch`` and ``--write-nifti-labels`` (:func:`alike_fingerprints`) is no other
    configuration: it is judged as one of this run's, and stamped with ``fingerprint`` when the run starts.

    Returns:
        ``(done, changed, damaged, restamped)``: the stems of the items a rerun skips, the items whose file changed
        since their shard was written with their :class:`ItemState`, how many items have a shard that cannot be
        read whole (labelled again), and the stems of the items whose shards are to be stamped anew.

    Raises:
        ConfigMismatchError: If ``out`` holds shards of another model/configuration and not ``overwrite``.
    """
    done: set[str] = set()
    changed: list[tuple[InputItem, ItemState]] = []
    restamped: list[str] = []
    stale = damaged = 0
    stale_meta: dict[str, Any] | None = None
    alike = alike_fingerprints(labelling)
    for item in items:
        state = item_status(out, item, fingerprint, pooling)
        status, meta = state.status, state.meta
        if status == "stale" and meta is not None and meta.get("fingerprint") in alike:
            # judged as a shard of this run's, against the signature its input has now
            state = _judged(read_shard_status(state.shard, meta["fingerprint"], state.signature), state.signature,
                            state.shard, pooling)
            status, meta = state.status, state.meta
            if status in ("current", "changed"):  # (a changed one's may be kept: same bytes, another time)
                restamped.append(item.stem)
        if status == "current":
            done.add(item.stem)
        if status == "stale" and not stale:
            stale_meta = meta
        if status == "changed":
            changed.append((item, state))
        stale += status == "stale"
        damaged += status == "damaged"
    if stale and not overwrite:
        differs = _what_differs(out, stale_meta, labelling)
        raise ConfigMismatchError(
            f"{out} holds {stale} image(s) labelled with another model or labelling configuration"
            f"{f' ({differs})' if differs else ''}; use a new --out, the same settings as then, or --overwrite to "
            "relabel them"
        )
    return frozenset(done), changed, damaged, restamped


def plan_run(dataset: str | Path, out: str | Path, config: PipelineConfig, overwrite: bool = False) -> RunPlan:
    """Everything a run decides before labelling: model, fingerprint, items, rejected inputs, finished work.

    Raises:
        NoInputsError: If there is nothing to label.
        ModelRepositoryError: If the model repository is missing or inconsistent.
        AlpsError: See :func:`check_request`.
        ConfigMismatchError: See :func:`check_existing_shards`.
    """
    manifest = check_request(dataset, config, out)
    config = as_out_labelled(out, config, manifest)
    labelling = neutral_settings_as_out(out, labelling_identity(manifest.fingerprint, config))
    fingerprint = shard_fingerprint(labelling["model"], labelling["config"])
    left_out: list[Path] = []
    multipage: list[tuple[str, int]] = []
    in_dataset = dataset_sources(out)
    names = read_registry(out)["names"] or in_dataset  # (a dataset from before the record: its manifest's)
    items, rejected = discover_inputs(dataset, config.inputs, out, left_out.append,
                                      lambda path, pages: multipage.append((path, pages)), names)
    if not items:  # no dataset is written, nor errors.jsonl: the message names every file, up to a few
        shown = "; ".join(f"{error.path}: {error.reason}" for error in rejected[:NAMED_REJECTED])
        more = f"; and {len(rejected) - NAMED_REJECTED} more" if len(rejected) > NAMED_REJECTED else ""
        raise NoInputsError(f"no readable images under {dataset} (looked for {LOOKED_FOR}; {len(rejected)} file(s) "
                            f"rejected: {by_reason([e.to_json() for e in rejected])}): {shown}{more}"
                            if rejected else f"no readable images under {dataset} (looked for {LOOKED_FOR})",
                            [e.to_json() for e in rejected])
    from alps_client.runs.moves import find_moves, find_retimed  # (built on this module)

    pooling = Pooling(manifest.model_family, config.features.feature_size)  # as RunPlan.pooling
    moved = tuple(find_moves(out, items, names, fingerprint, pooling))
    moving = {new for move in moved for _, new in move.stems}
    done, changed, n_damaged, restamped = check_existing_shards(
        out, [item for item in items if item.stem not in moving], fingerprint, labelling, overwrite, pooling)
    retimed = tuple(find_retimed(changed))
    retiming = {stem for move in retimed for _, stem in move.stems}
    moved_from = {move.old for move in moved}
    # an input changed since is said changed, whatever pooled its features
    repooled = sum(state.pooled_otherwise and read_shard_status(state.shard, fingerprint, state.signature)[0] ==
                   "current" for _, state in changed)
    return RunPlan(str(dataset), str(out), config, manifest, fingerprint, items, rejected, done | moving | retiming,
                   tuple(str(p) for p in left_out), len(changed) - len(retiming) - repooled, tuple(multipage),
                   n_damaged,
                   tuple(gone for gone in _gone(dataset, in_dataset, items, rejected) if gone not in moved_from), moved,
                   _stretched_slices(items, config.inputs.slice_axis), labelling, retimed, tuple(restamped), repooled)


# Slices whose pixels are this many times as tall as wide (or the reverse) are said: SAM sees them as square pixels.
STRETCHED_PIXELS = 1.5


def _stretched_slices(items: list[InputItem], slice_axis: int) -> tuple[tuple[str, tuple[float, float]], ...]:
    """The volumes among ``items`` whose slices have far from square pixels, with their pixel size (header only)."""
    found = []
    for source in dict.fromkeys(item.source for item in items if item.kind == "slice"):
        size = slice_pixel_size(source, slice_axis)
        if size is not None and max(size) >= STRETCHED_PIXELS * min(size):
            found.append((printable(source), size))
    return tuple(found)


def _gone(dataset: str | Path, names: dict[str, str], items: list[InputItem], rejected: list[InputError]
          ) -> tuple[str, ...]:
    """The inputs of the dataset ``OUT`` holds (``names``) that are no longer under ``dataset``, not even rejected."""
    root = Path(dataset).expanduser()
    base = root.parent if root.is_file() else root
    present = {item.relative for item in items} | {e.path for e in rejected}
    return tuple(sorted(relative for relative in names
                        if relative not in present and str((base / relative).absolute()) not in present))
