"""Write a SAM 2.1 model repository: encoder + decoder ONNX, Triton configs, parity, manifest (``model_family: sam2``).

Same layout as SAM's (``sam_encoder/``, ``sam_decoder/``, ``manifest.json``), so Triton and the clients find the
models where they always do; the manifest's ``model_family`` tells clients which generator and which tensors
(roles) to use. Called by ``export/export_sam.py --model-type sam2.1_hiera_t|s|b+|l|sam2-stand-in|sam2-tiny-test``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from export import sam2_onnx as so
from export import triton_repo
from export.errors import ExportError, check_failures_as_one_line
from export.onnx_export import written_opset
from export.sam2_models import SAM2_CONFIGS, SAM2_TINY_TEST, load_sam2, sam2_version
from export.sam2_parity import check_parity
from export.sam2_stand_in import SAM2_STAND_IN_NAME, build_stand_in_sam2

SAM2_MODEL_TYPES = (*SAM2_CONFIGS, SAM2_STAND_IN_NAME, SAM2_TINY_TEST)


def load_model(model_type: str, checkpoint: str | None, random_init: bool,
               log: Callable[[str], None] = lambda _: None) -> nn.Module:
    """The SAM 2.1 model (or the SAM 2 stand-in) to export; see :func:`export.sam2_models.load_sam2`."""
    if model_type == SAM2_STAND_IN_NAME:
        if checkpoint or random_init:
            raise ExportError("the SAM 2 stand-in has no weights: drop --checkpoint / --random-init")
        return build_stand_in_sam2()
    return load_sam2(model_type, checkpoint, random_init, log)


def tensor_specs() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Encoder inputs/outputs and decoder inputs/outputs: role -> (name, dtype, shape with batch dim)."""
    emb, s0, s1 = (-1, 256, 64, 64), (-1, 32, 256, 256), (-1, 64, 128, 128)
    encoder_in = {"images": (so.ENCODER_INPUTS["images"], "uint8", (-1, -1, -1, 3))}
    encoder_out = {
        "image_embeddings": (so.ENCODER_OUTPUTS["image_embeddings"], "float32", emb),
        "high_res_feats_0": (so.ENCODER_OUTPUTS["high_res_feats_0"], "float32", s0),
        "high_res_feats_1": (so.ENCODER_OUTPUTS["high_res_feats_1"], "float32", s1),
    }
    decoder_in = {
        "image_embeddings": (so.DECODER_INPUTS["image_embeddings"], "float32", (1, *emb[1:])),
        "high_res_feats_0": (so.DECODER_INPUTS["high_res_feats_0"], "float32", (1, *s0[1:])),
        "high_res_feats_1": (so.DECODER_INPUTS["high_res_feats_1"], "float32", (1, *s1[1:])),
        "point_coords": (so.DECODER_INPUTS["point_coords"], "float32", (-1, -1, 2)),
        "point_labels": (so.DECODER_INPUTS["point_labels"], "float32", (-1, -1)),
        "mask_input": (so.DECODER_INPUTS["mask_input"], "float32", (-1, 1, so.LOW_RES, so.LOW_RES)),
        "has_mask_input": (so.DECODER_INPUTS["has_mask_input"], "float32", (-1,)),
    }
    decoder_out = {
        "low_res_masks": (so.DECODER_OUTPUTS["low_res_masks"], "float32", (-1, so.MASK_TOKENS, so.LOW_RES, so.LOW_RES)),
        "iou_predictions": (so.DECODER_OUTPUTS["iou_predictions"], "float32", (-1, so.MASK_TOKENS)),
    }
    return encoder_in, encoder_out, decoder_in, decoder_out


def mask_token_selection(model: nn.Module) -> dict[str, Any]:
    """How ``MaskDecoder.forward`` picks outputs from the 4 tokens; the client repeats it from these values."""
    decoder = model.sam_mask_decoder
    return {
        "tokens": so.MASK_TOKENS,
        "multimask": [1, 2, 3],
        "single": 0,
        "dynamic_multimask_via_stability": bool(getattr(decoder, "dynamic_multimask_via_stability", False)),
        "dynamic_multimask_stability_delta": float(getattr(decoder, "dynamic_multimask_stability_delta", 0.05)),
        "dynamic_multimask_stability_thresh": float(getattr(decoder, "dynamic_multimask_stability_thresh", 0.98)),
        "low_res_clamp": 32.0,  # SAM2ImagePredictor clamps the low-res logits it hands back (m2m's mask input)
    }


def _note(model_type: str, random_init: bool) -> str:
    if model_type == SAM2_STAND_IN_NAME:
        return "SAM 2 STAND-IN model, not SAM 2.1: deterministic colour-statistics model for offline demos and parity tests"
    if random_init:
        return "RANDOM weights: shapes and speed only, labels are meaningless"
    return "tiny TEST configuration of SAM 2.1 (tests only), not a released SAM 2.1" if model_type == SAM2_TINY_TEST \
        else "SAM 2.1"


def _write_configs(enc_path: Path, dec_path: Path, specs: tuple, model_type: str, kind: str, max_batch_size: int) -> None:
    encoder_in, encoder_out, decoder_in, decoder_out = specs
    triton_repo.write_model_configs(
        enc_path, dec_path,
        ([(n, d, s[1:]) for n, d, s in encoder_in.values()], [(n, d, s[1:]) for n, d, s in encoder_out.values()]),
        (list(decoder_in.values()), list(decoder_out.values())),
        kind, max_batch_size,
        encoder_comment=(
            f"SAM 2.1 image encoder ({model_type}): uint8 images of any size in, SAM2Transforms in-graph;\n"
            "written by export/export_sam.py. Dynamic batching joins requests of the same image size only."
        ),
        decoder_comment=(
            f"SAM 2.1 AMG decoder ({model_type}), all 4 mask tokens out; written by export/export_sam.py.\n"
            "max_batch_size 0: the B prompts of a request share one image's features, so Triton's batch\n"
            "dimension (the same on every input) does not fit; clients send prompt chunks, two instances serve."
        ),
    )


def run_export(
    model_type: str, out: Path, checkpoint: str | None, random_init: bool, cpu: bool, max_batch_size: int,
    opset: int, log: Any, versions: dict[str, str],
) -> dict[str, Any]:
    """Export a SAM 2.1 model, check parity, write the repository; return the manifest (without format_version)."""
    model = load_model(model_type, checkpoint, random_init, log)
    triton_repo.check_output_dir(out)  # after the checkpoint's checks: a refused export leaves no folder
    note = _note(model_type, random_init)
    log(f"Exporting {model_type}: {note}." if note != "SAM 2.1" else f"Exporting {model_type} from {checkpoint}.")
    with triton_repo.staged_repository(out) as (enc_path, dec_path):
        t_enc = so.export_encoder(model, enc_path, opset)
        log(f"  encoder exported in {t_enc:.1f} s")
        t_dec = so.export_decoder(model, dec_path, opset)
        log(f"  decoder exported in {t_dec:.1f} s")
        with check_failures_as_one_line():  # as SAM's: parity past tolerance, or onnxruntime cannot run the file
            parity = check_parity(model, enc_path, dec_path)
        log(
            f"  parity ONNX vs PyTorch: encoder max rel {parity['encoder_max_rel_diff']:.1e} (preprocessing max abs "
            f"{parity['preprocess_max_abs_diff']:.1e}), decoder masks max abs {parity['decoder_masks_max_abs_diff']:.1e},"
            f" iou max abs {parity['decoder_iou_max_abs_diff']:.1e}"
        )
        specs = tensor_specs()
        written = written_opset(enc_path)  # what the files hold (export_* refused any other)
        kind = "KIND_CPU" if cpu else "KIND_GPU"
        _write_configs(enc_path, dec_path, specs, model_type, kind, max_batch_size)
        manifest = triton_repo.repository_manifest(
            family="sam2", model_type=model_type, is_stand_in=model_type == SAM2_STAND_IN_NAME,
            random_init=random_init, note=note, checkpoint=checkpoint, image_size=so.IMAGE_SIZE, mask_threshold=0.0,
            preprocessing=PREPROCESSING,
            encoder=triton_repo.model_entry(triton_repo.ENCODER_MODEL, enc_path, *specs[:2],
                                            max_batch_size=max_batch_size),
            decoder=triton_repo.model_entry(
                triton_repo.DECODER_MODEL, dec_path, *specs[2:], mask_tokens=mask_token_selection(model),
                padding_point="appended in-graph: (0, 0) with label -1, as SAM 2's PromptEncoder (no box)",
                point_frame="1024x1024 frame of the resized image: x * 1024 / W, y * 1024 / H",
            ),
            parity=parity, quantization=None,
            export={"opset": written, "instance_kind": kind, "seconds": {"encoder": t_enc, "decoder": t_dec}},
            versions={**versions, "sam2": sam2_version()},
        )
    triton_repo.write_manifest(out, manifest)
    log(f"Model repository written to {out} ({note}).")
    return manifest


PREPROCESSING = {
    "resize": "in-graph: the whole image to 1024x1024 (aspect ratio not kept, no padding), torchvision's tensor "
              "resize of the [0, 1] float image: bilinear, antialias=True, align_corners=False",
    "scale": "1/255 (ToTensor)",
    "pixel_mean": list(so.PIXEL_MEAN),
    "pixel_std": list(so.PIXEL_STD),
    "pad": "none: the valid region is the whole 1024x1024 frame",
    "channel_order": "RGB",
    "no_mem_embed": "added to image_embeddings in-graph (SAM2ImagePredictor.set_image)",
}
