"""Memory-bounded global attention for the encoder export: the same arithmetic, a smaller peak.

SAM's global-attention blocks build the full ``(B * heads, 4096, 4096) float32`` attention map (vit_b: 805 MB),
then a second one for the decomposed relative positions and a third for the softmax. Softmax is per query row,
so computing the map for a band of query rows at a time gives the same result while only one band of the map
exists at once. Exported under :func:`query_chunked_attention`, onnxruntime's peak for the vit_b encoder drops by
gigabytes at the same speed (measured in ``bench/``); PyTorch's modules are untouched outside the context.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

# Query rows of the 64x64 token grid per band: 8 rows = 512 queries, a (heads, 512, 4096) map (vit_b: 100 MB).
ROWS_PER_BAND = 8
# Window attention (14x14 = 196 tokens) is already small; only maps past this many tokens are banded.
MIN_TOKENS_TO_BAND = 1024


def _banded_forward(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``segment_anything.modeling.image_encoder.Attention.forward`` over bands of query rows.

    Args:
        self: the ``Attention`` module (this replaces its ``forward``).
        x: ``(B, H, W, C) float32`` tokens.

    Returns:
        ``(B, H, W, C) float32``, equal to Meta's forward up to float summation order.
    """
    from segment_anything.modeling.image_encoder import get_rel_pos

    b, h, w, _ = x.shape
    qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, b * self.num_heads, h * w, -1).unbind(0)
    keys_t = k.transpose(-2, -1)
    bands = []
    for row0 in range(0, h, ROWS_PER_BAND):
        rows = min(ROWS_PER_BAND, h - row0)
        q_band = q[:, row0 * w : (row0 + rows) * w]
        attn = (q_band * self.scale) @ keys_t
        if self.use_rel_pos:
            # Meta's helper with the band's slice of the height table: rows row0.. of the query grid.
            rel_pos_h = get_rel_pos(h, h, self.rel_pos_h)[row0 : row0 + rows]
            attn = _add_rel_pos_band(attn, q_band, rel_pos_h, get_rel_pos(w, w, self.rel_pos_w), rows, (h, w))
        bands.append(attn.softmax(dim=-1) @ v)
    out = torch.cat(bands, dim=1)
    out = out.view(b, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
    return self.proj(out)


def _add_rel_pos_band(
    attn: torch.Tensor, q_band: torch.Tensor, rh: torch.Tensor, rw: torch.Tensor, rows: int, k_size: tuple[int, int]
) -> torch.Tensor:
    """Meta's ``add_decomposed_rel_pos`` for ``rows`` query rows.

    Shapes: ``attn (B*heads, rows*W, H*W)``, ``rh (rows, H, C)``, ``rw (W, W, C)``.
    """
    k_h, k_w = k_size
    bh, _, dim = q_band.shape
    r_q = q_band.reshape(bh, rows, k_w, dim)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, rh)
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, rw)
    attn = attn.view(bh, rows, k_w, k_h, k_w) + rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]
    return attn.view(bh, rows * k_w, k_h * k_w)


@contextmanager
def query_chunked_attention() -> Iterator[None]:
    """Within the context, SAM's ``Attention`` computes global attention in bands of :data:`ROWS_PER_BAND` rows."""
    from segment_anything.modeling import image_encoder

    original = image_encoder.Attention.forward

    def forward(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return original(self, x) if x.shape[1] * x.shape[2] < MIN_TOKENS_TO_BAND else _banded_forward(self, x)

    image_encoder.Attention.forward = forward
    try:
        yield
    finally:
        image_encoder.Attention.forward = original
