"""Finding SAM's weights in a checkpoint, wherever training code put them (Meta's release or a fine-tune)."""

from __future__ import annotations

from typing import Any

# Where training code keeps SAM's weights in a checkpoint, besides the file being the state dict itself (Meta's
# release): under "model" (SAM fine-tuning scripts, beside "optimizer" and "epoch") or "state_dict"
# (PyTorch Lightning). Keys may carry one prefix: "module." (DistributedDataParallel), "model." (a wrapper).
WEIGHT_ENTRIES = ("model", "state_dict")


def find_weights(data: object, expected: set[str]) -> tuple[Any, str]:
    """The weights in a loaded checkpoint: the state dict with exactly the ``expected`` keys, and where it was.

    Returns:
        ``(state, where)``: ``where`` is ``""`` when the file is the state dict itself, else its entry and prefix
        (``"the 'model' entry, keys prefixed 'module.'"``). When nothing matches, the innermost candidate as it
        is, for ``load_state_dict`` to name the difference (a fine-tune with other layers is refused there).
    """
    candidates = [("", data)] + [(f"the '{entry}' entry", data[entry]) for entry in WEIGHT_ENTRIES
                                 if isinstance(data, dict) and isinstance(data.get(entry), dict)]
    for where, state in candidates:
        prefix = _key_prefix(state, expected) if isinstance(state, dict) else None
        if prefix == "":
            return state, where
        if prefix is not None:
            stripped = {key[len(prefix):]: value for key, value in state.items()}
            return stripped, ", ".join(filter(None, [where, f"keys prefixed '{prefix}'"]))
    return candidates[-1][1], ""


def _key_prefix(state: dict[Any, Any], expected: set[str]) -> str | None:
    """The prefix that every key of ``state`` has and whose removal leaves exactly ``expected``; else None."""
    if set(state) == expected:
        return ""
    probe = next(iter(sorted(expected)), None)
    for key in state:
        if probe is not None and isinstance(key, str) and key.endswith("." + probe):
            prefix = key[: -len(probe)]
            if all(isinstance(k, str) and k.startswith(prefix) for k in state) and \
                    {k[len(prefix):] for k in state} == expected:
                return prefix
    return None
