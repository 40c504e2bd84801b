"""ONNX export of SAM's image encoder (with preprocessing) and of an automatic-mask-generation decoder.

Both wrappers take any module tree shaped like ``segment_anything.modeling.Sam`` (SAM itself or the
structured stand-in). Tensor names are the module constants below; the Triton configs and the manifest are
written from the same constants, and clients read them from the manifest.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from alps_client.backends.preprocess import IMAGE_SIZE
from export.chunked_attention import query_chunked_attention
from export.errors import ExportError
from export.shared_embedding_decoder import (
    SKIPPED_MASK_LOGIT,
    predict_masks_shared_embedding,
    prompts_to_upscale,
    scatter_kept,
)

ENCODER_INPUTS = {"images": "images", "input_size": "input_size"}
ENCODER_OUTPUTS = {"image_embeddings": "image_embeddings"}
DECODER_INPUTS = {"image_embeddings": "image_embeddings", "point_coords": "point_coords", "point_labels": "point_labels",
                  "iou_threshold": "iou_threshold"}
# Decoder inputs a caller may leave out: the ONNX file holds an initializer of the same name, which onnxruntime
# (and Triton's onnxruntime backend, with ``optional: true`` in config.pbtxt) uses when the input is not fed.
# -inf: every prompt is upscaled, as before the input existed.
DECODER_OPTIONAL_DEFAULTS = {"iou_threshold": np.array([-np.inf], np.float32)}
DECODER_OUTPUTS = {"low_res_masks": "low_res_masks", "iou_predictions": "iou_predictions"}
OPSET = 18


def max_opset() -> int:
    """The newest opset the installed onnx knows (its version converter's upper end; 28 with onnx 1.23).

    Whether a graph reaches it also depends on its ops: :func:`_save` checks what was written.
    """
    import onnx

    return int(onnx.defs.onnx_opset_version())


def written_opset(path: Path) -> int:
    """The default-domain opset of a written ONNX file (its header only; weights are not read)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(int(entry.version) for entry in model.opset_import if entry.domain in ("", "ai.onnx"))
# ONNX protobufs cannot exceed 2 GB (ViT-H's encoder is 2.5 GB): weights then go to model.onnx.data.
EXTERNAL_DATA_BYTES = 1_900_000_000


class EncoderWithPreprocess(nn.Module):
    """``images (B, 1024, 1024, 3) uint8`` + ``input_size (B, 2) int64`` -> ``(B, 256, 64, 64) float32``.

    The client resizes the longest side to 1024 (PIL BILINEAR, as Meta's ``ResizeLongestSide``) and pads to
    1024x1024; this graph normalises with SAM's pixel mean/std and zeroes the padded region *after*
    normalisation, exactly as ``Sam.preprocess`` pads the normalised tensor with zeros.
    """

    def __init__(self, sam: nn.Module) -> None:
        super().__init__()
        self.image_encoder = sam.image_encoder
        self.register_buffer("pixel_mean", sam.pixel_mean.detach().clone().view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", sam.pixel_std.detach().clone().view(1, 3, 1, 1), persistent=False)
        self.register_buffer("index", torch.arange(IMAGE_SIZE, dtype=torch.int64), persistent=False)

    def forward(self, images: torch.Tensor, input_size: torch.Tensor) -> torch.Tensor:
        """See the class docstring."""
        x = images.permute(0, 3, 1, 2).to(torch.float32)
        x = (x - self.pixel_mean) / self.pixel_std
        rows = self.index[None, :, None] < input_size[:, 0, None, None]  # (B, 1024, 1)
        cols = self.index[None, None, :] < input_size[:, 1, None, None]  # (B, 1, 1024)
        valid = (rows & cols).unsqueeze(1)  # (B, 1, 1024, 1024)
        x = torch.where(valid, x, torch.zeros_like(x))
        return self.image_encoder(x)


class AmgDecoder(nn.Module):
    """``image_embeddings (1, 256, 64, 64)``, ``point_coords (B, N, 2)``, ``point_labels (B, N)`` -> 3 masks each.

    Outputs ``low_res_masks (B, 3, 256, 256)`` logits and ``iou_predictions (B, 3)``: SAM's multimask output,
    the call Meta's automatic mask generator makes through ``SamPredictor.predict_torch``. Meta's padding point
    (0, 0) with label -1 is appended here, as ``PromptEncoder`` does when no box is given. The one image
    embedding is shared by all B prompts, and what depends on it alone is computed once (see :mod:`export.shared_embedding_decoder`).
    ``iou_threshold (1,)`` (optional in the exported file, default -inf): prompts whose three predicted IoUs are
    all at or below it are not upscaled; their masks are ``SKIPPED_MASK_LOGIT`` (the generator never reads them).
    """

    def __init__(self, sam: nn.Module) -> None:
        super().__init__()
        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder
        self.is_sam = hasattr(sam.prompt_encoder, "pe_layer")

    def _embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Meta's ``PromptEncoder._embed_points(pad=True)`` with masked arithmetic instead of in-place indexing."""
        pe = self.prompt_encoder
        b = coords.shape[0]
        coords = torch.cat([coords, torch.zeros((b, 1, 2), dtype=coords.dtype)], dim=1) + 0.5
        labels = torch.cat([labels, -torch.ones((b, 1), dtype=labels.dtype)], dim=1).unsqueeze(-1)
        emb = pe.pe_layer.forward_with_coords(coords, pe.input_image_size)
        emb = emb * (labels != -1).to(emb.dtype) + pe.not_a_point_embed.weight * (labels == -1).to(emb.dtype)
        emb = emb + pe.point_embeddings[0].weight * (labels == 0).to(emb.dtype)
        return emb + pe.point_embeddings[1].weight * (labels == 1).to(emb.dtype)

    def forward(
        self, image_embeddings: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor,
        iou_threshold: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """See the class docstring."""
        if self.is_sam:
            pe = self.prompt_encoder
            sparse = self._embed_points(point_coords, point_labels)
            dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
            return predict_masks_shared_embedding(
                self.mask_decoder, image_embeddings, pe.get_dense_pe(), sparse, dense, iou_threshold
            )
        # The stand-in computes every mask anyway; it only gives skipped prompts the same fill, so that clients
        # and tests see one behaviour.
        sparse, dense = self.prompt_encoder(points=(point_coords, point_labels), boxes=None, masks=None)
        masks, iou_pred = self.mask_decoder(
            image_embeddings=image_embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
        )
        index = prompts_to_upscale(iou_pred, iou_threshold)
        return scatter_kept(masks.index_select(0, index), index, masks.shape[0]), iou_pred


# Where in the exporter's Python each node was traced (file, line): two exports of one model from two checkouts, or
# from before and after an upgrade that moved a line, differed byte for byte, so `alps run` took a re-export of the
# same weights for another model and refused the datasets labelled with the first.
SOURCE_LOCATION_KEYS = ("pkg.torch.onnx.stack_trace",)


def _drop_source_locations(model: Any) -> None:
    """Remove :data:`SOURCE_LOCATION_KEYS` from every node of an ``onnx_ir`` model (subgraphs and functions too)."""
    import onnx_ir as ir

    for graph in (model.graph, *model.functions.values()):
        for node in ir.traversal.RecursiveGraphIterator(graph):
            for key in SOURCE_LOCATION_KEYS:
                node.metadata_props.pop(key, None)


def _save(program: Any, path: Path, opset: int) -> None:
    """Write an exported program to ``path``, once it is known to be at the ``opset`` asked for.

    Raises:
        ExportError: When the exporter's conversion to ``opset`` failed: onnxscript only logs that and hands back
            the graph at the opset it was built in (18), which the manifest would then have called ``opset``.
    """
    reached = program.model.opset_imports.get("")
    if reached != opset:
        raise ExportError(
            f"--opset {opset}: the ONNX exporter could not convert {path.parent.parent.name}'s graph to opset {opset} "
            f"(it stayed at opset {reached}); give a lower --opset ({OPSET}, the default, always works)"
        )
    _drop_source_locations(program.model)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in (path, path.with_name(path.name + ".data")):
        stale.unlink(missing_ok=True)
    # The initializers' bytes, not ``program.model_proto.ByteSize()``: that serialises a copy of every weight
    # (2.5 GB more RSS for vit_h) only to be measured.
    weights = sum(v.const_value.nbytes for v in program.model.graph.initializers.values() if v.const_value is not None)
    program.save(str(path), external_data=weights > EXTERNAL_DATA_BYTES)


def export_encoder(sam: nn.Module, path: Path, opset: int = OPSET) -> float:
    """Export the encoder with preprocessing and return the seconds taken.

    Dynamic batch; global attention in bands of query rows (same result, a fraction of the peak memory: see
    :mod:`export.chunked_attention`).
    """
    start = time.perf_counter()
    wrapper = EncoderWithPreprocess(sam).eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    images = torch.zeros((2, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=torch.uint8)
    input_size = torch.tensor([[IMAGE_SIZE, IMAGE_SIZE], [IMAGE_SIZE, 700]], dtype=torch.int64)
    with torch.no_grad(), query_chunked_attention():
        program = torch.onnx.export(
            wrapper,
            (images, input_size),
            dynamo=True,
            opset_version=opset,
            input_names=list(ENCODER_INPUTS.values()),
            output_names=list(ENCODER_OUTPUTS.values()),
            dynamic_shapes={"images": {0: batch}, "input_size": {0: batch}},
            verbose=False,
        )
    _save(program, path, opset)
    return time.perf_counter() - start


def export_decoder(sam: nn.Module, path: Path, opset: int = OPSET) -> float:
    """Export the AMG decoder and return the seconds taken.

    Dynamic number of prompts B and points per prompt N; ``iou_threshold`` optional (see
    :data:`DECODER_OPTIONAL_DEFAULTS`).
    """
    start = time.perf_counter()
    wrapper = AmgDecoder(sam).eval()
    prompts = torch.export.Dim("num_prompts", min=1, max=4096)
    points = torch.export.Dim("num_points", min=1, max=64)
    embeddings = torch.randn((1, 256, 64, 64), dtype=torch.float32)
    coords = torch.rand((3, 2, 2), dtype=torch.float32) * IMAGE_SIZE
    labels = torch.ones((3, 2), dtype=torch.float32)
    iou_threshold = torch.zeros((1,), dtype=torch.float32)
    with torch.no_grad():
        program = torch.onnx.export(
            wrapper,
            (embeddings, coords, labels, iou_threshold),
            dynamo=True,
            opset_version=opset,
            input_names=list(DECODER_INPUTS.values()),
            output_names=list(DECODER_OUTPUTS.values()),
            dynamic_shapes={
                "image_embeddings": None,
                "point_coords": {0: prompts, 1: points},
                "point_labels": {0: prompts, 1: points},
                "iou_threshold": None,
            },
            verbose=False,
        )
    for name, default in DECODER_OPTIONAL_DEFAULTS.items():
        program.model.graph.initializers[name] = _initializer(program.model.graph.inputs, name, default)
    _save(program, path, opset)
    return time.perf_counter() - start


def _initializer(inputs: Any, name: str, value: np.ndarray) -> Any:
    """The graph input ``name`` given ``value`` as its initializer: onnxruntime then treats it as optional."""
    import onnx_ir as ir

    (graph_input,) = [v for v in inputs if v.name == name]
    graph_input.const_value = ir.tensor(value, name=name)
    return graph_input


def parity_image(height: int = 480, width: int = 640, seed: int = 0) -> np.ndarray:
    """A non-trivial ``(H, W, 3) uint8`` test image: smooth gradients, coloured shapes and noise."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    img = np.stack([xx / width * 200, yy / height * 180, (xx + yy) / (width + height) * 150], axis=-1)
    for _ in range(8):
        cy, cx, r = rng.randint(0, height), rng.randint(0, width), rng.randint(20, 90)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.randint(0, 256, 3)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def check_session(path: Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU session for the export's checks (parity, int8 agreement): quiet, without the arena.

    The checks run one model at a time and each session gives its memory back after every run: vit_h's PyTorch
    forward, its encoder session and its decoder session alive together, with the arena, took the export to
    15.7 GiB of peak RSS (``/usr/bin/time``; killed by the OOM killer on a 24 GB machine with other memory taken).
    """
    from alps_client.backends.embedded import make_session

    settings = {"level": "all", "threads": threads, "arena": False, "disabled_optimizers": [], "spinning": False}
    return make_session(path, settings, ["CPUExecutionProvider"])


def worst_difference(*differences: float) -> float:
    """The largest difference, NaN if any is (``max(0.0, nan)`` is 0.0: a NaN decoder passed as a perfect one)."""
    return float(np.max(differences))


def check_parity(
    sam: nn.Module, encoder_path: Path, decoder_path: Path, encoder_rtol: float = 1e-3, decoder_atol: float = 1e-4
) -> dict[str, float]:
    """Compare ONNX (onnxruntime, CPU) against PyTorch on :func:`parity_image`; raise past tolerance.

    The PyTorch side is Meta's own path: ``ResizeLongestSide`` + ``Sam.preprocess`` + ``image_encoder`` and the
    predictor's prompt encoding with padding. Returns the figures stored in the manifest.
    """
    from alps_client.backends.preprocess import apply_coords, prepare_encoder_input

    image = parity_image()
    padded, (h, w) = prepare_encoder_input(image)
    with torch.no_grad():
        resized = torch.as_tensor(padded[:h, :w]).permute(2, 0, 1).contiguous()[None]
        torch_embedding = sam.image_encoder(sam.preprocess(resized)).numpy()
    encoder = check_session(encoder_path)  # one model at a time (see check_session)
    ort_embedding = encoder.run(None, {"images": padded[None], "input_size": np.array([[h, w]], np.int64)})[0]
    del encoder
    decoder = check_session(decoder_path)
    encoder_rel = float(np.abs(ort_embedding - torch_embedding).max() / (np.abs(torch_embedding).max() + 1e-12))

    rng = np.random.RandomState(1)
    points = np.stack([rng.uniform(0, image.shape[1], 16), rng.uniform(0, image.shape[0], 16)], axis=-1)
    coords = apply_coords(points, image.shape[:2]).astype(np.float32)[:, None, :]
    labels = np.ones((16, 1), np.float32)
    ort_masks, ort_iou = decoder.run(
        None, {"image_embeddings": torch_embedding, "point_coords": coords, "point_labels": labels}
    )
    with torch.no_grad():
        sparse, dense = sam.prompt_encoder(
            points=(torch.as_tensor(coords), torch.as_tensor(labels)), boxes=None, masks=None
        )
        torch_masks, torch_iou = sam.mask_decoder(
            image_embeddings=torch.as_tensor(torch_embedding),
            image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
        )
    mask_atol = float(np.abs(ort_masks - torch_masks.numpy()).max())
    iou_atol = float(np.abs(ort_iou - torch_iou.numpy()).max())
    # With iou_threshold at the median best IoU, about half the prompts are upscaled: those must not change.
    best = torch_iou.numpy().max(axis=1)
    threshold = np.array([np.median(best)], np.float32)
    skip_masks, _ = decoder.run(None, {"image_embeddings": torch_embedding, "point_coords": coords,
                                       "point_labels": labels, "iou_threshold": threshold})
    upscaled = (ort_iou > threshold).any(axis=1)
    mask_atol = worst_difference(mask_atol, float(np.abs(skip_masks[upscaled] - torch_masks.numpy()[upscaled])
                                                 .max(initial=0.0)))
    if not np.all(skip_masks[~upscaled] == SKIPPED_MASK_LOGIT):
        raise RuntimeError("ONNX decoder: prompts at or below iou_threshold must come back as empty masks")
    figures = {
        "encoder_max_rel_diff": encoder_rel,
        "decoder_masks_max_abs_diff": mask_atol,
        "decoder_iou_max_abs_diff": iou_atol,
        "decoder_upscaled_share_at_median_iou": float(upscaled.mean()),
        "encoder_rtol": encoder_rtol,
        "decoder_atol": decoder_atol,
    }
    if not (encoder_rel <= encoder_rtol and mask_atol <= decoder_atol and iou_atol <= decoder_atol):  # NaN fails
        raise RuntimeError(
            f"ONNX/PyTorch parity failed: encoder rel {encoder_rel:.2e} (limit {encoder_rtol:.0e}), decoder masks "
            f"atol {mask_atol:.2e}, iou atol {iou_atol:.2e} (limit {decoder_atol:.0e}); the export is not usable"
        )
    return figures
