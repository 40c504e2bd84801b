"""Finding SAM's weights in a checkpoint, wherever training code put them (Meta's release or a fine-tune)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from export.errors import ExportError, readable_checkpoint

# Where training code keeps SAM's weights in a checkpoint, besides the file being the state dict itself (Meta's
# release): under "model" (SAM fine-tuning scripts, beside "optimizer" and "epoch") or "state_dict"
# (PyTorch Lightning). Keys may carry one prefix: "module." (DistributedDataParallel), "model." (a wrapper).
WEIGHT_ENTRIES = ("model", "state_dict")
# Meta's released checkpoints, and the width of each image encoder (its positional embedding's last dimension).
META_CHECKPOINTS = {"vit_h": "sam_vit_h_4b8939.pth", "vit_l": "sam_vit_l_0b3195.pth", "vit_b": "sam_vit_b_01ec64.pth"}
ENCODER_WIDTHS = {1280: "vit_h", 1024: "vit_l", 768: "vit_b"}
SAM2_FAMILY = "SAM 2.1"
SAM2_0 = "SAM 2 (the first release, not 2.1)"
# SAM 2.1's sizes by their Hiera trunk: (embed_dim, blocks) of Meta's configs/sam2.1/sam2.1_hiera_*.yaml.
SAM2_SIZES = {(96, 12): "sam2.1_hiera_t", (96, 16): "sam2.1_hiera_s", (112, 24): "sam2.1_hiera_b+",
              (144, 48): "sam2.1_hiera_l"}


def read_checkpoint(checkpoint: str | os.PathLike[str]) -> object:
    """A checkpoint as ``torch.load(..., weights_only=True)`` reads it: tensors only, no pickled code runs.

    SAM's and SAM 2.1's files are multi-GB downloads: the likeliest cause of an unreadable one is an interrupted
    download, so the refusal gives the file's size and says how to check it.

    Raises:
        ExportError: For a missing or unreadable file, one that looks truncated or corrupt (its size and the next
            step), or one holding pickled objects or code.
    """
    import pickle
    import zipfile

    import torch

    path = readable_checkpoint(checkpoint)
    if _is_safetensors(path):  # torch.load's reason (safetensors not installed) was called a truncated download
        raise ExportError(
            f"checkpoint {checkpoint} is a safetensors file; alps reads PyTorch checkpoints (torch.save's, as Meta's "
            f".pth/.pt): convert it once with `pip install safetensors` and `python -c \"import sys, torch, "
            f"safetensors.torch as st; torch.save(st.load_file(sys.argv[1]), sys.argv[2])\" {path.name} "
            f"{path.stem}.pth`, then give the .pth"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not zipfile.is_zipfile(path):  # not torch.save's archive at all (a cut download, an HTML error page)
            raise _corrupt(checkpoint, path.stat().st_size, "not a torch.save archive") from err
        raise ExportError(
            f"checkpoint {checkpoint} holds more than tensors (pickled objects or code), which alps refuses to "
            "load (torch.load weights_only=True); use Meta's released checkpoint or a plain state_dict"
        ) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile) as err:  # torch's zip reader, or a file that ends early
        raise _corrupt(checkpoint, path.stat().st_size, first_sentence(err)) from err


def _is_safetensors(path: Path) -> bool:
    """Whether ``path`` starts as a safetensors file does: an 8-byte little-endian header length, then JSON."""
    with path.open("rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:] == b"{" and 0 < int.from_bytes(head[:8], "little") < path.stat().st_size


def _corrupt(checkpoint: str | os.PathLike[str], size: int, reason: str) -> ExportError:
    found = "the file is empty, 0 bytes" if size == 0 else f"{size:,} bytes; {reason.rstrip('.')}"
    return ExportError(
        f"checkpoint {checkpoint} is not a readable PyTorch checkpoint ({found}): it looks truncated or corrupt; "
        "download it again and compare its size and sha256 with Meta's release (or with wherever the file came from)"
    )


def first_sentence(err: BaseException) -> str:
    """The first sentence of an error's text: torch's zip errors go on for lines of advice that do not apply."""
    text = " ".join(str(err).split())
    if not text:
        return type(err).__name__
    end = text.find(". ")
    return text if end < 0 else text[: end + 1]


def find_weights(data: object, expected: set[str], checkpoint: object = "the checkpoint") -> tuple[Any, str, list[str]]:
    """The weights in a loaded checkpoint: the state dict with the ``expected`` keys, where it was, what was left.

    Training code saves the model beside other things: under a prefix (``model.`` of a Lightning module) next to a
    loss's or metric's buffers or an auxiliary head (``criterion.pos_weight``), or SAM's keys plus such an entry
    without prefix. Those entries are not SAM's and are left out. An extra key *inside* one of SAM's modules
    (``image_encoder.blocks.0.adapter.weight``) is another architecture: nothing is left out then, and
    ``load_state_dict`` names the key.

    Args:
        data: what ``torch.load`` returned.
        expected: the model's ``state_dict()`` keys.
        checkpoint: the file, for the message when the weights are there twice.

    Returns:
        ``(state, where, ignored)``: ``where`` is ``""`` when the file is the state dict itself, else its entry and
        prefix (``"the 'model' entry, keys prefixed 'module.'"``); ``ignored`` the entries left out, as named in the
        file. When no prefix holds every expected key, the innermost candidate (its one training prefix taken
        off, if it has one), for ``load_state_dict`` and :func:`checkpoint_type` to name the difference (missing
        keys, another size, another model).

    Raises:
        ExportError: When two prefixes each hold every expected key (a model and its EMA copy): which one is meant
            cannot be guessed.
    """
    candidates = [("", data)] + [(f"the '{entry}' entry", data[entry]) for entry in WEIGHT_ENTRIES
                                 if isinstance(data, dict) and isinstance(data.get(entry), dict)]
    modules = {key.split(".")[0] for key in expected}
    for where, state in candidates:
        if not isinstance(state, dict):
            continue
        prefixes = _key_prefixes(state, expected)
        if len(prefixes) > 1:
            raise ExportError(
                f"checkpoint {checkpoint} holds the model's weights {len(prefixes)} times ("
                + ", ".join(f"keys prefixed '{p}'" if p else "unprefixed keys" for p in prefixes)
                + (f" in {where}" if where else "") + "); save the state dict you mean to export alone"
            )
        if not prefixes:
            continue
        _refuse_other_copies(data, state, expected, where, checkpoint)
        prefix = prefixes[0]
        ours = {key: value for key, value in state.items() if isinstance(key, str) and key.startswith(prefix)}
        inside = [key for key in ours if key[len(prefix):] not in expected
                  and key[len(prefix):].split(".")[0] in modules]
        where = ", ".join(filter(None, [where, f"keys prefixed '{prefix}'" if prefix else ""]))
        if inside:  # a layer SAM lacks: load_state_dict names it alone (as "Unexpected key(s)")
            return {key[len(prefix):]: value for key, value in ours.items()
                    if key in inside or key[len(prefix):] in expected}, where, []
        ignored = [str(key) for key in state if not (isinstance(key, str) and key.startswith(prefix)
                                                     and key[len(prefix):] in expected)]
        return {key[len(prefix):]: state[key] for key in ours if key[len(prefix):] in expected}, where, ignored
    where, state = candidates[-1]
    prefixes = _module_prefixes(state, modules) if isinstance(state, dict) else []
    if len(prefixes) == 1 and prefixes[0]:  # another model under a training prefix: named as without it
        prefix = prefixes[0]
        where = ", ".join(filter(None, [where, f"keys prefixed '{prefix}'"]))
        return {key[len(prefix):]: value for key, value in state.items()
                if isinstance(key, str) and key.startswith(prefix)}, where, []
    return state, "", []


def _refuse_other_copies(data: object, state: dict[Any, Any], expected: set[str], where: str,
                         checkpoint: object) -> None:
    """Refuse a checkpoint whose other top-level entries hold the model's weights too.

    ``model`` and ``model_ema``, ``model`` and ``state_dict``: which copy is meant cannot be guessed, and an EMA's
    is often the one.

    Raises:
        ExportError: naming every entry that holds them.
    """
    if not isinstance(data, dict):
        return
    others = [f"the '{entry}' entry" for entry, value in data.items()
              if isinstance(value, dict) and value is not state and _key_prefixes(value, expected)]
    if others:
        held = [where or "the file's top level", *others]
        raise ExportError(f"checkpoint {checkpoint} holds the model's weights {len(held)} times ({', '.join(held)}); "
                          "save the state dict you mean to export alone")


def check_finite(state: dict[str, Any], checkpoint: object) -> None:
    """Refuse weights holding NaN or infinity (a diverged fine-tune, an fp16 overflow).

    The export and its parity check passed such weights (NaN compares as within any tolerance), and every image's
    masks were then refused by the run as too large for --sigma.

    Raises:
        ExportError: naming the checkpoint, how many tensors and the first.
    """
    import torch

    bad = [key for key, value in state.items()
           if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all())]
    if bad:
        raise ExportError(f"checkpoint {checkpoint} holds NaN or infinite weights in {len(bad)} tensor(s) (first: "
                          f"{bad[0]}): a training run that diverged; export a checkpoint saved before it did")


def _module_prefixes(state: dict[Any, Any], modules: set[str]) -> list[str]:
    """The prefixes before which ``state``'s keys name one of the model's modules, in key order.

    ``'module.'`` for ``module.image_encoder.patch_embed.proj.weight``; ``''`` for keys without one.
    """
    found = []
    for key in state:
        parts = key.split(".") if isinstance(key, str) else []
        at = next((i for i, part in enumerate(parts) if part in modules), None)
        if at is not None:
            found.append("".join(part + "." for part in parts[:at]))
    return list(dict.fromkeys(found))


def _key_prefixes(state: dict[Any, Any], expected: set[str]) -> list[str]:
    """The prefixes under which ``state`` holds every ``expected`` key (``""``: without prefix), in key order."""
    probe = next(iter(sorted(expected)), None)
    if probe is None:
        return []
    found = [key[: -len(probe)] for key in state
             if isinstance(key, str) and (key == probe or key.endswith("." + probe))]
    return [prefix for prefix in dict.fromkeys(found) if all(prefix + key in state for key in expected)]


def weights_found(model_type: str, checkpoint: object, where: str, ignored: list[str]) -> str:
    """The one log line saying where :func:`find_weights` found the weights and which entries it left out."""
    line = f"Weights of {model_type} read from {where or 'the top level'} of {checkpoint}"
    if ignored:
        few = ", ".join(ignored[:3]) + (", ..." if len(ignored) > 3 else "")
        line += (f"; {len(ignored)} other {'entry' if len(ignored) == 1 else 'entries'} of the file, not "
                 f"{model_type}'s, ignored ({few})")
    return line + "."


def checkpoint_type(state: dict[Any, Any]) -> str | None:
    """Which model's weights ``state`` holds, by their shapes; None when it is none of those below.

    Returns:
        ``vit_h`` / ``vit_l`` / ``vit_b`` (SAM), ``sam2.1_hiera_t|s|b+|l``, ``SAM 2.1`` (another Hiera: a
        tiny test's), or :data:`SAM2_0` (SAM 2's first release, whose layers 2.1 changed).
    """
    keys = [key for key in state if isinstance(key, str)]
    if any(key.startswith("image_encoder.trunk.") for key in keys):  # SAM 2's Hiera encoder
        if "no_obj_embed_spatial" not in state:  # added by SAM 2.1 (configs/sam2.1: no_obj_embed_spatial: true)
            return SAM2_0
        patch = getattr(state.get("image_encoder.trunk.patch_embed.proj.weight"), "shape", (0,))
        blocks = {int(key.split(".")[3]) for key in keys
                  if key.startswith("image_encoder.trunk.blocks.") and key.split(".")[3].isdigit()}
        return SAM2_SIZES.get((int(patch[0]), len(blocks)), SAM2_FAMILY)
    shape = getattr(state.get("image_encoder.pos_embed"), "shape", ())
    return ENCODER_WIDTHS.get(int(shape[-1])) if len(shape) == 4 else None


def holds_none_of(state: object, expected: set[str]) -> bool:
    """Whether ``state`` holds not one of the ``expected`` keys, under any prefix.

    Such a file is a checkpoint of another kind of model (a detector's ``backbone.conv1.weight``), not one of this
    model with a layer changed.
    """
    if not isinstance(state, dict):
        return True
    for key in state:
        parts = key.split(".") if isinstance(key, str) else []
        if any(".".join(parts[i:]) in expected for i in range(len(parts))):
            return False
    return True


def not_this_model(checkpoint: object, model_type: str, state: object, family: str, meta_file: str | None) -> ExportError:
    """The refusal of a checkpoint that :func:`holds_none_of` the model's weights.

    It names a few of the file's keys and ``meta_file``, Meta's checkpoint of ``model_type`` (None for a test
    configuration).
    """
    keys = [str(key) for key in state][:3] if isinstance(state, dict) else []
    found = f"its keys begin {', '.join(repr(k) for k in keys)}" if keys else "it holds no named tensors"
    give = f"Meta's {meta_file} or a fine-tune of it" if meta_file else f"a checkpoint of {model_type}"
    return ExportError(f"checkpoint {checkpoint} holds none of {model_type}'s weights ({found}): it is not a "
                       f"{family} checkpoint; give {give}")


def model_type_to_give(held: str) -> str:
    """What exports weights of ``held`` (a :func:`checkpoint_type` answer): the ``--model-type`` to give."""
    if held in META_CHECKPOINTS or held in SAM2_SIZES.values():
        return f"--model-type {held}"
    if held == SAM2_0:
        return "a SAM 2.1 checkpoint (sam2.1_hiera_*.pt from Meta's SAM 2.1 release) with --model-type " \
               "sam2.1_hiera_t|s|b+|l; alps exports SAM 2.1's architecture only"
    return "--model-type sam2.1_hiera_t|s|b+|l"
