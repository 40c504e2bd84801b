"""Stage 1, automatic mask generation: Meta's ``SamAutomaticMaskGenerator`` / ``SAM2AutomaticMaskGenerator`` in numpy.

:func:`make_mask_generator` picks the generator from the model repository's ``model_family``.
"""

from __future__ import annotations

from alps_client.amg.generator import MaskGenerationResult, MaskGenerator
from alps_client.amg.sam2_generator import Sam2MaskGenerator
from alps_client.backends.base import SamBackend
from alps_client.config import AmgConfig


def make_mask_generator(backend: SamBackend, config: AmgConfig | None = None) -> MaskGenerator:
    """The generator for ``backend``'s model family: :class:`MaskGenerator` (SAM) or :class:`Sam2MaskGenerator`."""
    if backend.manifest.model_family == "sam2":
        return Sam2MaskGenerator(backend, config)
    return MaskGenerator(backend, config)


__all__ = ["MaskGenerationResult", "MaskGenerator", "Sam2MaskGenerator", "make_mask_generator"]
