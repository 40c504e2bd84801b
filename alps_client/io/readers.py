"""Reading inputs to ``(H, W, 3) uint8`` RGB: 8/16-bit, grey, RGBA, palette, EXIF, GeoTIFF, JPEG 2000, NIfTI slices.

Rules (also in docs/inputs.md):
- More than 8 bits (16-bit, 32-bit, float): a linear stretch of the ``stretch_percentiles`` (default 2-98 %)
  of the valid pixels to 0..255, one range for all bands (keeps colour balance); of the ``intensity_window``
  instead, in the data's own units, when it is given (the same value, the same grey, in every image).
- Grey -> the value on three channels. RGBA / LA / palette with transparency -> alpha dropped; fully
  transparent pixels are marked invalid (never labelled, not counted in the gate's PI).
- EXIF orientation is applied (the image is labelled as it is displayed); to what GDAL reads too (a 16-bit PNG's
  EXIF, a TIFF's Orientation tag), unless it is georeferenced.
- TIFF and JPEG 2000 go through rasterio (CRS and transform kept; windows read for tiles); ``--bands`` picks
  three 1-based bands, default the bands described as red/green/blue, else the first three.
- Inputs are opened read-only and never modified.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import gzip
import logging
import os
import resource
import stat
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

from alps_client._imports import lazy_import
from alps_client.config import InputConfig
from alps_client.errors import DependencyNotFoundError, InputImageError, InputReadError, shortened
from alps_client.io.items import (
    PLAIN_COPY_EXTENSIONS,
    RASTER_EXTENSIONS,
    VOLUME_EXTENSIONS,
    FileVersion,
    InputItem,
    extension_of,
    not_utf8_bytes,
    printable,
)

logger = logging.getLogger(__name__)

# Whole images above this many pixels are refused without --tile (their masks would not fit in memory).
MAX_UNTILED_PIXELS = 64_000_000
# PNG/JPEG/BMP/WebP are decoded whole by PIL, even for one tile: above this size, convert to a tiled GeoTIFF.
MAX_PIL_PIXELS = 400_000_000
# PIL's decompression-bomb guard stays on for the whole process. Only opening a file's header to learn its size,
# or opening a scene this run reads in tiles, raises PIL's limit, to MAX_PIL_PIXELS (the two limits above then
# refuse with messages that say what to do); see _open_image.
_PIL_LIMIT_LOCK = threading.Lock()
# PIL's warnings (damaged metadata) said naming the file each thread reads; see name_pil_warnings.
_PIL_PACKAGE = str(Path(Image.__file__).parent)
_READING = threading.local()
_PIL_WARNINGS_SAID: set[tuple[str, str]] = set()
_PIL_WARNINGS_LOCK = threading.Lock()
# Why an image with no valid pixel is rejected (a tiled scene's, when every tile is so).
NOTHING_VALID = "every pixel is transparent or nodata"
# GDAL block cache while reading (MB): keeps windowed reads of huge scenes bounded.
GDAL_CACHE_MB = 64
# Long side of the decimated sample a tiled scene's stretch range is taken from.
STRETCH_SAMPLE_SIDE = 2048


@dataclass
class LoadedImage:
    """An input ready for the mask generator.

    Attributes:
        rgb: ``(H, W, 3) uint8``.
        valid: ``(H, W) bool`` pixels that belong to the image (False: e.g. transparent), or None for all.
        geo: where a georeferenced input lies (window-adjusted; :func:`_georeference`), or None.
        plain_copy: the source file can be copied into the dataset unchanged (8-bit RGB, upright, no alpha, one frame).
        extra: small facts recorded in the shard (bit depth, stretch range, bands).
    """

    rgb: npt.NDArray[np.uint8]
    valid: npt.NDArray[np.bool_] | None = None
    geo: dict[str, Any] | None = None
    plain_copy: bool = False
    extra: dict[str, Any] | None = None


def _fail(path: str | Path, reason: str) -> InputImageError:
    return InputImageError(str(path), reason)


def _gdal_reason(err: Exception) -> str:
    """GDAL's reason for ``err``, in one line.

    rasterio's "Read failed. See previous exception for details." names none; the GDAL error it chains does
    (``IReadBlock failed at X offset 0 ...``).
    """
    cause = err.__cause__ or err.__context__
    text = str(cause) if cause is not None and "previous exception" in str(err) else str(err)
    return (text.splitlines() or [type(err).__name__])[0][:160]


# What the file system answers about the file itself (gone, not allowed, not a file): a bad input. Any other
# error with an errno (EIO, ESTALE, ETIMEDOUT...) is the disk or the mount failing, not the file.
_FILE_ERRNOS = frozenset({errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.ELOOP,
                          errno.ENAMETOOLONG, errno.ENXIO})


def _read_failure(path: str | Path, err: BaseException) -> InputReadError | None:
    """The machinery failure ``err`` is, when reading ``path`` failed in the file system rather than the file.

    PIL reports bad image data as ``OSError`` too, but without an ``errno``: that stays a bad input.
    """
    if not isinstance(err, OSError) or err.errno is None or err.errno in _FILE_ERRNOS:
        return None
    if err.errno in (errno.EMFILE, errno.ENFILE):  # a limit of this process or of the system, not of a disk
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        where = (f"this process's limit of {limit} (ulimit -n): raise it" if err.errno == errno.EMFILE else
                 "the system's limit (fs.file-max): close other programs' files or raise it")
        return InputReadError(f"reading {path} failed ({err.strerror}): too many files open, {where}; not the file")
    return InputReadError(f"reading {path} failed ({err.strerror or err}): the disk or the network mount "
                          "failed, not the file")


def _check_file(path: Path) -> None:
    try:
        info = path.stat()
    except OSError as err:
        failure = _read_failure(path, err)  # a mount that failed under the link's target is no bad input either
        if failure is None and os.path.islink(path):  # the link is there, what it points to is not
            raise _fail(path, f"a broken symbolic link (to {os.readlink(path)}, {err.strerror})") from err
        if failure is None and err.errno == errno.ENOENT:  # listed when the run started: not a bad file
            raise _fail(path, "gone since the run started (moved or deleted meanwhile)") from err
        raise failure or _fail(path, f"unreadable ({err.strerror})") from err
    if not stat.S_ISREG(info.st_mode):  # a FIFO or a device would block or never end
        raise _fail(path, "not a regular file (a named pipe, a socket or a device)")
    if info.st_size == 0:
        raise _fail(path, "zero-byte file")
    if not os.access(path, os.R_OK):
        raise _fail(path, "unreadable (Permission denied)")
    check_gdal_can_open(path)


def check_gdal_can_open(path: Path) -> None:
    """Refuse a raster (a file read through GDAL) whose name GDAL cannot take.

    GDAL opens names as UTF-8 text; one holding other bytes (Latin-1 from an old share, kept by Python as lone
    surrogates) failed inside rasterio, naming nothing. Other files of such names are read.
    """
    if not_utf8_bytes(str(path)) and _is_raster(path):
        raise _fail(path, "GDAL (which reads TIFF, JPEG 2000 and 16-bit PNG) opens no file whose name is not UTF-8 "
                          "text: rename it to UTF-8 (convmv -f latin1 -t utf-8 --notest FILE)")


def _is_raster(path: Path) -> bool:
    """Read through rasterio (GDAL): TIFF, JPEG 2000... and PNGs of 16 bits per colour channel."""
    return extension_of(path.name) in RASTER_EXTENSIONS or _wide_colour_png(path)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _wide_colour_png(path: Path) -> bool:
    """A PNG of 16-bit RGB, RGBA or grey + alpha (IHDR bit depth 16, colour type 2, 6 or 4).

    PIL has no mode for these and reads them as 8-bit, keeping each value's high byte: 12-bit camera data came
    out as values up to 15, unstretched, and its masks none. GDAL reads their 16 bits (16-bit grey, colour type
    0, PIL reads whole, as ``I;16``).
    """
    if extension_of(path.name) != ".png":
        return False
    try:
        with path.open("rb") as f:
            head = f.read(26)
    except OSError:
        return False  # said by the reader that opens it next
    return len(head) == 26 and head[:8] == _PNG_SIGNATURE and head[12:16] == b"IHDR" and head[24] == 16 \
        and head[25] in (2, 4, 6)


@functools.cache
def raster_io() -> Any:
    """rasterio, with its ``NotGeoreferencedWarning`` silenced once for the process.

    A TIFF without a CRS (a microscope's, a scanner's, a plain image's) is read in pixel coordinates on purpose
    (its labels and vectors say so); rasterio's warning printed two lines of noise per such file.
    """
    rasterio = lazy_import("rasterio")
    warnings.filterwarnings("ignore", category=rasterio.errors.NotGeoreferencedWarning)
    return rasterio


_HEADER_ONLY = -1  # _open_image(limit=...): no pixel limit, the file's header is all that is read


@contextmanager
def pil_pixel_limit(limit: int | None) -> Iterator[None]:
    """PIL's decompression-bomb limit at ``limit`` pixels for the ``Image.open`` calls in the block.

    ``_HEADER_ONLY``: none; None: PIL's own. Set under the lock every open here takes, restored after. PIL warns
    above its limit and refuses above twice it.
    """
    with _PIL_LIMIT_LOCK:
        previous = Image.MAX_IMAGE_PIXELS
        if limit is not None:
            Image.MAX_IMAGE_PIXELS = None if limit == _HEADER_ONLY else limit
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = previous


@contextmanager
def pil_warnings_named(path: Path) -> Iterator[None]:
    """Within: this thread reads ``path``, which PIL's warnings are said to be about (:func:`name_pil_warnings`)."""
    previous = getattr(_READING, "path", None)
    _READING.path = path
    try:
        yield
    finally:
        _READING.path = previous


def name_pil_warnings() -> None:
    """Say PIL's warnings as alps lines naming the file read, once per file and warning (idempotent).

    PIL warns of damaged metadata (an EXIF tag past its block's end) through ``warnings``: the line named PIL's own
    source, not the file, and Python hid the next file's same warning as a repeat. ``warnings``' hook and filters
    are the process's, so the application installs this (a run, ``alps report``), not the import. Each thread says
    which file it reads (:func:`pil_warnings_named`: images are read in several threads at once); PIL's warnings
    outside a read, and every other warning, are shown as before.
    """
    if getattr(warnings.showwarning, "names_pil_warnings", False):
        return
    shown_before = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
             line: str | None = None) -> None:
        path = getattr(_READING, "path", None)
        if path is None or not filename.startswith(_PIL_PACKAGE):
            shown_before(message, category, filename, lineno, file, line)
            return
        said = (str(Path(path).absolute()), str(message))  # relative at discovery, absolute when labelled
        with _PIL_WARNINGS_LOCK:
            first = said not in _PIL_WARNINGS_SAID
            _PIL_WARNINGS_SAID.add(said)
        if first:
            logger.warning("%s: %s (PIL's warning while reading it)", printable(said[0]), printable(said[1]))

    show.names_pil_warnings = True  # type: ignore[attr-defined]
    warnings.showwarning = show
    warnings.filterwarnings("always", module=r"PIL\.")  # each file's warning, not the first file's alone


@contextmanager
def _open_image(path: Path, limit: int | None = None) -> Iterator[Image.Image]:
    """``Image.open`` under PIL's decompression-bomb guard, or with its limit raised to ``limit`` pixels.

    PIL checks its limit (one process-wide setting) inside ``Image.open`` only: a raised limit lasts for that call,
    under a lock every open here takes, and is restored before any pixel is decoded. ``_HEADER_ONLY`` lifts it for
    reading a size (nothing is decoded); ``MAX_PIL_PIXELS`` lets a scene read in tiles open.

    PIL's warnings within are said naming ``path`` (:func:`pil_warnings_named`).

    Raises:
        InputImageError: If the image exceeds the limit in force.
    """
    with pil_warnings_named(path):
        try:
            with pil_pixel_limit(limit):
                im = Image.open(path)
        except Image.DecompressionBombError as err:
            raise _fail(path, "image has more pixels than PIL's decompression-bomb limit allows for a whole image; "
                              "cut it into tiles with --tile 896 --overlap 384") from err
        except ValueError as err:  # a PNG text or colour-profile chunk inflating past PIL's limit, and the like
            raise _fail(path, f"image metadata PIL refuses to read ({shortened(str(err))})") from err
        with im:
            yield im


def too_large_to_label_whole(height: int, width: int) -> str:
    """Why an image above :data:`MAX_UNTILED_PIXELS` is rejected without ``--tile``, and the way out."""
    return (f"image is {width}x{height} ({height * width / 1e6:.0f} Mpx), too large to label whole; use --tile 896 "
            "--overlap 384")


def read_rgb(path: str | Path) -> npt.NDArray[np.uint8]:
    """``(H, W, 3) uint8`` of an image file as stored (no EXIF turn, no stretch): an 8-bit input or alps' own PNG."""
    with pil_warnings_named(Path(path)), Image.open(path) as im:  # a JPEG's EXIF is parsed as it opens
        return np.asarray(im.convert("RGB"))


def displayed_orientation(path: Path, src: Any) -> int:
    """How a raster GDAL reads is displayed (EXIF / TIFF Orientation, 1-8); 1 where its stored frame is the truth.

    GDAL ignores the tag, where PIL and OpenCV (so mmcv, torchvision) turn the image: a 16-bit PNG's EXIF and a
    plain TIFF's Orientation tag are applied, as for JPEGs. A georeferenced raster keeps its stored frame, which its
    transform or control points describe, as GIS tools show it. Reads the header only.
    """
    if extension_of(path.name) not in (".tif", ".tiff") and not _wide_colour_png(path):
        return 1
    if src.crs is not None or not src.transform.is_identity or src.gcps[0]:
        return 1
    try:
        with _open_image(path, _HEADER_ONLY) as im:
            return _orientation(im)
    except (OSError, SyntaxError, ValueError, InputImageError):  # a TIFF PIL cannot open: as GDAL reads it
        return 1


def raster_reading(path: str, stat: os.stat_result) -> dict[str, Any]:
    """How a raster is read where that differs from its stored frame and first bands; ``{}`` otherwise.

    ``{"orientation": 6}`` for a plain TIFF or 16-bit PNG turned as displayed, ``{"bands": [3, 2, 1]}`` for bands
    chosen by their colour interpretation (the default choice, ``--bands`` aside); ``{}`` for any other file, and
    for one that cannot be read (reading it says why). Cached per file version.
    """
    return _raster_reading(FileVersion.of(path, stat))


def _raster_orientation(path: Path) -> int:
    """How a raster is displayed (:func:`displayed_orientation`), read once per file version.

    Its header, each of its tiles and its signature ask it.
    """
    return int(raster_reading(str(path), path.stat()).get("orientation", 1))


@functools.lru_cache(maxsize=1024)
def _raster_reading(version: FileVersion) -> dict[str, Any]:
    source = Path(version.path)
    try:
        if not _is_raster(source):
            return {}
        check_gdal_can_open(source)
        with raster_io().open(source) as src:
            orientation, bands = displayed_orientation(source, src), _tiff_bands(src)
    except Exception:  # noqa: BLE001 (not readable: the read that labels it says why)
        return {}
    return {**({"orientation": orientation} if orientation != 1 else {}),
            **({"bands": bands} if bands not in ([1, 2, 3], [1]) else {})}


def _stored_window(window: tuple[int, int, int, int], orientation: int, height: int, width: int
                   ) -> tuple[int, int, int, int]:
    """The ``(x0, y0, x1, y1)`` stored pixels that :func:`upright` turns into ``window`` of the displayed image.

    ``height`` and ``width``: the stored image's. A tile of a turned scene reads its own pixels alone.
    """
    x0, y0, x1, y1 = window
    stored = {  # displayed (row, column) -> stored (row, column), as _UPRIGHT turns them
        1: lambda r, c: (r, c), 2: lambda r, c: (r, width - 1 - c), 3: lambda r, c: (height - 1 - r, width - 1 - c),
        4: lambda r, c: (height - 1 - r, c), 5: lambda r, c: (c, r), 6: lambda r, c: (height - 1 - c, r),
        7: lambda r, c: (height - 1 - c, width - 1 - r), 8: lambda r, c: (c, width - 1 - r),
    }[orientation]
    rows, columns = zip(*(stored(r, c) for r in (y0, y1 - 1) for c in (x0, x1 - 1)), strict=True)
    return min(columns), min(rows), max(columns) + 1, max(rows) + 1


# EXIF orientation -> the turn or flip of a stored (..., H, W) array that shows it as displayed, as PIL's
# ImageOps.exif_transpose does (2: mirrored, 3: upside down, 6: turned 90 degrees clockwise to be upright, ...)
_UPRIGHT: dict[int, Callable[[npt.NDArray[Any]], npt.NDArray[Any]]] = {
    1: lambda a: a,
    2: lambda a: a[..., ::-1],
    3: lambda a: a[..., ::-1, ::-1],
    4: lambda a: a[..., ::-1, :],
    5: lambda a: np.swapaxes(a, -1, -2),
    6: lambda a: np.rot90(a, -1, axes=(-2, -1)),
    7: lambda a: np.swapaxes(a, -1, -2)[..., ::-1, ::-1],
    8: lambda a: np.rot90(a, 1, axes=(-2, -1)),
}


def upright(array: npt.NDArray[Any], orientation: int) -> npt.NDArray[Any]:
    """``(..., H, W)`` stored pixels as displayed under EXIF ``orientation`` (1-8; others: as stored), contiguous."""
    return np.ascontiguousarray(_UPRIGHT.get(orientation, _UPRIGHT[1])(array))


def _orientation(im: Image.Image) -> int:
    """Orientation from the header only: EXIF, else XMP's ``tiff:Orientation`` or ImageMagick's raw EXIF profile.

    As ``ImageOps.exif_transpose`` reads it, but for a PNG's eXIf chunk after its pixels: PIL's ``getexif`` on a
    PNG decodes the whole image to look for one there, so the base class's (what the header holds) is asked.
    """
    exif = Image.Image.getexif(im) if im.format == "PNG" else im.getexif()
    return int(exif.get(0x0112, 1))


def image_size_of(path: str | Path) -> tuple[int, int]:
    """``(H, W)`` from the file header (cheap); raises InputImageError for files that are not images."""
    height, width, _ = image_header(path)
    return height, width


def image_header(path: str | Path, bands: tuple[int, ...] | None = None) -> tuple[int, int, int]:
    """``(H, W, pages)`` from the file header (cheap); raises InputImageError for files that are not images.

    ``pages`` > 1 for a TIFF of several pages (a microscope's z-stack, a slide's pyramid levels) or an animated PNG
    or WebP (its frames): its first page is the image, the others are never read. ``bands`` (``--bands``): a
    raster with fewer bands is rejected here, from its header (it was found only once the model had started, and
    ``--dry-run`` counted it to label).
    """
    path = Path(path)
    _check_file(path)
    if _is_raster(path):
        try:
            rasterio = raster_io()
        except DependencyNotFoundError as err:  # which file needs it: one TIFF among PNGs stopped the run, unnamed
            raise DependencyNotFoundError(f"{path} is read through GDAL: {err}") from None
        try:
            with rasterio.open(path) as src:
                height, width, pages = int(src.height), int(src.width), max(1, len(src.subdatasets))
                if bands is not None:
                    _tiff_bands(src, bands)
        except rasterio.errors.RasterioIOError as err:
            raise _fail(path, f"not a readable raster ({_gdal_reason(err)})") from err
        turned = _raster_orientation(path) in (5, 6, 7, 8)
        return (width, height, pages) if turned else (height, width, pages)
    try:
        with _open_image(path, _HEADER_ONLY) as im:  # its size decides what happens next
            w, h = im.size
            orientation = _orientation(im)
            frames = int(getattr(im, "n_frames", 1))  # an animated PNG or WebP: from its header
    except UnidentifiedImageError as err:
        raise _fail(path, "not an image (PIL cannot identify it)") from err
    except OSError as err:
        corrupt = f"truncated or corrupt image data ({shortened(str(err))})"
        raise _read_failure(path, err) or _fail(path, corrupt) from err
    return (w, h, frames) if orientation in (5, 6, 7, 8) else (h, w, frames)


def percentile_range(data: npt.NDArray[Any], valid: npt.NDArray[np.bool_] | None, percentiles: tuple[float, float]) -> tuple[float, float] | None:
    """``(lo, hi)`` percentiles of the valid, finite values of ``(H, W[, C])`` data (all bands pooled), or None.

    Where the two percentiles meet (more than 96 % of the pixels share one value at the defaults: a dark field with
    a few bright cells, a volume mostly air), the range is the values' minimum and maximum instead: a range of zero
    width would make every pixel black or white, objects of different brightness one.
    """
    values = data[valid] if valid is not None and valid.any() else data
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    if finite.size == 0:
        return None
    lo, hi = (float(v) for v in np.percentile(finite, percentiles))
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
    return lo, hi


def stretch_to_uint8(
    data: npt.NDArray[Any], valid: npt.NDArray[np.bool_] | None, percentiles: tuple[float, float],
    value_range: tuple[float, float] | None = None,
) -> tuple[npt.NDArray[np.uint8], list[float]]:
    """Linear stretch of ``(H, W[, C])`` data to uint8 between two percentiles of the valid pixels.

    ``value_range`` (e.g. the whole scene's, for a tile) replaces the percentiles of ``data`` when given.
    """
    found = value_range or percentile_range(data, valid, percentiles)
    if found is None:
        return np.zeros(data.shape, np.uint8), [0.0, 0.0]
    lo, hi = float(found[0]), float(found[1])  # (an intensity window given in integers records as floats too)
    if hi <= lo:
        hi = lo + 1.0
    # Infinities (no measurement, never valid) go to the ends of the range: their product would overflow.
    scaled = (np.nan_to_num(data.astype(np.float64), nan=lo, posinf=hi, neginf=lo) - lo) * (255.0 / (hi - lo))
    return np.clip(scaled + 0.5, 0, 255).astype(np.uint8), [lo, hi]


def _to_rgb(
    data: npt.NDArray[Any], valid: npt.NDArray[np.bool_] | None, config: InputConfig,
    value_range: tuple[float, float] | None = None,
) -> tuple[npt.NDArray[np.uint8], dict[str, Any]]:
    """``(H, W, 3) uint8`` of ``(H, W[, C])`` data and the facts recorded about it (``extra``: dtype, stretch).

    Data of more than 8 bits is stretched between ``config.intensity_window`` when given (fixed, in the data's
    units), else ``value_range`` (a scene's or volume's), else its own ``stretch_percentiles``.
    """
    extra: dict[str, Any] = {"dtype": str(data.dtype)}
    if data.dtype != np.uint8:
        data, extra["stretch"] = stretch_to_uint8(data, valid, config.stretch_percentiles,
                                                  config.intensity_window or value_range)
    if data.ndim == 2:
        data = np.repeat(data[:, :, None], 3, axis=2)
    return np.ascontiguousarray(data[:, :, :3]), extra


def _load_pil(path: Path, config: InputConfig, tiled: bool = False) -> LoadedImage:
    try:
        with _open_image(path, MAX_PIL_PIXELS if tiled else None) as im:
            orientation = _orientation(im)  # the pixels are turned below, as arrays
            # an animated PNG's or WebP's other frames are not labelled: img_dir gets the first frame alone
            one_frame = int(getattr(im, "n_frames", 1)) == 1
            im.load()
            mode = im.mode
            valid = None
            if mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                mode = im.mode
            if mode in ("RGBA", "LA", "PA"):
                alpha = np.asarray(im.getchannel("A"))
                valid = alpha > 0
                im = im.convert("RGB")
                data = np.asarray(im)
            elif mode in ("RGB", "L") or mode.startswith("I") or mode == "F":
                data = np.asarray(im)
            else:  # CMYK, YCbCr, 1, ...
                data = np.asarray(im.convert("RGB"))
    except UnidentifiedImageError as err:
        raise _fail(path, "not an image (PIL cannot identify it)") from err
    except (OSError, SyntaxError, ValueError) as err:
        corrupt = f"truncated or corrupt image data ({shortened(str(err))})"
        raise _read_failure(path, err) or _fail(path, corrupt) from err
    if orientation != 1:  # (H, W) or (H, W, C): turned as displayed, as the header said (image_header)
        data = upright(data, orientation) if data.ndim == 2 else np.moveaxis(upright(np.moveaxis(data, -1, 0),
                                                                                      orientation), 0, -1)
        valid = None if valid is None else upright(valid, orientation)
    rgb, extra = _to_rgb(data, valid, config)
    plain = (extension_of(path.name) in PLAIN_COPY_EXTENSIONS and mode == "RGB" and orientation == 1 and valid is None
             and one_frame)
    extra["mode"] = mode
    return LoadedImage(rgb, valid, None, plain, extra)


def _tiff_bands(src: Any, bands: tuple[int, ...] | None = None) -> list[int]:
    """The bands of ``src`` read as RGB (1-based): ``bands`` (``--bands``), else by colour interpretation."""
    if bands is not None:
        if max(bands) > src.count:
            raise _fail(src.name, f"has {src.count} band(s), --bands asks for {list(bands)}")
        return list(bands)
    interp = [c.name for c in src.colorinterp]  # str() of one is its number on Python 3.11
    if all(c in interp for c in ("red", "green", "blue")):
        return [interp.index(c) + 1 for c in ("red", "green", "blue")]
    return [1, 2, 3] if src.count >= 3 else [1]


def _colour_table(src: Any, bands: list[int]) -> npt.NDArray[np.uint8] | None:
    """``(256, 4) uint8`` RGBA of each index of a palette raster read as its one band; None for another raster."""
    from rasterio.enums import ColorInterp

    if len(bands) != 1 or src.colorinterp[bands[0] - 1] != ColorInterp.palette or src.dtypes[bands[0] - 1] != "uint8":
        return None
    try:
        table = src.colormap(bands[0])
    except ValueError:  # said to be a palette, but holds none
        return None
    colours = np.zeros((256, 4), np.uint8)
    for index, rgba in table.items():
        colours[index] = rgba
    return colours


def _georeference(src: Any, window: Any) -> dict[str, Any] | None:
    """Where the raster (or its ``window``) lies; None if it is not georeferenced.

    ``{"crs": wkt, "transform": [a, b, c, d, e, f]}``, or for a raster placed by ground control points alone
    (Sentinel-1's GRD, scanned maps) ``{"crs": wkt, "gcps": [[row, col, x, y, z], ...]}`` with rows and columns
    in the window's pixels. A geotransform without a CRS (a world file ``.tfw`` beside a TIFF, an internal
    transform with no CRS keys) gives ``{"crs": None, "transform": [...]}``: GIS tools place such a raster by its
    transform and ask for the CRS, and its labels and vectors are placed the same way.
    """
    transform = src.window_transform(window) if window is not None else src.transform
    if src.crs is not None:
        return {"crs": src.crs.to_wkt(), "transform": list(transform)[:6]}
    gcps, gcp_crs = src.gcps
    if not gcps or gcp_crs is None:
        return None if src.transform.is_identity else {"crs": None, "transform": list(transform)[:6]}
    row0, col0 = (window.row_off, window.col_off) if window is not None else (0, 0)
    return {"crs": gcp_crs.to_wkt(),
            "gcps": [[p.row - row0, p.col - col0, p.x, p.y, p.z or 0.0] for p in gcps]}


def _valid_pixels(src: Any, bands: list[int], **where: Any) -> npt.NDArray[np.bool_] | None:
    """Where the bands read hold data, as GDAL's masks say; None when every pixel does.

    A pixel is nodata only where every band read is (GDAL's rule for a dataset's mask: an RGB ortho with nodata 0
    keeps its pure green, blue and dark pixels, whose red is 0), whatever the mask is made of: a nodata value, an
    alpha band, or a mask band of its own (an internal ``.msk``, as JPEG-compressed orthos and COGs carry).
    ``where``: what :meth:`read_masks` is given to read the pixels the bands were read at (``window``, or
    ``out_shape`` and ``resampling``).
    """
    from rasterio.enums import MaskFlags

    flags = [src.mask_flag_enums[band - 1] for band in bands]
    if all(MaskFlags.all_valid in f for f in flags):
        return None
    if all(MaskFlags.per_dataset in f for f in flags):  # one mask for every band (alpha, a mask band): read once
        return src.read_masks(bands[0], **where) > 0
    return np.logical_or.reduce([src.read_masks(band, **where) > 0 for band in bands])


def _load_tiff(path: Path, config: InputConfig, window: tuple[int, int, int, int] | None) -> LoadedImage:
    rasterio = raster_io()
    from rasterio.windows import Window

    orientation = _raster_orientation(path)
    try:
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), rasterio.open(path) as src:
            bands = _tiff_bands(src, config.bands)
            kind = src.dtypes[bands[0] - 1]
            if kind.startswith("complex"):  # np.percentile and the stretch have no order for complex numbers
                raise _fail(path, f"complex-valued raster ({kind}: a radar SLC?): alps labels images of real "
                                  "values; save its amplitude or intensity first")
            # a tile's window is in the displayed frame, as the header said (image_header)
            if window is not None:
                window = _stored_window(window, orientation, src.height, src.width)
            win = None if window is None else Window(window[0], window[1], window[2] - window[0], window[3] - window[1])
            data = src.read(bands, window=win)  # (C, h, w)
            valid = _valid_pixels(src, bands, window=win)
            geo = _georeference(src, win)
            colours = _colour_table(src, bands)
            bits = int(src.tags(bands[0], "IMAGE_STRUCTURE").get("NBITS", 8))
    except rasterio.errors.RasterioIOError as err:
        raise _fail(path, f"not a readable raster ({_gdal_reason(err)})") from err
    if orientation != 1:
        data, valid = upright(data, orientation), None if valid is None else upright(valid, orientation)
    if colours is not None:  # a palette TIFF: its indices are no brightness (a palette PNG is read the same way)
        index = data[0]
        if (colours[:, 3] < 255).any():  # transparent entries hold no image
            opaque = colours[index, 3] > 0
            valid = opaque if valid is None else valid & opaque
        data = np.moveaxis(colours[index, :3], -1, 0)
    elif bits < 8 and data.dtype == np.uint8:  # 1-bit (scanned pages, masks), 2-bit, 4-bit: 0..2^bits-1
        data = data * np.uint8(255 // (2**bits - 1))
    if data.dtype.kind == "f":  # NaN or infinity is no measurement, nodata value declared or not
        finite = np.isfinite(data).all(axis=0)
        if not finite.all():
            valid = finite if valid is None else valid & finite
    data = data[0] if data.shape[0] == 1 else np.moveaxis(data, 0, -1)
    value_range = None
    if window is not None and data.dtype != np.uint8 and config.intensity_window is None:
        # one stretch for the whole scene: tiles match in colour
        value_range = scene_value_range(FileVersion.of(path), tuple(bands), config.stretch_percentiles)
    rgb, extra = _to_rgb(data, valid, config, value_range)
    extra["bands"] = bands
    return LoadedImage(rgb, valid, geo, False, extra)


@functools.lru_cache(maxsize=32)
def scene_value_range(version: FileVersion, bands: tuple[int, ...], percentiles: tuple[float, float]
                      ) -> tuple[float, float] | None:
    """Stretch range of a whole raster, from a nearest-neighbour read decimated to ``STRETCH_SAMPLE_SIDE`` px.

    Memory: the decimated sample only (GDAL reads the scene block by block). Cached per file version, so the
    tiles of one scene pay for it once per process.
    """
    rasterio = raster_io()
    from rasterio.enums import Resampling

    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), rasterio.open(version.path) as src:
        step = max(1, -(-max(src.height, src.width) // STRETCH_SAMPLE_SIDE))
        shape = (max(1, src.height // step), max(1, src.width // step))
        data = src.read(list(bands), out_shape=(len(bands), *shape), resampling=Resampling.nearest)
        mask = _valid_pixels(src, list(bands), out_shape=shape, resampling=Resampling.nearest)
    valid = None if mask is None else np.broadcast_to(mask[None], data.shape)
    return percentile_range(data, valid, percentiles)


def volume_slices(path: str | Path, config: InputConfig) -> list[int]:
    """Indices of the non-empty slices of a NIfTI volume along ``config.slice_axis``."""
    nonempty, _ = volume_summary(_volume_version(Path(path)), config.slice_axis, config.window_percentiles)
    return list(nonempty)


def slice_pixel_size(path: str | Path, slice_axis: int) -> tuple[float, float] | None:
    """``(row, column)`` size of a NIfTI volume's slice pixels along ``slice_axis``, in its units (mm).

    None when the header says none. Reads the header only.
    """
    try:
        zooms = lazy_import("nibabel").load(str(path)).header.get_zooms()[:3]
    except Exception:  # noqa: BLE001 (reading the volume says what is wrong with it)
        return None
    in_plane = [float(zooms[axis]) for axis in range(len(zooms)) if axis != slice_axis][:2]
    return (in_plane[0], in_plane[1]) if len(in_plane) == 2 and min(in_plane) > 0 else None


def volumes_in(path: str | Path) -> int:
    """How many 3-D volumes a NIfTI file holds (its 4th dimension: a series' time points, a scan's echoes).

    The first alone is labelled (:func:`_volume`). Reads the header only.
    """
    try:
        shape = lazy_import("nibabel").load(str(path)).shape
    except Exception:  # noqa: BLE001 (reading the volume says what is wrong with it)
        return 1
    return int(shape[3]) if len(shape) == 4 else 1


def _volume_version(path: Path) -> FileVersion:
    _check_file(path)
    return FileVersion.of(path)


@functools.lru_cache(maxsize=2)
def _volume(version: FileVersion) -> npt.NDArray[np.float32]:
    """The 3D volume (or 2D plane) as float32, decoded once per process and file version.

    A slice never re-reads the file. Of a 4-D file (a series), the first volume alone is decoded: the others are
    never labelled. A 2-D file (an X-ray or ultrasound frame saved as NIfTI) is one plane: :func:`as_volume` makes it
    a volume of one slice.
    """
    path = version.path
    nibabel = lazy_import("nibabel")
    try:
        image = nibabel.load(path)
        check_nifti_voxels(path, image)
        data = np.asarray((image.slicer[..., 0] if image.ndim == 4 else image).get_fdata(dtype=np.float32))
    except (InputImageError, MemoryError):  # out of memory: the machine's failure, never the file's
        raise
    except Exception as err:  # nibabel raises many types for corrupt files
        reason = f"not a readable NIfTI volume ({type(err).__name__}: {shortened(str(err))})"
        raise _read_failure(path, err) or _fail(path, reason) from err
    if data.ndim not in (2, 3):
        raise _fail(path, f"NIfTI image must be 2D or 3D (or 4D: its first volume), got shape {data.shape}")
    return data


def check_nifti_voxels(path: str, image: Any) -> None:
    """Refuse a NIfTI whose header declares more voxels than its file holds, before they are read.

    nibabel allocates what the header declares first: a 1 KB file declaring 1000^3 voxels took 1 GB before it
    failed, 4000^3 ended in a MemoryError, every run alike. An uncompressed file's size answers at once. A
    compressed file's size says nothing of its voxels: its stream is decompressed and counted, in 4 MiB reads, up to
    the voxels that are decoded (a series' first volume), so a lying header costs one pass and no memory.
    """
    header = image.header
    dtype = header.get_data_dtype()
    compressed = str(path).lower().endswith(".gz")
    decoded_shape = image.shape[:3] if compressed and image.ndim == 4 else image.shape
    declared = int(header.get_data_offset()) + int(np.prod(decoded_shape, dtype=np.int64)) * dtype.itemsize
    held = _decompressed_size(path, declared) if compressed else os.path.getsize(path)
    if declared > held:
        raise _fail(path, f"its header declares {' x '.join(map(str, image.shape))} voxels of {dtype} "
                          f"({declared} bytes with its header) but the file {'decompressed ' if compressed else ''}"
                          f"holds {held} bytes: cut short, or a corrupt header")


def _decompressed_size(path: str, enough: int) -> int:
    """Bytes a gzip file decompresses to, counted up to ``enough`` (4 MiB held at a time)."""
    held = 0
    with gzip.open(path, "rb") as stream:
        while held < enough and (chunk := stream.read(min(1 << 22, enough - held))):
            held += len(chunk)
    return held


def as_volume(data: npt.NDArray[Any], slice_axis: int) -> npt.NDArray[Any]:
    """``data`` as a volume sliced along ``slice_axis``: a 2-D plane becomes its one slice (index 0), as a view."""
    return np.expand_dims(data, slice_axis) if data.ndim == 2 else data


@functools.lru_cache(maxsize=64)
def volume_summary(version: FileVersion, slice_axis: int, window: tuple[float, float]
                   ) -> tuple[tuple[int, ...], tuple[float, float] | None]:
    """Non-empty slice indices along ``slice_axis`` and the intensity window of the whole volume.

    A slice is empty when its finite voxels hold one value, or none: all 0, a CT's padding (all -1024 HU), all
    NaN. It shows no structure, so SAM's masks there would be noise given classes. The window is the ``window``
    percentiles of every voxel: every slice of a volume is stretched with the same range, as the tiles of a
    scene are.
    """
    data = as_volume(_volume(version), slice_axis)
    other = tuple(a for a in range(3) if a != slice_axis)
    finite = np.isfinite(data)
    # two finite values that differ make a slice worth labelling (nanmax warned of every slice wholly NaN)
    high = np.max(data, axis=other, initial=-np.inf, where=finite)
    low = np.min(data, axis=other, initial=np.inf, where=finite)
    nonempty = tuple(int(i) for i in np.flatnonzero(high > low))
    return nonempty, percentile_range(data, None, window)


def _load_slice(path: Path, index: int, config: InputConfig) -> LoadedImage:
    version = _volume_version(path)
    plane = np.take(as_volume(_volume(version), config.slice_axis), index, axis=config.slice_axis)
    _, value_range = volume_summary(version, config.slice_axis, config.window_percentiles)
    finite = np.isfinite(plane)  # NaN voxels (outside a registered brain, say) are no measurement: never labelled
    valid = None if finite.all() else finite
    rgb, extra = _to_rgb(plane, valid, dataclasses.replace(config, stretch_percentiles=config.window_percentiles),
                         value_range)
    extra["slice_index"] = index
    extra["dtype"] = _stored_dtype(version)  # not the float32 the volume is decoded to
    return LoadedImage(rgb, valid, None, False, extra)


@functools.lru_cache(maxsize=64)
def _stored_dtype(version: FileVersion) -> str:
    """The type a NIfTI file stores its voxels in (``int16`` for most CT), from its header."""
    return str(lazy_import("nibabel").load(version.path).header.get_data_dtype())


def load_item(item: InputItem, config: InputConfig | None = None) -> LoadedImage:
    """Read one item as RGB uint8; raises InputImageError naming the file and the reason."""
    config = config or InputConfig()
    path = Path(item.source)
    _check_file(path)
    if item.kind == "slice" or extension_of(path.name) in VOLUME_EXTENSIONS:
        return _load_slice(path, int(item.slice_index or 0), config)
    if _is_raster(path):
        loaded = _load_tiff(path, config, item.window)
    else:
        loaded = _load_pil(path, config, tiled=item.window is not None)
        if item.window is not None:
            x0, y0, x1, y1 = item.window
            loaded = LoadedImage(
                loaded.rgb[y0:y1, x0:x1].copy(), None if loaded.valid is None else loaded.valid[y0:y1, x0:x1].copy(),
                None, False, loaded.extra,
            )
    h, w = loaded.rgb.shape[:2]
    if item.window is None and h * w > MAX_UNTILED_PIXELS:
        raise _fail(path, too_large_to_label_whole(h, w))
    if item.window is None and loaded.valid is not None and not loaded.valid.any():  # a tile's is no fault of the file
        raise _fail(path, NOTHING_VALID)
    return loaded
