"""Export SAM (vit_h / vit_l / vit_b), SAM 2.1 (Hiera t / s / b+ / l) or a structured stand-in to ONNX and write
a Triton model repository.

Usage:
    python export/export_sam.py --model-type vit_h --checkpoint sam_vit_h_4b8939.pth --out model_repository
    python export/export_sam.py --model-type stand-in --out model_repository        # offline demo model, NOT SAM
    python export/export_sam.py --model-type vit_b --random-init --out /tmp/repo     # shapes and speed only
    python export/export_sam.py --model-type vit_h --checkpoint sam_vit_h_4b8939.pth --cpu --quantize int8 \
        --out model_repository_int8                                                    # int8 weights, for CPUs
    python export/export_sam.py --model-type sam2.1_hiera_t --checkpoint sam2.1_hiera_tiny.pt --out model_repository
    python export/export_sam.py --model-type sam2-stand-in --out model_repository   # SAM 2 offline demo model, NOT SAM 2.1

Writes ``<out>/sam_encoder/{config.pbtxt,1/model.onnx}``, ``<out>/sam_decoder/{config.pbtxt,1/model.onnx}``
and ``<out>/manifest.json`` (model type, checkpoint sha256, ONNX sha256, tensor names/shapes/dtypes,
preprocessing constants, parity figures, ``model_family``: ``sam`` or ``sam2``). The export fails loudly if ONNX
and PyTorch disagree. SAM 2.1 is exported by :mod:`export.sam2_export`; this module dispatches to it.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python export/export_sam.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from export.tv_shim import install_torchvision_shim

install_torchvision_shim()

import torch  # noqa: E402
from torch import nn  # noqa: E402

from alps_client.backends.preprocess import IMAGE_SIZE, PIXEL_MEAN, PIXEL_STD  # noqa: E402
from alps_client.errors import disk_full  # noqa: E402
from alps_client.versions import versions  # noqa: E402
from export import onnx_export, triton_repo  # noqa: E402
from export.checkpoints import (  # noqa: E402
    META_CHECKPOINTS,
    check_finite,
    checkpoint_type,
    find_weights,
    first_sentence,
    holds_none_of,
    model_type_to_give,
    not_this_model,
    read_checkpoint,
    weights_found,
)
from export.errors import (  # noqa: E402
    ExportCheckError,
    ExportError,
    check_failures_as_one_line,
    readable_checkpoint,
)
from export.quantize import QUANTIZE_CHOICES, UNBATCHED_WHY, quantize_encoder  # noqa: E402
from export.sam2_export import SAM2_MODEL_TYPES  # noqa: E402
from export.sam2_export import load_model as load_sam2_model  # noqa: E402
from export.sam2_export import run_export as run_sam2_export  # noqa: E402
from export.stand_in import STAND_IN_NAME, build_stand_in_sam  # noqa: E402

SAM_TYPES = ("vit_h", "vit_l", "vit_b")
# A tiny SAM configuration for tests: Meta's builder and checkpoint loading, a 2-block width-96 encoder.
TINY_TEST = "tiny-test"
TINY_TEST_ARGS = {"encoder_embed_dim": 96, "encoder_depth": 2, "encoder_num_heads": 2, "encoder_global_attn_indexes": [1]}
MODEL_TYPES = (*SAM_TYPES, STAND_IN_NAME, TINY_TEST, *SAM2_MODEL_TYPES)


def _build_sam(model_type: str, checkpoint: str | None, log: Callable[[str], None] = lambda _: None) -> nn.Module:
    """Meta's builder for the architecture; the checkpoint is loaded here, tensors only.

    segment-anything's builder calls ``torch.load(f)``, which on torch < 2.6 unpickles anything a file holds
    (code included). Loading with ``weights_only=True`` on every torch version refuses such files.
    """
    from segment_anything import sam_model_registry
    from segment_anything.build_sam import _build_sam as build_sam_config

    sam = build_sam_config(checkpoint=None, **TINY_TEST_ARGS) if model_type == TINY_TEST else \
        sam_model_registry[model_type](checkpoint=None)
    if checkpoint is not None:
        data = read_checkpoint(checkpoint)
        state, where, ignored = find_weights(data, set(sam.state_dict()), checkpoint)
        try:
            sam.load_state_dict(state)
        except RuntimeError as err:
            held = checkpoint_type(state) if isinstance(state, dict) else None
            if held is None and holds_none_of(state, set(sam.state_dict())):
                raise not_this_model(checkpoint, model_type, state, "SAM", META_CHECKPOINTS.get(model_type)) from err
            if held is None or held == model_type:  # not another SAM's: the caller names the first mismatch
                raise
            raise ExportError(f"checkpoint {checkpoint} holds {held} weights, not {model_type}'s: give "
                              f"{model_type_to_give(held)}") from err
        check_finite(state, checkpoint)
        if where or ignored:
            log(weights_found(model_type, checkpoint, where, ignored))
    return sam


def load_model(model_type: str, checkpoint: str | None, random_init: bool,
               log: Callable[[str], None] = lambda _: None) -> nn.Module:
    """Build the model to export.

    Args:
        model_type: one of ``vit_h``, ``vit_l``, ``vit_b``, ``stand-in``, ``tiny-test``.
        checkpoint: Meta's checkpoint (e.g. ``sam_vit_h_4b8939.pth``), loaded through segment-anything's builder;
            or a fine-tune's with the same layers (see :func:`export.checkpoints.find_weights`).
        random_init: build the architecture without weights (seeded), for shape and speed work only.
        log: told where in the checkpoint the weights were, when not at its top.

    Raises:
        ExportError: For a missing, unreadable or mismatched checkpoint, or inconsistent arguments.
    """
    if model_type not in MODEL_TYPES:
        raise ExportError(f"--model-type must be one of {', '.join(MODEL_TYPES)}, got {model_type!r}")
    if model_type in SAM2_MODEL_TYPES:
        return load_sam2_model(model_type, checkpoint, random_init, log)
    if model_type == STAND_IN_NAME:
        if checkpoint or random_init:
            raise ExportError("the stand-in has no weights: drop --checkpoint / --random-init")
        return build_stand_in_sam()
    if random_init and checkpoint:
        raise ExportError("give either --checkpoint or --random-init, not both")
    if random_init:
        torch.manual_seed(0)
        return _build_sam(model_type, None).eval()
    if not checkpoint:
        raise ExportError(
            f"--checkpoint is required for {model_type} (e.g. sam_vit_h_4b8939.pth from Meta's segment-anything "
            "release); use --random-init for shape/speed work or --model-type stand-in for the offline demo"
        )
    path = readable_checkpoint(checkpoint)
    try:
        return _build_sam(model_type, str(path), log).eval()
    except ExportError:
        raise
    except RuntimeError as err:
        text = str(err)
        if "size mismatch" in text or "Missing key" in text or "Unexpected key" in text:
            first = next((ln.strip() for ln in text.splitlines() if "size mismatch" in ln or "key" in ln), text[:200])
            raise ExportError(
                f"checkpoint {checkpoint} does not match --model-type {model_type} ({first[:160]}); "
                "check that the file and the model type belong together"
                + (f" (Meta's {model_type} is {META_CHECKPOINTS[model_type]})" if model_type in META_CHECKPOINTS else "")
            ) from err
        raise ExportError(f"checkpoint {checkpoint} is not a readable PyTorch checkpoint ({first_sentence(err)})") from err
    except ImportError as err:  # a package missing is not the file's fault
        raise ExportError(f"{err.name or err} is not installed, and exporting {model_type} needs it: install the "
                          "project's requirements (`make setup`)") from err
    except Exception as err:  # a file torch reads but whose content is no state dict (read_checkpoint names the rest)
        raise ExportError(
            f"checkpoint {checkpoint} is not a readable PyTorch checkpoint ({type(err).__name__}: {first_sentence(err)})"
        ) from err


def run_export(
    model_type: str,
    out: str | Path,
    checkpoint: str | None = None,
    random_init: bool = False,
    cpu: bool = False,
    max_batch_size: int = 4,
    opset: int = onnx_export.OPSET,
    quantize: str = "none",
    log: Any = print,
) -> dict[str, Any]:
    """Export encoder and decoder, check parity, and write the model repository. Returns the manifest.

    ``quantize="int8"`` then replaces the encoder with an int8 dynamically quantised one (CPU; the decoder stays
    fp32) and records the agreement with fp32 in the manifest (see :mod:`export.quantize`). It implies ``cpu``
    (said on ``log``): int8's ops run on the CPU.
    """
    if quantize not in QUANTIZE_CHOICES:
        raise ExportError(f"--quantize must be one of {', '.join(QUANTIZE_CHOICES)}, got '{quantize}'")
    if max_batch_size < 1:  # checked before minutes of export, not by the Triton config written after them
        raise ExportError(f"--max-batch-size must be 1 or more (images per encoder request), got {max_batch_size}")
    if opset < onnx_export.OPSET:
        # torch's exporter writes opset 18; its conversion down fails part-way and leaves the graph at 18, unsaid.
        raise ExportError(f"--opset {opset}: the ONNX exporter writes opset {onnx_export.OPSET} or newer; give "
                          f"--opset {onnx_export.OPSET} or more (onnxruntime and Triton's onnxruntime backend read it)")
    if opset > onnx_export.max_opset():
        # The conversion up fails as quietly (onnxscript logs it and keeps 18): refused before minutes of export.
        raise ExportError(f"--opset {opset}: the installed onnx converts to opsets {onnx_export.OPSET} to "
                          f"{onnx_export.max_opset()}; give --opset in that range (the default is {onnx_export.OPSET})")
    out = Path(out)
    previous = triton_repo.previous_manifest(out)
    if model_type in SAM2_MODEL_TYPES:
        if quantize != "none":
            raise ExportError("--quantize int8 is implemented for SAM (vit_*) only; export SAM 2.1 without --quantize")
        manifest = run_sam2_export(model_type, out, checkpoint, random_init, cpu, max_batch_size, opset, log,
                                   versions())
        _say_replaced(triton_repo.replaced_model(previous, manifest), log)
        return manifest
    sam = load_model(model_type, checkpoint, random_init, log)
    triton_repo.check_output_dir(out)  # after the checkpoint's checks: a refused export leaves no folder
    if quantize == "int8" and not cpu:
        # DynamicQuantizeLinear / MatMulInteger run on the CPU even in a CUDA session, with device copies
        # (profiled in onnxruntime issue 7745; our sessions silence the placement warnings): KIND_GPU would only
        # hide that, and a Triton without GPUs refuses to load KIND_GPU models at all.
        cpu = True
        log("--quantize int8 implies --cpu: Triton instance groups on CPU (KIND_CPU), where int8's ops run; "
            "for a GPU server, export without --quantize (fp32).")
    if model_type == STAND_IN_NAME:
        log("Exporting the structured STAND-IN model (not SAM: colour-statistics encoder, no weights).")
    elif random_init:
        log(f"Exporting {model_type} with RANDOM weights (--random-init): for shapes and speed only, not for labels.")
    else:
        log(f"Exporting {model_type} from {checkpoint}.")
    with triton_repo.staged_repository(out) as (enc_path, dec_path):
        t_enc = onnx_export.export_encoder(sam, enc_path, opset)
        log(f"  encoder exported in {t_enc:.1f} s")
        t_dec = onnx_export.export_decoder(sam, dec_path, opset)
        log(f"  decoder exported in {t_dec:.1f} s")
        with check_failures_as_one_line():  # parity past tolerance, or onnxruntime cannot run the file
            parity = onnx_export.check_parity(sam, enc_path, dec_path)
        log(
            f"  parity ONNX vs PyTorch: encoder max rel {parity['encoder_max_rel_diff']:.1e}, decoder masks max abs "
            f"{parity['decoder_masks_max_abs_diff']:.1e}, iou max abs {parity['decoder_iou_max_abs_diff']:.1e}"
        )
        mask_threshold = float(getattr(sam, "mask_threshold", 0.0))
        del sam  # vit_h's weights (2.5 GB) are not needed past this point: quantisation loads the ONNX files
        _return_freed_memory()
        quantization = None
        if quantize == "int8":
            quantization = _quantize_in_place(enc_path, dec_path, enc_path.parents[2] / "int8", log)
        specs = _tensor_specs()
        written = onnx_export.written_opset(enc_path)  # what the files hold, after quantisation too
        kind = "KIND_CPU" if cpu else "KIND_GPU"
        _write_configs(enc_path, dec_path, specs, model_type, kind, max_batch_size)
        if quantize == "int8":
            triton_repo.without_dynamic_batching(enc_path.parents[1] / "config.pbtxt", UNBATCHED_WHY)
        manifest = triton_repo.repository_manifest(
            family="sam", model_type=model_type, is_stand_in=model_type == STAND_IN_NAME, random_init=random_init,
            note=_note(model_type, random_init), checkpoint=checkpoint, image_size=IMAGE_SIZE,
            mask_threshold=mask_threshold, preprocessing=PREPROCESSING,
            encoder=triton_repo.model_entry(triton_repo.ENCODER_MODEL, enc_path, *specs[:2],
                                            max_batch_size=max_batch_size),
            decoder=triton_repo.model_entry(
                triton_repo.DECODER_MODEL, dec_path, *specs[2:], multimask_output=True,
                optional_inputs={"iou_threshold": "prompts whose three predicted IoUs are all at or below it are not "
                                 "upscaled; their masks are empty (logit -1e4). Default -inf: every prompt is upscaled"},
                padding_point="appended in-graph: (0, 0) with label -1, as Meta's PromptEncoder",
            ),
            parity=parity, quantization=quantization,
            export={"opset": written, "instance_kind": kind, "seconds": {"encoder": t_enc, "decoder": t_dec}},
            versions=versions(),
        )
    triton_repo.write_manifest(out, manifest)
    log(f"Model repository written to {out} ({manifest['note']}).")
    _say_replaced(triton_repo.replaced_model(previous, manifest), log)
    return manifest


def _say_replaced(replaced: str | None, log: Callable[[str], None]) -> None:
    """Say which model an export replaced: datasets labelled with it are refused with this one."""
    if replaced:
        log(f"It replaced {replaced}: `alps run` refuses to add to datasets labelled with that model (use a new "
            "--out, or --overwrite to relabel them); export into another folder to keep both models.")


def _return_freed_memory() -> None:
    """Hand memory freed by PyTorch and onnxruntime back to the system before the next model is loaded.

    glibc keeps freed heap pages for reuse; after vit_h's parity check they were 3 GB of RSS that the int8
    quantisation (which loads the 2.5 GB encoder again) then added to. No-op where glibc is absent.
    """
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


PREPROCESSING = {
    "resize": "client-side: longest side to 1024 with PIL BILINEAR (Meta's ResizeLongestSide), size rounded with "
              "int(x + 0.5); image padded bottom/right to 1024x1024",
    "pixel_mean": list(PIXEL_MEAN),
    "pixel_std": list(PIXEL_STD),
    "pad": "zeros after normalisation (in-graph, from input_size)",
    "channel_order": "RGB",
}
TensorSpecs = dict[str, tuple[str, str, tuple[int, ...]]]


def _note(model_type: str, random_init: bool) -> str:
    if model_type == STAND_IN_NAME:
        return "STAND-IN model, not SAM: deterministic colour-statistics encoder for offline demos and parity tests"
    if random_init:
        return "RANDOM weights: shapes and speed only, labels are meaningless"
    return "tiny TEST configuration of SAM (tests only), not a released SAM" if model_type == TINY_TEST else "SAM"


def _tensor_specs() -> tuple[TensorSpecs, TensorSpecs, TensorSpecs, TensorSpecs]:
    """Encoder inputs/outputs and decoder inputs/outputs: role -> (name, dtype, shape with batch dim)."""
    encoder_in = {
        "images": (onnx_export.ENCODER_INPUTS["images"], "uint8", (-1, IMAGE_SIZE, IMAGE_SIZE, 3)),
        "input_size": (onnx_export.ENCODER_INPUTS["input_size"], "int64", (-1, 2)),
    }
    encoder_out = {"image_embeddings": (onnx_export.ENCODER_OUTPUTS["image_embeddings"], "float32", (-1, 256, 64, 64))}
    decoder_in = {
        "image_embeddings": (onnx_export.DECODER_INPUTS["image_embeddings"], "float32", (1, 256, 64, 64)),
        "point_coords": (onnx_export.DECODER_INPUTS["point_coords"], "float32", (-1, -1, 2)),
        "point_labels": (onnx_export.DECODER_INPUTS["point_labels"], "float32", (-1, -1)),
        "iou_threshold": (onnx_export.DECODER_INPUTS["iou_threshold"], "float32", (1,)),
    }
    decoder_out = {
        "low_res_masks": (onnx_export.DECODER_OUTPUTS["low_res_masks"], "float32", (-1, 3, 256, 256)),
        "iou_predictions": (onnx_export.DECODER_OUTPUTS["iou_predictions"], "float32", (-1, 3)),
    }
    return encoder_in, encoder_out, decoder_in, decoder_out


def _write_configs(enc_path: Path, dec_path: Path, specs: tuple[TensorSpecs, ...], model_type: str, kind: str,
                   max_batch_size: int) -> None:
    encoder_in, encoder_out, decoder_in, decoder_out = specs
    triton_repo.write_model_configs(
        enc_path, dec_path,
        ([(n, d, s[1:]) for n, d, s in encoder_in.values()], [(n, d, s[1:]) for n, d, s in encoder_out.values()]),
        ([(n, d, s, role in onnx_export.DECODER_OPTIONAL_DEFAULTS) for role, (n, d, s) in decoder_in.items()],
         list(decoder_out.values())),
        kind, max_batch_size,
        encoder_comment=f"SAM image encoder ({model_type}), preprocessing in-graph; written by export/export_sam.py",
        decoder_comment=(
            f"SAM AMG decoder ({model_type}); written by export/export_sam.py.\n"
            "max_batch_size 0: the B prompts of a request share one image embedding, so Triton's batch\n"
            "dimension (the same on every input) does not fit; clients send large prompt chunks and keep\n"
            "several requests in flight, served by two instances."
        ),
    )


def _quantize_in_place(enc_path: Path, dec_path: Path, scratch: Path, log: Any) -> dict[str, Any]:
    """Replace the fp32 encoder ONNX file with an int8 one; return how and how well it agrees with fp32."""
    int8 = scratch / "encoder.onnx"
    quantization = quantize_encoder(enc_path, int8, dec_path, log)
    for stale in triton_repo.model_files(enc_path):
        stale.unlink()
    int8.rename(enc_path)
    return quantization


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; one clear line and exit code 2 on bad arguments."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-type", required=True, choices=MODEL_TYPES,
                        help="SAM size, SAM 2.1 size (sam2.1_hiera_t|s|b+|l), 'stand-in' / 'sam2-stand-in' (offline "
                        "demo models, NOT SAM) or 'tiny-test' / 'sam2-tiny-test' (tests only)")
    parser.add_argument("--checkpoint", help="Meta's checkpoint, e.g. sam_vit_h_4b8939.pth or sam2.1_hiera_tiny.pt")
    parser.add_argument("--random-init", action="store_true", help="no weights: for shape and speed work only")
    parser.add_argument("--out", default="model_repository", help="model repository folder (default: %(default)s)")
    parser.add_argument("--cpu", action="store_true", help="Triton instance groups on CPU (KIND_CPU) instead of GPU")
    parser.add_argument("--max-batch-size", type=int, default=4, help="encoder max_batch_size for Triton")
    parser.add_argument("--opset", type=int, default=onnx_export.OPSET,
                        help=f"ONNX opset, {onnx_export.OPSET} to the installed onnx's newest ({onnx_export.max_opset()}"
                        "); refused when the exporter cannot convert the model to it (default: %(default)s)")
    parser.add_argument("--quantize", choices=QUANTIZE_CHOICES, default="none",
                        help="int8 (SAM only, not SAM 2.1): the encoder's weights dynamic int8 for CPU serving "
                        "(faster encoder, masks change slightly: agreement with fp32 is measured and written to the "
                        "manifest); implies --cpu; default: %(default)s (fp32)")
    args = parser.parse_args(argv)
    try:
        run_export(args.model_type, args.out, args.checkpoint, args.random_init, args.cpu, args.max_batch_size,
                   args.opset, args.quantize)
    except ExportError as err:
        print(f"export_sam: error: {err}", file=sys.stderr)
        return 1 if isinstance(err, ExportCheckError) else 2
    except OSError as err:
        if not disk_full(err):
            raise
        # The new repository is written beside --out and swapped in whole (the old one stays until then).
        print(f"export_sam: error: no space left on the disk while writing {err.filename or args.out}: the export "
              f"needs room for a whole repository beside {args.out} (the previous one, if any, is kept); free "
              "space there and run it again", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
