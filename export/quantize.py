"""Opt-in int8 dynamic quantisation of the exported models for CPU, and the mask agreement it costs.

``export_sam.py --quantize int8`` exports fp32 as usual, checks parity against PyTorch, then replaces the
encoder's ONNX file with onnxruntime's dynamic quantisation: weights of MatMul/Gemm stored as int8 per output
channel within 7 bits (:func:`quantize_int8` says why), activations quantised on the fly (MatMulInteger). Inputs and outputs keep their dtypes, so clients are unchanged.
The activations' scale is taken over the whole batch, so the encoder's Triton config loses its dynamic batching:
an image's embedding, and its labels, would otherwise depend on the images batched with it. Dynamic quantisation
targets CPUs (x86 VNNI, ARM dot-product); on GPU use fp32.

The decoder stays fp32. Its time goes into attention over activations, element-wise passes and the upscaling,
which dynamic quantisation does not reach: its int8 form ran no faster on either machine measured (vit_b: 12.4 vs
12.4 ms per prompt on an AMD EPYC VM, 19.2-20.2 vs 19.0-19.9 on an Intel Xeon VM), while it moved the predicted
IoUs six times as much as the int8 encoder does and lowered the masks' agreement (vit_b random weights, 256
prompts: IoU mean 0.988 with both int8 against 0.992 with the encoder alone, min 0.956 against 0.975; predicted
IoU max difference 0.0043 against 0.0007: the 0.88 IoU filter reads those).

Quantisation changes masks, so the export measures fp32 against int8 on the parity image and stores the figures in
the manifest; ``bench/bench_pipeline.py`` measures the whole automatic mask generation on a dataset and
``bench/bench_ort_options.py`` the agreement prompt by prompt.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

QUANTIZE_CHOICES = ("none", "int8")
# Written at the top of the int8 encoder's config.pbtxt, whose dynamic batching is taken out.
UNBATCHED_WHY = ("int8 encoder: no dynamic batching. Dynamic quantisation takes its activations' scale over the\n"
                 "whole batch, so an image's embedding would depend on the images Triton batched with it (vit_b:\n"
                 "up to 3 % apart), and its labels on the timing of requests; written by export/quantize.py.")
# Op types whose weights are quantised; attention products between two activations stay fp32 (dynamic mode's
# MatMulConstBOnly default), as do convolutions (ConvInteger is slower than fp32 Conv on onnxruntime's CPU EP).
QUANTIZED_OP_TYPES = ["MatMul", "Gemm"]
# Masks are compared as SAM thresholds them: low-res logits > 0.
MASK_THRESHOLD = 0.0
PROMPTS_PER_CALL = 16


def quantize_encoder(encoder32: Path, encoder8: Path, decoder: Path, log: Any = print) -> dict[str, Any]:
    """Quantise the encoder ``encoder32`` into ``encoder8`` and measure the pair against fp32.

    Both encoders run beside the one fp32 ``decoder`` (see the module docstring). Returns the manifest's
    ``quantization``.
    """
    start = time.perf_counter()
    quantize_int8(encoder32, encoder8)
    figures = agreement((encoder32, decoder), (encoder8, decoder))
    seconds = time.perf_counter() - start
    log(
        f"  int8 dynamic quantisation in {seconds:.1f} s; vs fp32 on the parity image: mask IoU "
        f"mean {figures['mask_iou_mean']:.3f}, min {figures['mask_iou_min']:.3f} over {figures['prompts']} prompts x 3"
    )
    return {"method": "onnxruntime dynamic, encoder weights int8 per channel (7-bit range); decoder fp32",
            "models": ["encoder"], "op_types": QUANTIZED_OP_TYPES, "seconds": seconds, "agreement_vs_fp32": figures}


def quantize_repository(source: Path, out: Path, log: Any = print) -> dict[str, Any]:
    """Write ``out``, the fp32 repository ``source`` with its encoder int8, and return its manifest.

    The same models as ``export_sam.py --quantize int8``, without exporting again.
    """
    from export import triton_repo

    source, out = Path(source), Path(out)
    manifest = _copy_without_models(source, out)
    encoder, decoder = (manifest["models"][k]["path"] for k in ("encoder", "decoder"))
    for path in triton_repo.model_files(source / decoder):
        shutil.copyfile(path, out / path.relative_to(source))
    manifest["quantization"] = quantize_encoder(source / encoder, out / encoder, source / decoder, log)
    triton_repo.without_dynamic_batching((out / encoder).parents[1] / "config.pbtxt", UNBATCHED_WHY)
    return _write_derived_manifest(out, manifest, "int8-dynamic")


def _copy_without_models(source: Path, out: Path) -> dict[str, Any]:
    """Copy the fp32 repository ``source`` to ``out`` without its ONNX files; return its manifest."""
    manifest = json.loads((source / "manifest.json").read_text())
    if manifest.get("precision", "fp32") != "fp32":
        raise ValueError(f"{source} holds {manifest['precision']} models; start from an fp32 repository")
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(source, out, ignore=shutil.ignore_patterns("*.onnx", "*.onnx.data"))
    return manifest


def _write_derived_manifest(out: Path, manifest: dict[str, Any], precision: str) -> dict[str, Any]:
    """Record the new models' files and sha256s and the precision in ``out/manifest.json``."""
    from export import triton_repo

    for model in manifest["models"].values():
        files = triton_repo.model_files(out / model["path"])
        model.update(files=[p.name for p in files], sha256=triton_repo.sha256_of(files))
    manifest["precision"] = precision
    manifest.pop("format_version", None)
    triton_repo.write_manifest(out, manifest)
    return manifest


def half_repository(source: Path, out: Path) -> dict[str, Any]:
    """Write ``out``, the fp32 repository ``source`` with both models in fp16 (for GPUs), and return its manifest.

    Weights and arithmetic are fp16; inputs and outputs stay fp32, so clients, Triton configs and the manifest's
    tensors are unchanged.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from export.onnx_export import EXTERNAL_DATA_BYTES

    source, out = Path(source), Path(out)
    manifest = _copy_without_models(source, out)
    start = time.perf_counter()
    for model in manifest["models"].values():
        half = convert_float_to_float16(typed_model(source / model["path"]), keep_io_types=True,
                                        disable_shape_infer=True)
        external = half.ByteSize() > EXTERNAL_DATA_BYTES  # vit_h's encoder: 1.3 GB in fp16, under the limit
        onnx.save(half, str(out / model["path"]), save_as_external_data=external,
                  location=Path(model["path"]).name + ".data")
    manifest["half_precision"] = {"method": "onnxruntime.transformers.float16, inputs and outputs kept fp32",
                                  "seconds": time.perf_counter() - start}
    return _write_derived_manifest(out, manifest, "fp16")


def typed_model(path: Path) -> Any:
    """The ONNX model at ``path`` with every intermediate tensor's type inferred, its weights loaded.

    The inference runs before the weights are loaded: onnx's in-memory inference serialises the model, which
    protobuf refuses past 2 GB (vit_h's fp32 encoder: 2.5 GB; onnxruntime's fp16 converter failed on it with
    ``EncodeError: Failed to serialize proto``).
    """
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path), load_external_data=False))
    load_external_data_for_model(model, str(Path(path).parent))
    return model


def quantize_int8(model: Path, out: Path) -> None:
    """Write an int8 dynamically quantised copy of ``model`` to ``out`` (weights per output channel, 7 bits).

    The copy is one file: int8 weights are a quarter of fp32 (vit_h's encoder: ~0.65 GB), under protobuf's 2 GB.
    Weights span 7 bits (``reduce_range``): onnxruntime's u8 x s8 kernel on x86 CPUs with AVX2 but no VNNI (AMD
    EPYC before Zen 4, Intel before Cascade Lake) adds pairs of products in 16 bits, which full 8-bit weights
    overflow. On such an EPYC the tiny test SAM's masks agreed with fp32's at IoU 0.880 with 8-bit weights, 0.993
    with 7; 8-bit unsigned weights (u8 x u8, no overflow) gave 0.994 through another kernel. The 7-bit weights
    keep the kernel, hence its speed, on every CPU.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out.parent.mkdir(parents=True, exist_ok=True)
    # onnxruntime logs a hint to run its static-quantisation pre-processing to the root logger on every call; it
    # does not apply to dynamic quantisation of an already optimised export, so keep it off the user's console.
    hint = _DropMessages("pre-processing before quantization")
    logging.getLogger().addFilter(hint)
    try:
        quantize_dynamic(
            model,
            out,
            op_types_to_quantize=QUANTIZED_OP_TYPES,
            per_channel=True,
            weight_type=QuantType.QInt8,
            reduce_range=True,
        )
    finally:
        logging.getLogger().removeFilter(hint)


class _DropMessages(logging.Filter):
    def __init__(self, fragment: str) -> None:
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


def _mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boolean masks ``(M, H, W)`` pairwise along the first axis -> ``(M,) float64`` (1 where both empty)."""
    inter = (a & b).reshape(len(a), -1).sum(1)
    union = (a | b).reshape(len(a), -1).sum(1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def agreement(
    fp32_paths: tuple[Path, Path], int8_paths: tuple[Path, Path], points_per_side: int = 8, threads: int | None = None
) -> dict[str, float]:
    """Run fp32 and int8 (encoder, decoder) on the parity image with a ``points_per_side``-squared prompt grid.

    Returns:
        ``encoder_max_rel_diff`` (embedding, relative to its max), ``mask_iou_mean`` and ``mask_iou_min`` over
        all 3 masks of every prompt (low-res, logits > 0), ``masks_iou_at_least_0.9`` (fraction),
        ``iou_prediction_max_abs_diff``, and the prompt count.
    """
    from alps_client.amg.grids import build_point_grid
    from alps_client.backends.preprocess import apply_coords, prepare_encoder_input
    from export.onnx_export import check_session, parity_image

    image = parity_image()
    padded, (h, w) = prepare_encoder_input(image)
    points = build_point_grid(points_per_side) * np.array([image.shape[1], image.shape[0]])
    coords = apply_coords(points, image.shape[:2]).astype(np.float32)[:, None, :]
    labels = np.ones((len(points), 1), np.float32)
    feeds = {"images": padded[None], "input_size": np.array([[h, w]], np.int64)}
    embeddings, decoders = [], []
    for encoder_path, decoder_path in (fp32_paths, int8_paths):
        encoder = check_session(encoder_path, threads)
        embeddings.append(encoder.run(None, feeds)[0])
        del encoder
        decoders.append(check_session(decoder_path, threads))
    emb32, emb8 = embeddings
    ious, iou_diff = [], 0.0
    for begin in range(0, len(coords), PROMPTS_PER_CALL):  # bounded memory: the decoder's is ~100 MB per prompt
        end = begin + PROMPTS_PER_CALL
        chunk = {"point_coords": coords[begin:end], "point_labels": labels[begin:end]}
        masks32, pred32 = decoders[0].run(None, {"image_embeddings": emb32, **chunk})
        masks8, pred8 = decoders[1].run(None, {"image_embeddings": emb8, **chunk})
        flat = (-1, *masks32.shape[2:])
        ious.append(_mask_iou(masks32.reshape(flat) > MASK_THRESHOLD, masks8.reshape(flat) > MASK_THRESHOLD))
        iou_diff = max(iou_diff, float(np.abs(pred32 - pred8).max()))
    iou = np.concatenate(ious)
    return {
        "encoder_max_rel_diff": float(np.abs(emb32 - emb8).max() / (np.abs(emb32).max() + 1e-12)),
        "mask_iou_mean": float(iou.mean()),
        "mask_iou_min": float(iou.min()),
        "masks_iou_at_least_0.9": float((iou >= 0.9).mean()),
        "iou_prediction_max_abs_diff": iou_diff,
        "prompts": len(points),
    }
