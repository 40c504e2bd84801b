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

import functools
import logging
import os
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

from alps_client._imports import lazy_import
from alps_client.config import InputConfig
from alps_client.errors import DependencyNotFoundError, InputImageError, shortened
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
from alps_client.io.loaded import LoadedImage, bad_input, check_file, percentile_range, read_failure, to_rgb
from alps_client.io.volumes import load_slice

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


def _gdal_reason(err: Exception) -> str:
    """GDAL's reason for ``err``, in one line.

    rasterio's "Read failed. See previous exception for details." names none; the GDAL error it chains does
    (``IReadBlock failed at X offset 0 ...``).
    """
    cause = err.__cause__ or err.__context__
    text = str(cause) if cause is not None and "previous exception" in str(err) else str(err)
    return (text.splitlines() or [type(err).__name__])[0][:160]


def _check_file(path: Path) -> None:
    """:func:`~alps_client.io.loaded.check_file`, and a raster's name GDAL can open."""
    check_file(path)
    check_gdal_can_open(path)


def check_gdal_can_open(path: Path) -> None:
    """Refuse a raster (a file read through GDAL) whose name GDAL cannot take.

    GDAL opens names as UTF-8 text; one holding other bytes (Latin-1 from an old share, kept by Python as lone
    surrogates) failed inside rasterio, naming nothing. Other files of such names are read.
    """
    if not_utf8_bytes(str(path)) and _is_raster(path):
        raise bad_input(path, "GDAL (which reads TIFF, JPEG 2000 and 16-bit PNG) opens no file whose name is not UTF-8 "
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
            raise bad_input(path, "image has more pixels than PIL's decompression-bomb limit allows for a whole image; "
                              "cut it into tiles with --tile 896 --overlap 384") from err
        except ValueError as err:  # a PNG text or colour-profile chunk inflating past PIL's limit, and the like
            raise bad_input(path, f"image metadata PIL refuses to read ({shortened(str(err))})") from err
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
            return image_orientation(im)
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


def upright_pixels(pixels: npt.NDArray[Any], orientation: int) -> npt.NDArray[Any]:
    """``(H, W)`` or ``(H, W, C)`` stored pixels as displayed under EXIF ``orientation`` (:func:`upright`)."""
    if pixels.ndim == 2:
        return upright(pixels, orientation)
    return np.moveaxis(upright(np.moveaxis(pixels, -1, 0), orientation), 0, -1)


def image_orientation(im: Image.Image) -> int:
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
            raise bad_input(path, f"not a readable raster ({_gdal_reason(err)})") from err
        turned = _raster_orientation(path) in (5, 6, 7, 8)
        return (width, height, pages) if turned else (height, width, pages)
    try:
        with _open_image(path, _HEADER_ONLY) as im:  # its size decides what happens next
            w, h = im.size
            orientation = image_orientation(im)
            frames = int(getattr(im, "n_frames", 1))  # an animated PNG or WebP: from its header
    except UnidentifiedImageError as err:
        raise bad_input(path, "not an image (PIL cannot identify it)") from err
    except OSError as err:
        corrupt = f"truncated or corrupt image data ({shortened(str(err))})"
        raise read_failure(path, err) or bad_input(path, corrupt) from err
    return (w, h, frames) if orientation in (5, 6, 7, 8) else (h, w, frames)


def _load_pil(path: Path, config: InputConfig, tiled: bool = False) -> LoadedImage:
    try:
        with _open_image(path, MAX_PIL_PIXELS if tiled else None) as im:
            orientation = image_orientation(im)  # the pixels are turned below, as arrays
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
        raise bad_input(path, "not an image (PIL cannot identify it)") from err
    except (OSError, SyntaxError, ValueError) as err:
        corrupt = f"truncated or corrupt image data ({shortened(str(err))})"
        raise read_failure(path, err) or bad_input(path, corrupt) from err
    if orientation != 1:  # (H, W) or (H, W, C): turned as displayed, as the header said (image_header)
        data = upright_pixels(data, orientation)
        valid = None if valid is None else upright(valid, orientation)
    rgb, extra = to_rgb(data, valid, config)
    plain = (extension_of(path.name) in PLAIN_COPY_EXTENSIONS and mode == "RGB" and orientation == 1 and valid is None
             and one_frame)
    extra["mode"] = mode
    return LoadedImage(rgb, valid, None, plain, extra)


def _tiff_bands(src: Any, bands: tuple[int, ...] | None = None) -> list[int]:
    """The bands of ``src`` read as RGB (1-based): ``bands`` (``--bands``), else by colour interpretation."""
    if bands is not None:
        if max(bands) > src.count:
            raise bad_input(src.name, f"has {src.count} band(s), --bands asks for {list(bands)}")
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
                raise bad_input(path, f"complex-valued raster ({kind}: a radar SLC?): alps labels images of real "
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
        raise bad_input(path, f"not a readable raster ({_gdal_reason(err)})") from err
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
    rgb, extra = to_rgb(data, valid, config, value_range)
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


def load_item(item: InputItem, config: InputConfig | None = None) -> LoadedImage:
    """Read one item as RGB uint8; raises InputImageError naming the file and the reason."""
    config = config or InputConfig()
    path = Path(item.source)
    _check_file(path)
    if item.kind == "slice" or extension_of(path.name) in VOLUME_EXTENSIONS:
        return load_slice(path, int(item.slice_index or 0), config)
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
        raise bad_input(path, too_large_to_label_whole(h, w))
    if item.window is None and loaded.valid is not None and not loaded.valid.any():  # a tile's is no fault of the file
        raise bad_input(path, NOTHING_VALID)
    return loaded
