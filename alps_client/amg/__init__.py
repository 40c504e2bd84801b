"""Stage 1, automatic mask generation: Meta's ``SamAutomaticMaskGenerator`` / ``SAM2AutomaticMaskGenerator`` in numpy.

:func:`make_mask_generator` picks the generator from the model repository's ``model_family``.
"""

from __future__ import annotations

import dataclasses

from alps_client.amg.generator import MaskGenerationResult, MaskGenerator
from alps_client.amg.sam2_generator import Sam2MaskGenerator
from alps_client.backends.base import SamBackend
from alps_client.config import AmgConfig


def generator_class(model_family: str) -> type[MaskGenerator]:
    """:class:`Sam2MaskGenerator` for ``sam2`` repositories, :class:`MaskGenerator` for SAM's (``sam``)."""
    return Sam2MaskGenerator if model_family == "sam2" else MaskGenerator


def make_mask_generator(backend: SamBackend, config: AmgConfig | None = None) -> MaskGenerator:
    """The generator for ``backend``'s model family: :class:`MaskGenerator` (SAM) or :class:`Sam2MaskGenerator`."""
    return generator_class(backend.manifest.model_family)(backend, config)


def default_written_otherwise(config: AmgConfig, model_family: str) -> AmgConfig | None:
    """The same masks with ``pred_iou_thresh`` written the other way, or None when it is not the family's default.

    Unset (None) and the family's default typed out (``--pred-iou-thresh 0.8`` for SAM 2.1, 0.88 for SAM) label
    alike, but record, and so fingerprint, differently: a rerun takes the form its dataset's shards were made with.
    """
    default = generator_class(model_family).default_pred_iou_thresh
    if config.pred_iou_thresh is None:
        return dataclasses.replace(config, pred_iou_thresh=default)
    if config.pred_iou_thresh == default:
        return dataclasses.replace(config, pred_iou_thresh=None)
    return None


__all__ = ["MaskGenerationResult", "MaskGenerator", "Sam2MaskGenerator", "default_written_otherwise",
           "generator_class", "make_mask_generator"]
