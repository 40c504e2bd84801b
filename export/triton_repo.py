"""Triton model repository: ``config.pbtxt`` rendering (pure), the manifest (one function for every model family),
and the staged write of the model folders."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alps_client.backends.manifest import MANIFEST_FORMAT, MANIFEST_NAME, SHA256_PARAMETER, sha256_of
from export.errors import ExportError

ENCODER_MODEL = "sam_encoder"
DECODER_MODEL = "sam_decoder"
TRITON_DTYPES = {"uint8": "TYPE_UINT8", "int64": "TYPE_INT64", "float32": "TYPE_FP32"}
_DYNAMIC_BATCHING_BLOCK = re.compile(r"\ndynamic_batching \{[^}]*\}\n")
_SHA256_BLOCK = re.compile(r'\nparameters: \{\n  key: "' + SHA256_PARAMETER + r'"\n  value: \{ string_value: "[0-9a-f]*" \}\n\}\n')


def _tensor_block(name: str, dtype: str, dims: Sequence[int], optional: bool = False) -> str:
    dims_text = ", ".join(str(d) for d in dims)
    flag = "\n    optional: true" if optional else ""
    return f'  {{\n    name: "{name}"\n    data_type: {TRITON_DTYPES[dtype]}\n    dims: [ {dims_text} ]{flag}\n  }}'


def render_config_pbtxt(
    name: str,
    inputs: Sequence[tuple[str, str, Sequence[int]] | tuple[str, str, Sequence[int], bool]],
    outputs: Sequence[tuple[str, str, Sequence[int]]],
    max_batch_size: int,
    instance_kind: str = "KIND_GPU",
    instance_count: int = 1,
    max_queue_delay_us: int | None = None,
    preferred_batch_sizes: Sequence[int] = (),
    comment: str = "",
    version: int = 1,
) -> str:
    """Render a Triton ``config.pbtxt`` for an ONNX model.

    Args:
        name: Triton model name (the folder name).
        inputs: ``(tensor name, numpy dtype name, dims)``, or with a fourth item True for an optional input (the
            ONNX file gives it a default); dims exclude the batch dim when ``max_batch_size > 0``, as Triton
            expects; -1 marks a dynamic dim.
        outputs: same as inputs.
        max_batch_size: Triton's batch limit; 0 disables Triton batching for this model.
        instance_kind: ``KIND_GPU`` or ``KIND_CPU``.
        instance_count: model instances (parallel executions).
        max_queue_delay_us: enables dynamic batching with this delay (needs ``max_batch_size > 0``).
        preferred_batch_sizes: dynamic batching's preferred sizes.
        comment: lines written as ``#`` comments at the top.
        version: the one version folder Triton serves (``version_policy: specific``), the manifest's: a newer
            folder copied beside it (Triton's default serves the latest) is not served in its place, unseen by a
            client that checks the model-level config.

    Returns:
        The config text.
    """
    if max_queue_delay_us is not None and max_batch_size <= 0:
        raise ValueError(f"dynamic batching needs max_batch_size > 0, got {max_batch_size}")
    if instance_kind not in ("KIND_GPU", "KIND_CPU"):
        raise ValueError(f"instance_kind must be KIND_GPU or KIND_CPU, got {instance_kind!r}")
    lines = [f"# {line}" for line in comment.splitlines()]
    lines += [f'name: "{name}"', 'platform: "onnxruntime_onnx"', f"max_batch_size: {max_batch_size}",
              f"version_policy: {{ specific: {{ versions: [ {version} ] }} }}"]
    lines.append("input [\n" + ",\n".join(_tensor_block(*t) for t in inputs) + "\n]")
    lines.append("output [\n" + ",\n".join(_tensor_block(*t) for t in outputs) + "\n]")
    if max_queue_delay_us is not None:
        preferred = ""
        if preferred_batch_sizes:
            preferred = f"\n  preferred_batch_size: [ {', '.join(str(b) for b in preferred_batch_sizes)} ]"
        lines.append(f"dynamic_batching {{{preferred}\n  max_queue_delay_microseconds: {max_queue_delay_us}\n}}")
    lines.append(f"instance_group [\n  {{\n    count: {instance_count}\n    kind: {instance_kind}\n  }}\n]")
    return "\n".join(lines) + "\n"


def write_model_configs(
    enc_path: Path,
    dec_path: Path,
    encoder_io: tuple[Sequence[tuple], Sequence[tuple]],
    decoder_io: tuple[Sequence[tuple], Sequence[tuple]],
    instance_kind: str,
    max_batch_size: int,
    encoder_comment: str,
    decoder_comment: str,
) -> None:
    """Write the ``config.pbtxt`` of both models beside their version folders (``<model>/1/model.onnx``).

    Each config serves only its model's version folder (the manifest's ``path``), whatever other folders appear.

    The encoder batches images dynamically (``max_batch_size``, 5 ms queue); the decoder has no Triton batch
    dimension (the prompts of a request share one image's features) and runs as two instances, so that a client's
    prompt chunks in flight overlap.

    Args:
        enc_path: the encoder's ONNX file, ``<repo>/sam_encoder/1/model.onnx``.
        dec_path: the decoder's ONNX file, ``<repo>/sam_decoder/1/model.onnx``.
        encoder_io: ``(inputs, outputs)`` as :func:`render_config_pbtxt` takes them, dims without the batch dim.
        decoder_io: ``(inputs, outputs)``, full dims.
        instance_kind: ``KIND_GPU`` or ``KIND_CPU``.
        max_batch_size: the encoder's Triton batch limit.
        encoder_comment: what the encoder is, written at the top of its config.
        decoder_comment: the same for the decoder.
    """
    (enc_path.parents[1] / "config.pbtxt").write_text(render_config_pbtxt(
        ENCODER_MODEL, *encoder_io, max_batch_size=max_batch_size, instance_kind=instance_kind,
        max_queue_delay_us=5000, comment=encoder_comment, version=int(enc_path.parent.name)))
    (dec_path.parents[1] / "config.pbtxt").write_text(render_config_pbtxt(
        DECODER_MODEL, *decoder_io, max_batch_size=0, instance_kind=instance_kind, instance_count=2,
        comment=decoder_comment, version=int(dec_path.parent.name)))


def without_dynamic_batching(config_path: Path, why: str) -> None:
    """Take the ``dynamic_batching`` block out of a ``config.pbtxt``, ``why`` written as a comment at its top.

    Triton then runs each request as it came (a client's one image, or its crops), never merged with others.
    """
    text = _DYNAMIC_BATCHING_BLOCK.sub("\n", config_path.read_text())
    config_path.write_text("".join(f"# {line}\n" for line in why.splitlines()) + text)


def model_files(onnx_path: Path) -> list[Path]:
    """``model.onnx`` and, when present, its external data file."""
    data = onnx_path.with_name(onnx_path.name + ".data")
    return [onnx_path, data] if data.exists() else [onnx_path]


def tensor_specs(specs: Mapping[str, tuple[str, str, Sequence[int]]]) -> dict[str, dict[str, Any]]:
    """Role -> {name, dtype, shape} for the manifest (shape includes the batch dim)."""
    return {role: {"name": n, "dtype": d, "shape": list(s)} for role, (n, d, s) in specs.items()}


def stamp_model_config(config_path: Path, sha256: str) -> None:
    """Give a ``config.pbtxt`` the :data:`SHA256_PARAMETER` of its model's files (replacing an earlier one)."""
    text = _SHA256_BLOCK.sub("\n", config_path.read_text())
    block = f'parameters: {{\n  key: "{SHA256_PARAMETER}"\n  value: {{ string_value: "{sha256}" }}\n}}\n'
    config_path.write_text(text.rstrip("\n") + "\n" + block)


def check_output_dir(out: Path) -> None:
    """Create the repository folder ``out`` if need be and check that it can be written.

    Raises:
        ExportError: naming the folder and the system's reason.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ExportError(f"output folder {out} is not writable ({err.strerror or err})") from err


def write_manifest(root: Path, manifest: dict[str, Any]) -> Path:
    """Write ``<root>/manifest.json`` atomically (temp file + rename), each model's ``config.pbtxt`` stamped first.

    The stamp is the model files' sha256 (:func:`stamp_model_config`); every way of writing a repository ends
    here (export, int8, fp16).
    """
    for model in manifest["models"].values():
        config = root / Path(model["path"]).parents[1] / "config.pbtxt"
        if config.is_file():
            stamp_model_config(config, model["sha256"])
    manifest = {"format_version": MANIFEST_FORMAT, **manifest}
    path = root / MANIFEST_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def previous_manifest(root: Path) -> dict[str, Any] | None:
    """The manifest ``root`` holds before an export replaces it; None for a new folder or an unreadable one."""
    try:
        manifest = json.loads((root / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and isinstance(manifest.get("models"), dict) else None


def replaced_model(previous: dict[str, Any] | None, manifest: dict[str, Any]) -> str | None:
    """The model an export replaced (``"vit_b, RANDOM weights ..., exported 2026-..."``); None when there was
    none, or when the new files are the same bytes (a deterministic export run again: nothing changed for runs)."""
    if previous is None:
        return None
    before = _model_sha256s(previous)
    if before == _model_sha256s(manifest) and None not in before:
        return None
    what = previous.get("note") or previous.get("model_type") or "a model"
    record = previous.get("checkpoint")
    checkpoint = record.get("path") if isinstance(record, dict) else None
    return f"{what}{f' from {checkpoint}' if checkpoint else ''}, exported {previous.get('created', 'earlier')}"


def _model_sha256s(manifest: dict[str, Any]) -> list[Any]:
    """The sha256 of each model's files in ``manifest``, in its order (None where an entry has none)."""
    return [entry.get("sha256") if isinstance(entry, dict) else None for entry in manifest.get("models", {}).values()]


def checkpoint_record(checkpoint: str | None) -> dict[str, str] | None:
    """``{path, sha256}`` of the checkpoint a repository was exported from (None for stand-ins, random weights)."""
    if not checkpoint:
        return None
    return {"path": str(Path(checkpoint).resolve()), "sha256": sha256_of([Path(checkpoint)])}


def model_entry(name: str, onnx_path: Path, inputs: Mapping[str, tuple[str, str, Sequence[int]]],
                outputs: Mapping[str, tuple[str, str, Sequence[int]]], **facts: Any) -> dict[str, Any]:
    """A model's manifest entry: Triton name, path, files and their sha256, tensors by role, and ``facts``."""
    files = model_files(onnx_path)
    return {"name": name, "path": f"{name}/1/model.onnx", "files": [p.name for p in files], "sha256": sha256_of(files),
            "inputs": tensor_specs(inputs), "outputs": tensor_specs(outputs), **facts}


def repository_manifest(
    *, family: str, model_type: str, is_stand_in: bool, random_init: bool, note: str, checkpoint: str | None,
    image_size: int, mask_threshold: float, preprocessing: dict[str, Any], encoder: dict[str, Any],
    decoder: dict[str, Any], parity: dict[str, Any], quantization: dict[str, Any] | None, export: dict[str, Any],
    versions: dict[str, str],
) -> dict[str, Any]:
    """The ``manifest.json`` of a model repository (every family): what clients read, and the export's record."""
    return {
        "model_family": family,
        "model_type": model_type,
        "is_stand_in": is_stand_in,
        "random_init": bool(random_init),
        "note": note,
        "checkpoint": checkpoint_record(checkpoint),
        "image_size": image_size,
        "mask_threshold": mask_threshold,
        "preprocessing": preprocessing,
        "models": {"encoder": encoder, "decoder": decoder},
        "parity": parity,
        "precision": "int8-dynamic" if quantization else "fp32",
        "quantization": quantization,
        "export": export,
        "versions": versions,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


@contextmanager
def staged_repository(out: Path) -> Iterator[tuple[Path, Path]]:
    """``(encoder.onnx, decoder.onnx)`` paths in a staging folder under ``out``, swapped in on success.

    On success the two model folders replace those in ``out`` (a failed export leaves ``out`` as it was), and the
    staging folder always goes. The folder is named after the exporting process, and the folders of exports no
    longer running are removed first: an export killed midway (by the out-of-memory killer, or ``kill -9``)
    cannot remove its own, which may hold GBs (vit_h's encoder) and would otherwise stay in the model repository.
    """
    _remove_abandoned_staging(out)
    staging = Path(tempfile.mkdtemp(prefix=f".export-{os.getpid()}-", dir=out))
    try:
        yield staging / ENCODER_MODEL / "1" / "model.onnx", staging / DECODER_MODEL / "1" / "model.onnx"
        for name in (ENCODER_MODEL, DECODER_MODEL):
            target = out / name
            if target.exists():
                shutil.rmtree(target)
            (staging / name).rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _remove_abandoned_staging(out: Path) -> None:
    """Remove ``out/.export-<pid>-*`` folders whose process is gone (and unnamed ones of earlier versions)."""
    import psutil

    for folder in out.glob(".export-*"):
        owner = re.match(r"\.export-(\d+)-", folder.name)
        if folder.is_dir() and not (owner and psutil.pid_exists(int(owner[1]))):
            shutil.rmtree(folder, ignore_errors=True)
