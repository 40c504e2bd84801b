"""Ground truth read as class ids, and the values that name no class.

Label maps of class ids, colour-coded maps (one RGB colour per class), NIfTI label volumes, GeoTIFF nodata.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

from alps_client.errors import AlpsError, shortened
from alps_client.evaluate.scores import Confusion
from alps_client.gt_classes import GroundTruthClasses, hex_colour
from alps_client.io.items import RASTER_EXTENSIONS, VOLUME_EXTENSIONS, counted, extension_of
from alps_client.labels.painting import IGNORE

# A colour of less than this share of the ground-truth pixels may be noise (JPEG, resampling), not a class.
RARE_SHARE = 0.001
# Formats whose compression may be lossy: the values of a label map change at class edges.
LOSSY_EXTENSIONS = (".jpg", ".jpeg", ".jp2", ".j2k", ".webp")


def is_lossy(path: Path) -> bool:
    """Whether ``path`` stores its pixels with lossy compression: JPEG, JPEG 2000, WebP but a lossless one.

    A lossless WebP holds a ``VP8L`` chunk and no ``VP8 `` one (read from the first 4 KiB); JPEG 2000 does not
    say so simply, so it counts as lossy.
    """
    extension = extension_of(path.name)
    if extension != ".webp":
        return extension in LOSSY_EXTENSIONS
    try:
        with open(path, "rb") as file:
            head = file.read(4096)
    except OSError:
        return True  # its reading will say what is wrong
    return b"VP8 " in head or b"VP8L" not in head


class ColourIds:
    """Class ids for colour-coded ground truth (ISPRS Potsdam and Vaihingen, DeepGlobe: one RGB colour per class).

    Without declared classes, a colour gets the next id (0, 1, ...) when first seen; ground-truth files are read in
    name order, so a dataset gets the same ids on every run. At most 255 colours, which tells a photograph given as
    ground truth from a label map. Whether RGB ground truth is colour-coded is decided over the whole dataset
    (:meth:`resolve`): class ids saved as grey RGB images have equal channels everywhere, while one colour-coded
    tile may hold only white (Potsdam's impervious surfaces).

    With declared classes (``--gt-classes`` with colours), the ids are the file's, every colour is one of them (or
    the ignored one), and a colour within ``tolerance`` of one in every channel takes its class (compression noise:
    DeepGlobe's masks are to be binarised at 128); any other colour is refused, naming the file.
    """

    def __init__(self, declared: GroundTruthClasses | None = None, tolerance: int = 0,
                 ignored: Sequence[int] = ()) -> None:
        self.ids: dict[int, int] = {}  # 0xRRGGBB -> class id
        self.declared = declared if declared is not None and declared.colours else None
        self.tolerance = tolerance
        self.snapped_pixels = 0  # pixels of undeclared colours given the class of a declared one
        if self.declared is not None:
            self.ids = {colour: k for k, colour in self.declared.colours.items()}
            for colour in ignored:  # ignored, so it needs no name; an id no declared class has
                self.ids.setdefault(colour, max(self.ids.values(), default=-1) + 1)
            self._check_tolerance()

    def declares_greys_only(self) -> bool:
        """Whether the declared colours are all greys (equal channels): single-channel maps are then read by them."""
        return self.declared is not None and all(is_grey(colour) for colour in self.declared.colours.values())

    def _check_tolerance(self) -> None:
        """Refuse a tolerance under which a colour could be near two declared ones; keep their least distance."""
        palette = list(self.ids)
        pairs = [(_channel_distance(a, b), a, b) for i, a in enumerate(palette) for b in palette[i + 1:]]
        closest = min(pairs, default=None)
        self._separation = closest[0] if closest else 2 * IGNORE + 1  # two colours' least channel distance
        if closest and self.tolerance * 2 >= self._separation:
            distance, a, b = closest
            raise AlpsError(f"--gt-colour-tolerance {self.tolerance}: {hex_colour(a)} and {hex_colour(b)} are "
                            f"{distance} apart in a channel, so a colour could be within {self.tolerance} of both; "
                            f"give at most {(distance - 1) // 2}")

    def __call__(self, rgb: npt.NDArray[np.uint8], path: Path) -> npt.NDArray[np.uint8]:
        """``(H, W, 3) uint8`` colours as ``(H, W) uint8`` class ids.

        Raises:
            AlpsError: If the ground truth holds more than 255 colours, or (declared classes) a colour that is
                not within the tolerance of a declared one.
        """
        packed = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]
        colours, inverse, counts = np.unique(packed, return_inverse=True, return_counts=True)
        if self.declared is not None:
            lut = self._declared_ids(colours, counts, path)
            return lut[inverse.reshape(packed.shape)]
        for colour in colours.tolist():
            if colour not in self.ids:
                if len(self.ids) == IGNORE:
                    raise AlpsError(f"{path}: the colour-coded ground truth has more than {IGNORE} colours: not a "
                                    "label map of one colour per class (a folder of images given as ground "
                                    "truth?); masks whose colours are noisy (JPEG, DeepGlobe's) are read with "
                                    "--gt-classes and --gt-colour-tolerance")
                self.ids[colour] = len(self.ids)
        lut = np.array([self.ids[c] for c in colours.tolist()], np.uint8)
        return lut[inverse.reshape(packed.shape)]

    def _declared_ids(self, colours: npt.NDArray[np.uint32], counts: npt.NDArray[np.int64],
                      path: Path) -> npt.NDArray[np.uint8]:
        """The class id of each of a file's ``colours`` (pixel ``counts``), undeclared ones snapped or refused."""
        assert self.declared is not None
        ids = np.array([self.ids.get(c, -1) for c in colours.tolist()], np.int64)
        unknown = np.flatnonzero(ids < 0)
        if unknown.size:
            palette = np.array(list(self.ids), np.int64)
            nearest, distance = _nearest_colours(colours[unknown].astype(np.int64), palette)
            far = np.flatnonzero(distance > self.tolerance)
            if far.size:
                worst = far[np.argmax(counts[unknown][far])]  # the commonest colour the file does not declare
                colour, near, gap = int(colours[unknown][worst]), int(palette[nearest[worst]]), int(distance[worst])
                near_name = (self.declared.describe(self.ids[near]) if self.ids[near] in self.declared.names
                             else f"the ignored {hex_colour(near)}")
                needed = int(distance[far].max())  # what takes every colour of this file to its class
                fix = (f"if such colours are noise (JPEG, resampling; DeepGlobe's masks, binarised at 128), give "
                       f"--gt-colour-tolerance {needed}; else declare it" if 2 * needed < self._separation else
                       "declare it, or give it as --ignore-index if it names no class")
                others = f" ({counted(far.size - 1, 'other undeclared colour')} too)" if far.size > 1 else ""
                raise AlpsError(f"{path}: {counted(int(counts[unknown][worst]), 'pixel')} of colour "
                                f"{hex_colour(colour)}{others}, which {self.declared.source} does not declare (the "
                                f"nearest it declares is {near_name}, {gap} away in a channel): {fix}")
            ids[unknown] = [self.ids[int(c)] for c in palette[nearest].tolist()]
            self.snapped_pixels += int(counts[unknown].sum())
        return ids.astype(np.uint8)

    def resolve(self, by_id: Confusion, by_colour: Confusion, gt_root: Path) -> tuple[Confusion, dict[int, str]]:
        """The dataset's confusion, and the colour of each class (``#rrggbb``) when colour-coded.

        ``by_id`` counts the label maps of class ids, ``by_colour`` the RGB ones (its ground-truth values are this
        object's colour ids).

        RGB ground truth of greys only held class ids: its values go back to those greys (no names), unless
        colours were declared.

        Raises:
            AlpsError: If colour-coded and class-id label maps are mixed (their ids would collide).
        """
        if not self.ids:
            return by_id, {}
        if self.declared is None and all(is_grey(c) for c in self.ids):
            return by_id + by_colour.with_values(self.grey_values()), {}
        if len(by_id.values):
            raise AlpsError(f"the ground truth under {gt_root} mixes colour-coded (RGB) label maps with maps of "
                            "class ids: convert them to one kind")
        return by_colour, {i: hex_colour(colour) for colour, i in self.ids.items()}


    def grey_values(self) -> dict[int, int]:
        """Colour id -> the class id a grey RGB pixel of that colour holds (its channels' value)."""
        return {i: colour & 0xFF for colour, i in self.ids.items()}


def is_grey(colour: int) -> bool:
    """Whether a ``0xRRGGBB`` colour has three equal channels (a class id saved as a grey RGB pixel)."""
    return colour >> 16 == (colour >> 8) & 0xFF == colour & 0xFF


def _channel_distance(a: int, b: int) -> int:
    """The largest difference of two ``0xRRGGBB`` colours in one channel."""
    return max(abs(((a >> s) & 0xFF) - ((b >> s) & 0xFF)) for s in (16, 8, 0))


def _nearest_colours(colours: npt.NDArray[np.int64],
                     palette: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """For ``(U,)`` packed colours, the index of the nearest of ``(K,)`` palette colours and its channel distance.

    Compared a chunk of colours at a time: a noisy mask may hold a million colours.
    """
    def channels_of(packed: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:  # (N,) -> (N, 3)
        return (packed[:, None] >> np.array([16, 8, 0])) & 0xFF

    pal = channels_of(palette).astype(np.int16)
    nearest, distance = np.empty(len(colours), np.int64), np.empty(len(colours), np.int64)
    step = max(1, (1 << 20) // len(palette))
    for i in range(0, len(colours), step):
        gap = np.abs(channels_of(colours[i:i + step]).astype(np.int16)[:, None, :] - pal[None]).max(-1)  # (u, K)
        nearest[i:i + step] = gap.argmin(1)
        distance[i:i + step] = gap.min(1)
    return nearest, distance


@dataclass
class GroundTruth:
    """One ground-truth file read: its class ids, whether they are colour ids, and which pixels hold data."""

    ids: npt.NDArray[np.integer]  # (H, W) or (X, Y, Z)
    coloured: bool = False
    nodata: float | None = None  # the value its GeoTIFF declares nodata, if any
    valid: npt.NDArray[np.bool_] | None = None  # False where the GeoTIFF says nodata (or NaN); None: every pixel
    nan_pixels: int = 0  # NaN pixels of a float map that declares no nodata: no value, so no label
    alpha: bool = False  # grey and alpha (LA) or RGBA: the grey or the colour is read, alpha 0 left out
    transparent_pixels: int = 0  # pixels of alpha 0: nothing there, so no label
    pages: int = 1  # a multi-page TIFF's, an animated GIF's: the first is read
    affine: npt.NDArray[np.float64] | None = None  # a NIfTI's (4, 4) voxel-to-world affine, mm; None for others


def read_ground_truth(path: Path, colours: ColourIds) -> GroundTruth:
    """A ground-truth label map ``(H, W)`` of class ids or a NIfTI label volume ``(X, Y, Z)``.

    A map of class ids (single-channel or palette; any integers) is read as it is; an RGB one goes through
    ``colours`` (its ids are then colour ids, resolved over the dataset by :meth:`ColourIds.resolve`). Pixels of
    the nodata value a single-band GeoTIFF declares (ESA WorldCover's 0) hold no class: they are left out, as are
    NaN pixels of a float map that declares none (no value, as for inputs: docs/inputs.md), and pixels of alpha 0
    of a map with an alpha channel (grey and alpha, RGBA), whose grey or colour is read as for a map without. An
    8-bit single-channel map is read as colours where ``colours`` declares greys alone (``#000000`` and ``#ffffff``
    of a binary mask): its greys take the class of the declared grey within the tolerance, as a colour JPEG's do.
    """
    if extension_of(path.name) not in VOLUME_EXTENSIONS:
        arr, nodata, pages = read_array(path, palette_colours=colours.declared is not None)
        alpha = None
        if arr.ndim == 3 and arr.shape[2] in (2, 4) and arr.dtype == np.uint8:  # grey and alpha, RGBA
            arr, alpha = (arr[..., 0] if arr.shape[2] == 2 else arr[..., :3]), arr[..., -1]
        if arr.ndim == 2 and arr.dtype == np.uint8 and colours.declares_greys_only():
            # A grey mask whose classes are declared as greys (a JPEG's: Kvasir-SEG's, its colours' tolerance the
            # way to read it; PNGs beside them read the same way)
            arr = np.repeat(arr[..., None], 3, axis=2)
        if arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype == np.uint8:
            read = GroundTruth(_colour_ids(arr, alpha, colours, path), coloured=True)
        elif arr.ndim != 2:
            raise AlpsError(f"{path}: a label map must be an image of class ids (single-channel or palette) or of "
                            f"one RGB colour per class, got shape {arr.shape}")
        else:
            read = _class_ids(arr, nodata, path)
        read.pages = pages
        if alpha is None:
            return read
        transparent = alpha == 0  # nothing there, so no label
        valid = ~transparent if read.valid is None else read.valid & ~transparent
        return replace(read, valid=valid, alpha=True, transparent_pixels=int(transparent.sum()))
    from alps_client._imports import lazy_import
    from alps_client.io.volumes import check_nifti_voxels

    try:
        image = lazy_import("nibabel").load(str(path))
        check_nifti_voxels(str(path), image)  # a lying header would allocate what it declares
        data = np.asarray(image.dataobj[..., 0] if image.ndim == 4 else image.dataobj)  # a series: its first volume
        affine = np.asarray(image.affine, np.float64)
    except (AlpsError, MemoryError):  # out of memory: the machine's failure, never the file's
        raise
    except Exception as err:  # noqa: BLE001 (nibabel raises many types for corrupt files)
        raise AlpsError(f"{path}: not a readable NIfTI volume ({type(err).__name__}: {shortened(str(err))})") from None
    if data.ndim not in (2, 3) or data.size == 0:
        raise AlpsError(f"{path}: a NIfTI label image must be 2D or 3D class ids, got shape {data.shape}")
    return replace(_class_ids(data, None, path), affine=affine)


def _colour_ids(rgb: npt.NDArray[np.uint8], alpha: npt.NDArray[np.uint8] | None, colours: ColourIds,
                path: Path) -> npt.NDArray[np.uint8]:
    """The colour ids of ``(H, W, 3)`` colours; those of pixels of alpha 0 are no class, so not read as one."""
    transparent = alpha == 0 if alpha is not None else None
    if transparent is None or not transparent.any():
        return colours(rgb, path)
    if transparent.all():
        return np.zeros(rgb.shape[:2], np.uint8)  # every pixel left out
    opaque = rgb.copy()
    opaque[transparent] = rgb[~transparent][0]  # a colour the file has where it has one
    return colours(opaque, path)


def _class_ids(arr: npt.NDArray[Any], nodata: float | None, path: Path) -> GroundTruth:
    """Ground truth of class ids from a map's values and the nodata value it declares (None: none)."""
    nan = np.isnan(arr) if nodata is None and np.issubdtype(arr.dtype, np.floating) else None
    if nan is not None and nan.any():
        return GroundTruth(_whole_numbers(np.where(nan, 0, arr), path), valid=~nan, nan_pixels=int(nan.sum()))
    if nodata is None:
        return GroundTruth(_whole_numbers(arr, path))
    valid = ~np.isnan(arr) if np.isnan(nodata) else arr != nodata
    return GroundTruth(_whole_numbers(np.where(valid, arr, 0), path), nodata=nodata, valid=valid)


def _whole_numbers(arr: npt.NDArray[Any], path: Path) -> npt.NDArray[np.integer]:
    """Ground-truth class ids as integers: an integer array as it is, floats holding whole numbers as ``int64``.

    Raises:
        AlpsError: For fractions or NaN (a probability map or an image, not class ids).
    """
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer):
        return arr
    if not np.issubdtype(arr.dtype, np.floating):
        raise AlpsError(f"{path}: class ids must be integers, got {arr.dtype} values")
    finite = np.isfinite(arr)
    fractions = arr[finite] != np.round(arr[finite])
    if not finite.all() or fractions.any():
        example = arr[~finite][0] if not finite.all() else arr[finite][fractions][0]
        raise AlpsError(f"{path}: class ids must be whole numbers, got {example} ({arr.dtype}): a probability map "
                        "or an image rather than a label map?")
    return arr.astype(np.int64)


def read_array(path: Path, palette_colours: bool = False) -> tuple[npt.NDArray[Any], float | None, int]:
    """The pixels of a label map, ``(H, W)`` or ``(H, W, C)`` (PNG, or TIFF through rasterio), its nodata, its pages.

    Pixels are as displayed: turned by a file's EXIF orientation (a TIFF's Orientation tag), as ``alps run`` turns
    the image it labels, so the label map and its ground truth have one frame; a georeferenced TIFF as stored.

    The nodata value is the one a single-band raster declares; None if it declares none. A palette PNG gives its
    indices, or with ``palette_colours`` (colours declared for colour-coded ground truth) its colours. Of a file of
    several pages (a multi-page TIFF, an animated GIF or WebP) the first is read, as ``alps run`` reads images.
    """
    from alps_client.io.readers import (
        MAX_PIL_PIXELS,
        check_gdal_can_open,
        displayed_orientation,
        image_orientation,
        pil_pixel_limit,
        raster_io,
        upright,
        upright_pixels,
    )

    if path.is_file() and path.stat().st_size == 0:
        raise AlpsError(f"{path}: a zero-byte file, not a label map (cut short by a copy or a download?): copy it "
                        "again")
    try:
        if extension_of(path.name) in RASTER_EXTENSIONS:
            check_gdal_can_open(path)
            with raster_io().open(path) as src:  # a plain TIFF turned by its Orientation tag, as alps run labels it
                pages, orientation = max(1, len(src.subdatasets)), displayed_orientation(path, src)
                if src.count > 1:
                    return np.moveaxis(upright(src.read(), orientation), 0, -1), None, pages
                return upright(src.read(1), orientation), src.nodata, pages
        # As alps run reads its images: PIL's own limit (179 Mpx) refused a scene's ground truth that `alps run
        # --tile` labels, and warned in the table's place above 89 Mpx.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with pil_pixel_limit(MAX_PIL_PIXELS):
                im = Image.open(path)
        with im:  # turned by its EXIF orientation, as alps run turns the image it labels (and as a TIFF above)
            pages, orientation = int(getattr(im, "n_frames", 1)), image_orientation(im)
            arr = np.asarray(im.convert("RGB") if palette_colours and im.mode == "P" else im)
        return upright_pixels(arr, orientation), None, pages
    except AlpsError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise AlpsError(f"{path}: a label map of more than {MAX_PIL_PIXELS / 1e6:.0f} Mpx, which PIL decodes whole: "
                        "save it as a GeoTIFF (gdal_translate), read without that limit") from None
    except Exception as err:  # noqa: BLE001 (PIL and GDAL raise many types for corrupt files)
        text = str(err)
        if isinstance(err, UnidentifiedImageError) or "not recognized as being in a supported" in text:
            raise AlpsError(f"{path}: not an image ({_what_it_holds(path)}): give the folder of the label maps, "
                            "or move this file out of it") from None
        if "truncated" in text.lower():
            raise AlpsError(f"{path}: truncated image data (cut short by a copy or a download?): copy it "
                            "again") from None
        raise AlpsError(f"{path}: not a readable label map ({type(err).__name__}: {shortened(text)})") from None


def _what_it_holds(path: Path) -> str:
    """What a file that is no image seems to hold, from its first bytes: text, or bytes of another format."""
    try:
        with open(path, "rb") as file:
            head = file.read(512)
    except OSError as err:
        return f"unreadable: {err.strerror or err}"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "its bytes are of no image format PIL or GDAL reads"
    return "it holds text" if b"\0" not in head else "its bytes are of no image format PIL or GDAL reads"


def read_label(path: Path) -> npt.NDArray[np.uint8]:
    """A pseudo-label map ``(H, W) uint8`` of class ids (255: no label)."""
    arr, _, _ = read_array(path)
    if arr.ndim != 2 or arr.dtype != np.uint8:
        raise AlpsError(f"{path}: not a label map of `alps run` ((H, W) uint8 class ids), got shape {arr.shape}, "
                        f"{arr.dtype}")
    return arr


_COLOUR = re.compile(r"#[0-9a-fA-F]{6}")


IgnoreIndex = int | str | Sequence[int | str] | None  # --ignore-index: nothing, one value, or several


def ignore_list(ignore_index: IgnoreIndex) -> list[int | str]:
    """The values ``--ignore-index`` was given (once or several times), in order; empty when none was."""
    if ignore_index is None:
        return []
    return [ignore_index] if isinstance(ignore_index, int | str) else list(ignore_index)


def named_colour(value: int | str) -> int | None:
    """The colour (``0xRRGGBB``) an ``--ignore-index`` of ``#rrggbb`` names; None for an id or a word."""
    text = value.strip() if isinstance(value, str) else ""
    return int(text[1:], 16) if _COLOUR.fullmatch(text) else None


def named_colours(ignore_index: IgnoreIndex) -> list[int]:
    """The colours (``0xRRGGBB``) among the values of ``--ignore-index``."""
    return [c for c in (named_colour(v) for v in ignore_list(ignore_index)) if c is not None]


def _is_none(value: int | str) -> bool:
    return isinstance(value, str) and value.strip().lower() == "none"


def ignored_values(ignore_index: IgnoreIndex, colours: ColourIds | None = None,
                   class_255: bool = False) -> list[int]:
    """The ground-truth ids that name no class: 255, and each ``ignore_index`` (any integer); none for ``"none"``.

    For colour-coded ground truth (``colours``) nothing is ignored but the colours ``ignore_index`` names
    (``#rrggbb``); without ``colours`` a colour is only checked (the caller refuses one for ground truth of class
    ids). ``class_255``: a classes file declares 255 as a class, so it is ignored only when ``ignore_index`` says
    255.

    Raises:
        AlpsError: For a value that is no integer, another word, ``"none"`` beside values to ignore, or an id for
            colour-coded ground truth.
    """
    given = ignore_list(ignore_index)
    for value in given:
        if not (_is_none(value) or named_colour(value) is not None or _integer(value) is not None):
            raise AlpsError(f"--ignore-index must be a class id (an integer), a colour as #rrggbb or 'none', got "
                            f"{value!r}")
    if any(_is_none(value) for value in given):
        if len(given) > 1:
            raise AlpsError(f"--ignore-index none (every value is a class, 255 too) cannot be given with values to "
                            f"ignore ({', '.join(str(v) for v in given if not _is_none(v))}): give one or the other")
        return []
    chosen = named_colours(given)
    if colours is not None and colours.ids:
        ids = [v for v in given if named_colour(v) is None]
        if ids:
            raise AlpsError(f"the ground truth is colour-coded: give --ignore-index a colour as #rrggbb, not "
                            f"{ids[0]!r}")
        return sorted({colours.ids[c] for c in chosen if c in colours.ids})
    if chosen:
        return []
    default = [] if class_255 else [IGNORE]
    return sorted({*(_integer(v) for v in given), *default})  # type: ignore[misc]


def _integer(value: int | str) -> int | None:
    """``value`` as an integer, or None if it names none."""
    try:
        return int(value)
    except ValueError:
        return None


def absent_ignored(ignore_index: IgnoreIndex, values: list[int], colours: ColourIds | None = None) -> list[str]:
    """The values of ``ignore_index`` that no ground-truth pixel has (``values``: those some have), as given.

    ``colours``: colour-coded ground truth, whose values are colour ids.
    """
    present = set(values)
    absent = []
    for value in ignore_list(ignore_index):
        colour = named_colour(value)
        if colour is not None and colours is not None:
            missing = colours.ids.get(colour) not in present
        else:
            missing = colour is None and not _is_none(value) and _integer(value) not in present
        absent += [str(value).strip()] if missing else []
    return absent


def check_declared(part: Confusion, coloured: bool, colours: ColourIds, allowed: set[int],
                    classes: GroundTruthClasses, path: Path) -> None:
    """Refuse a ground-truth file of class ids holding an id that ``classes`` does not declare (nor ignores).

    An RGB file of greys holds ids saved as grey pixels; one of other colours is colour-coded, which declared
    ids cannot name.
    """
    values = part.values.tolist()
    if coloured:
        colour_of = {i: colour for colour, i in colours.ids.items()}
        found = [colour_of[v] for v in values]
        if not all(is_grey(c) for c in found):
            raise AlpsError(f"{path} is colour-coded (RGB), but {classes.source} declares class ids: declare the "
                            "classes by colour, {name: ..., colour: '#rrggbb'}")
        values = [c & 0xFF for c in found]
    pixels = dict(zip(values, part.counts.sum(0).tolist()))
    undeclared = [v for v in values if v not in allowed]
    if undeclared:
        v = max(undeclared, key=pixels.__getitem__)
        others = f" ({counted(len(undeclared) - 1, 'other undeclared id')} too)" if len(undeclared) > 1 else ""
        raise AlpsError(f"{path}: {counted(pixels[v], 'pixel')} of class id {v}{others}, which {classes.source} "
                        f"does not declare: declare it, or give --ignore-index {v} if it names no class")
