"""Triton backend: the exported encoder and decoder served by Triton Inference Server (gRPC or HTTP).

Same protocol as the embedded backend. Tensor names come from the model repository manifest and are checked
against the server's model metadata at start (Triton's ``parse_model`` style). Requests run concurrently
(prompt chunks of one image in flight together; several images from the flow's threads), so Triton's dynamic
batching can group them. Several servers (``triton_urls``) share the requests round-robin; a server whose call
fails transiently leaves the rotation (logged once, with the reason) and is probed again a few seconds later,
while the others carry on. Each request tries every server at most once: this backend does **not** wait and
retry. When no server answers it raises :class:`BackendUnavailableError` (transient), and the run's one retry
layer (:mod:`alps_client.runs.retry`) tries the image again later; a request the server rejects raises
:class:`BackendRequestError` (permanent). Which is which comes from status codes and exception types
(:mod:`alps_client.backends.triton_status`). Shared-memory regions are re-registered when a restarted server
has forgotten them, and released on close and at exit.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt

from alps_client._imports import lazy_import
from alps_client.backends.base import ClosedOnExit, DecoderOutput, Embedding
from alps_client.backends.feeds import (
    decoder_feeds,
    encoder_feeds,
    encoder_output_roles,
    make_embedding,
    mask_outputs,
)
from alps_client.backends.manifest import SHA256_PARAMETER, ModelManifest, ModelSpec, load_manifest
from alps_client.backends.preprocess import check_image_list
from alps_client.backends.triton_shm import ShmRegion, ShmRegions, sweep_stale_regions
from alps_client.backends.triton_status import classify, deadline, reason, server_errors, timed_out
from alps_client.config import BackendConfig
from alps_client.errors import (
    BackendOutOfMemoryError,
    BackendRequestError,
    BackendUnavailableError,
    ModelSignatureError,
    ServedModelChangedError,
    ran_out_of_memory,
)

logger = logging.getLogger(__name__)

# Prompts per decoder request, on a GPU server and a CPU one alike: the server holds ~90 MB of activations per
# prompt in flight per instance (see backends/embedded.py), and on a CPU server large requests amortise the
# transfer of their (B, 3, 256, 256) masks.
PROMPTS_PER_CALL = 64
# Seconds a failed server stays out of the rotation before it is probed again.
OUT_OF_ROTATION_S = 5.0
# At most this long (and at most --timeout-s) close() waits for a server to release shared memory: a hung server
# must not hold the end of a run that is stopping because of it.
RELEASE_TIMEOUT_S = 5.0
_TRITON_DTYPES = {"uint8": "UINT8", "int64": "INT64", "float32": "FP32"}


def accepts_connections(url: str, timeout_s: float) -> bool:
    """Whether something listens at ``url`` (``host:port``): a TCP connection is accepted."""
    host, _, port = url.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=min(timeout_s, 5.0)):
            return True
    except (OSError, ValueError):
        return False


class _Rotation:
    """Servers taken round-robin; one that failed sits out ``OUT_OF_ROTATION_S`` and is then probed again."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self._turn = itertools.count()
        self._down_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def order(self) -> list[str]:
        """Every server once: those in rotation first (round-robin), then those sitting out (a last resort)."""
        now = time.monotonic()
        with self._lock:
            up = [u for u in self.urls if self._down_until.get(u, 0.0) <= now]
            start = next(self._turn) % len(up) if up else 0
        return up[start:] + up[:start] + [u for u in self.urls if u not in up]

    def failed(self, url: str, reason: str) -> None:
        with self._lock:
            if url not in self._down_until:  # log the transition once, not every failed probe
                logger.warning("Triton server %s left the rotation: %s", url, reason)
            self._down_until[url] = time.monotonic() + OUT_OF_ROTATION_S

    def answered(self, url: str) -> None:
        with self._lock:
            if self._down_until.pop(url, None) is not None:
                logger.warning("Triton server %s is back in the rotation", url)


def _model_config(client: Any, spec: ModelSpec, timeout_s: float) -> Any:
    """The model's config: a dict (HTTP client) or a ``ModelConfig`` message (gRPC client)."""
    config = client.get_model_config(spec.name, spec.version, **deadline(client, timeout_s))
    return config.get("config", config) if isinstance(config, dict) else config.config


def _version_text(spec: ModelSpec) -> str:
    """`` version 1`` (the manifest's version folder, the only one asked for), or nothing when it names none."""
    return f" version {spec.version}" if spec.version else ""


class TritonBackend(ClosedOnExit):
    """SAM on a Triton server; see the module docstring.

    Args:
        config: ``triton_urls`` (``host:port``), ``protocol``, ``shared_memory``, ``timeout_s``.
        manifest: the model repository manifest (read from ``config.model_repository`` if not given).
        in_flight: concurrent requests per backend.

    Raises:
        BackendUnavailableError: If no server is live and ready with the manifest's models.
        ModelSignatureError: If a served model's tensors differ from the manifest's, or a server serves another
            export (its model configs name other files than the manifest's).

    A server is checked so again each time it enters the rotation (back from a failure or a restart, or down at
    start): one that serves another export then raises :class:`ServedModelChangedError`, which ends the run.
    """

    runs_on = "Triton server"

    def __init__(self, config: BackendConfig, manifest: ModelManifest | None = None, in_flight: int = 4) -> None:
        self.config = config
        self.manifest = manifest or load_manifest(config.model_repository)
        self.urls = list(dict.fromkeys(config.triton_urls))
        self._rotation = _Rotation(self.urls)
        self._module = lazy_import(f"tritonclient.{config.protocol}")
        self._utils = lazy_import("tritonclient.utils")
        self._errors = server_errors()
        self._local = threading.local()
        self._clients: list[Any] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="alps-triton")
        self._shm = ShmRegions(config.timeout_s) if config.shared_memory else None
        self._verified: set[str] = set()  # servers checked to serve the manifest's export since they last failed
        self._closed = False
        self._check_server()
        atexit.register(self.close)

    # -- connection -----------------------------------------------------------------------------------------
    def _client(self, url: str) -> Any:
        """A client per thread and server (tritonclient's HTTP client is not thread-safe)."""
        clients = getattr(self._local, "clients", None)
        if clients is None:
            clients = self._local.clients = {}
        client = clients.get(url)
        if client is None:
            client = clients[url] = self._new_client(url, self.config.timeout_s)
        return client

    def _new_client(self, url: str, timeout_s: float) -> Any:
        """A client whose every call has a deadline: HTTP's from here, gRPC's passed per call (``_timeout``)."""
        if self.config.protocol == "http":
            client = self._module.InferenceServerClient(url, verbose=False, connection_timeout=timeout_s,
                                                        network_timeout=timeout_s)
        else:
            client = self._module.InferenceServerClient(url, verbose=False)
        with self._lock:
            self._clients.append(client)
        return client

    def _timeout(self, client: Any) -> dict[str, float]:
        """The per-call deadline (``--timeout-s``) of a gRPC call; none for HTTP (its client has it)."""
        return deadline(client, self.config.timeout_s)

    def _forget_client(self, url: str) -> None:
        """Reconnect to ``url`` next time (an HTTP connection that failed mid-request is not reusable)."""
        getattr(self._local, "clients", {}).pop(url, None)

    def _unavailable(self, what: str, timed_out: bool = False) -> BackendUnavailableError:
        where = self.urls[0] if len(self.urls) == 1 else ", ".join(self.urls)
        if timed_out:  # the server may well be up: starting it is not the way out
            return BackendUnavailableError(
                f"Triton server at {where} ({self.config.protocol}) {what}: if it is up, it is slower than "
                f"--timeout-s {self.config.timeout_s:g} s (a large model on a CPU server, a long queue): raise "
                "--timeout-s"
            )
        return BackendUnavailableError(
            f"Triton server at {where} ({self.config.protocol}) {what}; start it with "
            "`docker compose -f docker/compose.yml up` or use --backend embedded"
        )

    def _check_server(self) -> None:
        reachable = []
        errors: dict[str, BaseException] = {}  # url -> why it did not answer
        down: dict[str, str] = {}  # url -> why it is left out
        for url in self.urls:
            try:
                client = self._client(url)
                if client.is_server_live(**self._timeout(client)) and client.is_server_ready(**self._timeout(client)):
                    reachable.append(url)
                    continue
                down[url] = "not live and ready"
            except self._errors as err:
                down[url] = reason(err)
                errors[url] = err
            self._forget_client(url)
        if not reachable:  # the run ends on the error, which says why: no "left the rotation" above it
            raise self._none_reachable(errors)
        for url, why in down.items():
            self._rotation.failed(url, why)
        for url in reachable:
            client = self._client(url)
            unready = self._unready_model(client)
            if unready is not None:
                raise self._unavailable(f"has no ready model '{unready.name}'{_version_text(unready)} (load the model "
                                        f"repository {self.manifest.root})")
            self._check_models(url, client)
            self._verified.add(url)
        if self._shm is not None:  # one server (checked in BackendConfig)
            sweep_stale_regions(self._client(reachable[0]), self.config.timeout_s)

    def _none_reachable(self, errors: dict[str, BaseException]) -> BackendUnavailableError:
        """Why no server answered at start, with the way out that fits.

        A port that accepts connections but whose server's reply is not the protocol's is a mistake of
        ``--protocol`` or of the port (gRPC sent to Triton's HTTP port, or the reverse), not a server to start.
        """
        wrong = [u for u, e in errors.items() if not timed_out(e) and accepts_connections(u, self.config.timeout_s)]
        if wrong:
            return BackendUnavailableError(
                f"a server answers at {', '.join(wrong)}, but not in {self.config.protocol} "
                f"({reason(errors[wrong[0]])}): check --protocol and the port of --triton-url (Triton serves gRPC "
                "on 8001, HTTP on 8000)"
            )
        why = f" ({reason(next(iter(errors.values())))})" if len(errors) == 1 else ""
        if errors and all(timed_out(e) for e in errors.values()):
            return self._unavailable(f"did not answer{why}", timed_out=True)
        return self._unavailable(("is not reachable" if len(self.urls) == 1 else "are not reachable") + why)

    def _unready_model(self, client: Any) -> ModelSpec | None:
        """The first of the manifest's models (version) that ``client``'s server has not ready; None if both are."""
        for spec in (self.manifest.encoder, self.manifest.decoder):
            if not client.is_model_ready(spec.name, spec.version, **self._timeout(client)):
                return spec
        return None

    def _check_models(self, url: str, client: Any, advice: bool = True) -> None:
        """Check both served models' tensors and export against the manifest.

        ``advice``: end a mismatch's message with the way out at start (which repository to serve or give).

        Raises:
            ModelSignatureError: If either is not the manifest's.
        """
        for spec in (self.manifest.encoder, self.manifest.decoder):
            self._check_signature(url, spec, client.get_model_metadata(spec.name, spec.version,
                                                                       **self._timeout(client)), advice)
            self._check_export(url, spec, _model_config(client, spec, self.config.timeout_s), advice)

    def _verify_rejoining(self, url: str, client: Any) -> None:
        """Check a server entering the rotation (back from an outage, or down at start) before it gets work.

        A server that left the rotation may have been restarted on another export (a re-export into the
        repository it mounts, then ``docker compose restart``); one that was down at start was never checked.

        Raises:
            ServedModelChangedError: If it serves another export than the run started with (ends the run).
            BackendUnavailableError: If its models are not ready yet (transient: it stays out of the rotation).
        """
        unready = self._unready_model(client)
        if unready is not None:  # loading after a restart
            raise BackendUnavailableError(f"model '{unready.name}'{_version_text(unready)} not ready yet")
        try:
            self._check_models(url, client, advice=False)
        except ModelSignatureError as err:
            raise ServedModelChangedError(
                f"Triton server at {url} now serves another export than the run started with ({err.args[0]}); the run "
                f"stopped rather than label on with another model than its manifest names: restart Triton on the "
                f"export in {self.manifest.root} and run the same command again to resume (for the new export, "
                "start a new run with another --out)"
            ) from err
        self._verified.add(url)
        logger.info("Triton server %s checked: it serves the run's export", url)

    def _check_export(self, url: str, spec: ModelSpec, config: Any, advice: bool = True) -> None:
        """Refuse a server whose model is another export than the manifest's.

        Same names and tensors, other weights: e.g. Triton still serving the stand-in after ``export_sam.py`` wrote
        another model where the client looks.
        """
        parameters = config.get("parameters", {}) if isinstance(config, dict) else config.parameters
        entry = parameters.get(SHA256_PARAMETER)  # a dict, or a protobuf map (whose [] would insert the key)
        served = (entry.get("string_value") if isinstance(entry, dict) else entry.string_value) if entry else None
        if served is None:
            logger.warning("Triton model '%s' at %s does not say which export it is (no %s parameter: exported by "
                           "an earlier alps); export it again to let alps check it is %s's", spec.name, url,
                           SHA256_PARAMETER, self.manifest.root)
        elif served != spec.sha256:
            raise ModelSignatureError(
                f"Triton server at {url} serves another '{spec.name}' than {self.manifest.root} describes (sha256 "
                f"{served[:12]}… vs {spec.sha256[:12]}…)" + (": restart Triton on that model repository, or give "
                "--model-repository the repository the server was started on" if advice else ""))

    def _check_signature(self, url: str, spec: ModelSpec, metadata: Any, advice: bool = True) -> None:
        """Refuse a server whose model has other tensors than the manifest's (another model: SAM's, SAM 2.1's)."""
        next_step = (": restart Triton on that model repository, or give --model-repository the repository the server "
                     "was started on") if advice else ""

        def tensors(side: str) -> dict[str, str]:
            items = metadata[side] if isinstance(metadata, dict) else getattr(metadata, side)
            return {(t["name"] if isinstance(t, dict) else t.name): (t["datatype"] if isinstance(t, dict) else t.datatype)
                    for t in items}

        for side, expected in (("inputs", spec.inputs), ("outputs", spec.outputs)):
            served = tensors(side)
            for role, tensor in expected.items():
                if tensor.name not in served:
                    raise ModelSignatureError(
                        f"Triton server at {url} serves another model than {self.manifest.root} describes: its "
                        f"'{spec.name}' has no {side[:-1]} '{tensor.name}' (role {role}; it has {sorted(served)})"
                        + next_step
                    )
                want = _TRITON_DTYPES[tensor.dtype]
                if served[tensor.name] != want:
                    raise ModelSignatureError(
                        f"Triton server at {url} serves another model than {self.manifest.root} describes: its "
                        f"'{spec.name}' {side[:-1]} '{tensor.name}' is {served[tensor.name]}, not {want}" + next_step
                    )

    # -- requests -------------------------------------------------------------------------------------------
    def _call(self, spec: ModelSpec, call: Callable[[Any], Any]) -> Any:
        """Run ``call(client)`` on the servers in rotation order, each at most once.

        Raises:
            BackendRequestError: If a server rejected the request (it would reject it again).
            BackendUnavailableError: If no server answered (transient: the run retries the image later).
        """
        last: BaseException | None = None
        for url in self._rotation.order():
            client = self._client(url)
            try:
                if url not in self._verified:
                    self._verify_rejoining(url, client)
                result = call(client)
            except BackendUnavailableError as err:  # a rejoining server whose models are not ready yet
                self._rotation.failed(url, str(err))
                last = err
                continue
            except self._errors as err:
                kind = classify(err)
                if kind == "not_found" and self._after_not_found(client, spec):
                    self._verified.discard(url)  # restarted: check what it serves now
                    kind = "transient"
                if kind == "permanent" and ran_out_of_memory(err):  # INTERNAL, but the server's memory was short
                    raise BackendOutOfMemoryError(
                        f"Triton server at {url} could not allocate memory for model '{spec.name}' ({reason(err)}); "
                        "other work on it may free it"
                    ) from err
                if kind == "permanent" or kind == "not_found":
                    raise BackendRequestError(
                        f"Triton server at {url} rejected the request to model '{spec.name}': {reason(err)}"
                    ) from err
                self._rotation.failed(url, reason(err))
                self._verified.discard(url)  # it may come back restarted on another export
                self._forget_client(url)
                last = err
                continue
            self._rotation.answered(url)
            return result
        why = reason(last) if last is not None else "no server"
        raise self._unavailable(f"did not answer ({why})", last is not None and timed_out(last)) from last

    def _after_not_found(self, client: Any, spec: ModelSpec) -> bool:
        """After NOT_FOUND / 404: True when the server lost state by restarting (worth another try).

        A restarted server has forgotten our shared-memory regions (re-registered here) or is still loading the
        model; a server that is up with the model loaded and our regions registered was asked for a wrong name.
        """
        try:
            if self._shm is not None and self._shm.forgotten_by(client):
                self._shm.register_all(client)
                return True
            return not client.is_model_ready(spec.name, spec.version, **self._timeout(client))
        except self._errors:  # the server went away while we looked: a restart
            return True

    def _infer(self, spec: ModelSpec, feeds: dict[str, npt.NDArray[Any]], outputs: Sequence[str],
               shm_inputs: Sequence[str] = (), shm_outputs: dict[str, tuple[tuple[int, ...], Any]] | None = None
               ) -> list[npt.NDArray[Any]]:
        use_shm = self._shm is not None
        shm_outputs = shm_outputs or {}

        def call(client: Any) -> list[npt.NDArray[Any]]:
            regions: dict[str, ShmRegion] = {}
            if self._shm is not None:
                sizes = {n: feeds[n].nbytes for n in shm_inputs}
                sizes.update({n: int(np.prod(shape)) * np.dtype(dt).itemsize for n, (shape, dt) in shm_outputs.items()})
                regions = self._shm.for_thread(client, sizes)
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
            result = client.infer(spec.name, inputs, model_version=spec.version, outputs=requested,
                                  **self._timeout(client))
            arrays = []
            for name in outputs:
                if use_shm and name in shm_outputs:
                    shape, dt = shm_outputs[name]
                    arrays.append(np.array(shm.get_contents_as_numpy(regions[name].handle, dt, shape), copy=True))
                else:
                    arrays.append(result.as_numpy(name))
            return arrays

        return self._call(spec, call)

    # -- SamBackend protocol --------------------------------------------------------------------------------
    @property
    def prompt_batch_size(self) -> int:
        """Prompts per decoder request (:data:`PROMPTS_PER_CALL`, whatever the server runs on)."""
        return PROMPTS_PER_CALL

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
        check_image_list(images)
        return list(self._pool.map(self._encode_one, images))

    def decode(self, embedding: Embedding, point_coords: npt.NDArray[np.float32],
               point_labels: npt.NDArray[np.float32], mask_input: npt.NDArray[np.float32] | None = None,
               iou_threshold: float | None = None) -> DecoderOutput:
        """Decode prompts in chunks sent concurrently; see ``SamBackend.decode``."""
        dec = self.manifest.decoder
        shared, per_prompt = decoder_feeds(self.manifest, embedding, point_coords, point_labels, mask_input,
                                           iou_threshold)
        shared_feeds = {dec.inputs[r].name: v for r, v in shared.items()}
        # Large shared tensors go through shared memory; the 4-byte threshold (config.pbtxt: optional) does not.
        shm_inputs = [dec.inputs[r].name for r in shared if r != "iou_threshold"]
        masks_name, iou_name = dec.outputs["low_res_masks"].name, dec.outputs["iou_predictions"].name
        k, step = mask_outputs(self.manifest), self.prompt_batch_size

        def chunk(start: int) -> list[npt.NDArray[Any]]:
            feeds = {**shared_feeds, **{dec.inputs[r].name: v[start : start + step] for r, v in per_prompt.items()}}
            b = len(feeds[dec.inputs["point_coords"].name])
            return self._infer(dec, feeds, [masks_name, iou_name], shm_inputs=shm_inputs,
                               shm_outputs={masks_name: ((b, k, 256, 256), np.float32)})

        starts = list(range(0, len(point_coords), step))
        if not starts:
            return DecoderOutput(np.zeros((0, k, 256, 256), np.float32), np.zeros((0, k), np.float32))
        results = list(self._pool.map(chunk, starts))
        return DecoderOutput(np.concatenate([r[0] for r in results]), np.concatenate([r[1] for r in results]))

    def close(self) -> None:
        """Close the request pool, unregister and destroy shared memory, close clients (idempotent).

        Requests in flight finish first (a stopped run's, whose images are abandoned): their threads read and
        write the shared-memory regions, which must not be unmapped under them. Bounded on a server that does not
        answer (hung, stopped): requests end at their deadline, the release waits ``RELEASE_TIMEOUT_S`` at most
        and the local regions are freed regardless.
        """
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)  # closed: nothing left for the exit, which held the backend until then
        self._pool.shutdown(wait=True, cancel_futures=True)  # bounded: each request has its deadline
        if self._shm is not None:
            # A client of its own with a short deadline: a hung server holds the release one deadline at most.
            release_s = min(RELEASE_TIMEOUT_S, self.config.timeout_s)
            self._shm.release(self._new_client(self.urls[0], release_s), release_s)
        for c in self._clients:
            try:
                c.close()
            except self._errors as err:  # a connection already broken by the server: nothing left to release
                logger.debug("Triton client not closed cleanly (%s)", reason(err))
