"""Opt-in int8 dynamic quantisation of the exported models for CPU, and the mask agreement it costs.

``export_sam.py --quantize int8`` exports fp32 as usual, checks parity against PyTorch, then replaces both ONNX
files with onnxruntime's dynamic quantisation: weights of MatMul/Gemm stored as int8 per output channel,
activations quantised on the fly (MatMulInteger). Inputs and outputs keep their dtypes, so clients and Triton
configs are unchanged. Dynamic quantisation targets CPUs (x86 VNNI, ARM dot-product); on GPU use fp32.

Quantisation changes masks, so the export measures fp32 against int8 on the parity image and stores the figures in
the manifest; ``bench/bench_pipeline.py`` measures the whole automatic mask generation on a dataset and
``bench/bench_ort_options.py`` the agreement prompt by prompt.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

QUANTIZE_CHOICES = ("none", "int8")
# Op types whose weights are quantised; attention products between two activations stay fp32 (dynamic mode's
# MatMulConstBOnly default), as do convolutions (ConvInteger is slower than fp32 Conv on onnxruntime's CPU EP).
QUANTIZED_OP_TYPES = ["MatMul", "Gemm"]
# Point coordinates go through the prompt encoder's random Fourier features as a MatMul; quantising its input to
# 8 bits would move every prompt by up to half a step of 2/255 of the image side, for no measurable speed.
FP32_WEIGHTS = ("positional_encoding_gaussian_matrix",)
# Masks are compared as SAM thresholds them: low-res logits > 0.
MASK_THRESHOLD = 0.0
PROMPTS_PER_CALL = 16


def quantize_int8(model: Path, out: Path) -> None:
    """Write an int8 dynamically quantised copy of ``model`` to ``out`` (weights per output channel).

    The copy is one file: int8 weights are a quarter of fp32 (vit_h's encoder: ~0.65 GB), under protobuf's 2 GB.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out.parent.mkdir(parents=True, exist_ok=True)
    graph = onnx.load(str(model), load_external_data=False).graph
    keep_fp32 = [n.name for n in graph.node if any(w in i for i in n.input for w in FP32_WEIGHTS)]
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
            nodes_to_exclude=keep_fp32,
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
    import onnxruntime as ort

    from alps_client.amg.grids import build_point_grid
    from alps_client.backends.preprocess import apply_coords, prepare_encoder_input
    from export.onnx_export import parity_image

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = False  # as the embedded backend: memory returns after each encoder run
    if threads:
        options.intra_op_num_threads = threads
    image = parity_image()
    padded, (h, w) = prepare_encoder_input(image)
    points = build_point_grid(points_per_side) * np.array([image.shape[1], image.shape[0]])
    coords = apply_coords(points, image.shape[:2]).astype(np.float32)[:, None, :]
    labels = np.ones((len(points), 1), np.float32)
    feeds = {"images": padded[None], "input_size": np.array([[h, w]], np.int64)}
    embeddings, decoders = [], []
    for encoder_path, decoder_path in (fp32_paths, int8_paths):
        encoder = ort.InferenceSession(str(encoder_path), options, providers=["CPUExecutionProvider"])
        embeddings.append(encoder.run(None, feeds)[0])
        del encoder
        decoders.append(ort.InferenceSession(str(decoder_path), options, providers=["CPUExecutionProvider"]))
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
        "prompts": int(len(points)),
    }
