"""SAM 2.1 model types, Meta's configs and checkpoints, and safe checkpoint loading (export side only).

The architectures come from the ``sam2`` package (1.1.0; its ``sam2/`` tree is Meta's facebookresearch/sam2 at
the December 2024 release): ``build_sam2(config)`` with the Hydra configs it ships under ``configs/sam2.1/``.
Checkpoints are loaded here, not by ``sam2``'s own loader, so that the file is always read with
``torch.load(..., weights_only=True)`` (no pickled code runs) and every failure names the file and the next step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from export.checkpoints import (
    META_CHECKPOINTS,
    SAM2_0,
    SAM2_SIZES,
    check_finite,
    checkpoint_type,
    find_weights,
    holds_none_of,
    model_type_to_give,
    not_this_model,
    read_checkpoint,
    weights_found,
)
from export.errors import ExportError

# --model-type -> (config shipped in the sam2 package, Meta's checkpoint file name).
SAM2_CONFIGS = {
    "sam2.1_hiera_t": ("configs/sam2.1/sam2.1_hiera_t.yaml", "sam2.1_hiera_tiny.pt"),
    "sam2.1_hiera_s": ("configs/sam2.1/sam2.1_hiera_s.yaml", "sam2.1_hiera_small.pt"),
    "sam2.1_hiera_b+": ("configs/sam2.1/sam2.1_hiera_b+.yaml", "sam2.1_hiera_base_plus.pt"),
    "sam2.1_hiera_l": ("configs/sam2.1/sam2.1_hiera_l.yaml", "sam2.1_hiera_large.pt"),
}
# A tiny SAM 2.1 for tests: Meta's builder, config and checkpoint format, with a width-16 Hiera of 5 blocks
# (global attention in block 3: a global block may not open a stage, where Hiera pools queries) and one
# memory-attention layer (unused for images; fewer weights to build). The frame stays 1024 -> 64x64 embedding.
SAM2_TINY_TEST = "sam2-tiny-test"
SAM2_TINY_OVERRIDES = (
    "++model.image_encoder.trunk.embed_dim=16",
    "++model.image_encoder.trunk.num_heads=1",
    "++model.image_encoder.trunk.stages=[1,1,2,1]",
    "++model.image_encoder.trunk.global_att_blocks=[3]",
    "++model.image_encoder.neck.backbone_channel_list=[128,64,32,16]",
    "++model.memory_attention.num_layers=1",
)
SAM2_TYPES = (*SAM2_CONFIGS, SAM2_TINY_TEST)


def sam2_version() -> str:
    """Installed ``sam2`` package version (``importlib.metadata``; the package has no ``__version__``)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sam2")
    except PackageNotFoundError:
        return "unknown"


def _import_build_sam2() -> Any:
    from export.tv_shim import install_torchvision_shim

    install_torchvision_shim()
    try:
        from sam2.build_sam import build_sam2
    except ImportError as err:
        raise ExportError(
            f"the sam2 package is needed to export SAM 2.1 ({err}); run `make setup`, or "
            "`SAM2_BUILD_CUDA=0 pip install --no-deps --no-build-isolation sam2==1.1.0 hydra-core iopath`"
        ) from err
    return build_sam2


def build_sam2_architecture(model_type: str) -> nn.Module:
    """Meta's SAM 2.1 architecture for ``model_type`` with its own random initialisation, on CPU, eval mode.

    ``apply_postprocessing`` stays on, as in ``build_sam2``'s default: the mask decoder then falls back from the
    single-mask token to the best multimask output when the former is unstable (used by ``use_m2m``).
    """
    if model_type not in SAM2_TYPES:
        raise ExportError(f"--model-type must be one of {', '.join(SAM2_TYPES)}, got {model_type!r}")
    build_sam2 = _import_build_sam2()
    if model_type == SAM2_TINY_TEST:
        config, overrides = SAM2_CONFIGS["sam2.1_hiera_t"][0], list(SAM2_TINY_OVERRIDES)
    else:
        config, overrides = SAM2_CONFIGS[model_type][0], []
    return build_sam2(config, ckpt_path=None, device="cpu", hydra_overrides_extra=overrides).eval()


def load_sam2(model_type: str, checkpoint: str | None, random_init: bool,
              log: Callable[[str], None] = lambda _: None) -> nn.Module:
    """Build a SAM 2.1 model to export.

    Args:
        model_type: ``sam2.1_hiera_t|s|b+|l`` or ``sam2-tiny-test``.
        checkpoint: Meta's checkpoint for that size (``sam2.1_hiera_tiny.pt`` ...), or a tiny-test one.
        random_init: the architecture with seeded random weights (seed 0), for shape and speed work only.
        log: told where in the checkpoint the weights were, when not in Meta's ``'model'`` entry (a fine-tune's
            ``'state_dict'``, keys prefixed ``'module.'``: see :func:`export.checkpoints.find_weights`).

    Returns:
        ``sam2.modeling.sam2_base.SAM2Base`` in eval mode on CPU.

    Raises:
        ExportError: For a missing, unreadable or mismatched checkpoint, or inconsistent arguments.
    """
    if random_init and checkpoint:
        raise ExportError("give either --checkpoint or --random-init, not both")
    if not random_init and not checkpoint:
        expected = SAM2_CONFIGS.get(model_type, ("", "a checkpoint saved from this configuration"))[1]
        raise ExportError(
            f"--checkpoint is required for {model_type} (e.g. {expected} from Meta's SAM 2.1 release); "
            "use --random-init for shape/speed work or --model-type sam2-stand-in for the offline demo"
        )
    data = read_checkpoint(checkpoint) if checkpoint else None
    torch.manual_seed(0)
    model = build_sam2_architecture(model_type)
    if data is None:
        return model
    state, where, ignored = find_weights(data, set(model.state_dict()), checkpoint)
    if not isinstance(state, dict) or not any(isinstance(value, torch.Tensor) for value in state.values()):
        keys = sorted(map(str, data))[:5] if isinstance(data, dict) else type(data).__name__
        raise ExportError(
            f"checkpoint {checkpoint} has no 'model' state dict (found {keys}); SAM 2.1 checkpoints from Meta "
            "(e.g. sam2.1_hiera_tiny.pt) hold {'model': state_dict}"
        )
    held = checkpoint_type(state)
    if held in META_CHECKPOINTS or held == SAM2_0:  # not SAM 2.1's layers: load_state_dict would list them all
        raise ExportError(f"checkpoint {checkpoint} holds {held} weights, not SAM 2.1's: give "
                          f"{model_type_to_give(held)}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        if held in SAM2_SIZES.values() and held != model_type:
            raise ExportError(f"checkpoint {checkpoint} holds {held} weights, not {model_type}'s: give "
                              f"{model_type_to_give(held)}") from err
        if held is None and holds_none_of(state, set(model.state_dict())):
            raise not_this_model(checkpoint, model_type, state, "SAM 2.1",
                                 SAM2_CONFIGS[model_type][1] if model_type in SAM2_CONFIGS else None) from err
        first = next((ln.strip() for ln in str(err).splitlines()[1:] if ln.strip()), str(err))
        if len(first) > 160:  # a list of keys: cut between two of them
            cut = first.rfind(", ", 0, 160)
            first = first[:cut] + ", ..." if cut > 0 else first[:160] + "..."
        meta_name = f" ({SAM2_CONFIGS[model_type][1]} is {model_type})" if model_type in SAM2_CONFIGS else ""
        raise ExportError(
            f"checkpoint {checkpoint} does not match --model-type {model_type} ({first}); check that the "
            f"file and the model type belong together{meta_name}"
        ) from err
    check_finite(state, checkpoint)
    if where != "the 'model' entry" or ignored:  # Meta's own layout needs no word
        log(weights_found(model_type, checkpoint, where or "the file's top level (a bare state dict)", ignored))
    return model.eval()
