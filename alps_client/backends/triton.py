"""Triton backend: the exported encoder and decoder served by Triton Inference Server (gRPC or HTTP).

Same protocol as the embedded backend. Tensor names come from the model repository manifest and are checked
against the server's model metadata at start (Triton's ``parse_model`` style). Requests run concurrently
(prompt chunks of one image in flight together; several images from the flow's threads), so Triton's dynamic
batching can group them. Several servers (``triton_urls``) share the requests round-robin; a server that fails
is taken out of rotation and probed again later, while the others carry on. Transient failures (server
unavailable, timeouts, a restart) are retried with backoff; shared-memory regions are re-registered after a
restart and released on close, on error and at exit.
"""

from __future__ import annotations

import atexit
import itertools
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt

from alps_client._imports import lazy_import
from alps_client.backends.base import DecoderOutput, Embedding
from alps_client.config import BackendConfig
from alps_client.errors import BackendUnavailableError, ModelSignatureError
from alps_client.backends.manifest import ModelManifest, ModelSpec, load_manifest
from alps_client.backends.feeds import decoder_feeds, encoder_feeds, encoder_output_roles, make_embedding, mask_outputs

# Prompts per decoder request; the server holds ~90 MB of activations per prompt in flight per instance (see
# backends/embedded.py). On a CPU server, large requests amortise the transfer of their (B, 3, 256, 256) masks.
CPU_PROMPTS_PER_CALL = 64
GPU_PROMPTS_PER_CALL = 64
_TRITON_DTYPES = {"uint8": "UINT8", "int64": "INT64", "float32": "FP32"}
_TRANSIENT = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "Connection refused", "failed to connect", "Socket closed",
              "connection reset", "Broken pipe", "RemoteDisconnected", "unregistered", "Unable to find shared memory")


class _ShmRegion:
    """One system shared-memory region, registered with the server; re-registered after a restart."""

    def __init__(self, client: Any, shm: Any, nbytes: int) -> None:
        self.name = f"alps_{uuid.uuid4().hex[:12]}"
        self.key = f"/{self.name}"
        self.nbytes = nbytes
        self.handle = shm.create_shared_memory_region(self.name, self.key, nbytes)
        self._shm = shm
        self.register(client)

    def register(self, client: Any) -> None:
        try:
            client.unregister_system_shared_memory(self.name)
        except Exception:  # not registered yet (or server restarted): fine
            pass
        client.register_system_shared_memory(self.name, self.key, self.nbytes)

    def destroy(self, client: Any) -> None:
        try:
            client.unregister_system_shared_memory(self.name)
        except Exception:
            pass
        self._shm.destroy_shared_memory_region(self.handle)


class TritonBackend:
    """SAM on a Triton server; see the module docstring.

    Args:
        config: ``triton_urls[0]`` (``host:port``), ``protocol``, ``shared_memory``, ``timeout_s``.
        manifest: the model repository manifest (read from ``config.model_repository`` if not given).
        in_flight: concurrent requests per backend.
        retry_s: how long transient failures are retried before giving up.
    """

    def __init__(self, config: BackendConfig, manifest: ModelManifest | None = None, in_flight: int = 4,
                 retry_s: float = 90.0) -> None:
        self.config = config
        self.manifest = manifest or load_manifest(config.model_repository)
        self.urls = list(dict.fromkeys(config.triton_urls))
        if config.shared_memory and len(self.urls) > 1:
            raise ValueError("shared memory needs the client on the server's host: give one --triton-url with it")
        self.url = self.urls[0]
        self.retry_s = retry_s
        self._down_until: dict[str, float] = {}
        self._turn = itertools.count()
        self._module = lazy_import(f"tritonclient.{config.protocol}")
        self._utils = lazy_import("tritonclient.utils")
        self._local = threading.local()
        self._clients: list[Any] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="alps-triton")
        self._regions: dict[int, dict[str, _ShmRegion]] = {}
        self._closed = False
        self.on_gpu = False
        self._check_server()
        atexit.register(self.close)

    # -- connection -----------------------------------------------------------------------------------------
    def _client(self, url: str | None = None) -> Any:
        """A client per thread and server (tritonclient's HTTP client is not thread-safe)."""
        url = url or self.url
        clients = getattr(self._local, "clients", None)
        if clients is None:
            clients = self._local.clients = {}
        client = clients.get(url)
        if client is None:
            if self.config.protocol == "http":
                client = self._module.InferenceServerClient(
                    url, verbose=False, connection_timeout=self.config.timeout_s, network_timeout=self.config.timeout_s
                )
            else:
                client = self._module.InferenceServerClient(url, verbose=False)
            clients[url] = client
            with self._lock:
                self._clients.append(client)
        return client

    def _next_url(self) -> str | None:
        """The next server in rotation (round-robin over those not marked down), or None if all are down."""
        now = time.monotonic()
        up = [u for u in self.urls if self._down_until.get(u, 0.0) <= now]
        return up[next(self._turn) % len(up)] if up else None

    def _mark_down(self, url: str, seconds: float = 5.0) -> None:
        self._down_until[url] = time.monotonic() + seconds
        clients = getattr(self._local, "clients", {})
        clients.pop(url, None)  # reconnect next time

    def _unavailable(self, what: str) -> BackendUnavailableError:
        where = self.url if len(self.urls) == 1 else ", ".join(self.urls)
        return BackendUnavailableError(
            f"Triton server at {where} ({self.config.protocol}) {what}; start it with "
            "`docker compose -f docker/compose.yml up` or use --backend embedded"
        )

    def _check_server(self) -> None:
        reachable = []
        for url in self.urls:
            try:
                if self._client(url).is_server_live() and self._client(url).is_server_ready():
                    reachable.append(url)
                    continue
            except Exception:
                pass
            self._mark_down(url)
        if not reachable:
            raise self._unavailable("is not reachable" if len(self.urls) == 1 else "are not reachable")
        self.url = reachable[0]
        client = self._client()
        for spec in (self.manifest.encoder, self.manifest.decoder):
            if not client.is_model_ready(spec.name):
                raise self._unavailable(f"has no ready model '{spec.name}' (load the model repository {self.manifest.root})")
            self._check_signature(spec, client.get_model_metadata(spec.name))
        config = client.get_model_config(self.manifest.decoder.name)
        config = config.get("config", config) if isinstance(config, dict) else config.config
        groups = config["instance_group"] if isinstance(config, dict) else list(config.instance_group)
        kinds = [str(g["kind"] if isinstance(g, dict) else g.kind) for g in groups]
        self.on_gpu = any(k in ("KIND_GPU", "1") for k in kinds)

    @staticmethod
    def _check_signature(spec: ModelSpec, metadata: Any) -> None:
        def tensors(side: str) -> dict[str, str]:
            items = metadata[side] if isinstance(metadata, dict) else getattr(metadata, side)
            return {(t["name"] if isinstance(t, dict) else t.name): (t["datatype"] if isinstance(t, dict) else t.datatype)
                    for t in items}

        for side, expected in (("inputs", spec.inputs), ("outputs", spec.outputs)):
            served = tensors(side)
            for role, tensor in expected.items():
                if tensor.name not in served:
                    raise ModelSignatureError(
                        f"Triton model '{spec.name}' has no {side[:-1]} '{tensor.name}' (role {role}); it serves "
                        f"{sorted(served)}: the server's model repository differs from the manifest's"
                    )
                want = _TRITON_DTYPES[tensor.dtype]
                if served[tensor.name] != want:
                    raise ModelSignatureError(
                        f"Triton model '{spec.name}' {side[:-1]} '{tensor.name}' must be {want}, the server has "
                        f"{served[tensor.name]}"
                    )

    # -- requests -------------------------------------------------------------------------------------------
    def _with_retries(self, call: Callable[[Any], Any]) -> Any:
        """Run ``call(client)`` on the next server in rotation; on a transient failure take that server out of
        rotation and try another, backing off while none answers, for ``retry_s`` seconds."""
        deadline = time.monotonic() + self.retry_s
        delay = 0.5
        while True:
            url = self._next_url()
            if url is None:  # every server failed recently: wait, then probe them all again
                if time.monotonic() > deadline:
                    raise self._unavailable(f"did not recover within {self.retry_s:.0f} s")
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                self._down_until.clear()
                continue
            try:
                return call(self._client(url))
            except Exception as err:
                text = str(err)
                if not any(t.lower() in text.lower() for t in _TRANSIENT):
                    raise
                if time.monotonic() > deadline:
                    raise self._unavailable(f"did not recover within {self.retry_s:.0f} s ({text[:120]})") from err
                self._mark_down(url)
                if self.config.shared_memory:
                    time.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    self._down_until.clear()
                    self._reregister()

    def _regions_for_thread(self, sizes: dict[str, int]) -> dict[str, _ShmRegion]:
        tid = threading.get_ident()
        regions = self._regions.setdefault(tid, {})
        shm = lazy_import("tritonclient.utils.shared_memory")
        for name, nbytes in sizes.items():
            if name not in regions or regions[name].nbytes < nbytes:
                if name in regions:
                    regions[name].destroy(self._client())
                regions[name] = _ShmRegion(self._client(), shm, nbytes)
        return regions

    def _reregister(self) -> None:
        client = self._client()
        for regions in self._regions.values():
            for region in regions.values():
                try:
                    region.register(client)
                except Exception:  # server still down: the next retry re-registers again
                    return

    def _infer(self, spec: ModelSpec, feeds: dict[str, npt.NDArray[Any]], outputs: Sequence[str],
               shm_inputs: Sequence[str] = (), shm_outputs: dict[str, tuple[tuple[int, ...], Any]] | None = None
               ) -> list[npt.NDArray[Any]]:
        use_shm = self.config.shared_memory
        shm_outputs = shm_outputs or {}

        def call(client: Any) -> list[npt.NDArray[Any]]:
            regions: dict[str, _ShmRegion] = {}
            if use_shm:
                sizes = {n: feeds[n].nbytes for n in shm_inputs}
                sizes.update({n: int(np.prod(shape)) * np.dtype(dt).itemsize for n, (shape, dt) in shm_outputs.items()})
                regions = self._regions_for_thread(sizes)
                shm = lazy_import("tritonclient.utils.shared_memory")
            inputs = []
            for name, array in feeds.items():
                tensor = self._module.InferInput(name, list(array.shape), self._utils.np_to_triton_dtype(array.dtype))
                if use_shm and name in shm_inputs:
                    shm.set_shared_memory_region(regions[name].handle, [np.ascontiguousarray(array)])
                    tensor.set_shared_memory(regions[name].name, array.nbytes)
                else:
                    tensor.set_data_from_numpy(np.ascontiguousarray(array))
                inputs.append(tensor)
            requested = []
            for name in outputs:
                out = self._module.InferRequestedOutput(name)
                if use_shm and name in shm_outputs:
                    shape, dt = shm_outputs[name]
                    out.set_shared_memory(regions[name].name, int(np.prod(shape)) * np.dtype(dt).itemsize)
                requested.append(out)
            timeout = {"client_timeout": self.config.timeout_s} if self.config.protocol == "grpc" else {}
            result = client.infer(spec.name, inputs, outputs=requested, **timeout)
            arrays = []
            for name in outputs:
                if use_shm and name in shm_outputs:
                    shape, dt = shm_outputs[name]
                    arrays.append(np.array(shm.get_contents_as_numpy(regions[name].handle, dt, shape), copy=True))
                else:
                    arrays.append(result.as_numpy(name))
            return arrays

        return self._with_retries(call)

    # -- SamBackend protocol --------------------------------------------------------------------------------
    @property
    def prompt_batch_size(self) -> int:
        """Prompts per decoder request: large on a GPU server, memory-bounded on a CPU one."""
        return GPU_PROMPTS_PER_CALL if self.on_gpu else CPU_PROMPTS_PER_CALL

    def _encode_one(self, image: npt.NDArray[np.uint8]) -> Embedding:
        enc = self.manifest.encoder
        feeds, input_size = encoder_feeds(self.manifest, image)
        roles = encoder_output_roles(self.manifest)
        shapes = {enc.outputs[r].name: ((1, *enc.outputs[r].shape[1:]), np.float32) for r in roles}
        outputs = self._infer(
            enc, {enc.inputs[r].name: v for r, v in feeds.items()}, list(shapes),
            shm_inputs=[enc.inputs["images"].name], shm_outputs=shapes,
        )
        return make_embedding(dict(zip(roles, outputs)), input_size, image)

    def encode(self, images: Sequence[npt.NDArray[np.uint8]]) -> list[Embedding]:
        """Embed images, one request each, all in flight together (Triton batches them dynamically)."""
        return list(self._pool.map(self._encode_one, images))

    def decode(self, embedding: Embedding, point_coords: npt.NDArray[np.float32],
               point_labels: npt.NDArray[np.float32], mask_input: npt.NDArray[np.float32] | None = None) -> DecoderOutput:
        """Decode prompts in chunks sent concurrently; see ``SamBackend.decode``."""
        dec = self.manifest.decoder
        shared, per_prompt = decoder_feeds(self.manifest, embedding, point_coords, point_labels, mask_input)
        shared_feeds = {dec.inputs[r].name: v for r, v in shared.items()}
        masks_name, iou_name = dec.outputs["low_res_masks"].name, dec.outputs["iou_predictions"].name
        k, step = mask_outputs(self.manifest), self.prompt_batch_size

        def chunk(start: int) -> list[npt.NDArray[Any]]:
            feeds = {**shared_feeds, **{dec.inputs[r].name: v[start : start + step] for r, v in per_prompt.items()}}
            b = len(feeds[dec.inputs["point_coords"].name])
            return self._infer(dec, feeds, [masks_name, iou_name], shm_inputs=list(shared_feeds),
                               shm_outputs={masks_name: ((b, k, 256, 256), np.float32)})

        starts = list(range(0, len(point_coords), step))
        if not starts:
            return DecoderOutput(np.zeros((0, k, 256, 256), np.float32), np.zeros((0, k), np.float32))
        results = list(self._pool.map(chunk, starts))
        return DecoderOutput(np.concatenate([r[0] for r in results]), np.concatenate([r[1] for r in results]))

    def close(self) -> None:
        """Unregister and destroy shared memory, close clients and the request pool (idempotent)."""
        if self._closed:
            return
        self._closed = True
        client = None
        try:
            client = self._client()
        except Exception:
            pass
        for regions in self._regions.values():
            for region in regions.values():
                try:
                    region.destroy(client)
                except Exception:
                    pass
        self._regions.clear()
        self._pool.shutdown(wait=True)
        for c in self._clients:
            try:
                c.close()
            except Exception:
                pass
