"""``alps evaluate``: pseudo-labels against ground truth, every ground-truth class and every miss counted.

Pseudo-label ids are cluster (or class) ids unrelated to the ground truth's, so they are first matched to
ground-truth classes on the dataset-wide confusion of labelled pixels:

- ``hungarian`` (default): one-to-one, maximising matched pixels (scipy's ``linear_sum_assignment``); with more
  clusters than classes the unmatched clusters' pixels count as errors.
- ``majority``: each cluster goes to the class it overlaps most (many-to-one), the usual upper bound when N > K.

Figures (ground-truth 255 pixels are ignored everywhere, and those of ``ignore_index`` when given: a dataset's
"unlabelled" or no-data value, such as LoveDA's 0; with ``ignore_index="none"`` no value is, 255 being a class):

- ``miou``: mean IoU over **every** ground-truth class, pixels the pipeline left unlabelled (255) counted as misses;
  a class that never received a pseudo-label scores 0. This is the headline figure.
- ``miou_labelled_pixels``: the same mean over every ground-truth class, computed only on pixels that received a
  pseudo-label (how good the labels are where there are labels; a class with no labelled pixel still scores 0).
- ``coverage``: share of ground-truth pixels that received a pseudo-label.
- ``pixel_accuracy``: correctly labelled pixels / ground-truth pixels (unlabelled = wrong), and over labelled
  pixels only.

``per_image`` gives each image's coverage and pixel accuracy under the dataset's matching, worst first: where
the labels fail.

Ground-truth images with no pseudo-label at all (e.g. rejected inputs) count as entirely unlabelled, unless
``exclude_unlabelled_images`` is set; they are listed either way.

Colour-coded ground truth (an RGB colour per class: ISPRS Potsdam and Vaihingen, DeepGlobe) counts every colour
as a class (:class:`ColourIds`); ``ignore_index`` may name one as ``#rrggbb``.

A ground-truth classes file (``gt_classes``, :mod:`alps_client.gt_classes`) names the classes and declares them
all: a value it does not declare is refused (naming the file), colour-coded classes take its ids, and with
``colour_tolerance`` a noisy colour takes the class of the declared colour it is near.

Pixels a single-band GeoTIFF declares nodata (ESA WorldCover's 0) are left out of every figure (no class, no
miss), whatever ``ignore_index`` says; ``ground_truth_nodata`` lists the values.

Ground truth holding only 0 and 255 is refused unless ``ignore_index`` is given: a binary mask (buildings,
polyps, lesions, vessels: foreground 255) would otherwise be scored on its background alone, its foreground
ignored as "no label", and a single class reported without a word. So is ground truth holding 255 among ids
stored in more than 8 bits (16-bit PNG or TIFF, NIfTI of int16 or float): its ids are not bound to 0..254, and
255 may be a class (FreeSurfer's CC_Anterior). Class ids are any integers (FreeSurfer's aparc+aseg reaches 2035);
floats must hold whole numbers.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from PIL import Image

from alps_client.errors import AlpsError
from alps_client.gt_classes import GroundTruthClasses, hex_colour, parse_ground_truth_classes
from alps_client.io import atomic
from alps_client.io.discovery import PART_STEM
from alps_client.io.items import RASTER_EXTENSIONS, VOLUME_EXTENSIONS, counted, extension_of
from alps_client.labels.painting import IGNORE

Matching = Literal["hungarian", "majority"]
N_IDS = 256  # pseudo-label ids 0..255; 255 = no label
GT_EXTENSIONS = (".png", *RASTER_EXTENSIONS, *VOLUME_EXTENSIONS)
WORST_SHOWN = 5  # images of lowest pixel accuracy named under the table
# A colour of less than this share of the ground-truth pixels may be noise (JPEG, resampling), not a class.
RARE_SHARE = 0.001
# Stems of a scene's tiles and of a volume's slices (alps_client.io.discovery).


@dataclass
class EvalReport:
    """Evaluation figures (JSON-ready via :func:`write_report`); see the module docs for definitions."""

    miou: float
    miou_labelled_pixels: float
    coverage: float
    pixel_accuracy: float
    pixel_accuracy_labelled_pixels: float
    n_images: int
    n_classes: int
    matching: str
    class_iou: dict[int, float] = field(default_factory=dict)
    class_iou_labelled_pixels: dict[int, float] = field(default_factory=dict)
    class_to_clusters: dict[int, list[int]] = field(default_factory=dict)
    classes_never_labelled: list[int] = field(default_factory=list)
    unmatched_clusters: list[int] = field(default_factory=list)
    missing_ground_truth: list[str] = field(default_factory=list)
    missing_pseudo_labels: list[str] = field(default_factory=list)
    missing_pseudo_labels_counted: bool = True
    pseudo_label_names: dict[int, str] = field(default_factory=dict)
    ground_truth_ignored: list[int] = field(default_factory=lambda: [IGNORE])
    ground_truth_colours: dict[int, str] = field(default_factory=dict)  # colour-coded ground truth: id -> #rrggbb
    ground_truth_nodata: list[float | str] = field(default_factory=list)  # GeoTIFFs' nodata ("NaN"): left out
    ground_truth_names: dict[int, str] = field(default_factory=dict)  # --gt-classes: id -> name
    ground_truth_classes_file: str | None = None
    classes_absent_from_ground_truth: list[int] = field(default_factory=list)  # declared, no pixel: not scored
    ground_truth_colour_tolerance: int = 0
    ground_truth_rare_colours: int = 0  # undeclared colour-coded ground truth: colours of < 0.1 % of the pixels
    per_image: list[dict[str, Any]] = field(default_factory=list)  # image, pixels, coverage, pixel_accuracy; worst first
    ground_truth_pixels_snapped: int = 0  # undeclared colours within the tolerance, given the nearest's class


@dataclass(frozen=True)
class Confusion:
    """Pixel counts over a dataset: ``counts[pseudo-label, j]`` for the ground-truth value ``values[j]``.

    Rows are the pseudo-label ids 0..255 (row 255: unlabelled pixels); columns are the ground-truth values seen,
    in increasing order: any integers (16-bit label maps such as FreeSurfer's reach 2035; -1 marks "no label" in
    some). Ground-truth values that name no class are left out afterwards (:meth:`without`): the whole dataset's
    values decide what 255 is.

    Attributes:
        counts: ``(256, V) int64`` pixel counts.
        values: ``(V,) int64`` ground-truth values, increasing.
    """

    counts: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros((N_IDS, 0), np.int64))
    values: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))

    @classmethod
    def of(cls, pred: npt.NDArray[np.uint8], gt: npt.NDArray[np.integer]) -> Confusion:
        """The confusion of one pseudo-label map (``uint8`` ids) with its ground truth (integers), same shape.

        Counted 4 Mpx at a time: a 20,000-px scene's ground truth is not copied whole to int64 (3.2 GB a copy).
        """
        pred, gt = pred.reshape(-1), gt.reshape(-1)
        step = 1 << 22
        return sum((cls._of_part(pred[i:i + step], gt[i:i + step]) for i in range(0, gt.size, step)), cls())

    @classmethod
    def _of_part(cls, pred: npt.NDArray[np.uint8], gt: npt.NDArray[np.integer]) -> Confusion:
        flat = gt.astype(np.int64)
        if flat.size == 0:
            return cls()
        low, high = int(flat.min()), int(flat.max())
        if high - low < 4096:  # the usual few class ids: counting beats sorting
            values, column = np.arange(low, high + 1, dtype=np.int64), flat - low
        else:
            values, column = np.unique(flat, return_inverse=True)
        counts = np.bincount(pred.astype(np.int64) * len(values) + column,
                             minlength=N_IDS * len(values)).reshape(N_IDS, len(values))
        seen = counts.sum(0) > 0
        return cls(counts[:, seen], values[seen])

    def __add__(self, other: Confusion) -> Confusion:
        values = np.union1d(self.values, other.values)
        counts = np.zeros((N_IDS, len(values)), np.int64)
        counts[:, np.searchsorted(values, self.values)] += self.counts
        counts[:, np.searchsorted(values, other.values)] += other.counts
        return Confusion(counts, values)

    def with_values(self, new: dict[int, int]) -> Confusion:
        """The same counts with ground-truth values renamed (``{old: new}``; values merge if they meet)."""
        renamed = Confusion()
        for j, value in enumerate(self.values.tolist()):
            renamed += Confusion(self.counts[:, j:j + 1], np.array([new.get(value, value)], np.int64))
        return renamed

    def without(self, ignored: list[int]) -> Confusion:
        """The columns of ``ignored`` ground-truth values dropped: they are no class and no miss."""
        kept = ~np.isin(self.values, ignored)
        return Confusion(self.counts[:, kept], self.values[kept])


def match_clusters(conf: Confusion, matching: Matching = "hungarian") -> dict[int, int]:
    """Cluster -> ground-truth class (value) from the confusion of labelled pixels."""
    labelled = conf.counts[:IGNORE]
    clusters = np.flatnonzero(labelled.sum(1))
    columns = np.flatnonzero(conf.counts.sum(0))
    if len(clusters) == 0 or len(columns) == 0:
        return {}
    sub = labelled[np.ix_(clusters, columns)]
    if matching == "majority":
        return {int(c): int(conf.values[columns[np.argmax(row)]]) for c, row in zip(clusters, sub)}
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(sub, maximize=True)
    return {int(clusters[r]): int(conf.values[columns[c]]) for r, c in zip(rows, cols) if sub[r, c] > 0}


def _iou(tp: int, fp: int, fn: int) -> float:
    return tp / (tp + fp + fn) if tp + fp + fn else 0.0


def scores(conf: Confusion, mapping: dict[int, int], matching: str = "") -> EvalReport:
    """Every figure of the report from a dataset's confusion and a cluster -> class mapping.

    Every ground-truth value with pixels is a class (ignored values are dropped first: :meth:`Confusion.without`).
    """
    counts = conf.counts
    class_iou, class_iou_labelled, members_of, never = {}, {}, {}, []
    tp_total = 0
    for j in np.flatnonzero(counts.sum(0)).tolist():
        k = int(conf.values[j])
        members = sorted(c for c, m in mapping.items() if m == k)
        tp = int(counts[members, j].sum()) if members else 0
        fp = int(counts[members].sum()) - tp if members else 0
        labelled_gt = int(counts[:IGNORE, j].sum())
        class_iou[k] = _iou(tp, fp, int(counts[:, j].sum()) - tp)
        class_iou_labelled[k] = _iou(tp, fp, labelled_gt - tp)
        members_of[k] = members
        never += [k] if labelled_gt == 0 else []
        tp_total += tp
    gt_pixels = int(counts.sum())
    labelled_pixels = int(counts[:IGNORE].sum())
    used = set(np.flatnonzero(counts[:IGNORE].sum(1)).tolist())
    return EvalReport(
        miou=float(np.mean(list(class_iou.values()))) if class_iou else 0.0,
        miou_labelled_pixels=float(np.mean(list(class_iou_labelled.values()))) if class_iou else 0.0,
        coverage=labelled_pixels / gt_pixels if gt_pixels else 0.0,
        pixel_accuracy=tp_total / gt_pixels if gt_pixels else 0.0,
        pixel_accuracy_labelled_pixels=tp_total / labelled_pixels if labelled_pixels else 0.0,
        n_images=0,
        n_classes=len(class_iou),
        matching=matching,
        class_iou=class_iou,
        class_iou_labelled_pixels=class_iou_labelled,
        class_to_clusters=members_of,
        classes_never_labelled=never,
        unmatched_clusters=sorted(int(c) for c in used - set(mapping)),
    )


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
                 ignored: int | None = None) -> None:
        self.ids: dict[int, int] = {}  # 0xRRGGBB -> class id
        self.declared = declared if declared is not None and declared.colours else None
        self.tolerance = tolerance
        self.snapped_pixels = 0  # pixels of undeclared colours given the class of a declared one
        if self.declared is not None:
            self.ids = {colour: k for k, colour in self.declared.colours.items()}
            if ignored is not None and ignored not in self.ids:  # ignored, so it needs no name
                self.ids[ignored] = len(self.ids)
            self._check_tolerance()

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
class _GroundTruth:
    """One ground-truth file read: its class ids, whether they are colour ids, and which pixels hold data."""

    ids: npt.NDArray[np.integer]  # (H, W) or (X, Y, Z)
    coloured: bool = False
    nodata: float | None = None  # the value its GeoTIFF declares nodata, if any
    valid: npt.NDArray[np.bool_] | None = None  # False where the GeoTIFF says nodata; None: every pixel


def _read_ground_truth(path: Path, colours: ColourIds) -> _GroundTruth:
    """A ground-truth label map ``(H, W)`` of class ids or a NIfTI label volume ``(X, Y, Z)``.

    A map of class ids (single-channel or palette; any integers) is read as it is; an RGB one goes through
    ``colours`` (its ids are then colour ids, resolved over the dataset by :meth:`ColourIds.resolve`). Pixels of
    the nodata value a single-band GeoTIFF declares (ESA WorldCover's 0) hold no class: they are left out.
    """
    if extension_of(path.name) not in VOLUME_EXTENSIONS:
        arr, nodata = _read_array(path, palette_colours=colours.declared is not None)
        if arr.ndim == 3 and arr.shape[2] in (3, 4) and arr.dtype == np.uint8:
            return _GroundTruth(colours(arr[..., :3], path), coloured=True)
        if arr.ndim != 2:
            raise AlpsError(f"{path}: a label map must be an image of class ids (single-channel or palette) or of "
                            f"one RGB colour per class, got shape {arr.shape}")
        if nodata is None:
            return _GroundTruth(_whole_numbers(arr, path))
        valid = ~np.isnan(arr) if np.isnan(nodata) else arr != nodata
        return _GroundTruth(_whole_numbers(np.where(valid, arr, 0), path), nodata=nodata, valid=valid)
    from alps_client._imports import lazy_import

    try:
        data = np.asarray(lazy_import("nibabel").load(str(path)).dataobj)
    except Exception as err:  # noqa: BLE001 (nibabel raises many types for corrupt files)
        raise AlpsError(f"{path}: not a readable NIfTI volume ({type(err).__name__}: {str(err)[:100]})") from None
    data = data[..., 0] if data.ndim == 4 else data
    if data.ndim not in (2, 3) or data.size == 0:
        raise AlpsError(f"{path}: a NIfTI label image must be 2D or 3D class ids, got shape {data.shape}")
    return _GroundTruth(_whole_numbers(data, path))


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


def _read_array(path: Path, palette_colours: bool = False) -> tuple[npt.NDArray[Any], float | None]:
    """The pixels of a label map, ``(H, W)`` or ``(H, W, C)`` (PNG, or TIFF through rasterio), and its nodata.

    The nodata value is the one a single-band raster declares; None if it declares none. A palette PNG gives its
    indices, or with ``palette_colours`` (colours declared for colour-coded ground truth) its colours.
    """
    from alps_client.io.readers import raster_io

    try:
        if extension_of(path.name) in RASTER_EXTENSIONS:
            with raster_io().open(path) as src:
                if src.count > 1:
                    return np.moveaxis(src.read(), 0, -1), None
                return src.read(1), src.nodata
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB") if palette_colours and im.mode == "P" else im), None
    except AlpsError:
        raise
    except Exception as err:  # noqa: BLE001 (PIL and GDAL raise many types for corrupt files)
        raise AlpsError(f"{path}: not a readable label map ({type(err).__name__}: {str(err)[:100]})") from None


def _read_label(path: Path) -> npt.NDArray[np.uint8]:
    """A pseudo-label map ``(H, W) uint8`` of class ids (255: no label)."""
    arr, _ = _read_array(path)
    if arr.ndim != 2 or arr.dtype != np.uint8:
        raise AlpsError(f"{path}: not a label map of `alps run` ((H, W) uint8 class ids), got shape {arr.shape}, "
                        f"{arr.dtype}")
    return arr


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
    first (``_label`` of ISPRS Potsdam's).

    Args:
        gt_root: the ground-truth folder (PNG or TIFF label maps, NIfTI label volumes; at any depth).
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
        relative = path.relative_to(gt_root)
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
        best_paths = [path for score, path in claims if score == top]
        if len(best_paths) > 1:
            clashes = sum(len(c) > 1 for c in found.values())
            raise AlpsError(f"{clashes} label map name(s) have several ground-truth files under {gt_root}, e.g. "
                            f"{stem}: {best_paths[0]} and {best_paths[1]}; give a ground-truth folder whose tree "
                            "mirrors the dataset's (or holds each name once)")
        paired[stem] = best_paths[0]
    for stem, claims in found.items():  # the truth of an image whose path ends alike, one the dataset lacks
        for score, path in claims:
            if paired.get(stem) != path:
                _, mirrored = split_and_stem(path.relative_to(gt_root))
                free = mirrored not in stems and mirrored not in paired
                paired[mirrored if free else path.relative_to(gt_root).as_posix()] = path
    return paired


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


def _parts_by_whole(stems: list[str]) -> dict[str, list[str]]:
    """Stems of tiles (``<scene>__x<x0>_y<y0>``) and volume slices (``<volume>__z<index>``) by their whole's stem."""
    wholes: dict[str, list[str]] = {}
    for stem in stems:
        match = PART_STEM.match(stem)
        if match:
            wholes.setdefault(match["whole"], []).append(stem)
    return wholes


def _recorded_sources(out: Path) -> dict[str, str]:
    """Each label map's (or tiled scene's, volume's) input file relative to the dataset folder.

    As ``alps run`` records them in ``OUT/manifest.json``; empty for a dataset from before it did, or written by
    another tool.
    """
    try:
        sources = json.loads((out / "manifest.json").read_text()).get("sources", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return {str(k): str(v) for k, v in sources.items()} if isinstance(sources, dict) else {}


def _input_settings(out: Path) -> dict[str, Any]:
    """The dataset's input configuration (``--tile``, ``--overlap``, ``--slice-axis``) from its manifest."""
    try:
        return dict(json.loads((out / "manifest.json").read_text()).get("config", {}).get("inputs", {}))
    except (OSError, ValueError) as err:
        raise AlpsError(f"{out / 'manifest.json'} cannot be read ({err}): it says how the label maps of tiled "
                        "scenes and volumes were cut") from None


def _assembled(out: Path, inputs: dict[str, Any], parts: list[Path], gt: npt.NDArray[np.integer],
               gt_path: Path) -> npt.NDArray[np.uint8]:
    """The whole label map (a scene as ``--stitch`` assembles it, or a volume) from its parts' label maps.

    ``inputs`` is the dataset's input configuration (:func:`_input_settings`).

    Raises:
        AlpsError: If the parts do not make a whole of the ground truth's size.
    """
    from alps_client.io.tiling import stitch_scene

    matches = [PART_STEM.match(path.stem) for path in parts]
    if gt.ndim == 3 or all(match and match["z"] for match in matches):
        # a volume: its slices along --slice-axis, 255 where a slice was not labelled (empty); a 2-D NIfTI image
        # is a volume of one slice
        from alps_client.io.readers import as_volume

        axis = int(inputs.get("slice_axis", 2))
        volume = np.full(gt.shape, IGNORE, np.uint8)
        slices = np.moveaxis(as_volume(volume, axis), axis, 0)  # a view: writing a slice writes the volume
        for path, match in zip(parts, matches, strict=True):
            label = _read_label(path)
            index = int(match["z"]) if match and match["z"] else -1  # -1: a tile's label map, not a slice
            if not 0 <= index < len(slices) or label.shape != slices.shape[1:]:
                raise AlpsError(f"{gt_path}: volume {gt.shape} has no slice {index} of {label.shape} along axis "
                                f"{axis} for the pseudo-label {path}")
            slices[index] = label
        return volume
    tiles = []
    for path, match in zip(parts, matches, strict=True):
        label = _read_label(path)
        if not match or match["x"] is None:
            raise AlpsError(f"{path}: a slice label map, but the ground truth {gt_path} is not a volume")
        x0, y0 = int(match["x"]), int(match["y"])
        tiles.append(((x0, y0, x0 + label.shape[1], y0 + label.shape[0]), label))
    extent = (max(w[3] for w, _ in tiles), max(w[2] for w, _ in tiles))
    tile, overlap = inputs.get("tile"), inputs.get("overlap")
    if not tile or overlap is None or extent != gt.shape:
        raise AlpsError(f"{gt_path}: size {gt.shape} differs from the scene its {len(tiles)} tile label map(s) "
                        f"in {out / 'ann_dir'} cover {extent}")
    try:
        return stitch_scene(extent, int(tile), int(overlap), tiles)
    except KeyError as err:  # a tile the manifest's --tile / --overlap would not have made
        raise AlpsError(f"the tile label maps of {gt_path.name} in {out / 'ann_dir'} do not follow the dataset's "
                        f"--tile {tile} --overlap {overlap} (tile at {err})") from None


_COLOUR = re.compile(r"#[0-9a-fA-F]{6}")


def _named_colour(ignore_index: int | str | None) -> int | None:
    """The colour (``0xRRGGBB``) an ``--ignore-index`` of ``#rrggbb`` names; None for an id, a word or nothing."""
    text = ignore_index.strip() if isinstance(ignore_index, str) else ""
    return int(text[1:], 16) if _COLOUR.fullmatch(text) else None


def ignored_values(ignore_index: int | str | None, colours: ColourIds | None = None,
                   class_255: bool = False) -> list[int]:
    """The ground-truth ids that name no class: 255, and ``ignore_index`` (any integer); none for ``"none"``.

    For colour-coded ground truth (``colours``) nothing is ignored but the colour ``ignore_index`` names
    (``#rrggbb``); without ``colours`` a colour is only checked. ``class_255``: a classes file declares 255 as a
    class, so it is ignored only when ``ignore_index`` says 255.

    Raises:
        AlpsError: For a value that is no integer, another word, or a colour when the ground truth is not
            colour-coded.
    """
    text = ignore_index.strip() if isinstance(ignore_index, str) else None
    colour = _named_colour(ignore_index)
    if colour is not None:
        if colours is None:
            return []
        if not colours.ids:
            raise AlpsError(f"--ignore-index {text} names a colour, but the ground truth holds class ids, not "
                            "colours: give the id")
        found = colours.ids.get(colour)
        return [] if found is None else [found]
    if colours is not None and colours.ids:
        if ignore_index is None or (text is not None and text.lower() == "none"):
            return []
        raise AlpsError(f"the ground truth is colour-coded: give --ignore-index a colour as #rrggbb, not "
                        f"{ignore_index!r}")
    default = [] if class_255 else [IGNORE]
    if ignore_index is None:
        return default
    if text is not None and text.lower() == "none":
        return []
    try:
        value = int(ignore_index)
    except ValueError:
        raise AlpsError(f"--ignore-index must be a class id (an integer), a colour as #rrggbb or 'none', got "
                        f"{ignore_index!r}") from None
    return sorted({value, *default})


def evaluate_dataset(out_dir: str | Path, gt_dir: str | Path, matching: Matching = "hungarian",
                     exclude_unlabelled_images: bool = False, ignore_index: int | str | None = None,
                     gt_suffix: str = "", image_suffix: str = "", gt_classes: str | Path | None = None,
                     colour_tolerance: int = 0) -> EvalReport:
    """Evaluate ``out_dir/ann_dir/<split>/<stem>.png`` against the ground truth under ``gt_dir``.

    Ground-truth files are matched by :func:`ground_truth_files`, ``gt_suffix`` dropped from their names and
    ``image_suffix`` from the images' (ISPRS Potsdam: ``top_potsdam_2_10_label`` is the truth of
    ``top_potsdam_2_10_RGB``; DeepGlobe: ``_mask`` and ``_sat``). Ground-truth pixels of 255, and of
    ``ignore_index`` (any integer) when given, are left out: they name no class; ``"none"`` leaves out none (255
    is a class).

    ``gt_classes``: a file that names every ground-truth class (:mod:`alps_client.gt_classes`); a value it does
    not declare is refused. ``colour_tolerance``: a colour within this of a declared one in every channel takes
    its class (colour-coded ground truth with declared colours only).

    Raises:
        AlpsError: If either folder has no label maps, no stem matches (saying which suffixes would make names
            match, if some would), two files match one stem, sizes differ,
            ``ignore_index`` does not say what 255 is where it may be a class (ground truth of 0 and 255 alone, or
            of ids wider than 8 bits), the ground truth mixes colour-coded label maps with maps of class ids, or
            holds a value ``gt_classes`` does not declare.
    """
    classes = parse_ground_truth_classes(gt_classes) if gt_classes is not None else None
    ignored_values(ignore_index)  # checked before any file is read
    ignored_colour = _named_colour(ignore_index)
    if colour_tolerance and (classes is None or not classes.colours):
        raise AlpsError("--gt-colour-tolerance takes colours to the nearest colour --gt-classes declares: give "
                        "--gt-classes FILE with {name, colour} entries")
    if not 0 <= colour_tolerance < IGNORE:
        raise AlpsError(f"--gt-colour-tolerance must lie in 0..{IGNORE - 1}, got {colour_tolerance}")
    colours = ColourIds(classes, colour_tolerance, ignored_colour)  # checks the tolerance before any file is read
    class_255 = classes is not None and not classes.colours and IGNORE in classes.names
    allowed_ids = (set(classes.names) | set(ignored_values(ignore_index, class_255=class_255))
                   if classes is not None and not classes.colours else None)
    out, gt_root = Path(out_dir), Path(gt_dir)
    preds: dict[str, Path | list[Path]] = {}
    for path in sorted((out / "ann_dir").glob("*/*.png")):
        name = path.stem.removesuffix(image_suffix)
        if name in preds and preds[name].stem != path.stem:
            raise AlpsError(f"{preds[name]} and {path} both read {name} once --image-suffix {image_suffix} is "
                            "dropped: give a suffix that only some names end with")
        if name in preds:
            raise AlpsError(f"{preds[name]} and {path}: two label maps of one name in two splits; `alps run` names "
                            "every image once, so which image each belongs to is unknown (is this folder an alps "
                            "output, or two merged?)")
        preds[name] = path
    if not preds:
        raise AlpsError(f"no label maps under {out / 'ann_dir'}; run `alps run DATASET --out {out}` first")
    if not gt_root.is_dir():
        raise AlpsError(f"ground-truth folder {gt_root} does not exist")
    parts = {whole.removesuffix(image_suffix): stems for whole, stems in _parts_by_whole(list(preds)).items()}
    sources = {stem.removesuffix(image_suffix): source for stem, source in _recorded_sources(out).items()}
    gts = ground_truth_files(gt_root, set(preds) | set(parts), gt_suffix, sources, image_suffix)

    for whole in set(parts) & set(gts) - set(preds):  # a tiled scene or a volume is scored whole
        preds[whole] = [preds.pop(stem) for stem in parts[whole]]  # type: ignore[misc]
    missing_gt = sorted(set(preds) - set(gts))
    missing_pred = sorted(set(gts) - set(preds))
    matched = sorted(set(preds) & set(gts))
    if not matched:
        images = [name for name in preds if not PART_STEM.match(name)] + list(parts)
        raise AlpsError(f"no ground-truth label map under {gt_root} has the name of a pseudo-label in "
                        f"{out / 'ann_dir'}" + _suffixes_that_match(list(gts), images, gt_suffix, image_suffix))
    inputs = _input_settings(out) if any(isinstance(preds[stem], list) for stem in matched) else {}
    by_id, by_colour, wide = Confusion(), Confusion(), None  # wide: a file of ids stored in more than 8 bits
    nodata = set[float]()
    images: list[_ImageCounts] = []
    for stem in matched + ([] if exclude_unlabelled_images else missing_pred):
        read = _read_ground_truth(gts[stem], colours)
        gt = read.ids
        found = preds.get(stem)
        if found is None:  # a good image the dataset lacks: every pixel is a miss
            pred = np.full(gt.shape, IGNORE, np.uint8)
        else:
            pred = _read_label(found) if isinstance(found, Path) else _assembled(out, inputs, found, gt, gts[stem])
        if pred.shape != gt.shape:
            raise AlpsError(f"{gts[stem]}: size {gt.shape} differs from the pseudo-label {found} {pred.shape}")
        if read.valid is not None:  # pixels its GeoTIFF declares nodata: no class, no miss
            pred, gt = pred[read.valid], gt[read.valid]
            nodata.add(read.nodata)
        part = Confusion.of(pred, gt)
        if allowed_ids is not None:
            _check_declared(part, read.coloured, colours, allowed_ids, classes, gts[stem])
        images.append(_ImageCounts.of(stem, part, read.coloured))
        if read.coloured:
            by_colour += part
        else:
            by_id += part
            if wide is None and gt.dtype.itemsize > 1:
                wide = gts[stem]
    if classes is not None and classes.colours and len(by_id.values):
        raise AlpsError(f"{classes.source} declares colours, but ground-truth label maps under {gt_root} hold class "
                        "ids (single-channel): declare their classes as {name, id}")
    conf, colour_names = colours.resolve(by_id, by_colour, gt_root)
    values = conf.values.tolist()
    if (ignore_index is None and IGNORE in values and not colour_names and not class_255
            and (values == [0, IGNORE] or wide)):
        what = ("holds only 0 and 255: a binary mask?" if values == [0, IGNORE] else
                f"holds 255 among class ids stored in more than 8 bits (e.g. {wide.name}), where 255 may be a "
                "class (FreeSurfer's CC_Anterior).")
        count_it = (f"declare 255 in {classes.source} (e.g. {{name: lesion, id: 255}})" if classes is not None
                    else "give --ignore-index none")
        raise AlpsError(f"the ground truth under {gt_root} {what} Its 255 pixels would be ignored (255 is 'no "
                        f"label' by default): {count_it} to count 255 as a class, or --ignore-index 255 to ignore it")
    ignored = ignored_values(ignore_index, colours if colour_names else None, class_255)
    conf = conf.without(ignored)
    if not len(conf.values):  # mIoU 0.000 "over all 0 classes" would read as a score
        raise AlpsError(f"the ground truth under {gt_root} holds no class to score: every pixel of its "
                        f"{counted(len(images), 'image')} scored is ignored (255, --ignore-index) or nodata; is it "
                        "the right folder?")
    mapping = match_clusters(conf, matching)
    report = scores(conf, mapping, matching)
    report.ground_truth_colours = colour_names
    grey = colours.grey_values() if not colour_names else {}
    report.per_image = sorted((image.figures(mapping, set(ignored), grey) for image in images),
                              key=lambda row: (row["pixel_accuracy"], row["image"]))
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
    report.missing_ground_truth, report.missing_pseudo_labels = missing_gt, missing_pred
    report.missing_pseudo_labels_counted = not exclude_unlabelled_images
    report.pseudo_label_names = _class_names(out)
    report.ground_truth_ignored = ignored
    report.ground_truth_nodata = [*sorted(v for v in nodata if not np.isnan(v)),
                                  *(["NaN"] if any(np.isnan(v) for v in nodata) else [])]
    return report


@dataclass(frozen=True)
class _ImageCounts:
    """One image's confusion, kept small (the pseudo-labels it holds only) until clusters are matched to classes."""

    stem: str
    rows: npt.NDArray[np.int64]  # (R,) pseudo-label ids with pixels in this image (255: unlabelled)
    counts: npt.NDArray[np.int64]  # (R, V) pixel counts
    values: npt.NDArray[np.int64]  # (V,) ground-truth values, colour ids for an RGB file
    coloured: bool

    @classmethod
    def of(cls, stem: str, part: Confusion, coloured: bool) -> _ImageCounts:
        rows = np.flatnonzero(part.counts.sum(1))
        return cls(stem, rows, part.counts[rows], part.values, coloured)

    def figures(self, mapping: dict[int, int], ignored: set[int], grey: dict[int, int]) -> dict[str, Any]:
        """Coverage and pixel accuracy of this image under the dataset's cluster -> class ``mapping``.

        ``grey``: colour id -> grey value, when RGB ground truth held class ids as greys.
        """
        values = [grey.get(v, v) if self.coloured else v for v in self.values.tolist()]
        scored = [j for j, v in enumerate(values) if v not in ignored]
        counts = self.counts[:, scored]
        truth = [values[j] for j in scored]
        correct = sum(int(counts[i, k]) for i, row in enumerate(self.rows.tolist()) for k, v in enumerate(truth)
                      if mapping.get(row) == v)
        pixels = int(counts.sum())
        labelled = int(counts[self.rows < IGNORE].sum())
        return {"image": self.stem, "pixels": pixels, "coverage": labelled / pixels if pixels else 0.0,
                "pixel_accuracy": correct / pixels if pixels else 0.0}


def _check_declared(part: Confusion, coloured: bool, colours: ColourIds, allowed: set[int],
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


def _suffixes_that_match(truths: list[str], images: list[str], gt_suffix: str = "", image_suffix: str = "") -> str:
    """The flags that would pair ``truths`` with ``images`` by dropping the ends every name of a side shares.

    A side whose suffix was given (``gt_suffix``, ``image_suffix``: already dropped from its names) keeps it.

    Returns: ``": give --gt-suffix _label --image-suffix _RGB (...)"``, or "" when no shared end does it.
    """
    gt_end = "" if gt_suffix else _shared_end(truths)
    image_end = "" if image_suffix else _shared_end(images)
    paired = {t.removesuffix(gt_end) for t in truths} & {i.removesuffix(image_end) for i in images}
    if not paired or not (gt_end or image_end):
        return ""
    gt_end, image_end = gt_suffix or gt_end, image_suffix or image_end
    flags = " ".join(f"--{side}-suffix {end}" for side, end in (("gt", gt_end), ("image", image_end)) if end)
    name = min(paired)
    return (f": give {flags} to pair them by the rest of their names ({counted(len(paired), 'name')} would "
            f"pair, e.g. {name + gt_end} with {name + image_end})")


def _shared_end(names: list[str]) -> str:
    """The last ``_``- or ``-``-led part every name ends with (``_label``), or ""."""
    reversed_names = [name[::-1] for name in names]
    end = os.path.commonprefix(reversed_names)[::-1] if names else ""  # noqa: RUF071 (characters, on purpose)
    cut = max(end.rfind("_"), end.rfind("-"))
    return end[cut:] if cut >= 0 else ""


def _class_names(out: Path) -> dict[int, str]:
    """``{id: name}`` of the dataset's classes (``OUT/classes.json``); empty when it has none to say."""
    try:
        classes = json.loads((out / "classes.json").read_text())["classes"]
        return {int(c["id"]): str(c["name"]) for c in classes}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def format_table(report: EvalReport, class_names: dict[int, str] | None = None) -> str:
    """A readable per-class table with the summary figures."""
    def named(ids: list[int]) -> str:  # pseudo-label ids, with the names `alps relabel` gave them
        names = report.pseudo_label_names
        return "[" + ", ".join(f"{i} {names[i]}" if names.get(i, f"cluster_{i}") != f"cluster_{i}" else str(i)
                               for i in ids) + "]"

    class_names = class_names or report.ground_truth_names or report.ground_truth_colours

    def gt_named(ids: list[int], most: int = 12) -> str:  # ground-truth classes, by name and value where named
        colours = report.ground_truth_colours
        shown = ", ".join(f"'{class_names[k]}' ({colours.get(k, k)})" if k in report.ground_truth_names
                          else str(colours.get(k, k)) for k in ids[:most])
        return shown + (f" and {len(ids) - most} more (evaluation.json lists them)" if len(ids) > most else "")

    lines = [f"{'class':<16} {'IoU':>7} {'IoU*':>7}  pseudo-labels"]
    for k, iou in report.class_iou.items():
        name = class_names.get(k, str(k))
        never = "  (never labelled)" if k in report.classes_never_labelled else ""
        lines.append(f"{name:<16} {iou:>7.3f} {report.class_iou_labelled_pixels[k]:>7.3f}  "
                     f"{named(report.class_to_clusters.get(k, []))}{never}")
    lines += [
        (f"{'mIoU':<16} {report.miou:>7.3f}          over all {counted(report.n_classes, 'class')}, unlabelled "
         f"pixels counted as misses ({report.matching} matching, {counted(report.n_images, 'image')})"),
        f"{'mIoU*':<16} {report.miou_labelled_pixels:>7.3f}          (*) on labelled pixels only",
        f"{'coverage':<16} {report.coverage:>7.3f}          ground-truth pixels given a pseudo-label",
        (f"{'pixel accuracy':<16} {report.pixel_accuracy:>7.3f}          "
         f"(on labelled pixels only: {report.pixel_accuracy_labelled_pixels:.3f})"),
    ]
    ignored = gt_named(report.ground_truth_ignored).replace(", ", " and ")
    if report.ground_truth_names:
        lines.append(f"ground-truth classes: {len(report.ground_truth_names)} declared in "
                     f"{report.ground_truth_classes_file}")
    if report.ground_truth_pixels_snapped:
        lines.append(f"{counted(report.ground_truth_pixels_snapped, 'ground-truth pixel')} of undeclared colours "
                     f"within {report.ground_truth_colour_tolerance} of a declared one took its class")
    if report.classes_absent_from_ground_truth:
        lines.append(f"declared classes with no ground-truth pixel in these images (not scored): "
                     f"{gt_named(report.classes_absent_from_ground_truth)}")
    if report.ground_truth_colours:
        lines.append(f"colour-coded ground truth: {len(report.ground_truth_colours)} colours"
                     + (f", {ignored} ignored (they name no class)" if ignored else ""))
    elif not report.ground_truth_ignored:
        lines.append("no ground-truth value is ignored: 255 is a class like any other")
    elif report.ground_truth_ignored != [IGNORE] or IGNORE in report.ground_truth_names:
        lines.append(f"ground-truth pixels of {ignored} are ignored (they name no class)")
    if report.ground_truth_rare_colours:
        lines.append(f"{report.ground_truth_rare_colours} of those colours hold under {RARE_SHARE:.1%} of the "
                     "pixels each, and each is scored as a class: if they are noise (JPEG, resampling), declare "
                     "the classes with --gt-classes and give --gt-colour-tolerance")
    if report.ground_truth_nodata:
        values = " and ".join(f"{v:g}" if isinstance(v, float) else v for v in report.ground_truth_nodata)
        lines.append(f"ground-truth pixels their GeoTIFF declares nodata ({values}) are left out (no class, no miss)")
    if report.unmatched_clusters:
        lines.append(f"pseudo-labels matched to no class (their pixels count as errors): "
                     f"{named(report.unmatched_clusters)}")
    worst = [row for row in report.per_image[:WORST_SHOWN] if row["pixel_accuracy"] < report.pixel_accuracy]
    if worst and len(report.per_image) > 1:
        lines.append("lowest pixel accuracy (coverage): " + ", ".join(
            f"{row['image']} {row['pixel_accuracy']:.3f} ({row['coverage']:.3f})" for row in worst)
            + " (every image in evaluation.json, per_image)")
    if report.missing_pseudo_labels:
        how = "counted as unlabelled" if report.missing_pseudo_labels_counted else "left out"
        lines.append(f"{len(report.missing_pseudo_labels)} ground-truth image(s) have no pseudo-label ({how}; "
                     f"first: {report.missing_pseudo_labels[0]})")
    if report.missing_ground_truth:
        lines.append(f"{len(report.missing_ground_truth)} pseudo-label(s) have no ground truth "
                     f"(first: {report.missing_ground_truth[0]})")
    return "\n".join(lines)


def write_report(report: EvalReport, path: str | Path) -> None:
    """Write the report as JSON, atomically (class ids as string keys)."""
    data = asdict(report)
    for key in ("class_iou", "class_iou_labelled_pixels", "class_to_clusters", "ground_truth_colours",
                "ground_truth_names"):
        data[key] = {str(k): v for k, v in data[key].items()}
    atomic.write_json(path, data)
