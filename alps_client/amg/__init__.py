"""Stage 1, automatic mask generation: Meta's ``SamAutomaticMaskGenerator`` / ``SAM2AutomaticMaskGenerator`` in numpy.

:func:`make_mask_generator` picks the generator from the model repository's ``model_family``.
"""

from __future__ import annotations

import dataclasses

from alps_client.amg.generator import MaskGenerationResult, MaskGenerator
from alps_client.amg.sam2_generator import Sam2MaskGenerator
from alps_client.backends.base import SamBackend
from alps_client.config import AmgConfig


def make_mask_generator(backend: SamBackend, config: AmgConfig | None = None) -> MaskGenerator:
    """The generator for ``backend``'s model family: :class:`MaskGenerator` (SAM) or :class:`Sam2MaskGenerator`."""
    if backend.manifest.model_family == "sam2":
        return Sam2MaskGenerator(backend, config)
    return MaskGenerator(backend, config)


def family_defaults_unset(config: AmgConfig, model_family: str) -> AmgConfig:
    """``config`` with ``pred_iou_thresh`` unset (None) where it is ``model_family``'s default anyway.

    The same masks whether a user typed the family's default (``--pred-iou-thresh 0.8`` for SAM 2.1) or left it
    out, so one labelling configuration: a rerun skips what the other labelled instead of refusing a change.
    """
    generator = Sam2MaskGenerator if model_family == "sam2" else MaskGenerator
    if config.pred_iou_thresh == generator.default_pred_iou_thresh:
        return dataclasses.replace(config, pred_iou_thresh=None)
    return config


__all__ = ["MaskGenerationResult", "MaskGenerator", "Sam2MaskGenerator", "family_defaults_unset", "make_mask_generator"]
