"""Reading the model repository manifest: how clients learn tensor names, shapes and preprocessing.

``export/export_sam.py`` writes ``<repo>/manifest.json``; clients read it and never guess tensor names.
Tensors are addressed by *role* (``images``, ``point_coords`` …); the manifest maps each role to the
ONNX/Triton tensor name, dtype and shape.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alps_client.errors import ModelRepositoryError

MANIFEST_NAME = "manifest.json"
# The config.pbtxt parameter holding a model's files' sha256 (the manifest's), written at export: a Triton client
# compares it with its manifest to know the server serves that very export.
SHA256_PARAMETER = "alps_sha256"
MANIFEST_FORMAT = 1
ENCODER_ROLES = {"inputs": ("images", "input_size"), "outputs": ("image_embeddings",)}
DECODER_ROLES = {
    "inputs": ("image_embeddings", "point_coords", "point_labels"),
    "outputs": ("low_res_masks", "iou_predictions"),
}
# SAM 2.1: uint8 images of any size in (resize in-graph), the embedding plus two high-resolution feature maps out;
# the decoder also takes those maps and an optional low-res mask per prompt, and returns all 4 mask tokens.
SAM2_ENCODER_ROLES = {"inputs": ("images",), "outputs": ("image_embeddings", "high_res_feats_0", "high_res_feats_1")}
SAM2_DECODER_ROLES = {
    "inputs": ("image_embeddings", "high_res_feats_0", "high_res_feats_1", "point_coords", "point_labels",
               "mask_input", "has_mask_input"),
    "outputs": ("low_res_masks", "iou_predictions"),
}
# model_family -> (encoder roles, decoder roles). Manifests written before SAM 2 have no field: family "sam".
FAMILY_ROLES = {"sam": (ENCODER_ROLES, DECODER_ROLES), "sam2": (SAM2_ENCODER_ROLES, SAM2_DECODER_ROLES)}
# What a user calls each family: a stand-in or random weights is "not SAM 2.1" to someone labelling with SAM 2.1.
FAMILY_NAMES = {"sam": "SAM", "sam2": "SAM 2.1"}
# Inputs a repository may declare and clients then feed; repositories exported before them lack them and work as
# before. ``iou_threshold``: the decoder upscales only prompts with a predicted IoU above it.
DECODER_OPTIONAL_INPUTS = ("iou_threshold",)


def family_name(model_family: str | None) -> str:
    """``SAM`` or ``SAM 2.1``: the model a repository of ``model_family`` stands for (``sam`` when unrecorded)."""
    return FAMILY_NAMES.get(model_family or "sam", "SAM")


@dataclass(frozen=True)
class TensorSpec:
    """One model tensor. ``shape`` uses -1 for dynamic dimensions, batch dimension included."""

    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelSpec:
    """One model of the repository (``sam_encoder`` or ``sam_decoder``); ``version``: its Triton version folder."""

    name: str
    onnx_path: Path
    sha256: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    version: str = ""

    @staticmethod
    def version_of(path: str) -> str:
        """The Triton version folder a manifest ``path`` names; ``""`` (Triton's choice) for a path without one.

        Examples:
            >>> ModelSpec.version_of("sam_encoder/1/model.onnx"), ModelSpec.version_of("(numpy fake: no file)")
            ('1', '')
        """
        parts = Path(path).parts
        return parts[-2] if len(parts) >= 3 and parts[-2].isdigit() else ""


@dataclass(frozen=True)
class ModelManifest:
    """The parsed ``manifest.json`` of a model repository.

    Attributes:
        root: the model repository folder.
        model_type: ``vit_h``, ``vit_l``, ``vit_b``, ``stand-in``, ``sam2.1_hiera_t|s|b+|l`` or ``sam2-stand-in``.
        is_stand_in: True for the structured stand-in (not SAM).
        random_init: True when exported without weights (shape and speed work only).
        precision: ``fp32``, or ``int8-dynamic`` for ``export_sam.py --quantize int8`` (masks differ slightly).
        image_size: side of the square encoder frame (1024).
        mask_threshold: logit threshold that turns mask logits into binary masks (0.0).
        encoder: the encoder model.
        decoder: the automatic-mask-generation decoder model.
        raw: the whole manifest as read, stored in run manifests.
        model_family: ``sam`` (SAM 1: ViT encoders, the stand-in) or ``sam2`` (SAM 2.1: Hiera encoders, the SAM 2
            stand-in); chooses the mask generator and the tensors the backends exchange.
    """

    root: Path
    model_type: str
    is_stand_in: bool
    random_init: bool
    precision: str
    image_size: int
    mask_threshold: float
    encoder: ModelSpec
    decoder: ModelSpec
    raw: dict[str, Any]
    model_family: str = "sam"

    @property
    def fingerprint(self) -> str:
        """Identifies the exact model: the encoder and decoder ONNX sha256s."""
        return f"{self.model_type}:{self.encoder.sha256[:16]}:{self.decoder.sha256[:16]}"


def _tensor(role: str, spec: Any, where: str) -> TensorSpec:
    try:
        return TensorSpec(name=str(spec["name"]), dtype=str(spec["dtype"]), shape=tuple(int(d) for d in spec["shape"]))
    except (KeyError, TypeError, ValueError) as err:
        raise ModelRepositoryError(f"{where}: tensor '{role}' needs name, dtype and shape, got {spec!r}") from err


def _model(root: Path, key: str, data: dict[str, Any], roles: dict[str, tuple[str, ...]], where: str,
           optional_inputs: tuple[str, ...] = ()) -> ModelSpec:
    if key not in data.get("models", {}):
        raise ModelRepositoryError(f"{where}: no '{key}' model; re-run export/export_sam.py")
    m = data["models"][key]
    specs: dict[str, dict[str, TensorSpec]] = {}
    for side in ("inputs", "outputs"):
        given = m.get(side, {})
        missing = [r for r in roles[side] if r not in given]
        if missing:
            raise ModelRepositoryError(f"{where}: {key} {side} lack roles {missing}; re-run export/export_sam.py")
        specs[side] = {r: _tensor(r, given[r], where) for r in roles[side]}
    specs["inputs"].update({r: _tensor(r, m["inputs"][r], where) for r in optional_inputs if r in m["inputs"]})
    return ModelSpec(
        name=str(m["name"]),
        onnx_path=root / m["path"],
        sha256=str(m["sha256"]),
        inputs=specs["inputs"],
        outputs=specs["outputs"],
        version=ModelSpec.version_of(str(m["path"])),
    )


def load_manifest(model_repository: str | Path) -> ModelManifest:
    """Read and check ``<model_repository>/manifest.json``.

    Args:
        model_repository: folder written by ``export/export_sam.py``.

    Returns:
        The parsed manifest.

    Raises:
        ModelRepositoryError: If the folder or manifest is missing, unreadable or incomplete.
    """
    root = Path(model_repository)
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise ModelRepositoryError(
            f"no model repository at '{root}' ({MANIFEST_NAME} missing): give the folder that export/export_sam.py "
            f"wrote (--model-repository; relative paths start in the current folder), or build one there with "
            f"`python export/export_sam.py --model-type stand-in --out {root}` (or vit_h with --checkpoint)"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelRepositoryError(f"{path}: unreadable manifest ({err}); re-run export/export_sam.py") from err
    if not isinstance(data, dict):
        raise ModelRepositoryError(f"{path}: not a manifest (a JSON {type(data).__name__}, not an object); "
                                   "re-run export/export_sam.py")
    try:
        return _parse(root, path, data)
    except (KeyError, TypeError, ValueError, AttributeError) as err:  # a manifest edited by hand, or cut
        what = f"no {err}" if isinstance(err, KeyError) else f"{type(err).__name__}: {err}"
        raise ModelRepositoryError(f"{path}: incomplete manifest ({what}); re-run export/export_sam.py") from err


def _parse(root: Path, path: Path, data: dict[str, Any]) -> ModelManifest:
    if data.get("format_version") != MANIFEST_FORMAT:
        raise ModelRepositoryError(
            f"{path}: manifest format {data.get('format_version')!r}, this client reads {MANIFEST_FORMAT}; "
            "re-run export/export_sam.py"
        )
    family = str(data.get("model_family", "sam"))
    if family not in FAMILY_ROLES:
        raise ModelRepositoryError(
            f"{path}: model_family {family!r} is not one this client reads ({', '.join(FAMILY_ROLES)}); "
            "update alps or re-run export/export_sam.py"
        )
    encoder_roles, decoder_roles = FAMILY_ROLES[family]
    manifest = ModelManifest(
        root=root,
        model_type=str(data["model_type"]),
        is_stand_in=bool(data["is_stand_in"]),
        random_init=bool(data["random_init"]),
        precision=str(data.get("precision", "fp32")),
        image_size=int(data["image_size"]),
        mask_threshold=float(data["mask_threshold"]),
        encoder=_model(root, "encoder", data, encoder_roles, str(path)),
        decoder=_model(root, "decoder", data, decoder_roles, str(path), DECODER_OPTIONAL_INPUTS),
        raw=data,
        model_family=family,
    )
    return manifest


def sha256_of(paths: Sequence[Path]) -> str:
    """One sha256 over the given files' bytes, in the given order (model.onnx, then external data)."""
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def check_model_files(manifest: ModelManifest) -> None:
    """Refuse model files that are not the ones the manifest's export wrote (replaced, edited, half copied).

    The shards of a run, and whether a rerun skips an image, go by the manifest's sha256s: files swapped under
    an unchanged manifest would be labelled with one model and recorded as another. Files that are not on this
    machine (a Triton server's own repository) are left to the server's check.

    Raises:
        ModelRepositoryError: Naming the file whose bytes differ.
    """
    for spec in (manifest.encoder, manifest.decoder):
        key = "encoder" if spec is manifest.encoder else "decoder"
        files = manifest.raw["models"][key].get("files")
        if not files or not spec.onnx_path.is_file():  # an older manifest, or no file here to check
            continue
        paths = [spec.onnx_path.parent / name for name in files]
        absent = [p for p in paths if not p.is_file()]
        if absent:
            raise ModelRepositoryError(f"{absent[0]} is missing from the model repository; re-run "
                                       "export/export_sam.py")
        actual = sha256_of(paths)
        if actual != spec.sha256:
            raise ModelRepositoryError(
                f"{spec.onnx_path}: these model files are not the ones its manifest's export wrote (sha256 "
                f"{actual[:12]}..., the manifest says {spec.sha256[:12]}...): replaced or changed since; export "
                f"again into {manifest.root} (export/export_sam.py) rather than copy model files over it")
