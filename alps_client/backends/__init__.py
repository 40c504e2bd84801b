"""Inference backends behind one protocol: embedded onnxruntime (default) and Triton."""

from __future__ import annotations

from alps_client.backends.base import DecoderOutput, Embedding, SamBackend
from alps_client.config import BackendConfig


def make_backend(config: BackendConfig) -> SamBackend:
    """The backend ``config.kind`` names; Triton's client library is imported only when asked for."""
    if config.kind == "embedded":
        from alps_client.backends.embedded import EmbeddedBackend

        return EmbeddedBackend(config)
    from alps_client.backends.triton import TritonBackend

    return TritonBackend(config)


__all__ = ["DecoderOutput", "Embedding", "SamBackend", "make_backend"]
