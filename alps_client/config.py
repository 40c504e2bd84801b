"""Frozen configuration dataclasses: one per pipeline stage, composed by PipelineConfig.

The CLI turns flags named after these fields into one PipelineConfig, dropping unset flags so the
defaults below stay the only defaults. ``__post_init__`` validates and does nothing else.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

OutputMode = Literal["binary_mask", "uncompressed_rle", "coco_rle"]
BackendKind = Literal["embedded", "triton"]
ClusterBackend = Literal["auto", "sklearn", "cuml", "dask"]
VectorFormat = Literal["gpkg", "geojson"]


# 1,048,576 prompts per image: past it a run fails to allocate its grid's arrays (100,000 asked for 74.5 GiB),
# which it took for a failure of the machinery, retried and called resumable.
MAX_POINTS_PER_SIDE = 1024


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _regex_problem(pattern: str) -> str | None:
    """Why ``pattern`` is not a regular expression Python compiles; None when it is."""
    try:
        re.compile(pattern)
    except re.error as err:
        return str(err)
    return None


# Seeds go to numpy's generators and scikit-learn's random_state, which take 0..2**32 - 1.
MAX_SEED = 2**32 - 1


def _as_annotated(value: Any, kind: Any) -> Any:
    """``value`` as the annotation ``kind`` asks, or ``TypeError`` saying what it should be.

    numpy scalars become Python's (a manifest is JSON); a list becomes a tuple; nothing else is converted: an
    ``int`` stays one in a ``float`` field, as the manifests and shard fingerprints of earlier runs recorded it.
    """
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for alternative in (a for a in args if a is not type(None)):
            try:
                return _as_annotated(value, alternative)
            except TypeError:
                pass
        raise TypeError(" or ".join(_kind_name(a) for a in args))
    if origin is Literal:  # which strings: said by the field's own check, in the words of its flag
        if isinstance(value, str):
            return value
        raise TypeError(" or ".join(repr(a) for a in args))
    if origin is tuple:
        if isinstance(value, (str, bytes)) or (not isinstance(value, (tuple, list)) and not hasattr(value, "tolist")):
            raise TypeError(_kind_name(kind))
        items = list(value.tolist() if hasattr(value, "tolist") else value)
        element_kinds = [args[0]] * len(items) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(element_kinds) != len(items):
            raise TypeError(_kind_name(kind))
        return tuple(_as_annotated(item, element) for item, element in zip(items, element_kinds))
    if kind is bool:
        if isinstance(value, bool) or _is_numpy_bool(value):
            return bool(value)
        raise TypeError("true or false")
    if kind is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool) and not _is_numpy_bool(value):
            return int(value)
        raise TypeError("an integer")
    if kind is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and not _is_numpy_bool(value):
            if not math.isfinite(value):
                raise TypeError("a finite number")
            return value if type(value) in (int, float) else float(value)
        raise TypeError("a number")
    if kind is str:
        if isinstance(value, str):
            return value
        raise TypeError("a string")
    return value


def _is_numpy_bool(value: Any) -> bool:
    """Whether ``value`` is numpy's boolean scalar (told without importing numpy: the command line starts fast)."""
    return type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_")


def _kind_name(kind: Any) -> str:
    """How :func:`_as_annotated` names an annotation in a message: ``a tuple of integers``."""
    names = {int: "an integer", float: "a finite number", bool: "true or false", str: "a string", type(None): "None"}
    if kind in names:
        return names[kind]
    if typing.get_origin(kind) is tuple:
        args = typing.get_args(kind)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a tuple of {_kind_name(args[0]).removeprefix('an ').removeprefix('a ')}s"
        return f"a tuple of {len(args)} ({', '.join(_kind_name(a) for a in args)})"
    if typing.get_origin(kind) is Literal:
        return " or ".join(repr(a) for a in typing.get_args(kind))
    return getattr(kind, "__name__", str(kind))


def _check_field_types(config: Any) -> None:
    """Refuse a field of ``config`` (a frozen dataclass here) whose value is not of its annotated type.

    Without it, ``points_per_batch=2.5`` failed images later inside numpy, ``mask_threshold=nan`` gave no mask
    without a word, and ``triton_urls="host:8001"`` was read one character at a time.
    """
    hints = typing.get_type_hints(type(config))
    for spec in dataclasses.fields(config):
        value = getattr(config, spec.name)
        try:
            checked = _as_annotated(value, hints[spec.name])
        except TypeError as err:
            raise ValueError(f"{spec.name} must be {err}, got {value!r}"
                             f"{' (a string: give a tuple of them)' if isinstance(value, str) else ''}") from None
        if checked is not value:
            object.__setattr__(config, spec.name, checked)


@dataclass(frozen=True)
class AmgConfig:
    """Automatic mask generation, with the names and defaults of Meta's SamAutomaticMaskGenerator.

    The defaults are the paper's setting (ALPS uses SAM's default dense prompts).
    ``points_per_batch=None`` lets the backend choose (the embedded one: memory-bounded on CPU, large on GPU); the batch
    size never changes the masks. ``pred_iou_thresh=None`` is the model family's default: 0.88 for SAM
    (``SamAutomaticMaskGenerator``), 0.8 for SAM 2 (``SAM2AutomaticMaskGenerator``); every other default is
    the same in both. ``use_m2m`` and ``multimask_output`` are SAM 2's parameters (its defaults here); a SAM
    repository refuses values other than these defaults.
    """

    points_per_side: int | None = 32
    points_per_batch: int | None = None
    pred_iou_thresh: float | None = None
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    mask_threshold: float = 0.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    point_grids: tuple[tuple[tuple[float, float], ...], ...] | None = None
    min_mask_region_area: int = 0
    output_mode: OutputMode = "binary_mask"
    use_m2m: bool = False
    multimask_output: bool = True

    def __post_init__(self) -> None:
        _check_field_types(self)
        _check(
            (self.points_per_side is None) != (self.point_grids is None),
            "exactly one of points_per_side or point_grids must be given, "
            f"got points_per_side={self.points_per_side!r} and point_grids={'set' if self.point_grids else None}",
        )
        if self.points_per_side is not None:  # a prompt grid of its square per image (and crop)
            _check(0 < self.points_per_side <= MAX_POINTS_PER_SIDE,
                   f"points_per_side must lie in 1..{MAX_POINTS_PER_SIDE} (Meta's default 32 is 1,024 prompts per "
                   f"image), got {self.points_per_side!r}")
        for name in ("pred_iou_thresh", "stability_score_thresh"):  # above 1 no mask passes: nothing to label
            value = getattr(self, name)
            _check(value is None or 0.0 <= value <= 1.0, f"{name} must lie in [0, 1], got {value!r}")
        if self.points_per_batch is not None:
            _check(self.points_per_batch > 0, f"points_per_batch must be > 0, got {self.points_per_batch!r}")
        for name in ("box_nms_thresh", "crop_nms_thresh"):
            value = getattr(self, name)
            _check(0.0 < value <= 1.0, f"{name} must lie in (0, 1], got {value!r}")
        _check(self.crop_n_layers >= 0, f"crop_n_layers must be >= 0, got {self.crop_n_layers!r}")
        _check(
            self.crop_n_points_downscale_factor >= 1,
            f"crop_n_points_downscale_factor must be >= 1, got {self.crop_n_points_downscale_factor!r}",
        )
        if self.points_per_side is not None and self.crop_n_layers > 0:  # Meta's grid of 0 points divides by zero
            deepest = self.points_per_side // self.crop_n_points_downscale_factor ** self.crop_n_layers
            _check(deepest >= 1, f"crop layer {self.crop_n_layers} would get no point: points_per_side "
                                 f"{self.points_per_side} / crop_n_points_downscale_factor "
                                 f"{self.crop_n_points_downscale_factor}^{self.crop_n_layers} < 1; lower "
                                 "crop_n_points_downscale_factor or crop_n_layers, or raise points_per_side")
        _check(self.stability_score_offset >= 0,  # the high and low thresholds would swap places
               f"stability_score_offset must be >= 0, got {self.stability_score_offset!r}")
        if self.point_grids is not None:  # one per crop layer, as Meta's generator indexes them
            _check(len(self.point_grids) == self.crop_n_layers + 1,
                   f"point_grids must hold crop_n_layers + 1 = {self.crop_n_layers + 1} grids, got "
                   f"{len(self.point_grids)}")
            for layer, grid in enumerate(self.point_grids):
                _check(len(grid) > 0 and all(0.0 <= v <= 1.0 for point in grid for v in point),
                       f"point_grids[{layer}] must hold at least one (x, y) point, each in [0, 1] (a fraction of the "
                       f"image's width and height), got {len(grid)} point(s)"
                       f"{'' if not grid else f' from {min(min(p) for p in grid)} to {max(max(p) for p in grid)}'}")
        _check(
            0.0 <= self.crop_overlap_ratio < 1.0,
            f"crop_overlap_ratio must lie in [0, 1), got {self.crop_overlap_ratio!r}",
        )
        _check(
            self.min_mask_region_area >= 0,
            f"min_mask_region_area must be >= 0, got {self.min_mask_region_area!r}",
        )
        _check(
            self.output_mode in ("binary_mask", "uncompressed_rle", "coco_rle"),
            f"output_mode must be binary_mask, uncompressed_rle or coco_rle, got {self.output_mode!r}",
        )


# Triton's default ports: gRPC 8001, HTTP 8000 (docker/compose.yml publishes both).
DEFAULT_TRITON_URLS = {"grpc": "127.0.0.1:8001", "http": "127.0.0.1:8000"}


def _check_triton_url(url: str, protocol: str) -> None:
    """Refuse a Triton URL that is not ``host:port`` (tritonclient takes no scheme, and needs the port).

    Examples:
        >>> _check_triton_url("10.0.0.5:8001", "grpc"); _check_triton_url("[::1]:8000", "http")
        >>> _check_triton_url("http://127.0.0.1:8000", "http")
        Traceback (most recent call last):
        ...
        ValueError: --triton-url must be host:port without a scheme, got 'http://127.0.0.1:8000': give 127.0.0.1:8000 (the scheme goes to --protocol http)
    """
    default = DEFAULT_TRITON_URLS[protocol]
    scheme, sep, rest = url.partition("://")
    if sep:
        _check(False, f"--triton-url must be host:port without a scheme, got {url!r}: give {rest.rstrip('/')} "
                      f"(the scheme goes to --protocol {'grpc' if scheme.lower() == 'grpc' else 'http'})")
    host, _, port = url.rpartition(":")
    _check(bool(host) and host != "[" and "/" not in url and port.isdigit() and 0 < int(port) < 65536,
           f"--triton-url must be host:port, got {url!r} (e.g. {default}: Triton serves gRPC on 8001, HTTP on 8000)")


@dataclass(frozen=True)
class BackendConfig:
    """Where the encoder and decoder run.

    Attributes:
        kind: ``embedded`` (onnxruntime in this process, the default) or ``triton``.
        model_repository: folder written by ``export/export_sam.py``; its manifest names the tensors.
        triton_urls: Triton endpoints (``host:port``); default ``127.0.0.1:8001`` (Triton's gRPC port), or
            ``127.0.0.1:8000`` (its HTTP port) with protocol="http".
        protocol: Triton protocol, ``grpc`` or ``http``.
        shared_memory: send large tensors through system shared memory (client and server on one host).
        num_threads: onnxruntime intra-op threads; 0 lets onnxruntime choose.
        timeout_s: per-request timeout for remote backends, in seconds.
        retries: how many times an image whose processing failed transiently (server unavailable, timeout,
            connection lost, out of memory) is tried again; the run's only retry layer.
        retry_delay_s: wait before the first retry, in seconds; doubled before each next one.
        retry_max_delay_s: longest wait between two tries, in seconds. The defaults ride out about a minute
            of outage per image (2 + 4 + 8 + 16 + 30 s).
        stop_after_failures: a run starts no more images once this many in a row failed after their retries
            (the backend, the workers or the disk is down: the rest would fail too, each after its retries);
            they are reported not started and the same command resumes. 0: never stop.
    """

    kind: BackendKind = "embedded"
    model_repository: str = "model_repository"
    triton_urls: tuple[str, ...] | None = None
    protocol: Literal["grpc", "http"] = "grpc"
    shared_memory: bool = False
    num_threads: int = 0
    timeout_s: float = 120.0
    retries: int = 5
    retry_delay_s: float = 2.0
    retry_max_delay_s: float = 30.0
    stop_after_failures: int = 10

    def __post_init__(self) -> None:
        _check_field_types(self)
        _check(self.kind in ("embedded", "triton"), f"backend must be embedded or triton, got {self.kind!r}")
        _check(self.protocol in ("grpc", "http"), f"protocol must be grpc or http, got {self.protocol!r}")
        if self.triton_urls is None:  # the port Triton serves the protocol on (its HTTP port was sent gRPC)
            object.__setattr__(self, "triton_urls", (DEFAULT_TRITON_URLS[self.protocol],))
        _check(self.num_threads >= 0, f"num_threads must be >= 0, got {self.num_threads!r}")
        _check(len(self.triton_urls) > 0, "triton_urls must name at least one server")
        if self.kind == "triton":
            for url in self.triton_urls:
                _check_triton_url(url, self.protocol)
        _check(not (self.shared_memory and len(set(self.triton_urls)) > 1),
               f"shared memory needs the client on the server's host: give one --triton-url with --shared-memory, "
               f"got {len(set(self.triton_urls))}")
        _check(self.timeout_s > 0, f"timeout_s must be > 0, got {self.timeout_s!r}")
        _check(self.retries >= 0, f"retries must be >= 0, got {self.retries!r}")
        _check(self.stop_after_failures >= 0, f"stop_after_failures must be >= 0, got {self.stop_after_failures!r}")
        _check(0 <= self.retry_delay_s <= self.retry_max_delay_s,
               f"retry delays must satisfy 0 <= retry_delay_s <= retry_max_delay_s, got "
               f"{self.retry_delay_s!r} and {self.retry_max_delay_s!r}")

    def describe(self, process: str = "the run's process") -> str:
        """Which backend and where, for a run's log: ``triton (Triton at 10.0.0.5:8001 over grpc)``.

        ``process``: where an embedded backend runs (``"2 Dask worker processes"``).
        """
        where = (f"onnxruntime in {process}" if self.kind == "embedded" else
                 f"Triton at {', '.join(self.triton_urls)} over {self.protocol}"
                 f"{' with shared memory' if self.shared_memory else ''}")
        return f"{self.kind} ({where})"

    def retry_delays(self) -> list[float]:
        """Seconds to wait before each retry: ``retry_delay_s`` doubling, capped at ``retry_max_delay_s``."""
        return [min(self.retry_delay_s * 2**i, self.retry_max_delay_s) for i in range(self.retries)]


@dataclass(frozen=True)
class GateConfig:
    """The filtering gate G: masks whose instance proportion PI(M) exceeds sigma are dropped.

    Attributes:
        sigma: largest kept fraction of the image (or tile) a mask may cover, in (0, 1]. Paper: 0.3.
    """

    sigma: float = 0.3

    def __post_init__(self) -> None:
        _check_field_types(self)
        _check(0.0 < self.sigma <= 1.0, f"sigma must lie in (0, 1], got {self.sigma!r}")


@dataclass(frozen=True)
class FeatureConfig:
    """Pseudo feature labels: SAM features pooled under each mask.

    Attributes:
        feature_size: side of the square frame the valid embedding and the masks are resized to (paper: 256).
        l2_normalize: L2-normalise each pooled 256-d vector before clustering.
    """

    feature_size: int = 256
    l2_normalize: bool = True

    def __post_init__(self) -> None:
        _check_field_types(self)
        _check(self.feature_size > 0, f"feature_size must be > 0, got {self.feature_size!r}")


# Clusters a dataset may have: their class ids 0..254 fit a uint8 label map beside 255, which marks "no mask".
MAX_CLUSTERS = 255


@dataclass(frozen=True)
class ClusterConfig:
    """Mini-batch k-means over all pseudo feature labels of a dataset.

    Attributes:
        n_clusters: number of pseudo classes N, or ``"auto"`` to estimate it (Dirichlet-process mixture).
        max_n_clusters: upper bound on N for ``"auto"``.
        backend: ``auto`` (cuML when a GPU and cuML are present, else scikit-learn), ``sklearn``, ``cuml``
            or ``dask``.
        batch_size: PFL vectors per mini-batch.
        n_passes: passes over all PFLs.
        init_sample_size: PFLs drawn (seeded) for k-means++ initialisation and for ``auto``.
        seed: random seed; the same seed gives the same centroids.
        centroids: path of an existing ``centroids.npy`` to label with fixed classes (no fitting).
        dask_address: scheduler address for the Dask backend (None: Dask's default threaded scheduler in this process,
            no cluster).
    """

    n_clusters: int | Literal["auto"] = 16
    max_n_clusters: int = 64
    backend: ClusterBackend = "auto"
    batch_size: int = 4096
    n_passes: int = 5
    init_sample_size: int = 20000
    seed: int = 0
    centroids: str | None = None
    dask_address: str | None = None

    def __post_init__(self) -> None:
        _check_field_types(self)
        if self.n_clusters != "auto":
            _check(
                isinstance(self.n_clusters, int) and 1 <= self.n_clusters <= MAX_CLUSTERS,
                f"n_clusters must be an integer in 1..{MAX_CLUSTERS} (class ids 0..{MAX_CLUSTERS - 1}; 255 marks 'no "
                f"mask') or 'auto', got {self.n_clusters!r}",
            )
        _check(2 <= self.max_n_clusters <= MAX_CLUSTERS,
               f"max_n_clusters must lie in 2..{MAX_CLUSTERS}, got {self.max_n_clusters!r}")
        _check(
            self.backend in ("auto", "sklearn", "cuml", "dask"),
            f"cluster backend must be auto, sklearn, cuml or dask, got {self.backend!r}",
        )
        _check(self.batch_size > 0, f"batch_size must be > 0, got {self.batch_size!r}")
        _check(self.n_passes > 0, f"n_passes must be > 0, got {self.n_passes!r}")
        _check(self.init_sample_size > 0, f"init_sample_size must be > 0, got {self.init_sample_size!r}")
        _check(0 <= self.seed <= MAX_SEED, f"seed must lie in 0..{MAX_SEED}, got {self.seed!r}")


@dataclass(frozen=True)
class WriterConfig:
    """The labelled dataset written to OUT.

    Attributes:
        val_fraction: share of the images put in ``val``, as near as whole scenes allow (scenes ranked by a stable
            hash of the scene and the seed; tiles and slices stay with their scene), in [0, 1); unused when the
            input has its own ``train/val/test`` folders (:mod:`alps_client.io.splits`).
        seed: seed of the split.
        split_group: a regular expression whose first match in an input's path (relative to the dataset; its
            first capture group if it has one) names the group it is split with, e.g. ``sub-[^/]+`` keeps each
            subject's sessions in one split; None: the groups are scenes and volumes.
        write_vis: write palette previews to ``vis/``.
        copy_images: copy (or link) the input images into ``img_dir`` (mmseg layout).
        vector_format: also write one polygon per kept mask to ``vectors/`` (``gpkg`` or ``geojson``); None: no vectors.
        write_report: write the cluster review page ``report/index.html``.
    """

    val_fraction: float = 0.3
    seed: int = 0
    split_group: str | None = None
    write_vis: bool = True
    copy_images: bool = True
    vector_format: VectorFormat | None = None
    write_report: bool = True

    def __post_init__(self) -> None:
        _check_field_types(self)
        _check(0.0 <= self.val_fraction < 1.0, f"val_fraction must lie in [0, 1), got {self.val_fraction!r}")
        _check(0 <= self.seed <= MAX_SEED, f"seed must lie in 0..{MAX_SEED}, got {self.seed!r}")
        regex_problem = None if self.split_group is None else _regex_problem(self.split_group)
        _check(regex_problem is None, f"split_group {self.split_group!r} is not a regular expression: {regex_problem}")
        _check(self.vector_format in (None, "gpkg", "geojson"),
               f"vector_format must be gpkg or geojson (or None for no vectors), got {self.vector_format!r}")


@dataclass(frozen=True)
class InputConfig:
    """How input files become RGB images to label.

    Attributes:
        bands: 1-based band indices (3 of them) of multispectral rasters; None: the RGB-described bands, else 1, 2, 3.
        stretch_percentiles: low/high percentiles of the linear stretch that maps >8-bit data to uint8.
        tile: side of square tiles cut from large images (iSAID convention: 896); None labels whole images.
        overlap: overlap between neighbouring tiles in pixels; default 3/7 of ``tile`` (iSAID's 384 for 896).
        stitch: also write one label map per scene assembled from its tiles.
        slice_axis: axis along which 3D volumes (NIfTI) are sliced into 2D images.
        window_percentiles: intensity window of volume slices, as low/high percentiles of the volume.
        intensity_window: a fixed ``(low, high)`` window in the data's own units (Hounsfield units for CT) that
            replaces both percentile stretches for every input of more than 8 bits (NIfTI volumes, 16-bit and
            float rasters); values outside it clip to 0 or 255. None: each image's (volume's, scene's) own
            percentiles, which move with its content (metal, padding), and with them every tissue's grey.
        write_nifti_labels: stack label slices back into a NIfTI label volume with the source affine.
    """

    bands: tuple[int, ...] | None = None
    stretch_percentiles: tuple[float, float] = (2.0, 98.0)
    tile: int | None = None
    overlap: int | None = None  # resolved in __post_init__
    stitch: bool = False
    slice_axis: int = 2
    window_percentiles: tuple[float, float] = (0.5, 99.5)
    intensity_window: tuple[float, float] | None = None
    write_nifti_labels: bool = False

    def __post_init__(self) -> None:
        _check_field_types(self)
        if self.overlap is None:
            # iSAID's proportion: a fixed 384 px was 75 % of a 512-px tile (4.8x the tiles of a scene) and refused
            # outright below 385 px. Untiled inputs keep 384, as recorded in their datasets' fingerprints.
            object.__setattr__(self, "overlap", round(self.tile * 3 / 7) if self.tile is not None else 384)
        if self.bands is not None:
            _check(len(self.bands) == 3 and all(b >= 1 for b in self.bands),
                   f"bands must be three 1-based band indices, got {self.bands!r}")
        if self.tile is not None:
            _check(self.tile >= 64, f"tile must be >= 64 pixels, got {self.tile!r}")
            _check(0 <= self.overlap < self.tile, f"overlap must lie in [0, tile), got {self.overlap!r}")
        _check(self.slice_axis in (0, 1, 2), f"slice_axis must be 0, 1 or 2, got {self.slice_axis!r}")
        for name in ("stretch_percentiles", "window_percentiles"):
            lo, hi = getattr(self, name)
            _check(0.0 <= lo < hi <= 100.0, f"{name} must satisfy 0 <= low < high <= 100, got {(lo, hi)!r}")
        if self.intensity_window is not None:
            lo, hi = self.intensity_window
            _check(lo < hi, f"intensity_window must be (low, high) with low < high, got {(lo, hi)!r}")


@dataclass(frozen=True)
class PipelineConfig:
    """Everything a run needs; the manifest stores it, and resume compares against it."""

    backend: BackendConfig = field(default_factory=BackendConfig)
    inputs: InputConfig = field(default_factory=InputConfig)
    amg: AmgConfig = field(default_factory=AmgConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    writer: WriterConfig = field(default_factory=WriterConfig)

    def __post_init__(self) -> None:
        for part in dataclasses.fields(self):
            kind = part.default_factory  # type: ignore[misc]  # every part is a dataclass with a default factory
            _check(isinstance(getattr(self, part.name), kind), f"{part.name} must be of type {kind.__name__}, got "
                   f"{getattr(self, part.name)!r} (PipelineConfig.from_dict takes plain dicts)")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PipelineConfig:
        """Inverse of :meth:`to_dict` (e.g. the ``config`` of a dataset's manifest).

        JSON lists become tuples (every sequence field here is a tuple); fields this version does not know are
        left out, fields the data lacks keep their defaults.
        """

        def tuples(value: Any) -> Any:
            return tuple(tuples(v) for v in value) if isinstance(value, list) else value

        parts = {}
        for part in dataclasses.fields(cls):
            sub = part.default_factory  # type: ignore[misc]  # every part is a dataclass with a default factory
            names = {f.name for f in dataclasses.fields(sub)}
            values = data.get(part.name) or {}
            _check(isinstance(values, dict), f"the config's {part.name} must be a mapping of its fields, got "
                                              f"{values!r}")
            parts[part.name] = sub(**{k: tuples(v) for k, v in values.items() if k in names})
        return cls(**parts)

    def labelling_dict(self) -> dict[str, Any]:
        """The fields that change per-image results (masks, gate, PFLs); resume compares these.

        ``inputs.intensity_window`` is left out while unset: shards labelled before the field existed keep their
        fingerprint (a rerun does not relabel them), and a run that sets it relabels, as any change does.
        """
        inputs = dataclasses.asdict(self.inputs)
        if inputs["intensity_window"] is None:
            del inputs["intensity_window"]
        return {"inputs": inputs, "amg": dataclasses.asdict(self.amg),
                "gate": dataclasses.asdict(self.gate), "features": dataclasses.asdict(self.features)}


def overlay_config(base: dict[str, Any] | None, override: dict[str, Any] | None) -> dict[str, Any]:
    """``override`` laid over ``base``, field by field: the plain-dict form of two partial ``PipelineConfig``.

    The rule: a dict in ``override`` merges into the dict at the same place in ``base``, key by key,
    recursively; any other value (a number, a string, a list, ``None``) replaces what ``base`` holds there.
    A key ``override`` does not name keeps ``base``'s value, so leaving a field out is not the same as setting
    it to its default.
    ``override=None`` (a run with ``config: null``) keeps ``base``.

    Args:
        base: the defaults, e.g. the ``config`` a deployment was registered with (``alps serve``'s backend).
        override: what a run sets, e.g. ``{"amg": {"points_per_side": 16}}``.

    Returns:
        A new dict; neither argument is changed.

    Examples:
        >>> overlay_config({"backend": {"kind": "triton", "model_repository": "/m"}},
        ...                {"backend": {"kind": "embedded"}, "gate": {"sigma": 0.5}})
        {'backend': {'kind': 'embedded', 'model_repository': '/m'}, 'gate': {'sigma': 0.5}}
    """
    if override is None:
        return dict(base or {})
    merged = dict(base or {})
    for key, value in override.items():
        below = merged.get(key)
        both_dicts = isinstance(value, dict) and isinstance(below, dict)
        merged[key] = overlay_config(below, value) if both_dicts else value
    return merged


def dotted_fields(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config's fields by dotted name (an empty dict is a field of its own).

    ``{"amg": {"points_per_side": 32}}`` -> ``{"amg.points_per_side": 32}``.
    """
    fields: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict) and value:
            fields.update(dotted_fields(value, f"{prefix}{key}."))
        else:
            fields[f"{prefix}{key}"] = value
    return fields


def set_fields(override: dict[str, Any], base: dict[str, Any] | None = None) -> list[str]:
    """The dotted names of the fields a partial config sets: ``["amg.points_per_side", "gate.sigma"]``.

    With ``base``, those it sets to another value than ``base`` holds: the Prefect UI's run form sends the whole
    config, every field of it "set", where a user changed two.
    """
    below = dotted_fields(base or {})
    return [name for name, value in dotted_fields(override).items() if base is None or below.get(name, ...) != value]
