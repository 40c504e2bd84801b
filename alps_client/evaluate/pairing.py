"""Which ground-truth file is which image's: by the input paths a run records, else by mirrored names."""

from __future__ import annotations

import json
import os
import unicodedata
from collections.abc import Mapping
from pathlib import Path

from alps_client.errors import AlpsError
from alps_client.io.discovery import PART_STEM
from alps_client.io.items import RASTER_EXTENSIONS, VOLUME_EXTENSIONS, counted, extension_of

# Every format PIL reads as a label map (Kvasir-SEG's masks are JPEG, DRIVE's GIF), GDAL's rasters, NIfTI.
GT_EXTENSIONS = (".png", ".bmp", ".gif", ".jpg", ".jpeg", ".webp", ".j2k", *RASTER_EXTENSIONS, *VOLUME_EXTENSIONS)


def ground_truth_files(gt_root: Path, stems: set[str], gt_suffix: str = "",
                       sources: Mapping[str, str] | None = None, image_suffix: str = "") -> dict[str, Path]:
    """Ground-truth label maps under ``gt_root`` by the pseudo-label stem they belong to.

    With ``sources`` (each stem's input file, relative to the dataset folder, as ``alps run`` records them in the
    dataset's manifest), a file belongs to the image whose path, extension left out, is one with its own path or
    ends it: ``val/0001.png`` is the truth of the image at ``val/0001.png`` (labelled ``val__0001_png`` when
    ``train/0001.png`` took ``0001``), ``a.png`` of ``north/a.png`` (a flat ground-truth folder), ``labels/val/0001.png``
    of ``val/0001.png``; ``south/a.png`` is not the truth of ``north/a.png``, nor ``val/a.png`` of ``test/a.png``
    (which the name ``a`` of both does not say); ``b.png`` is that of ``b.png``, not of
    ``b.jpg`` beside it. Where the paths of several images end the same (``0001.png`` against ``train/0001.png``
    and ``val/0001.png``) nothing is guessed.

    Otherwise (a dataset from before alps recorded its sources; label maps not written by ``alps run``), and for a
    file that is no image's by its path, its stem is the one ``alps run`` gives an image at the same place in the
    dataset (sub-folders joined by ``__``, a top-level ``train``/``val``/``test`` folder left out): a ground-truth
    tree that mirrors the image tree matches, however deep. A file whose mirrored stem is no pseudo-label's falls
    back to its file stem (a flat ground-truth folder, or one nested differently from flat images). A tiled
    scene's or a volume's ground truth has the scene's or the volume's stem (its parts are
    ``<stem>__x<x0>_y<y0>``, ``<stem>__z<index>``). ``gt_suffix`` is dropped from the end of ground-truth stems
    first (``_label`` of ISPRS Potsdam's). Paths are compared in Unicode NFC (:func:`nfc`): ``stems`` and
    ``sources`` are expected so.

    Args:
        gt_root: the ground-truth folder (label maps of :data:`GT_EXTENSIONS`, NIfTI label volumes; at any depth).
        stems: the stems of the dataset's label maps.
        gt_suffix: the end of every ground-truth file's stem that its image's name lacks, or "".
        sources: stem -> the path of its input file relative to the dataset folder (``/``-separated), for the
            stems whose input is known.
        image_suffix: the end of every image's stem that its ground truth's name lacks, or "".

    Raises:
        AlpsError: If two files belong to the same stem, or one file to several images, (say which): one of them
            would be ignored, or scored against the wrong image.
    """
    from alps_client.io.discovery import split_and_stem

    by_name: dict[str, list[tuple[tuple[str, ...], str, str]]] = {}
    for stem, source in (sources or {}).items():
        if stem in stems:
            key = path_key(Path(source), image_suffix)
            by_name.setdefault(key[-1], []).append((key, extension_of(source), stem))
    found: dict[str, list[tuple[tuple[int, bool], Path]]] = {}
    for path in sorted(gt_root.rglob("*")):
        if extension_of(path.name) not in GT_EXTENSIONS or path.name.startswith(".") or not path.is_file():
            continue
        relative = Path(nfc(path.relative_to(gt_root).as_posix()))
        key = path_key(relative, gt_suffix)
        # the longest shared end of paths first; then a file named as its image (b.png of b.png, not of b.jpg)
        scored = [((_shared_end_length(key, image), extension == extension_of(path.name)), stem)
                  for image, extension, stem in by_name.get(key[-1], [])]
        best = max((score for score, _ in scored), default=(0, False))
        owners = sorted(stem for score, stem in scored if score == best and best[0])
        if len(owners) > 1:
            images = [sources[stem] for stem in owners[:2]]  # type: ignore[index]
            raise AlpsError(f"{path} may be the ground truth of {counted(len(owners), 'image')} of the dataset "
                            f"(e.g. {images[0]} and {images[1]}): give a ground-truth folder whose tree mirrors the "
                            "dataset's, so that each file's path says which image it belongs to")
        if owners:
            stem = owners[0]
        else:
            split, mirrored = split_and_stem(relative)
            _, bare = split_and_stem(Path(path.name))
            mirrored, bare = mirrored.removesuffix(gt_suffix), bare.removesuffix(gt_suffix)
            stem = mirrored if mirrored in stems or bare not in stems else bare
            recorded = (sources or {}).get(stem)
            if split and recorded and split_and_stem(Path(recorded))[0] not in (None, split):
                stem = relative.as_posix()  # val/0002.png is not the truth of test/0002.png, named 0002 as well
        found.setdefault(stem, []).append((best, path))
    paired: dict[str, Path] = {}
    for stem, claims in sorted(found.items()):
        top = max(score for score, _ in claims)
        # files whose paths end the image's equally far (scene_0003.png and .tif beside it): the extension picks
        # one, the other would be scored as the truth of an image the dataset lacks, counting the image twice
        best_paths = [path for score, path in claims if score[0] == top[0]]
        if len(best_paths) > 1:
            clashes = sum(len(c) > 1 for c in found.values())
            a, b = best_paths[:2]
            fix = ("keep one of them: remove or move the other" if a.parent == b.parent else
                   "give a ground-truth folder whose tree mirrors the dataset's (or holds each name once)")
            raise AlpsError(f"{clashes} label map name(s) have several ground-truth files under {gt_root}, e.g. "
                            f"{stem}: {a} and {b}; {fix}")
        paired[stem] = best_paths[0]
    for stem, claims in found.items():  # the truth of an image whose path ends alike, one the dataset lacks
        for score, path in claims:
            if paired.get(stem) != path:
                _, mirrored = split_and_stem(Path(nfc(path.relative_to(gt_root).as_posix())))
                free = mirrored not in stems and mirrored not in paired
                paired[mirrored if free else nfc(path.relative_to(gt_root).as_posix())] = path
    return paired


def nfc(text: str) -> str:
    """``text`` in Unicode NFC: a name copied from macOS (NFD: ``e`` and a combining accent) reads as typed."""
    return unicodedata.normalize("NFC", text)


def path_key(relative: Path, suffix: str = "") -> tuple[str, ...]:
    """What pairs a file with its image: its folders and its name without extension and without ``suffix``.

    Examples:
        >>> path_key(Path("val/north/a_RGB.tif"), "_RGB"), path_key(Path("ct.nii.gz"))
        (('val', 'north', 'a'), ('ct',))
    """
    name = relative.name
    base = name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else Path(name).stem
    return (*relative.parent.parts, base.removesuffix(suffix))


def _shared_end_length(truth: tuple[str, ...], image: tuple[str, ...]) -> int:
    """How many path parts ``truth`` and ``image`` share at their ends, when one ends the other; else 0."""
    shorter = min(len(truth), len(image))
    return shorter if truth[-shorter:] == image[-shorter:] else 0


def parts_by_whole(stems: list[str]) -> dict[str, list[str]]:
    """Stems of tiles (``<scene>__x<x0>_y<y0>``) and volume slices (``<volume>__z<index>``) by their whole's stem."""
    wholes: dict[str, list[str]] = {}
    for stem in stems:
        match = PART_STEM.match(stem)
        if match:
            wholes.setdefault(match["whole"], []).append(stem)
    return wholes


def recorded_sources(out: Path) -> dict[str, str]:
    """Each label map's (or tiled scene's, volume's) input file relative to the dataset folder.

    As ``alps run`` records them in ``OUT/manifest.json``; empty for a dataset from before it did, or written by
    another tool.
    """
    try:
        sources = json.loads((out / "manifest.json").read_text()).get("sources", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return {str(k): str(v) for k, v in sources.items()} if isinstance(sources, dict) else {}


def rejected_inputs(out: Path) -> list[str]:
    """The inputs the run behind ``out`` did not label, as it recorded them (absolute paths).

    Rejected (``OUT/errors.jsonl``: not an image, unreadable) or failed (``missing`` in ``OUT/manifest.json``,
    ``--allow-partial``); empty where neither is recorded.
    """
    paths = []
    try:
        lines = (out / "errors.jsonl").read_text().splitlines()
        paths += [json.loads(line).get("path") for line in lines if line.strip()]
    except (OSError, ValueError, AttributeError):
        pass  # no errors.jsonl: nothing was rejected, or the dataset was not written by `alps run`
    try:
        paths += [entry.get("path") for entry in json.loads((out / "manifest.json").read_text()).get("missing", [])]
    except (OSError, ValueError, AttributeError, TypeError):
        pass  # no manifest: a dataset from another tool, paired by stems
    return [nfc(str(path)) for path in paths if path]


def near_misses(truths: list[str], images: dict[str, str], gt_suffix: str = "", image_suffix: str = "",
                rejected: list[str] | None = None) -> tuple[list[tuple[str, str]], list[str]]:
    """Ground-truth files paired with no pseudo-label that look like the truth of one paired with none.

    Such a pair is scored as two total misses (the image all unlabelled, the file an image the dataset lacks):
    the truth of ``val/0002.png`` under ``train/``, ``SCENE_0003.png`` for ``scene_0003.png``, ``*_label.png`` for
    most images (a suffix that only some files have). A file that is the truth of an input the run did not label
    (``rejected``) is that image's: not a near miss.

    Args:
        truths: the unpaired ground-truth files, relative to the ground-truth folder (``/``-separated, NFC).
        images: each unpaired pseudo-label's stem -> its input file relative to the dataset folder (NFC).
        gt_suffix: as given to :func:`ground_truth_files`.
        image_suffix: as given to :func:`ground_truth_files`.
        rejected: the inputs the run did not label (:func:`rejected_inputs`).

    Returns:
        ``[(truth, stem)]`` of each near miss, and the next steps that would pair them.
    """
    gone = [path_key(Path(path), image_suffix) for path in rejected or []]
    candidates = [t for t in truths if not any(_shared_end_length(path_key(Path(t), gt_suffix), r) for r in gone)]
    image_names = {stem: path_key(Path(image), image_suffix)[-1] for stem, image in sorted(images.items())}
    by_folded_name: dict[str, str] = {}
    for stem, name in image_names.items():
        by_folded_name.setdefault(name.casefold(), stem)
    found, steps, rest = [], set[str](), {}
    for truth in candidates:
        name = path_key(Path(truth), gt_suffix)[-1]
        stem = by_folded_name.get(name.casefold())
        if stem is None:
            rest[truth] = name
            continue
        found.append((truth, stem))
        steps.add(f"move each to the place of its image in the dataset's tree (e.g. {images[stem]})"
                  if name == image_names[stem] else "rename each as its image is named, case included")
    ends = _dropped_ends(list(rest.values()), list(image_names.values()), gt_suffix, image_suffix)
    if ends:
        by_rest = {name.removesuffix(ends[1]): stem for stem, name in image_names.items()}
        found += [(truth, by_rest[name.removesuffix(ends[0])]) for truth, name in rest.items()
                  if name.removesuffix(ends[0]) in by_rest]
        steps.add(suffixes_that_match(list(rest.values()), list(image_names.values()), gt_suffix,
                                      image_suffix).removeprefix(": "))
    return sorted(found), sorted(steps)


def suffixes_that_match(truths: list[str], images: list[str], gt_suffix: str = "", image_suffix: str = "") -> str:
    """The flags that would pair ``truths`` with ``images`` by dropping the ends every name of a side shares.

    A side whose suffix was given (``gt_suffix``, ``image_suffix``: already dropped from its names) keeps it.

    Returns: ``": give --gt-suffix _label --image-suffix _RGB (...)"``, or "" when no shared end does it.
    """
    ends = _dropped_ends(truths, images, gt_suffix, image_suffix)
    if ends is None:
        return ""
    paired = {t.removesuffix(ends[0]) for t in truths} & {i.removesuffix(ends[1]) for i in images}
    gt_end, image_end = gt_suffix or ends[0], image_suffix or ends[1]
    # "--gt-suffix -mask" is refused by argparse (a value led by "-" reads as a flag): "--gt-suffix=-mask" is not
    flags = " ".join(f"--{side}-suffix{'=' if end.startswith('-') else ' '}{end}"
                     for side, end in (("gt", gt_end), ("image", image_end)) if end)
    name = min(paired)
    return (f": give {flags} to pair them by the rest of their names ({counted(len(paired), 'name')} would "
            f"pair, e.g. {name + gt_end} with {name + image_end})")


def _dropped_ends(truths: list[str], images: list[str], gt_suffix: str, image_suffix: str) -> tuple[str, str] | None:
    """The ends every name of a side shares (a side whose suffix was given: none), if dropping them pairs some.

    Where both sides' ends would be dropped, an end read off a single name says nothing: ``north_1.png``, the truth
    of an image never labelled, is not that of ``north_2.png``.
    """
    gt_end = "" if gt_suffix else _shared_end(truths)
    image_end = "" if image_suffix else _shared_end(images)
    if gt_end and image_end and min(len(truths), len(images)) < 2:
        return None
    paired = {t.removesuffix(gt_end) for t in truths} & {i.removesuffix(image_end) for i in images}
    return (gt_end, image_end) if paired and (gt_end or image_end) else None


def _shared_end(names: list[str]) -> str:
    """The last ``_``- or ``-``-led part every name ends with (``_label``), or ""."""
    reversed_names = [name[::-1] for name in names]
    end = os.path.commonprefix(reversed_names)[::-1] if names else ""  # noqa: RUF071 (characters, on purpose)
    cut = max(end.rfind("_"), end.rfind("-"))
    return end[cut:] if cut >= 0 else ""
