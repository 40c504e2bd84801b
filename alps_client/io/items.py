"""What discovery hands to reading: the input formats, one item to label, one rejected input."""

from __future__ import annotations

import functools
import hashlib
import os
import re
import urllib.parse
from dataclasses import asdict, dataclass
from typing import Any, Literal, NamedTuple

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".jp2", ".bmp", ".webp")
VOLUME_EXTENSIONS = (".nii", ".nii.gz")
# Read through rasterio (GDAL), not PIL: GeoTIFF and JPEG 2000 (Sentinel-2's bands and true-colour images), their
# CRS kept, windows read for tiles.
RASTER_EXTENSIONS = (".tif", ".tiff", ".jp2")
PLAIN_COPY_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass(frozen=True)
class InputItem:
    """One image to label.

    Attributes:
        source: absolute path of the input file.
        stem: unique, filename-safe output name.
        kind: ``image`` (whole file), ``tile`` (a window of a large scene) or ``slice`` (of a volume).
        scene: stem of the whole scene this item belongs to (== stem for whole images).
        window: ``(x0, y0, x1, y1)`` in source pixels, for tiles.
        slice_index: index along the slice axis, for volume slices.
        split: ``train``/``val``/``test`` when the dataset's folders give it, else None (hash split).
        relative: the input file's path relative to the dataset folder, ``/``-separated ("" when not known).
    """

    source: str
    stem: str
    kind: Literal["image", "tile", "slice"] = "image"
    scene: str = ""
    window: tuple[int, int, int, int] | None = None
    slice_index: int | None = None
    split: str | None = None
    relative: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready: Prefect task results, shard metadata)."""
        return asdict(self)


def counted(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1, for messages.

    Examples:
        >>> counted(1, "image"), counted(2, "image"), counted(3, "class")
        ('1 image', '2 images', '3 classes')
    """
    return f"{n} {noun}" if n == 1 else f"{n} {noun}es" if noun.endswith("s") else f"{n} {noun}s"


def by_reason(rows: list[dict[str, Any]], most: int = 4) -> str:
    """How many ``rows`` give each ``reason``, commonest first: ``170 not an image, 160 zero-byte file``.

    For a list cut short in a log, so that every reason it holds is seen, not only those of the first files.
    """
    counts: dict[str, int] = {}
    for row in rows:
        counts[str(row["reason"])] = counts.get(str(row["reason"]), 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    shown = ", ".join(f"{n} {reason}" for reason, n in ranked[:most])
    return shown + (f", and {counted(len(ranked) - most, 'other reason')}" if len(ranked) > most else "")


def printable(text: str) -> str:
    r"""``text`` that any file, log or web page can hold: a file name's bytes that are not UTF-8 as ``\xNN``.

    Python holds such bytes of a path (a Latin-1 name from an old share) as lone surrogates, which UTF-8 cannot
    encode: a report, a vector file or a Prefect log naming the file would fail. A path read from disk keeps its
    surrogates where it is opened; this is for saying it.

    Examples:
        >>> printable(os.fsdecode(b"caf\xe9.png"))
        'caf\\xe9.png'
        >>> printable("ünïcode.png")
        'ünïcode.png'
    """
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def one_line(text: str) -> str:
    r"""``text`` (:func:`printable`) with control characters as ``\xNN``, for a line of a log or console.

    A file name may hold a newline or a terminal escape: said as it is, it split a log line in two (the second
    posing as a line of its own) or recoloured the terminal. Files and stems keep the name; this is for saying it.

    Examples:
        >>> one_line("two\nlines.png")
        'two\\x0alines.png'
    """
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", printable(text))


def not_utf8_bytes(name: str) -> str | None:
    r"""A file name's bytes percent-encoded where they are not UTF-8 (a Latin-1 disk's); None where they are.

    Python reads such a name as lone surrogates (``os.fsdecode``), which JSON tools other than Python's turn into
    U+FFFD; ``urllib.parse.unquote_to_bytes`` of this gives its bytes back.

    Examples:
        >>> not_utf8_bytes(os.fsdecode(b"caf\xe9.png"))
        'caf%E9.png'
        >>> not_utf8_bytes("café.png") is None
        True
    """
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return urllib.parse.quote(os.fsencode(name))
    return None


@dataclass(frozen=True)
class InputError:
    r"""A rejected input: its path and why (one line), both :func:`printable`.

    ``path_not_utf8``: a path whose bytes are not UTF-8 (a Latin-1 name), percent-encoded
    (``urllib.parse.unquote_to_bytes`` gives them back), as the manifest's ``sources_not_utf8``; its ``path`` says
    them as ``\xNN``, which a file may also be named. None for others.
    """

    path: str
    reason: str
    path_not_utf8: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "path_not_utf8", not_utf8_bytes(self.path))
        object.__setattr__(self, "path", printable(self.path))
        object.__setattr__(self, "reason", printable(self.reason))

    def to_json(self) -> dict[str, str]:
        """One line of ``errors.jsonl``: ``{"path", "reason"}``, and ``path_not_utf8`` where there is one."""
        line = {"path": self.path, "reason": self.reason}
        return {**line, "path_not_utf8": self.path_not_utf8} if self.path_not_utf8 else line


def source_signature(source: str, relative: str = "") -> dict[str, Any]:
    """What tells a rerun that an input file changed since its shard was written.

    Its name, path, size, modification time, and a digest of samples of its bytes. A file rewritten in place, or
    another file under the same output stem (``a.png`` replaced by ``a.jpg``;
    ``val/0001.png`` taking ``0001`` once ``train/0001.png`` is gone, both of one size and time, as unpacked
    from an archive; a file moved to another split folder; ``f4.bmp`` renamed ``f3.bmp`` once ``f3.bmp`` was
    deleted, where uncompressed images of one size and time differ in their bytes alone), gets another signature,
    so its image is labelled again instead of keeping the old file's labels or split. ``relative`` is the path in
    the dataset: moving the dataset keeps the signatures (``mv``, ``cp -p``, ``rsync -a``); a copy that resets
    modification times keeps its labels where the file's sha256 is the one its shard records
    (:func:`alps_client.runs.moves.find_retimed`). Tiles and slices carry their scene's (volume's) signature.

    ``sidecars``: the files beside it that GDAL reads with it (:func:`gdal_sidecars`: a georeference or nodata
    mask added or fixed in ``.aux.xml``, a ``.msk``, a world file), by name and sampled digest; ``{}`` for none.
    ``read_as``: how a raster is read where alps once read it otherwise (its orientation applied, its bands chosen
    by their colour interpretation; :func:`alps_client.io.readers.raster_reading`), absent where it is read as
    stored from its first bands: an image labelled before those were read so is labelled again, so that a dataset
    never mixes the two readings.
    """
    from alps_client.io.readers import raster_reading

    stat = os.stat(source)
    signature = {"name": os.path.basename(source), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                 "sample": _file_digest(source, stat),
                 "sidecars": {os.path.basename(path): _file_digest(path) for path in gdal_sidecars(source)}}
    reading = raster_reading(source, stat)
    signature |= {"read_as": reading} if reading else {}
    return {**signature, "path": relative} if relative else signature


def gdal_sidecars(source: str) -> list[str]:
    """The files beside ``source`` that GDAL reads with it, those that exist: what places it or masks it.

    ``<file>.aux.xml`` (GDAL's PAM: a CRS, a geotransform, GCPs, nodata set by QGIS or ``gdal_edit.py``),
    ``<file>.msk`` (an external nodata mask) and the world file (``<stem>.tfw``, ``.tifw``, ``.wld``, as GDAL
    derives them from the extension, in either case). A file read without GDAL gains nothing from them, but a
    change to one only labels that image again.
    """
    stem, extension = os.path.splitext(source)
    names = [f"{source}.aux.xml", f"{source}.msk", f"{stem}.aux"]
    extension = extension[1:]
    if extension:
        for world in dict.fromkeys((f"{extension[0]}{extension[-1]}w", f"{extension}w", "wld")):
            names += [f"{stem}.{world.lower()}", f"{stem}.{world.upper()}"]
    return [name for name in dict.fromkeys(names) if os.path.isfile(name)]


class FileVersion(NamedTuple):
    """A file as it is now: the key of what is read from it once per process (a digest, a volume, a stretch).

    Its size and times, and its inode and ctime: a file renamed onto the path (a sync tool's, an atomic save's)
    keeps its time and size, but not the inode or ctime.
    """

    path: str
    size: int
    mtime_ns: int
    inode: int
    ctime_ns: int

    @classmethod
    def of(cls, path: str | os.PathLike[str], stat: os.stat_result | None = None) -> FileVersion:
        """The version of the file at ``path`` now; ``stat``: its stat, if taken already."""
        stat = stat or os.stat(path)
        return cls(os.fspath(path), stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns)


def _file_digest(path: str, stat: os.stat_result | None = None) -> str:
    """The sampled digest of the file at ``path`` (cached per file version); ``stat``: its stat, if taken already."""
    return _sampled_digest(FileVersion.of(path, stat))


def content_digest(source: str) -> str:
    """sha256 of the whole file (hex), which each shard records.

    What tells a file moved or renamed since it was labelled (the same bytes) from another of its size, time and
    sampled bytes (:mod:`alps_client.runs.moves`). Cached per file version, as :func:`source_signature`'s
    samples are: a scene's tiles read it once.
    """
    return _content_digest(FileVersion.of(source))


@functools.lru_cache(maxsize=256)
def _content_digest(version: FileVersion) -> str:
    digest = hashlib.sha256()
    with open(version.path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


SAMPLE_BYTES = 65536  # read at the start, the middle and the end of a file: 192 KiB at most, whatever its size


@functools.lru_cache(maxsize=4096)
def _sampled_digest(version: FileVersion) -> str:
    """sha256 (first 16 hex digits) of three blocks of the file: its start, middle and end.

    The whole file when it is small. Cached per file version, so that a scene's tiles read it once.
    """
    size = version.size
    digest = hashlib.sha256()
    with open(version.path, "rb") as f:
        for offset in sorted({0, max(0, size // 2 - SAMPLE_BYTES // 2), max(0, size - SAMPLE_BYTES)}):
            f.seek(offset)
            digest.update(f.read(SAMPLE_BYTES))
    return digest.hexdigest()[:16]


def extension_of(name: str) -> str:
    """Lower-case extension of a file name, ``.nii.gz`` counted as one."""
    lower = name.lower()
    return ".nii.gz" if lower.endswith(".nii.gz") else os.path.splitext(lower)[1]


def is_input_name(name: str) -> bool:
    """Whether a file of this name is one `alps run` reads: an image or a NIfTI volume, by its extension."""
    return extension_of(name) in IMAGE_EXTENSIONS + VOLUME_EXTENSIONS
