"""Where SAM runs, behind one protocol: embedded onnxruntime (default), Triton, or the numpy fake of the tests."""

from __future__ import annotations

from alps_client.backends.base import DecoderOutput, Embedding, SamBackend
from alps_client.backends.manifest import load_manifest
from alps_client.config import BackendConfig
from alps_client.errors import ModelRepositoryError


def make_backend(config: BackendConfig) -> SamBackend:
    """The backend ``config.kind`` names, for the model repository's manifest.

    A fake repository (``model_type: "fake"``, tests only) gives :class:`FakeSamBackend` on the embedded path.
    Triton's client library is imported only when asked for.

    Raises:
        ModelRepositoryError: If the repository is missing, or a fake one is asked to run on Triton.
    """
    manifest = load_manifest(config.model_repository)
    if manifest.model_type == "fake":
        if config.kind != "embedded":
            raise ModelRepositoryError(f"{manifest.root} holds the numpy FAKE test model, which only runs embedded")
        from alps_client.backends.fake import FakeSamBackend

        return FakeSamBackend(manifest)
    if config.kind == "embedded":
        from alps_client.backends.embedded import EmbeddedBackend

        return EmbeddedBackend(config, manifest)
    from alps_client.backends.triton import TritonBackend

    return TritonBackend(config, manifest)


__all__ = ["DecoderOutput", "Embedding", "SamBackend", "make_backend"]
