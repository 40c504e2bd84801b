"""``alps evaluate`` over a dataset: pseudo-label maps and their ground truth read, paired and scored."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from alps_client.errors import AlpsError
from alps_client.evaluate.ground_truth import (
    RARE_SHARE,
    ColourIds,
    IgnoreIndex,
    absent_ignored,
    check_declared,
    ignore_list,
    ignored_values,
    is_lossy,
    named_colours,
    read_ground_truth,
    read_label,
)
from alps_client.evaluate.orientation import in_volume_order, orientation_note
from alps_client.evaluate.pairing import (
    ground_truth_files,
    near_misses,
    nfc,
    parts_by_whole,
    recorded_sources,
    rejected_inputs,
    suffixes_that_match,
)
from alps_client.evaluate.scores import Confusion, EvalReport, ImageCounts, Matching, match_clusters, scores
from alps_client.gt_classes import parse_ground_truth_classes
from alps_client.io.discovery import PART_STEM, whole_stem
from alps_client.io.items import counted
from alps_client.io.out_lock import writer_of, written_while_read
from alps_client.io.publish import dataset_version, finish_killed_swap, swap_pending
from alps_client.labels.classes import written_class_names
from alps_client.labels.painting import IGNORE

# A binary mask blurred by lossy compression: the values between 0 and 255 hold less than this share of its
# pixels, each less than the second (a class of its own holds more).
BLURRED_SHARE, BLURRED_VALUE_SHARE = 0.25, 0.01


def evaluate_dataset(out_dir: str | Path, gt_dir: str | Path, matching: Matching = "hungarian",
                     exclude_unlabelled_images: bool = False, ignore_index: IgnoreIndex = None,
                     gt_suffix: str = "", image_suffix: str = "", gt_classes: str | Path | None = None,
                     colour_tolerance: int = 0) -> EvalReport:
    """Evaluate ``out_dir/ann_dir/<split>/<stem>.png`` against the ground truth under ``gt_dir``.

    Ground-truth files are matched by :func:`ground_truth_files`, ``gt_suffix`` dropped from their names and
    ``image_suffix`` from the images' (ISPRS Potsdam: ``top_potsdam_2_10_label`` is the truth of
    ``top_potsdam_2_10_RGB``; DeepGlobe: ``_mask`` and ``_sat``). Ground-truth pixels of 255, and of
    ``ignore_index`` (any integers, one or several) when given, are left out: they name no class; ``"none"`` leaves
    out none (255 is a class). A value no ground-truth pixel has is named in ``warnings`` (a typo changes nothing).

    ``gt_classes``: a file that names every ground-truth class (:mod:`alps_client.gt_classes`); a value it does
    not declare is refused. ``colour_tolerance``: a colour within this of a declared one in every channel takes
    its class (colour-coded ground truth with declared colours only).

    Raises:
        AlpsError: If either folder has no label maps, no stem matches (saying which suffixes would make names
            match, if some would), two files match one stem, a file paired with no pseudo-label looks like the
            truth of one paired with none (:func:`near_misses`), sizes differ,
            ``ignore_index`` does not say what 255 is where it may be a class (ground truth of 0 and 255 alone, or
            of ids wider than 8 bits), the ground truth mixes colour-coded label maps with maps of class ids, or
            holds a value ``gt_classes`` does not declare. OutputBusyError if a write is swapping its dataset into
            ``out`` as the evaluation begins, or swapped one in while it read (its figures could mix two).
    """
    classes = parse_ground_truth_classes(gt_classes) if gt_classes is not None else None
    ignored_values(ignore_index)  # checked before any file is read
    ignored_colours = named_colours(ignore_index)
    if colour_tolerance and (classes is None or not classes.colours):
        raise AlpsError("--gt-colour-tolerance takes colours to the nearest colour --gt-classes declares: give "
                        "--gt-classes FILE with {name, colour} entries")
    if not 0 <= colour_tolerance < IGNORE:
        raise AlpsError(f"--gt-colour-tolerance must lie in 0..{IGNORE - 1}, got {colour_tolerance}")
    colours = ColourIds(classes, colour_tolerance, ignored_colours)  # checks the tolerance before any file is read
    class_255 = classes is not None and not classes.colours and IGNORE in classes.names
    if ignored_colours and classes is not None and not classes.colours:
        raise AlpsError(_colour_for_ids(ignore_index, f"{classes.source} declares class ids"))
    allowed_ids = (set(classes.names) | set(ignored_values(ignore_index, class_255=class_255))
                   if classes is not None and not classes.colours else None)
    out, gt_root = Path(out_dir), Path(gt_dir)
    _check_folders(out, gt_root)
    # Half swapped, OUT holds the new label maps beside the old classes.json: they would be named wrongly.
    finish_killed_swap(out, "alps evaluate")
    before = dataset_version(out)
    preds: dict[str, Path | list[Path]] = {}
    for path in sorted((out / "ann_dir").glob("*/*.png")):
        name = nfc(path.stem).removesuffix(image_suffix)
        if name in preds and nfc(preds[name].stem) != nfc(path.stem):
            raise AlpsError(f"{preds[name]} and {path} both read {name} once --image-suffix {image_suffix} is "
                            "dropped: give a suffix that only some names end with")
        if name in preds:
            raise AlpsError(f"{preds[name]} and {path}: two label maps of one name in two splits; `alps run` names "
                            "every image once, so which image each belongs to is unknown (is this folder an alps "
                            "output, or two merged?)")
        preds[name] = path
    if not preds:
        raise AlpsError(f"no label maps under {out / 'ann_dir'}; run `alps run DATASET --out {out}` first")
    parts = {whole.removesuffix(image_suffix): stems for whole, stems in parts_by_whole(list(preds)).items()}
    sources = {nfc(stem).removesuffix(image_suffix): nfc(source) for stem, source in recorded_sources(out).items()}
    gts = ground_truth_files(gt_root, set(preds) | set(parts), gt_suffix, sources, image_suffix)

    for whole in set(parts) & set(gts) - set(preds):  # a tiled scene or a volume is scored whole
        preds[whole] = [preds.pop(stem) for stem in parts[whole]]  # type: ignore[misc]
    missing_gt = sorted(set(preds) - set(gts))
    missing_pred = sorted(set(gts) - set(preds))
    matched = sorted(set(preds) & set(gts))
    _refuse_near_misses(out, gt_root, {stem: gts[stem] for stem in missing_pred},
                        {stem: preds[stem] for stem in missing_gt}, sources, gt_suffix, image_suffix)
    if not matched:
        images = [name for name in preds if not PART_STEM.match(name)] + list(parts)
        raise AlpsError(f"no ground-truth label map under {gt_root} has the name of a pseudo-label in "
                        f"{out / 'ann_dir'}" + suffixes_that_match(list(gts), images, gt_suffix, image_suffix))
    wholes = any(isinstance(preds[stem], list) for stem in matched)  # tiled scenes or volumes to assemble
    inputs, recorded_sizes = _input_settings(out) if wholes else ({}, {})
    scene_sizes = {nfc(stem).removesuffix(image_suffix): size for stem, size in recorded_sizes.items()}
    by_id, by_colour, wide = Confusion(), Confusion(), None  # wide: a file of ids stored in more than 8 bits
    lossy = {stem: gts[stem] for stem in matched + missing_pred if is_lossy(gts[stem])}  # a WebP's head read once
    lossy_by_id, lossy_by_colour, first_lossy = Confusion(), Confusion(), None  # the lossy files' own pixels
    nodata, nan_pixels, alpha_files, transparent_pixels = set[float](), 0, 0, 0
    images: list[ImageCounts] = []
    paged: list[tuple[Path, int]] = []  # files of several pages, their first read
    resized: list[tuple[Path, str, Path | list[Path], str]] = []  # ground truth of another size than its labels
    reoriented: list[tuple[Path, str, str]] = []  # NIfTI ground truth in another orientation than its volume
    unplaced: list[Path] = []  # NIfTI ground truth of a volume whose affine is unknown now
    for stem in matched + ([] if exclude_unlabelled_images else missing_pred):
        read = read_ground_truth(gts[stem], colours)
        found = preds.get(stem)
        if read.affine is not None and isinstance(found, list):
            read = in_volume_order(out, read, found, gts[stem], reoriented, unplaced)
        gt = read.ids
        paged += [(gts[stem], read.pages)] if read.pages > 1 else []
        if found is None:  # a good image the dataset lacks: every pixel is a miss
            pred = np.full(gt.shape, IGNORE, np.uint8)
        else:
            pred = (read_label(found) if isinstance(found, Path) else
                    _assembled(out, inputs, found, gt, gts[stem], scene_sizes.get(stem)))
        if pred.shape != gt.shape:
            resized.append((gts[stem], size_of(gt.shape), found, size_of(pred.shape)))  # type: ignore[arg-type]
        if resized:  # the others' sizes are only compared, to say how many differ: nothing is scored
            continue
        if read.valid is not None:  # pixels its GeoTIFF declares nodata, or NaN: no class, no miss
            pred, gt = pred[read.valid], gt[read.valid]
            if read.nodata is not None:
                nodata.add(read.nodata)
            nan_pixels += read.nan_pixels
            alpha_files += read.alpha
            transparent_pixels += read.transparent_pixels
        part = Confusion.of(pred, gt)
        if allowed_ids is not None:
            check_declared(part, read.coloured, colours, allowed_ids, classes, gts[stem])
        images.append(ImageCounts.of(stem, part, read.coloured))
        if stem in lossy:
            first_lossy = first_lossy or gts[stem]
            if read.coloured:
                lossy_by_colour += part
            else:
                lossy_by_id += part
        if read.coloured:
            by_colour += part
        else:
            by_id += part
            if wide is None and gt.dtype.itemsize > 1:
                wide = gts[stem]
    if resized:
        (path, size, found, label_size), more = resized[0], len(resized) - 1
        others = f" ({counted(more, 'other ground-truth file')} too)" if more else ""
        raise AlpsError(f"{path}: {size} differs from its pseudo-label {found}, {label_size}{others}: give ground "
                        "truth of the images' size (resized, or another dataset's?)")
    warnings = [_lossy_ground_truth(list(lossy.values())),
                orientation_note(reoriented, unplaced)]
    if paged:
        warnings.append(f"{counted(len(paged), 'ground-truth file')} of several pages (e.g. {paged[0][0]}, "
                        f"{paged[0][1]} pages): only the first page is read, as `alps run` reads images")
    if classes is not None and classes.colours and len(by_id.values):
        raise AlpsError(f"{classes.source} declares colours, but ground-truth label maps under {gt_root} hold class "
                        "ids (single-channel): declare their classes as {name, id}")
    # read before the colours are resolved: a colour only they hold gets its id and its name
    left_out = _values_in([gts[stem] for stem in missing_pred], colours) if exclude_unlabelled_images else set()
    conf, colour_names = colours.resolve(by_id, by_colour, gt_root)
    if ignored_colours and not colour_names:  # nothing would be ignored, not even 255
        greys = " (RGB label maps of greys: ids saved as grey pixels)" if colours.ids else ""
        raise AlpsError(_colour_for_ids(ignore_index, f"the ground truth under {gt_root} holds class ids{greys}"))
    values = conf.values.tolist()
    # judged on the lossy files' own pixels (RGB ones of greys as ids, as resolved): not on a lossless file's
    blurred = _blurred_binary(lossy_by_id + lossy_by_colour.with_values(colours.grey_values())) \
        if first_lossy is not None and classes is None and not colour_names else None
    if blurred is not None:
        n_between, share = blurred
        ignored_255 = ", and its 255 pixels ignored" if IGNORE in ignored_values(ignore_index) else ""
        raise AlpsError(f"the ground truth under {gt_root} holds 0 and 255 and {n_between} values between them on "
                        f"{share:.1%} of the pixels of its lossy files (e.g. {first_lossy}): a binary mask whose "
                        f"edges the compression blurred? Each of those values would be scored as a class{ignored_255}. "
                        "Declare its two colours in a classes file, e.g. {classes: [{name: background, colour: "
                        "'#000000'}, {name: foreground, colour: '#ffffff'}]}, and give --gt-classes FILE "
                        "--gt-colour-tolerance 127: each pixel then takes the nearer (if those values are classes, "
                        "declare each as {name, id} in --gt-classes FILE)")
    if (not ignore_list(ignore_index) and IGNORE in values and not colour_names and not class_255
            and (values == [0, IGNORE] or wide)):
        what = ("holds only 0 and 255: a binary mask?" if values == [0, IGNORE] else
                f"holds 255 among class ids stored in more than 8 bits (e.g. {wide.name}), where 255 may be a "
                "class (FreeSurfer's CC_Anterior).")
        count_it = (f"declare 255 in {classes.source} (e.g. {{name: lesion, id: 255}})" if classes is not None
                    else "give --ignore-index none")
        raise AlpsError(f"the ground truth under {gt_root} {what} Its 255 pixels would be ignored (255 is 'no "
                        f"label' by default): {count_it} to count 255 as a class, or --ignore-index 255 to ignore it")
    ignored = ignored_values(ignore_index, colours if colour_names else None, class_255)
    absent = absent_ignored(ignore_index, values, colours if colour_names else None)
    if absent:  # a typo otherwise changes nothing, unseen
        warnings.append(f"--ignore-index {' and '.join(absent)}: no ground-truth pixel has "
                        f"{'this value' if len(absent) == 1 else 'these values'}, so nothing is ignored for "
                        f"{'it' if len(absent) == 1 else 'them'} (a typo?)")
    conf = conf.without(ignored)
    if not len(conf.values):  # mIoU 0.000 "over all 0 classes" would read as a score
        raise AlpsError(f"the ground truth under {gt_root} holds no class to score: every pixel of its "
                        f"{counted(len(images), 'image')} scored is ignored (255, --ignore-index) or nodata; is it "
                        "the right folder?")
    mapping = match_clusters(conf, matching)
    report = scores(conf, mapping, matching)
    report.ground_truth_colours = colour_names
    grey = colours.grey_values() if not colour_names else {}
    report.classes_only_in_images_left_out = sorted(
        {grey.get(v, v) if coloured else v for coloured, v in left_out} - set(conf.values.tolist()) - set(ignored))
    report.per_image = sorted((image.figures(mapping, set(ignored), grey) for image in images),
                              key=lambda row: (row["pixels"] == 0, row["pixel_accuracy"] or 0.0, row["image"]))
    if colour_names and classes is None:  # noise of compression reads as many colours of a few pixels each
        pixels = conf.counts.sum(0)
        report.ground_truth_rare_colours = int((pixels < RARE_SHARE * pixels.sum()).sum())
    if classes is not None:
        report.ground_truth_names = dict(classes.names)
        report.ground_truth_classes_file = str(classes.source)
        report.classes_absent_from_ground_truth = sorted(set(classes.names) - set(conf.values.tolist())
                                                         - set(ignored))
        report.ground_truth_colour_tolerance = colour_tolerance
        report.ground_truth_pixels_snapped = colours.snapped_pixels
    report.n_images = len(matched) + (0 if exclude_unlabelled_images else len(missing_pred))
    # By input, as scored: a scene's tiles and a volume's slices are one (11 "pseudo-labels" were 3 inputs)
    whole_of = {stem: whole for whole, stems in parts.items() for stem in stems}
    report.missing_ground_truth = missing_gt
    report.inputs_without_ground_truth = sorted({whole_of.get(stem, stem) for stem in missing_gt})
    report.missing_pseudo_labels = missing_pred
    report.missing_pseudo_labels_counted = not exclude_unlabelled_images
    report.pseudo_label_names = written_class_names(out)
    # the dataset's classes that no scored pixel has: matched to nothing, as unsaid as they are unseen
    absent = sorted(set(report.pseudo_label_names) - set(mapping) - set(report.unmatched_pseudo_labels))
    report.pseudo_labels_absent_from_scored_pixels = absent
    report.unmatched_pseudo_labels = sorted([*report.unmatched_pseudo_labels, *absent])
    report.ground_truth_ignored = ignored
    report.warnings = [warning for warning in warnings if warning]
    report.ground_truth_nan_pixels = nan_pixels
    report.ground_truth_alpha_files, report.ground_truth_transparent_pixels = alpha_files, transparent_pixels
    report.ground_truth_nodata = [*sorted(v for v in nodata if not np.isnan(v)),
                                  *(["NaN"] if any(np.isnan(v) for v in nodata) else [])]
    if swap_pending(out) or dataset_version(out) != before:  # a write swapped a dataset in (or began to)
        raise written_while_read(out, writer_of(out), "evaluation")
    return report


def _values_in(paths: list[Path], colours: ColourIds) -> set[tuple[bool, int]]:
    """The values of ground-truth files that are not scored, each with whether it is a colour id."""
    values = set()
    for path in paths:
        read = read_ground_truth(path, colours)
        ids = read.ids if read.valid is None else read.ids[read.valid]
        values |= {(read.coloured, int(v)) for v in np.unique(ids).tolist()}
    return values


def _blurred_binary(conf: Confusion) -> tuple[int, float] | None:
    """Whether ground truth looks like a binary 0/255 mask whose edges lossy compression blurred (JPEG: Kvasir-SEG's).

    Returns ``(values between 0 and 255, their share of the pixels)``, or None. A blurred mask has 0 and 255 both
    present, and the values between them rare: each under 1 % of the pixels, together under 25 % (a class of its own
    holds more).
    """
    pixels, values = conf.counts.sum(0), conf.values
    ends = np.isin(values, (0, IGNORE))
    total = int(pixels.sum())
    if ends.sum() < 2 or ends.all() or not total:
        return None
    between = pixels[~ends]
    if between.sum() >= BLURRED_SHARE * total or between.max() >= BLURRED_VALUE_SHARE * total:
        return None
    return int((~ends).sum()), float(between.sum() / total)


def _lossy_ground_truth(lossy: list[Path]) -> str:
    """What to know of ground truth stored with lossy compression (JPEG, JPEG 2000, WebP: ``lossy``), or ""."""
    if not lossy:
        return ""
    return (f"{counted(len(lossy), 'file')} of the ground truth {'uses' if len(lossy) == 1 else 'use'} lossy "
            f"compression (e.g. {lossy[0]}), which changes values at class edges: give colour-coded ground truth, "
            "or grey masks (declared as greys, '#000000' and '#ffffff'), --gt-classes with --gt-colour-tolerance; "
            "of grey class ids, a value that --gt-classes does not declare is refused (without it, scored as a "
            "class)")


def _refuse_near_misses(out: Path, gt_root: Path, truths: dict[str, Path], labels: dict[str, Path | list[Path]],
                        sources: dict[str, str], gt_suffix: str, image_suffix: str) -> None:
    """Refuse ground truth paired with no pseudo-label that looks like the truth of one paired with none.

    ``truths``: the unpaired ground-truth files by their keys; ``labels``: the unpaired label maps (a tile's or a
    slice's, its whole's all) by stem; ``sources``: stem -> input file, as the run recorded them.

    Raises:
        AlpsError: naming how many, up to 3 of them (file -> label map) and how to pair them.
    """
    if not truths or not labels:  # a near miss takes one of each: nothing to read of the run's records
        return
    wholes: dict[str, Path] = {}
    for stem, found in sorted(labels.items()):
        wholes.setdefault(whole_stem(stem), found if isinstance(found, Path) else found[0])
    # without recorded sources, a stem says where its image was: north__c from north/c.png
    images = {stem: sources.get(stem) or f"{stem.replace('__', '/')}.png" for stem in wholes}
    relative = sorted(nfc(path.relative_to(gt_root).as_posix()) for path in truths.values())
    found, steps = near_misses(relative, images, gt_suffix, image_suffix, rejected_inputs(out))
    if not found:
        return
    shown = ", ".join(f"{truth} -> {wholes[stem].relative_to(out)}" for truth, stem in found[:3])
    raise AlpsError(f"{counted(len(found), 'ground-truth file')} under {gt_root} paired with no pseudo-label "
                    f"look{'s' if len(found) == 1 else ''} like the truth of one that has none, each pair scored as "
                    f"two total misses (e.g. {shown}): {'; or '.join(steps)}; or remove a file that is no image's "
                    "truth from the ground-truth folder")


def _check_folders(out: Path, gt_root: Path) -> None:
    """Refuse a dataset or ground-truth folder that is a file, or a ground-truth folder that does not exist.

    A file inside a dataset (its ``manifest.json``) is named with its folder, the one to give.
    """
    if out.is_file():
        inside = (f": give its folder, {out.parent}" if (out.parent / "ann_dir").is_dir() else
                  "; give the --out folder of an `alps run`")
        raise AlpsError(f"{out} is a file, not a dataset folder{inside}")
    if gt_root.is_file():
        raise AlpsError(f"ground-truth folder {gt_root} is a file, not a folder: give the folder that holds the "
                        "label maps")
    if not gt_root.is_dir():
        raise AlpsError(f"ground-truth folder {gt_root} does not exist: give the folder that holds the label maps")


def _input_settings(out: Path) -> tuple[dict[str, Any], dict[str, tuple[int, int]]]:
    """The dataset's input configuration and its tiled scenes' sizes, from its manifest.

    Returns:
        ``(inputs, sizes)``: ``--tile``, ``--overlap``, ``--slice-axis`` as the run was given them, and
        ``{scene: (H, W)}`` as it recorded them (empty for a dataset from before it did).
    """
    try:
        manifest = json.loads((out / "manifest.json").read_text())
        sizes = manifest.get("scene_sizes") or {}
        return (dict(manifest.get("config", {}).get("inputs", {})),
                {str(k): (int(v[0]), int(v[1])) for k, v in sizes.items() if isinstance(v, list) and len(v) == 2})
    except (OSError, ValueError, AttributeError) as err:
        raise AlpsError(f"{out / 'manifest.json'} cannot be read ({err}): it says how the label maps of tiled "
                        "scenes and volumes were cut") from None


def _assembled(out: Path, inputs: dict[str, Any], parts: list[Path], gt: npt.NDArray[np.integer],
               gt_path: Path, scene_size: tuple[int, int] | None = None) -> npt.NDArray[np.uint8]:
    """The whole label map (a scene as ``--stitch`` assembles it, or a volume) from its parts' label maps.

    ``inputs`` is the dataset's input configuration (:func:`_input_settings`). ``scene_size``: ``(H, W)`` of a
    tiled scene as the run recorded it; its tiles left out (wholly nodata, at its border too) are 255. Without
    it, a scene is as large as its tiles reach.

    Raises:
        AlpsError: If the parts do not make a whole of the ground truth's size.
    """
    from alps_client.io.tiling import stitch_scene

    matches = [PART_STEM.match(path.stem) for path in parts]
    if gt.ndim == 3 or all(match and match["z"] for match in matches):
        # a volume: its slices along --slice-axis, 255 where a slice was not labelled (empty); a 2-D NIfTI image
        # is a volume of one slice
        from alps_client.io.volumes import as_volume

        axis = int(inputs.get("slice_axis", 2))
        volume = np.full(gt.shape, IGNORE, np.uint8)
        slices = np.moveaxis(as_volume(volume, axis), axis, 0)  # a view: writing a slice writes the volume
        for path, match in zip(parts, matches, strict=True):
            label = read_label(path)
            index = int(match["z"]) if match and match["z"] else -1  # -1: a tile's label map, not a slice
            if not 0 <= index < len(slices) or label.shape != slices.shape[1:]:
                raise AlpsError(f"{gt_path}: volume {size_of(gt.shape)} has no slice {index} of "
                                f"{size_of(label.shape)} along axis {axis} for the pseudo-label {path}")
            slices[index] = label
        return volume
    tiles = []
    for path, match in zip(parts, matches, strict=True):
        label = read_label(path)
        if not match or match["x"] is None:
            raise AlpsError(f"{path}: a slice label map, but the ground truth {gt_path} is not a volume")
        x0, y0 = int(match["x"]), int(match["y"])
        tiles.append(((x0, y0, x0 + label.shape[1], y0 + label.shape[0]), label))
    reach = (max(w[3] for w, _ in tiles), max(w[2] for w, _ in tiles))
    extent = scene_size or reach
    tile, overlap = inputs.get("tile"), inputs.get("overlap")
    if not tile or overlap is None or extent != gt.shape:
        what = (f"the scene's {size_of(extent)} (as `alps run` recorded it)" if scene_size else
                f"the scene its {len(tiles)} tile label map(s) in {out / 'ann_dir'} cover, {size_of(extent)}")
        older = (not scene_size and gt.ndim == 2 and extent[0] <= gt.shape[0] and extent[1] <= gt.shape[1])
        raise AlpsError(f"{gt_path}: {size_of(gt.shape)} differs from {what}" + (
            "; if tiles at its border were left out (wholly nodata), run `alps run` on the dataset again: this "
            "dataset is from before runs recorded their scenes' sizes" if older else ""))
    try:
        return stitch_scene(extent, int(tile), int(overlap), tiles)
    except KeyError as err:  # a tile the manifest's --tile / --overlap would not have made
        raise AlpsError(f"the tile label maps of {gt_path.name} in {out / 'ann_dir'} do not follow the dataset's "
                        f"--tile {tile} --overlap {overlap} (tile at {err})") from None


def size_of(shape: tuple[int, ...]) -> str:
    """A map's ``(H, W)`` as people read a size, ``"256x128 px"`` (width first); a volume's as ``"XxYxZ voxels"``.

    Examples:
        >>> size_of((128, 256)), size_of((4, 5, 6))
        ('256x128 px', '4x5x6 voxels')
    """
    if len(shape) == 2:
        return f"{shape[1]}x{shape[0]} px"
    return "x".join(str(n) for n in shape) + " voxels"


def _colour_for_ids(ignore_index: IgnoreIndex, holds: str) -> str:
    """Why ``--ignore-index #rrggbb`` is refused where ``holds`` says the ground truth holds class ids."""
    colour = next(str(v).strip() for v in ignore_list(ignore_index) if str(v).strip().startswith("#"))
    return (f"--ignore-index {colour} names a colour, but {holds}, not colours: give the id to ignore "
            "(e.g. --ignore-index 0)")
