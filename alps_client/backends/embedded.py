"""Embedded backend: the exported encoder and decoder run in this process with onnxruntime (no server).

SAM and SAM 2 repositories alike: requests are built by role in :mod:`alps_client.backends.feeds`.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from alps_client.backends.base import ClosedOnExit, DecoderOutput, Embedding
from alps_client.backends.feeds import (
    decoder_feeds,
    encoder_feeds,
    encoder_output_roles,
    make_embedding,
    mask_outputs,
)
from alps_client.backends.manifest import ModelManifest, ModelSpec, load_manifest
from alps_client.backends.preprocess import check_image_list
from alps_client.config import BackendConfig
from alps_client.errors import (
    BackendClosedError,
    BackendOutOfMemoryError,
    DependencyNotFoundError,
    ModelRepositoryError,
    ModelSignatureError,
    ran_out_of_memory,
)

# Prompts per decoder call. On CPU the time per prompt is flat up to 32 and memory grows with the chunk (vit_b
# decoder, 2 threads, one run of bench/bench_ort_options.py: 4 -> 27.5 ms/prompt, 0.5 GB; 8 -> 28.9 ms, 0.9 GB;
# 16 -> 28.0 ms, 1.6 GB; 64 -> 33.1 ms, 5.9 GB). 8 rather than 4: fewer calls on a full AMG run (42.7 vs 45.1 s
# per image).
CPU_PROMPTS_PER_CALL = 8
# On GPU, Meta's points_per_batch. onnxruntime holds ~90 MB of decoder activations per prompt in flight (measured
# on CPU, bench/bench_ort_options.py), so 64 prompts need ~6 GB of GPU memory; 256 would need ~24 GB.
GPU_PROMPTS_PER_CALL = 64
_ORT_DTYPES = {"tensor(uint8)": "uint8", "tensor(int64)": "int64", "tensor(float)": "float32"}
GPU_PROVIDERS = frozenset({"CUDAExecutionProvider", "TensorrtExecutionProvider"})
logger = logging.getLogger(__name__)

_LEVELS = {"basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def check_session_signature(session: object, spec: ModelSpec) -> None:
    """Check an onnxruntime session has the manifest's tensor names and dtypes.

    Raises:
        ModelSignatureError: naming the tensor, the expectation and what the model has.
    """
    # Optional inputs are initializers a caller may override: onnxruntime lists them apart from the inputs.
    inputs = [*session.get_inputs(), *session.get_overridable_initializers()]  # type: ignore[attr-defined]
    for side, tensors in (("input", inputs), ("output", session.get_outputs())):  # type: ignore[attr-defined]
        found = {t.name: _ORT_DTYPES.get(t.type, t.type) for t in tensors}
        expected = spec.inputs if side == "input" else spec.outputs
        for role, tensor in expected.items():
            if tensor.name not in found:
                raise ModelSignatureError(
                    f"{spec.name}: manifest {side} '{tensor.name}' (role {role}) is not in {spec.onnx_path} "
                    f"(has {sorted(found)}); re-run export/export_sam.py"
                )
            if found[tensor.name] != tensor.dtype:
                raise ModelSignatureError(
                    f"{spec.name}: {side} '{tensor.name}' must be {tensor.dtype}, the model has {found[tensor.name]}"
                )


def session_settings(model: str, num_threads: int | None, on_gpu: bool) -> dict[str, Any]:
    """The onnxruntime settings of the ``encoder`` or ``decoder`` session.

    Each was measured one at a time by ``bench/bench_ort_options.py`` (figures in bench/README.md):

    - graph optimisation ``all`` (onnxruntime's default) and intra-op threads = cores (``num_threads`` or all).
    - The encoder runs without a CPU arena: it runs once per image between many decoder calls, and with its own
      arena each new encode grew memory by the encoder's whole working set (vit_b AMG: 8.1 GB peak, then 5.1 GB,
      same speed). The decoder keeps its arena (without: 46.0 vs 28.9 ms per prompt).
    - On CPU the decoder is built without ``SkipLayerNormFusion``: onnxruntime's CPU kernel for the fused
      residual add + layer norm took 15 % of the decoder's time on ``(B, 4096, 256)`` image tokens, where a plain
      Add then LayerNormalization take a fraction of it (vit_b decoder: 26.7 vs 23.2 ms of CPU per prompt).
    - Intra-op threads do not spin-wait for work (onnxruntime's default is to spin): alone, the vit_b pipeline ran
      within noise either way (29.7 vs 32.1 s per image); on a shared machine the spinning threads burn the cores
      that other processes, and this run's own post-processing thread, are waiting for (the test suite, 3
      processes on 2 cores, alternating runs: 386 / 382 s spinning vs 357 / 338 s not).
    """
    return {
        "level": "all",
        "threads": num_threads,
        "arena": model == "decoder",
        "disabled_optimizers": ["SkipLayerNormFusion"] if model == "decoder" and not on_gpu else [],
        "spinning": False,
    }


@functools.cache
def preload_cuda_libraries() -> None:
    """Load the CUDA and cuDNN libraries that pip installed beside onnxruntime-gpu, once per process.

    onnxruntime-gpu's CUDA provider finds them by name alone, and pip's ``nvidia-*`` wheels are on no library path:
    ``onnxruntime.preload_dlls`` (onnxruntime >= 1.21) loads them from the site-packages onnxruntime is in; without
    it the provider fails to start unless ``import torch`` loaded the same libraries first.
    """
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()


def make_session(path: str | Path, settings: dict[str, Any], providers: Sequence[str | tuple[str, dict[str, Any]]]) -> Any:
    """An ``onnxruntime.InferenceSession`` with :func:`session_settings`-style ``settings``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[settings["level"]])
    options.log_severity_level = 3
    if settings["threads"]:
        options.intra_op_num_threads = settings["threads"]
    options.enable_cpu_mem_arena = settings["arena"]
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if settings["spinning"] else "0")
    return ort.InferenceSession(str(path), options, providers=list(providers),
                                disabled_optimizers=settings["disabled_optimizers"] or None)


class EmbeddedBackend(ClosedOnExit):
    """SAM encoder and AMG decoder in onnxruntime sessions; CUDA provider when available, else CPU.

    Sessions are thread-safe for ``run``, so one backend can serve several images concurrently.

    Args:
        config: model repository and threads.
        manifest: the repository's manifest (read from ``config.model_repository`` if not given).
        providers: onnxruntime execution providers in order of preference, names or ``(name, options)`` pairs
            (e.g. TensorRT's); default CUDA when available, then CPU.
    """

    def __init__(self, config: BackendConfig | None = None, manifest: ModelManifest | None = None,
                 providers: Sequence[str | tuple[str, dict[str, Any]]] | None = None) -> None:
        import onnxruntime as ort

        self.config = config or BackendConfig()
        self.manifest = manifest or load_manifest(self.config.model_repository)
        if providers is None:
            cuda = "CUDAExecutionProvider" in ort.get_available_providers()
            try:
                self._open(["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"])
            except DependencyNotFoundError as err:
                logger.warning("%s; running on the CPU", err)
                self._open(["CPUExecutionProvider"])
        else:
            self._open(providers)
        # One encode at a time: two at once (the flow keeps 2 images in flight) hold the encoder's working set
        # twice (vit_b: ~1.7 GB each, AMG peak 3.2 GB) for no speed, the first already using every thread.
        self._encode_lock = threading.Lock()
        self._enc = self.manifest.encoder
        self._dec = self.manifest.decoder

    def _open(self, providers: Sequence[str | tuple[str, dict[str, Any]]]) -> None:
        """Start the encoder and decoder sessions on ``providers``; the first one must run them."""
        first = providers[0] if isinstance(providers[0], str) else providers[0][0]
        self.on_gpu = first in GPU_PROVIDERS
        if self.on_gpu:
            preload_cuda_libraries()
        self._sessions = {}
        for key, spec in (("encoder", self.manifest.encoder), ("decoder", self.manifest.decoder)):
            if not spec.onnx_path.is_file():
                raise ModelRepositoryError(
                    f"{spec.onnx_path} is missing from the model repository; re-run export/export_sam.py"
                )
            session = make_session(spec.onnx_path, session_settings(key, self.config.num_threads, self.on_gpu),
                                   providers)
            if first not in session.get_providers():
                # onnxruntime goes on with the next provider when one cannot start (its libraries missing, say):
                # asked for a GPU, that would run on the CPU, with GPU-sized prompt batches, and say nothing.
                raise DependencyNotFoundError(
                    f"onnxruntime could not start {first} for {spec.onnx_path} (it runs on "
                    f"{session.get_providers()}): its libraries are missing or do not load; for CUDA, pip install "
                    "'onnxruntime-gpu[cuda,cudnn]', or ask for CPUExecutionProvider"
                )
            check_session_signature(session, spec)
            self._sessions[key] = session
        #: the providers the sessions run on, in onnxruntime's order of preference
        self.providers: list[str] = self._sessions["encoder"].get_providers()
        self.runs_on = f"onnxruntime {self.providers[0]}"

    @property
    def prompt_batch_size(self) -> int:
        """Prompts per decoder call: large on GPU, memory-bounded on CPU."""
        return GPU_PROMPTS_PER_CALL if self.on_gpu else CPU_PROMPTS_PER_CALL

    def encode(self, images: Sequence[npt.NDArray[np.uint8]]) -> list[Embedding]:
        """Embed ``(H, W, 3) uint8`` RGB images one at a time (bounded memory on CPU)."""
        check_image_list(images)
        out: list[Embedding] = []
        roles = encoder_output_roles(self.manifest)
        names = [self._enc.outputs[role].name for role in roles]
        for image in images:
            feeds, input_size = encoder_feeds(self.manifest, image)
            with self._encode_lock:
                outputs = self._run("encoder", names, {self._enc.inputs[r].name: v for r, v in feeds.items()})
            out.append(make_embedding(dict(zip(roles, outputs)), input_size, image))
        return out

    def decode(
        self,
        embedding: Embedding,
        point_coords: npt.NDArray[np.float32],
        point_labels: npt.NDArray[np.float32],
        mask_input: npt.NDArray[np.float32] | None = None,
        iou_threshold: float | None = None,
    ) -> DecoderOutput:
        """Decode ``(B, N, 2)`` prompts in chunks of :attr:`prompt_batch_size`; see ``SamBackend.decode``."""
        shared, per_prompt = decoder_feeds(self.manifest, embedding, point_coords, point_labels, mask_input,
                                           iou_threshold)
        names = [self._dec.outputs["low_res_masks"].name, self._dec.outputs["iou_predictions"].name]
        feeds = {self._dec.inputs[r].name: v for r, v in shared.items()}
        masks, ious = [], []
        step = self.prompt_batch_size
        for start in range(0, point_coords.shape[0], step):
            feeds.update({self._dec.inputs[r].name: v[start : start + step] for r, v in per_prompt.items()})
            m, i = self._run("decoder", names, feeds)
            masks.append(m)
            ious.append(i)
        if not masks:
            k = mask_outputs(self.manifest)
            return DecoderOutput(np.zeros((0, k, 256, 256), np.float32), np.zeros((0, k), np.float32))
        return DecoderOutput(np.concatenate(masks), np.concatenate(ious))

    def _run(self, key: str, names: list[str], feeds: dict[str, Any]) -> list[Any]:
        """``session.run``; an allocation that failed (a busy machine) becomes a transient error the run retries.

        Raises:
            BackendClosedError: If the backend was closed (a run stopped under this call).
            BackendOutOfMemoryError: If onnxruntime could not allocate memory.
        """
        session = self._sessions.get(key)
        if session is None:
            raise BackendClosedError(f"the embedded backend is closed: no {key} session (its run ended or was "
                                     "stopped)")
        try:
            return list(session.run(names, feeds))
        except Exception as err:
            if not ran_out_of_memory(err):
                raise
            first = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
            raise BackendOutOfMemoryError(f"onnxruntime could not allocate memory for the {key} ({first[-160:]}); "
                                          "other work on this machine may free it") from err

    def close(self) -> None:
        """Drop the sessions."""
        self._sessions.clear()
