"""The backend protocol shared by the embedded (onnxruntime) and Triton backends."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from alps_client.backends.manifest import ModelManifest


@dataclass(frozen=True)
class Embedding:
    """SAM image embedding of one image (or crop), with the frames needed to map masks back.

    Attributes:
        features: ``(256, 64, 64) float32`` embedding of the ``1024 x 1024`` input frame.
        input_size: ``(h, w)`` of the image inside the 1024 frame: the unpadded region for SAM (longest side
            resized to 1024, then padded); ``(1024, 1024)`` for SAM 2, whose encoder stretches the whole image to
            the frame (no padding), so the valid region is the whole frame.
        original_size: ``(H, W)`` of the image that was encoded, in pixels.
        high_res_features: SAM 2 only: ``((32, 256, 256), (64, 128, 128)) float32`` maps the decoder also takes.
    """

    features: npt.NDArray[np.float32]
    input_size: tuple[int, int]
    original_size: tuple[int, int]
    high_res_features: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]] | None = None


@dataclass(frozen=True)
class DecoderOutput:
    """Decoder output for B prompts of one image.

    Attributes:
        low_res_masks: ``(B, K, 256, 256) float32`` mask logits in the 1024 frame at 1/4 scale; K = 3 multimask
            outputs for SAM, K = 4 mask tokens for SAM 2 (token 0 single-mask, 1-3 multimask).
        iou_predictions: ``(B, K) float32`` predicted IoU of each output.
    """

    low_res_masks: npt.NDArray[np.float32]
    iou_predictions: npt.NDArray[np.float32]


@runtime_checkable
class SamBackend(Protocol):
    """What the mask generator needs from a SAM deployment; tensor names come from ``manifest``."""

    manifest: ModelManifest
    #: what runs the model, as each shard records it (``onnxruntime CPUExecutionProvider``, ``Triton server``):
    #: a dataset says where its images were labelled, a GPU that fell back to the CPU included
    runs_on: str

    @property
    def prompt_batch_size(self) -> int:
        """Prompts per decoder call this backend handles well (memory-bounded on CPU, large on GPU)."""
        ...

    def encode(self, images: Sequence[npt.NDArray[np.uint8]]) -> list[Embedding]:
        """Embed images.

        Args:
            images: each ``(H, W, 3) uint8`` RGB, any size; resized and padded as Meta's ``SamPredictor`` (SAM),
                or sent as they are, the encoder resizing them as ``SAM2ImagePredictor`` (SAM 2).

        Returns:
            One Embedding per image, in order.
        """
        ...

    def decode(
        self,
        embedding: Embedding,
        point_coords: npt.NDArray[np.float32],
        point_labels: npt.NDArray[np.float32],
        mask_input: npt.NDArray[np.float32] | None = None,
        iou_threshold: float | None = None,
    ) -> DecoderOutput:
        """Predict the masks of each prompt (3 for SAM, the 4 mask tokens for SAM 2).

        Args:
            embedding: the image's embedding from :meth:`encode`.
            point_coords: ``(B, N, 2) float32`` prompt points (x, y) in the resized 1024 frame.
            point_labels: ``(B, N) float32``, 1 foreground, 0 background. Meta's padding point is added
                by the exported decoder itself.
            mask_input: SAM 2 only: ``(B, 1, 256, 256) float32`` low-res logits of a previous prediction, one per
                prompt (``use_m2m``); None for point prompts alone.
            iou_threshold: a caller that drops every mask whose predicted IoU is at or below this value may pass
                it: a decoder that declares the ``iou_threshold`` input then skips the upscaling of prompts
                whose three IoUs all fall at or below it, and their masks come back empty (very negative
                logits). Other decoders (SAM 2, the fake) ignore it. IoU predictions are always complete.

        Returns:
            DecoderOutput with B rows.
        """
        ...

    def close(self) -> None:
        """Release sessions, connections and shared memory."""
        ...


class ClosedOnExit:
    """A backend as a context manager: ``with make_backend(config) as backend:`` calls its ``close`` at the end."""

    def close(self) -> None:
        """Release what the backend holds (each backend's own)."""
        raise NotImplementedError

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
