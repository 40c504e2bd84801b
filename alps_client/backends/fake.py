"""A numpy FAKE SAM for tests: SAM's backend interface and frames, colour regions as masks. NOT SAM.

Unit and flow tests of everything above the backend (generator, gate, features, clustering, writer, the flow)
need masks that behave like SAM's — several granularities per prompt, confident and unsure ones, thousands per
image on a dense scene — without exporting a model. This backend gives them in plain numpy, with no ONNX file
and no torch. A model repository whose manifest says ``model_type: "fake"`` (written by
:func:`write_fake_repository`) makes :func:`alps_client.backends.make_backend` return it, so subprocess tests
(``alps run``) use it exactly as they would use a real repository.

- **Encoder**: the image is resized and padded as SAM's (:func:`prepare_encoder_input`); channels 0-47 hold the
  mean colour of each 4x4-pixel block of the 1024 frame (the 256x256 low-resolution mask frame, packed 16 blocks
  per 16x16 cell), channels 48-255 the cell's colour mean and spread under a fixed orthonormal projection, so
  pooled features describe colour and texture.
- **Decoder**: the low-res colour frame is unpacked and split into *regions*: connected pixels with no colour
  edge between them. A prompt's three masks are SAM's sub-part / part / whole: its region within one tile of a
  fixed grid, its region, and every region of about the same colour. Logits are ``LOGIT`` inside and
  ``-LOGIT / 2`` outside (asymmetric, so that upsampling never puts a boundary pixel exactly on the 0 threshold);
  predicted IoUs are fixed per granularity (lower for cut or merged masks).
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from alps_client.backends.base import ClosedOnExit, DecoderOutput, Embedding
from alps_client.backends.fake_faults import FaultInjector
from alps_client.backends.manifest import MANIFEST_FORMAT, MANIFEST_NAME, ModelManifest
from alps_client.backends.preprocess import IMAGE_SIZE, check_image_list, prepare_encoder_input

FAKE_MODEL_TYPE = "fake"
LOW_RES = 256
BLOCK = IMAGE_SIZE // LOW_RES  # 4 pixels of the 1024 frame per low-res pixel
CELL = 16  # pixels of the 1024 frame per embedding cell
COLOUR_CHANNELS = 3 * (CELL // BLOCK) ** 2  # 48
EDGE = 20.0 / 255.0  # colour step between neighbouring low-res pixels that separates regions
SAME_COLOUR = 30.0 / 255.0  # regions this close in mean colour form the "whole" mask
SUBPART_TILE = 64  # low-res pixels: a sub-part is the region within one tile of this grid
LOGIT = 40.0  # steep edges: thresholds at +/-1 (stability) move the boundary by a sliver
IOU = {"part": 0.97, "cut": 0.86, "merged": 0.89}


def fake_manifest(prompt_batch_size: int = 64, faults: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``manifest.json`` content of a fake repository (the same roles and shapes as an exported SAM).

    ``faults`` (see :mod:`alps_client.backends.fake_faults`) do not change the model's identity (its sha256),
    so runs with and without them share shards.
    """
    options = {"prompt_batch_size": prompt_batch_size, "faults": faults or {}}
    identity = {"prompt_batch_size": prompt_batch_size, "faults": {}}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()

    def model(name: str, inputs: dict[str, Any], outputs: dict[str, Any]) -> dict[str, Any]:
        return {"name": name, "path": "(numpy fake: no file)", "sha256": f"{name}-{digest}", "inputs": inputs,
                "outputs": outputs}

    def spec(name: str, dtype: str, shape: list[int]) -> dict[str, Any]:
        return {"name": name, "dtype": dtype, "shape": shape}

    return {
        "format_version": MANIFEST_FORMAT,
        "model_type": FAKE_MODEL_TYPE,
        "is_stand_in": True,
        "random_init": False,
        "note": "FAKE numpy test model, not SAM: colour regions as masks, for tests only",
        "image_size": IMAGE_SIZE,
        "mask_threshold": 0.0,
        "fake": options,
        "models": {
            "encoder": model("sam_encoder",
                             {"images": spec("images", "uint8", [-1, IMAGE_SIZE, IMAGE_SIZE, 3]),
                              "input_size": spec("input_size", "int64", [-1, 2])},
                             {"image_embeddings": spec("image_embeddings", "float32", [-1, 256, 64, 64])}),
            "decoder": model("sam_decoder",
                             {"image_embeddings": spec("image_embeddings", "float32", [1, 256, 64, 64]),
                              "point_coords": spec("point_coords", "float32", [-1, -1, 2]),
                              "point_labels": spec("point_labels", "float32", [-1, -1])},
                             {"low_res_masks": spec("low_res_masks", "float32", [-1, 3, LOW_RES, LOW_RES]),
                              "iou_predictions": spec("iou_predictions", "float32", [-1, 3])}),
        },
    }


def write_fake_repository(root: str | Path, prompt_batch_size: int = 64, faults: dict[str, Any] | None = None) -> Path:
    """Write a model repository (a manifest only) that selects :class:`FakeSamBackend`; returns ``root``.

    ``faults`` makes it fail on purpose (transiently, permanently for some images, or pause): see
    :mod:`alps_client.backends.fake_faults`.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / MANIFEST_NAME).write_text(json.dumps(fake_manifest(prompt_batch_size, faults), indent=2, sort_keys=True))
    return root


def _projection(rows: int = 256 - COLOUR_CHANNELS, cols: int = 6) -> npt.NDArray[np.float32]:
    q, _ = np.linalg.qr(np.random.RandomState(0).standard_normal((rows, cols)))
    return q.astype(np.float32)


def _patch_sums(values: npt.NDArray[np.integer], size: int) -> npt.NDArray[np.uint64]:
    """Sums over ``size`` x ``size`` patches of ``(H, W, C)`` integers -> ``(H / size, W / size, C) uint64``.

    Rows first, then columns, each over contiguous memory: exact, and ~5x faster than a float mean over two
    strided axes (the fake encodes every image of the flow tests).
    """
    h, w, c = values.shape
    rows = values.reshape(h // size, size, w * c).sum(axis=1, dtype=np.uint64)
    return rows.reshape(h // size, w // size, size, c).sum(axis=2)


def fake_features(padded: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """``(1024, 1024, 3) uint8`` padded frame -> ``(256, 64, 64) float32`` fake embedding (see module docs)."""
    per = CELL // BLOCK
    block_sums = _patch_sums(padded, BLOCK)  # (256, 256, 3)
    blocks = (block_sums / (BLOCK * BLOCK * 255.0)).astype(np.float32)
    # pixel_unshuffle order: channel = c * 16 + dy * 4 + dx
    packed = blocks.reshape(64, per, 64, per, 3).transpose(4, 1, 3, 0, 2).reshape(COLOUR_CHANNELS, 64, 64)
    squares = padded.astype(np.uint32)
    squares *= squares
    pixels = CELL * CELL
    mean = _patch_sums(block_sums, per) / (pixels * 255.0)  # (64, 64, 3)
    variance = np.maximum(_patch_sums(squares, CELL) / (pixels * 255.0**2) - mean**2, 0.0)
    stats = np.concatenate([mean, np.sqrt(variance)], axis=-1).astype(np.float32)  # (64, 64, 6)
    described = np.einsum("cs,hws->chw", _projection(), stats)
    return np.concatenate([packed, described]).astype(np.float32)


def colour_frame(features: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Unpack the ``(256, 256, 3)`` low-res colour frame from a fake embedding's first 48 channels."""
    per = CELL // BLOCK
    return features[:COLOUR_CHANNELS].reshape(3, per, per, 64, 64).transpose(3, 1, 4, 2, 0).reshape(LOW_RES, LOW_RES, 3)


class _Regions:
    """Regions of one image's low-res frame: ``ids (256, 256) int32`` (1..n) and their mean colours."""

    def __init__(self, frame: npt.NDArray[np.float32]) -> None:
        from scipy import ndimage

        smooth = ndimage.median_filter(frame, size=(3, 3, 1), mode="nearest")  # keeps edges, drops texture
        step_x = np.abs(np.diff(smooth, axis=1)).max(axis=2) > EDGE  # (256, 255)
        step_y = np.abs(np.diff(smooth, axis=0)).max(axis=2) > EDGE  # (255, 256)
        edge = np.zeros(frame.shape[:2], bool)
        edge[:, 1:] |= step_x
        edge[1:, :] |= step_y
        ids, n = ndimage.label(~edge)
        # Edge pixels join their nearest region, so regions tile the frame and masks keep their borders.
        nearest = ndimage.distance_transform_edt(ids == 0, return_distances=False, return_indices=True)
        self.ids = ids[tuple(nearest)] if n else ids
        index = np.arange(1, n + 1)
        self.colour = np.stack([ndimage.mean(frame[..., c], self.ids, index) for c in range(3)], axis=1) if n else \
            np.zeros((0, 3))
        # Prompts come in grid order, so neighbours mostly share a region and tile. 16 entries: 12 MB per image;
        # lru_cache is thread-safe.
        self._logits_of = functools.lru_cache(maxsize=16)(self._region_logits)

    def logits(self, x: float, y: float) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """``(3, 256, 256) float32`` sub-part / part / whole logits and ``(3,)`` predicted IoUs of a point (1024 frame).

        Read-only arrays, cached: the points of one region and tile get the same masks.
        """
        px = int(np.clip(x // BLOCK, 0, LOW_RES - 1))
        py = int(np.clip(y // BLOCK, 0, LOW_RES - 1))
        return self._logits_of(int(self.ids[py, px]), py // SUBPART_TILE * SUBPART_TILE,
                               px // SUBPART_TILE * SUBPART_TILE)

    def _region_logits(self, region: int, ty: int, tx: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        part = self.ids == region
        sub = np.zeros_like(part)
        sub[ty : ty + SUBPART_TILE, tx : tx + SUBPART_TILE] = part[ty : ty + SUBPART_TILE, tx : tx + SUBPART_TILE]
        similar = np.abs(self.colour - self.colour[region - 1]).max(axis=1) <= SAME_COLOUR  # (n,): ids 1..n
        whole = np.concatenate([[False], similar])[self.ids]
        ious = [IOU["part"] if (sub == part).all() else IOU["cut"], IOU["part"],
                IOU["part"] if (whole == part).all() else IOU["merged"]]
        logits = np.where(np.stack([sub, part, whole]), np.float32(LOGIT), np.float32(-LOGIT / 2))
        scores = np.asarray(ious, np.float32)
        logits.flags.writeable = scores.flags.writeable = False
        return logits, scores


class FakeSamBackend(ClosedOnExit):
    """The numpy fake (see module docs); :class:`alps_client.backends.SamBackend` interface. NOT SAM.

    Attributes:
        encode_calls: images encoded so far (tests check resume skips encoding).
        decode_calls: decoder calls so far.
    """

    runs_on = "numpy FAKE test model"

    def __init__(self, manifest: ModelManifest) -> None:
        if manifest.model_type != FAKE_MODEL_TYPE:
            raise ValueError(f"FakeSamBackend needs a fake model repository, got model type {manifest.model_type!r}")
        self.manifest = manifest
        self.options = dict(manifest.raw.get("fake", {}))
        self._faults = FaultInjector(self.options.get("faults") or {})
        self.on_gpu = False
        self.encode_calls = 0
        self.decode_calls = 0
        self._lock = threading.Lock()
        self._regions: OrderedDict[bytes, _Regions] = OrderedDict()

    @property
    def prompt_batch_size(self) -> int:
        """Prompts per decoder call (from the fake repository's manifest)."""
        return int(self.options.get("prompt_batch_size", 64))

    def encode(self, images: Sequence[npt.NDArray[np.uint8]]) -> list[Embedding]:
        """Fake embeddings of ``(H, W, 3) uint8`` RGB images, in SAM's resized-and-padded frame."""
        check_image_list(images)
        out = []
        for image in images:
            self._faults.before_encode((int(image.shape[0]), int(image.shape[1])))
            padded, input_size = prepare_encoder_input(image, IMAGE_SIZE)
            out.append(Embedding(fake_features(padded), input_size, (int(image.shape[0]), int(image.shape[1]))))
            with self._lock:
                self.encode_calls += 1
        return out

    def _regions_of(self, features: npt.NDArray[np.float32]) -> _Regions:
        key = hashlib.sha1(np.ascontiguousarray(features[:COLOUR_CHANNELS]).tobytes()).digest()
        with self._lock:
            found = self._regions.get(key)
        if found is None:
            found = _Regions(colour_frame(features))
            with self._lock:
                self._regions[key] = found
                while len(self._regions) > 8:
                    self._regions.popitem(last=False)
        return found

    def decode(self, embedding: Embedding, point_coords: npt.NDArray[np.float32],
               point_labels: npt.NDArray[np.float32], mask_input: npt.NDArray[np.float32] | None = None,
               iou_threshold: float | None = None) -> DecoderOutput:
        """Three masks per prompt; the first foreground point of each prompt decides (see module docs).

        ``mask_input`` (SAM 2's refinement input) must be None: this stand-in is of the SAM family.
        ``iou_threshold`` is accepted and ignored: every mask is computed (a skipped one would save nothing here).
        """
        if mask_input is not None:
            raise ValueError("mask_input is a SAM 2 decoder input; the fake backend stands in for SAM")
        if point_coords.ndim != 3 or point_coords.shape[2] != 2 or point_labels.shape != point_coords.shape[:2]:
            raise ValueError(f"point_coords must be (B, N, 2) and point_labels (B, N), got {point_coords.shape} and "
                             f"{point_labels.shape}")
        with self._lock:
            self.decode_calls += 1
        regions = self._regions_of(embedding.features)
        b = point_coords.shape[0]
        logits = np.empty((b, 3, LOW_RES, LOW_RES), np.float32)  # every row written below (np.full: 10 ms)
        ious = np.zeros((b, 3), np.float32)
        for i in range(b):
            foreground = np.flatnonzero(point_labels[i] == 1)
            if len(foreground) == 0:
                logits[i] = -LOGIT / 2
                continue
            x, y = point_coords[i, foreground[0]]
            logits[i], ious[i] = regions.logits(float(x), float(y))
        return DecoderOutput(logits, ious)

    def close(self) -> None:
        """Nothing to release."""
        self._regions.clear()
