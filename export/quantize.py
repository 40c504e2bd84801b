"""Opt-in int8 dynamic quantisation of the exported models for CPU, and the mask agreement it costs.

``export_sam.py --quantize int8`` exports fp32 as usual, checks parity against PyTorch, then replaces both ONNX
files with onnxruntime's dynamic quantisation: weights of MatMul/Gemm stored as int8 per output channel,
activations quantised on the fly (MatMulInteger). Inputs and outputs keep their dtypes, so clients and Triton
configs are unchanged. Dynamic quantisation targets CPUs (x86 VNNI, ARM dot-product); on GPU use fp32.

Quantisation changes masks, so the export measures fp32 against int8 on the parity image and stores the figures in
the manifest; ``bench/bench_quantization.py`` measures the whole automatic mask generation on a dataset.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

QUANTIZE_CHOICES = ("none", "int8")
# Op types whose weights are quantised; attention products between two activations stay fp32 (dynamic mode's
# MatMulConstBOnly default), as do convolutions (ConvInteger is slower than fp32 Conv on onnxruntime's CPU EP).
QUANTIZED_OP_TYPES = ["MatMul", "Gemm"]
# Masks are compared as SAM thresholds them: low-res logits > 0.
MASK_THRESHOLD = 0.0


def quantize_int8(model: Path, out: Path) -> None:
    """Write an int8 dynamically quantised copy of ``model`` to ``out`` (weights per output channel).

    The copy is one file: int8 weights are a quarter of fp32 (vit_h's encoder: ~0.65 GB), under protobuf's 2 GB.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out.parent.mkdir(parents=True, exist_ok=True)
    quantize_dynamic(
        model,
        out,
        op_types_to_quantize=QUANTIZED_OP_TYPES,
        per_channel=True,
        weight_type=QuantType.QInt8,
    )


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
    import onnxruntime as ort

    from alps_client.grids import build_point_grid
    from alps_client.transforms import apply_coords, prepare_encoder_input
    from export.onnx_export import parity_image

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    image = parity_image()
    padded, (h, w) = prepare_encoder_input(image)
    points = build_point_grid(points_per_side) * np.array([image.shape[1], image.shape[0]])
    coords = apply_coords(points, image.shape[:2]).astype(np.float32)[:, None, :]
    labels = np.ones((len(points), 1), np.float32)
    results = []
    for encoder_path, decoder_path in (fp32_paths, int8_paths):
        encoder = ort.InferenceSession(str(encoder_path), options, providers=["CPUExecutionProvider"])
        decoder = ort.InferenceSession(str(decoder_path), options, providers=["CPUExecutionProvider"])
        (embedding,) = encoder.run(None, {"images": padded[None], "input_size": np.array([[h, w]], np.int64)})
        masks, ious = decoder.run(None, {"image_embeddings": embedding, "point_coords": coords, "point_labels": labels})
        results.append((embedding, masks > MASK_THRESHOLD, ious))
    (emb32, masks32, iou32), (emb8, masks8, iou8) = results
    iou = _mask_iou(masks32.reshape(-1, *masks32.shape[2:]), masks8.reshape(-1, *masks8.shape[2:]))
    return {
        "encoder_max_rel_diff": float(np.abs(emb32 - emb8).max() / (np.abs(emb32).max() + 1e-12)),
        "mask_iou_mean": float(iou.mean()),
        "mask_iou_min": float(iou.min()),
        "masks_iou_at_least_0.9": float((iou >= 0.9).mean()),
        "iou_prediction_max_abs_diff": float(np.abs(iou32 - iou8).max()),
        "prompts": int(len(points)),
    }
