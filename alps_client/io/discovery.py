"""Finding the images of a dataset: recursive, case-insensitive, deterministic, bad files reported not fatal.

Each input becomes one or more :class:`InputItem` (a whole image, a tile of a large scene). Stems are unique
and filename-safe: the path relative to the dataset root without its extension, sub-folders joined by
``__``; tiles append ``__x{x0}_y{y0}``. A top-level ``train``/``val``/``test`` folder is the item's split (kept in
the dataset) and is left out of its name. A stem too long for a file name (deep trees of long folder names, as
satellite products have) keeps its end behind a digest of the whole. Every output name is unique also where
the output disk ignores case or Unicode forms, and a file named like another input's tile or slice does not take
its name.

An alps output written inside the dataset (``--out DATASET/labels``) holds images too: copies of the inputs, label
maps, previews. Folders below the dataset that hold an alps work folder (``.alps``), and the run's own output
folder, are left out, so a second run does not label the first one's outputs.

Images in a format alps does not read but users bring (GIF, DICOM, NRRD, MetaImage, whole-slide images:
:data:`NOT_READ_FORMATS`) are rejected inputs, each named with the way to a format it reads; among readable
images they were passed over without a word. Other files (sidecars: ``.txt``, ``.json``, ``.xml``...) are not
inputs.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

from alps_client.config import InputConfig
from alps_client.errors import InputImageError
from alps_client.io.items import (
    RASTER_EXTENSIONS,
    VOLUME_EXTENSIONS,
    InputError,
    InputItem,
    extension_of,
    is_input_name,
    printable,
)
from alps_client.io.publish import is_alps_output
from alps_client.io.readers import (
    MAX_PIL_PIXELS,
    MAX_UNTILED_PIXELS,
    image_header,
    too_large_to_label_whole,
)
from alps_client.io.splits import split_folder
from alps_client.io.volumes import volume_slices, volumes_in

# No format stores a side past it (PNG's limit): a larger one is a corrupt header, or a negative size (a BMP's) read
# unsigned.
MAX_SIDE = 2**31 - 1

_UNSAFE = re.compile(r'[\\/:*?"<>|\x00-\x1f]')

# The name of a tile (``<scene>__x<x0>_y<y0>``) or of a volume's slice (``<volume>__z<index>``).
PART_STEM = re.compile(r"^(?P<whole>.+)__(?:x(?P<x>\d+)_y(?P<y>\d+)|z(?P<z>\d+))$")


def whole_stem(stem: str) -> str:
    """The name of the input a label map or shard belongs to: a tile's scene's, a slice's volume's, else its own."""
    match = PART_STEM.match(stem)
    return match["whole"] if match else stem

# File names are limited to 255 bytes (ext4, XFS, NTFS, APFS). Outputs add up to ~55 bytes to a stem: a tile's
# ``__x{x0}_y{y0}`` (17 for scenes up to 999,999 px), then an extension and the atomic writer's
# ``.{name}.{8 random}{suffix}`` temporary name (``.{stem}.nii.gz.xxxxxxxx.gz``: 20).
MAX_STEM_BYTES = 180
_DIGEST_CHARS = 8


def split_and_stem(relative: Path) -> tuple[str | None, str]:
    """The split and the output stem of a file at ``relative`` to a dataset folder (see the module docstring).

    Examples:
        >>> split_and_stem(Path("val/north/a.b.png"))
        ('val', 'north__a.b')
        >>> split_and_stem(Path("north/a.png"))
        (None, 'north__a')
    """
    split = split_folder(relative.parts[0]) if len(relative.parts) > 1 else None
    named = Path(*relative.parts[1:]) if split else relative  # the split folder is not part of the name
    base = named.name[: -len(".nii.gz")] if named.name.lower().endswith(".nii.gz") else named.stem
    parts = [*named.parent.parts, base]
    return split, bounded_stem(_safe_name("__".join(p for p in parts if p not in ("", "."))))


def _safe_name(name: str) -> str:
    r"""``name`` with what file names and JSON cannot hold as ``_``: ``caf\xe9`` (Latin-1) -> ``caf_xe9``."""
    return _UNSAFE.sub("_", printable(name))


def bounded_stem(stem: str) -> str:
    """``stem`` itself if it has at most :data:`MAX_STEM_BYTES` bytes (UTF-8), else its end behind a digest.

    The digest (of the whole stem) keeps two long paths that end alike apart; the end is the file's own name.

    Examples:
        >>> bounded_stem("north__a")
        'north__a'
        >>> len(bounded_stem("x" * 300).encode()) <= MAX_STEM_BYTES
        True
    """
    raw = stem.encode()
    if len(raw) <= MAX_STEM_BYTES:
        return stem
    digest = hashlib.sha256(raw).hexdigest()[:_DIGEST_CHARS]
    tail = raw[-(MAX_STEM_BYTES - _DIGEST_CHARS - 1):].decode(errors="ignore")  # a cut character is dropped whole
    return f"{digest}_{tail.lstrip('_')}"


# Formats users bring that alps does not read, and the way to one it does.
NOT_READ_FORMATS = {
    ".dcm": "DICOM is not read: convert each series to a NIfTI volume (dcm2niix -z y -o DIR SERIES) and label those",
    ".gif": "GIF is not read: convert to PNG",
    ".nrrd": "NRRD is not read: convert to NIfTI (e.g. SimpleITK: sitk.WriteImage(sitk.ReadImage(f), 'f.nii.gz'))",
    ".mha": "MetaImage is not read: convert to NIfTI (e.g. SimpleITK: sitk.WriteImage(sitk.ReadImage(f), 'f.nii.gz'))",
    ".mhd": "MetaImage is not read: convert to NIfTI (e.g. SimpleITK: sitk.WriteImage(sitk.ReadImage(f), 'f.nii.gz'))",
    ".img": "ERDAS Imagine / ENVI rasters and Analyze 7.5 volumes are not read: convert a raster to a GeoTIFF "
            "(gdal_translate -of GTiff f.img f.tif), a volume to NIfTI (nibabel: nib.save(nib.load('f.img'), "
            "'f.nii.gz'))",
    ".vrt": "GDAL virtual rasters are not read: write one GeoTIFF (gdal_translate -of GTiff -co TILED=YES f.vrt f.tif)",
    ".heic": "HEIC is not read: convert to JPEG or PNG",
    ".heif": "HEIF is not read: convert to JPEG or PNG",
    ".svs": "whole-slide images are not read: export a level as a tiled GeoTIFF (e.g. with OpenSlide or vips)",
    ".ndpi": "whole-slide images are not read: export a level as a tiled GeoTIFF (e.g. with OpenSlide or vips)",
}


def not_read_format(path: Path) -> str | None:
    """The key of :data:`NOT_READ_FORMATS` that ``path`` is (``".gif"``), or None.

    A file without an extension is DICOM when it says so (scanners write ``IM0001``...): ``DICM`` after its
    128-byte preamble.
    """
    suffix = path.suffix.lower()
    if suffix in NOT_READ_FORMATS:
        return suffix
    if suffix or path.name.startswith("."):
        return None
    try:
        with path.open("rb") as f:
            return ".dcm" if f.read(132)[128:] == b"DICM" else None
    except OSError:  # a folder, or unreadable: not an image of another format
        return None


def list_input_files(root: Path, out: str | Path | None = None,
                     on_left_out: Callable[[Path], None] | None = None,
                     on_not_read: Callable[[Path, str], None] | None = None,
                     on_unlisted: Callable[[Path, str], None] | None = None) -> list[Path]:
    """Supported files under ``root`` (or ``root`` itself), sorted; symlinks followed, loops skipped.

    A file is listed once, under its own path: a link to a folder or a file that the walk finds under ``root``
    anyway is an alias, not more data (walked first, ``a_link/`` took ``real/``'s images and their names; a linked
    file was labelled twice, perhaps once in train and once in val). Links to what lies elsewhere are followed,
    and a file reached by several of them is listed once, under the first of their paths.
    Folders below ``root`` holding an alps output (its .alps, or its manifest.json where .alps was deleted), and
    ``out`` and links into it, are left out (each passed to ``on_left_out``). Hard links to one file are one file.
    Files of a format alps does not read are passed to ``on_not_read`` with their :data:`NOT_READ_FORMATS` key.
    Folders that cannot be listed (no read or execute permission) are passed to ``on_unlisted`` with the reason.
    """
    if root.is_file():
        if (fmt := not_read_format(root)) is None:
            return [root]
        if on_not_read is not None:
            on_not_read(root, fmt)
        return []
    found: list[tuple[Path, str]] = []  # (path, the file it is)
    seen = set()
    out_real = os.path.realpath(out) if out is not None else None
    root_real = os.path.realpath(root)

    def unlisted(err: OSError) -> None:
        if on_unlisted is not None:
            on_unlisted(Path(err.filename or root), f"folder cannot be listed ({err.strerror or err}): its files are "
                                                    "not labelled")

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=unlisted):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        kept = []
        for d in sorted(d for d in dirnames if not d.startswith(".")):
            folder = Path(dirpath) / d
            if is_alps_output(folder) or _in_out(folder, out_real):
                if on_left_out is not None:
                    on_left_out(folder)
            elif not (os.path.islink(folder) and _walked_anyway(os.path.realpath(folder), root_real)):
                kept.append(d)
        dirnames[:] = kept
        for name in filenames:
            path = Path(dirpath) / name
            if name.startswith(".") or (os.path.islink(path) and _walked_anyway(os.path.realpath(path), root_real)):
                continue
            if _in_out(path, out_real):  # a link to one of the run's own outputs
                if on_left_out is not None:
                    on_left_out(path)
                continue
            if is_input_name(name):
                found.append((path, os.path.realpath(path) if os.path.islink(path) else os.path.join(real, name)))
            elif on_not_read is not None and (fmt := not_read_format(path)) is not None:
                on_not_read(path, fmt)
    listed, files = [], set()
    for path, real_file in sorted(found, key=lambda found: str(found[0].relative_to(root))):
        identity = _file_identity(real_file)
        if identity not in files:  # links or hard links to one file: the first name alone
            files.add(identity)
            listed.append(path)
    return listed


def _file_identity(path: str) -> tuple[int, int] | str:
    """What tells one file from another: its device and inode (hard links share them), else its path."""
    try:
        stat = os.stat(path)
    except OSError:  # reading it will say why
        return path
    return stat.st_dev, stat.st_ino


def _in_out(path: Path, out_real: str | None) -> bool:
    """Whether ``path`` is the run's output folder (whose real path is ``out_real``), or a link into it.

    A dataset may lie in ``OUT`` itself (a folder of the user's beside the outputs): only links lead into it.
    """
    if out_real is None:
        return False
    real = os.path.realpath(path)
    return real == out_real or (os.path.islink(path) and real.startswith(out_real.rstrip(os.sep) + os.sep))


def _walked_anyway(target: str, root_real: str) -> bool:
    """Whether the walk of ``root_real`` reaches ``target`` (a link's resolved path) by links-free folders.

    It does when ``target`` exists (a broken link is said as one), lies below the root, no folder on the way, nor
    itself, is hidden, and a file has a name the walk lists (not ``raw/IMG_0001``, which ``a.png`` links to).
    """
    relative = os.path.relpath(target, root_real)
    parts = Path(relative).parts
    listed = os.path.isdir(target) or is_input_name(target)
    return (os.path.exists(target) and listed and relative != "." and parts[0] != os.pardir
            and not any(p.startswith(".") for p in parts))


def discover_inputs(root: str | Path, config: InputConfig | None = None, out: str | Path | None = None,
                    on_left_out: Callable[[Path], None] | None = None,
                    on_pages: Callable[[str, int], None] | None = None,
                    earlier_names: Mapping[str, str] | None = None) -> tuple[list[InputItem], list[InputError]]:
    """Items to label under ``root`` and the files rejected on the way (headers only are read).

    ``out`` (the run's output folder) and alps outputs below ``root`` are left out: see :func:`list_input_files`.
    Files of a format alps does not read are rejected, each with the way to one it reads.
    ``on_pages`` is told of each TIFF with several pages and each NIfTI file with several volumes (its path,
    :func:`printable`, and their count): only the first page or volume is labelled.
    ``earlier_names`` (path relative to ``root``, ``/``-separated -> the name an earlier run gave it) are kept
    first: a file added later (``a.jpg`` beside a labelled ``a.png``) takes another name instead of renaming it.
    The name of a file that is gone is free (``a.jpg`` in place of ``a.png`` is named ``a``).

    Raises:
        FileNotFoundError: If ``root`` does not exist.
    """
    config = config or InputConfig()
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"dataset path {root} does not exist")
    base = root.parent if root.is_file() else root
    items: list[InputItem] = []
    errors: list[InputError] = []
    taken: set[str] = set()  # output names given so far (stems, tiles' and slices' too), as _name_key has them
    not_read: list[InputError] = []

    def reject_format(path: Path, fmt: str) -> None:
        not_read.append(InputError(str(path.absolute()), NOT_READ_FORMATS[fmt]))

    def reject_folder(path: Path, reason: str) -> None:
        not_read.append(InputError(str(path.absolute()), reason))

    paths = list_input_files(root, out, on_left_out, reject_format, reject_folder)
    kept_names = _earlier_names_kept(paths, base, earlier_names or {})
    taken.update(_name_key(name) for name in kept_names.values())
    for path in paths:
        relative = path.relative_to(base)
        split, stem = split_and_stem(relative)
        if relative in kept_names:
            stem = kept_names[relative]
            taken.discard(_name_key(stem))  # free for its own file: _unique_stem takes it again, tiles' names too
        source = str(path.absolute())
        try:
            parts = _parts_of(path, config, on_pages)
        except InputImageError as err:
            errors.append(InputError(source, err.reason))
            taken.add(_name_key(stem))  # keeps its name, so that fixing the file renames no other
            continue
        stem = _unique_stem(stem, relative, [suffix for suffix, _ in parts], taken)
        items += [replace(part, source=source, stem=stem + suffix, scene=stem, split=split,
                          relative=relative.as_posix()) for suffix, part in parts]
    return items, sorted(errors + not_read, key=lambda e: e.path)


def _earlier_names_kept(paths: list[Path], base: Path, earlier_names: Mapping[str, str]) -> dict[Path, str]:
    """Which of ``paths`` keep an earlier run's name (relative to ``base`` -> name): each name once, any case."""
    kept: dict[Path, str] = {}
    keys: set[str] = set()
    for path in paths:
        relative = path.relative_to(base)
        name = earlier_names.get(relative.as_posix())
        usable = bool(name) and name == bounded_stem(_safe_name(name)) and not name.startswith(".")
        if usable and _name_key(name) not in keys:
            kept[relative] = name
            keys.add(_name_key(name))
    return kept


def _name_key(name: str) -> str:
    """What an output disk may see of ``name``: macOS's and Windows' ignore case, macOS's Unicode forms.

    ``é`` as one character (NFC, as Linux and Windows write it) or as ``e`` and an accent (NFD, as macOS does)
    are two names on Linux and one there.
    """
    return unicodedata.normalize("NFC", name).casefold()


def _parts_of(path: Path, config: InputConfig,
              on_pages: Callable[[str, int], None] | None = None) -> list[tuple[str, InputItem]]:
    """What ``path`` is labelled as: ``(stem suffix, item)`` pairs, the items' names and split not set yet.

    Reads headers only (a volume's slices: the volume).

    Raises:
        InputImageError: If the file is no usable input (unreadable, too large without ``--tile``, ...).
    """
    volume = extension_of(path.name) in VOLUME_EXTENSIONS
    slices = volume_slices(path, config) if volume else []  # the volume is read first: a broken one raises here
    height, width, pages = (0, 0, volumes_in(path)) if volume else image_header(path, config.bands)
    if pages > 1 and on_pages is not None:
        on_pages(printable(str(path)), pages)
    if volume and not slices:  # it was left out unsaid: "N slices of M volumes" counted it nowhere
        raise InputImageError(str(path), "every slice holds one value alone (0, NaN, a CT's padding: an "
                                         "empty volume): nothing to label")
    if volume:
        return [(f"__z{i:04d}", InputItem("", "", "slice", slice_index=i)) for i in slices]
    if max(height, width) > MAX_SIDE:
        raise InputImageError(str(path), f"its header declares {width}x{height} pixels, more than any image holds: "
                                         "a corrupt header")
    if height * width > MAX_PIL_PIXELS and extension_of(path.name) not in RASTER_EXTENSIONS:
        raise InputImageError(str(path), f"image is {width}x{height}, too large to decode whole; convert it to a "
                                         "tiled GeoTIFF (gdal_translate -co TILED=YES) and use --tile")
    if config.tile is None and height * width > MAX_UNTILED_PIXELS:
        raise InputImageError(str(path), too_large_to_label_whole(height, width))
    if config.tile is None or (height <= config.tile and width <= config.tile):
        return [("", InputItem("", ""))]
    from alps_client.io.tiling import tile_windows

    return [(f"__x{x0}_y{y0}", InputItem("", "", "tile", window=(x0, y0, x1, y1)))
            for x0, y0, x1, y1 in tile_windows(height, width, config.tile, config.overlap)]


def _unique_stem(stem: str, relative: Path, suffixes: list[str], taken: set[str]) -> str:
    """The first of ``stem``, then its file's extension kept (``a_jpg``), then numbered, whose names are free.

    A file's names are its stem (a scene's stitched outputs) and the stem with each of ``suffixes``; a name is
    free when no earlier file took it in another case or Unicode form either (see :func:`_name_key`). Takes the
    names.
    """
    kept_extension = bounded_stem(_safe_name("__".join(relative.parts).replace(".", "_")))
    numbered = (f"{kept_extension}_{n}" for n in itertools.count(2))
    for candidate in itertools.chain((stem, kept_extension), numbered):
        names = {_name_key(candidate + suffix) for suffix in ["", *suffixes]}
        if not names & taken:
            taken.update(names)
            return candidate
    raise AssertionError("unreachable: the numbered candidates never end")
