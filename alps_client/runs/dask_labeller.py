"""Per-image work on a Dask cluster, as plain functions: workers never talk to Prefect, so a run has one API.

Each worker builds the backend once per run, in a worker plugin registered for the run and removed at its end
(which closes the backend). The flow process submits one item at a time and waits for its small result; a worker
that dies mid-item is replaced by Dask, which reruns the item elsewhere; an item that took down
``distributed.scheduler.allowed-failures`` + 1 workers in turn (3 + 1 by default) fails, as the run's own error.

How long the run waits for a scheduler is Dask's ``distributed.comm.timeouts.connect`` (30 s unless set, e.g.
``DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT=60s`` for a scheduler across a slow link).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from alps_client._imports import lazy_import
from alps_client.backends import SamBackend, make_backend
from alps_client.config import BackendConfig
from alps_client.errors import AlpsError, BackendUnavailableError, shortened
from alps_client.io.items import InputItem
from alps_client.runs.work import ImageOutcome, LabelJob, label_item

distributed = lazy_import("distributed")
dask = lazy_import("dask")
logger = logging.getLogger(__name__)

PLUGIN_NAME = "alps-backend"


class BackendPlugin(distributed.WorkerPlugin):  # type: ignore[misc,name-defined]
    """One backend per worker process and backend configuration, for the length of a run."""

    name = PLUGIN_NAME

    def __init__(self, quiet_interrupt: bool = False) -> None:
        """``quiet_interrupt``: the workers are this run's own processes (see :meth:`setup`)."""
        self.quiet_interrupt = quiet_interrupt
        self._backends: dict[BackendConfig, SamBackend] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:  # sent to workers without backends: they are built there
        return {"quiet_interrupt": self.quiet_interrupt}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def setup(self, worker: Any) -> None:
        """Leave Ctrl-C to the run, in the worker processes it started itself.

        Ctrl-C in a terminal reaches every process of its group, these workers too: each printed a
        ``KeyboardInterrupt`` traceback from deep in Dask under the run's one-line message. Ignored here (the
        signal's default action would end a worker at once, but the scheduler then prints broken connections and
        the nannies restart it), the run closes its cluster as it stops, and the nannies end a busy worker within
        about a second. Workers of a user's own cluster (``--dask-address``) keep their handling.
        """
        if self.quiet_interrupt and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    def backend(self, config: BackendConfig) -> SamBackend:
        """This worker's backend for ``config`` (built on first use)."""
        with self._lock:
            if config not in self._backends:
                self._backends[config] = make_backend(config)
            return self._backends[config]

    def teardown(self, worker: Any) -> None:
        """Close the backends when the run removes the plugin or the worker stops."""
        with self._lock:
            for backend in self._backends.values():
                backend.close()
            self._backends.clear()


def _what_worker_lacks(manifest: str, out: str) -> str | None:
    """On a worker: why it cannot read the model repository's ``manifest`` or write in ``out``; None if it can."""
    if not os.path.isfile(manifest):
        return f"find no model repository at {os.path.dirname(manifest)} (no manifest.json there)"
    if not os.path.isdir(out):  # made by the run before its labeller starts
        return f"find no folder {out}"
    if not os.access(out, os.W_OK):
        return f"cannot write in {out}"
    return None


def label_on_worker(item: InputItem, job: LabelJob) -> ImageOutcome:
    """:func:`label_item` on a Dask worker, with the worker's backend for the run."""
    plugin = distributed.get_worker().plugins.get(PLUGIN_NAME)
    if plugin is None:  # a worker that joined without the run's plugin: let the run retry elsewhere
        raise BackendUnavailableError(f"Dask worker {distributed.get_worker().address} has no alps backend plugin")
    return label_item(item, job, plugin.backend(job.config.backend))


class DaskLabeller:
    """Items labelled on Dask workers: an existing cluster (``address``) or ``n_workers`` local processes.

    Raises:
        BackendUnavailableError: If the scheduler at ``address`` or a Triton server cannot be reached.
        AlpsError: If ``address`` is not a Dask scheduler's, or its workers cannot import alps.
    """

    def __init__(self, job: LabelJob, address: str | None = None, n_workers: int | None = None) -> None:
        # Workers resolve paths in their own working directory (another folder, another machine): a relative
        # --out put their shards elsewhere, a relative --model-repository was "missing" on every one.
        backend = dataclasses.replace(job.config.backend,
                                      model_repository=os.path.abspath(job.config.backend.model_repository))
        self.job = dataclasses.replace(job, out=os.path.abspath(job.out),
                                       config=dataclasses.replace(job.config, backend=backend))
        self.closed = False
        self.runs_on = None  # each worker's own backend
        self._cluster = None
        self._dask_log_level: int | None = None  # to restore, after a local cluster
        if job.config.backend.kind == "triton":  # an unreachable server fails the run now, not image by image
            make_backend(job.config.backend).close()
        if address:
            self._client = _connect(address)
        else:
            # The run reports each image's failure and retries itself; Dask's own INFO and "Compute Failed" lines
            # would repeat them on the console: silence_logs for the workers' processes, and in this one (the
            # scheduler and the nannies) its loggers' level, as Prefect's console handler shows whatever reaches it.
            dask_log = logging.getLogger("distributed")
            self._dask_log_level = dask_log.level
            dask_log.setLevel(logging.WARNING)
            # The scheduler serves HTTP even without a dashboard, on 8787 unless told: a port of its own, so that
            # a second run (or a user's own Dask) does not find it taken and warn.
            self._cluster = distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                                     dashboard_address="127.0.0.1:0", silence_logs=logging.CRITICAL)
            self._client = distributed.Client(self._cluster)
        try:
            self._client.register_plugin(BackendPlugin(quiet_interrupt=self._cluster is not None), name=PLUGIN_NAME)
        except Exception as err:  # raised on the workers, re-raised here as whatever they met
            self.close()
            raise AlpsError(f"the Dask workers could not load alps ({type(err).__name__}: "
                            f"{shortened(str(err), 160)}); install the same alps, with its requirements, on every "
                            "worker") from err
        self._check_workers_reach(self.job)
        self.slots = max(1, sum(self._client.nthreads().values()))

    def _check_workers_reach(self, job: LabelJob) -> None:
        """Refuse workers that cannot read the model repository or write ``OUT``.

        On another machine without the shared path every image failed in turn ("no model repository: build one
        with export"), and the run ended as a failure of the machinery, to be run again.

        Raises:
            AlpsError: naming a worker, the path and what it lacks.
        """
        manifest = os.path.join(job.config.backend.model_repository, "manifest.json")
        lacking = {worker: why for worker, why in self._client.run(_what_worker_lacks, manifest, job.out).items()
                   if why}
        if lacking:
            self.close()
            worker, why = next(iter(sorted(lacking.items())))
            raise AlpsError(f"{len(lacking)} of the Dask workers {why} (e.g. {worker}): the model repository and "
                            "--out must lie on a path every worker reaches, at the same absolute path as here")

    def label(self, item: InputItem) -> ImageOutcome:
        """Label ``item`` on some worker and wait for its small result.

        Raises:
            AlpsError: If the item took down several workers in turn (Dask's ``KilledWorker``): said in one line
                that names neither Dask's task key nor a worker's address, which differ at each run.
        """
        future = self._client.submit(label_on_worker, item, self.job, key=f"label-{item.stem}-{uuid.uuid4().hex[:8]}",
                                     pure=False)
        try:
            return future.result()
        except distributed.KilledWorker as err:
            raise AlpsError(
                f"{err.allowed_failures + 1} Dask workers died in turn labelling it, most often out of memory (a "
                "nanny restarts its worker past 95% of the worker's memory limit, the kernel kills a process past "
                "the machine's): see the workers' logs, give each worker more memory (`dask worker --memory-limit`, "
                "fewer --dask-workers) or split the image, then run again") from err

    def close(self) -> None:
        """Remove the plugin (closing the workers' backends), then the client and a cluster started here."""
        self.closed = True
        try:
            self._client.unregister_worker_plugin(PLUGIN_NAME)
        except Exception as err:  # noqa: BLE001 (a scheduler lost mid-run: nothing left to unregister from)
            logger.debug("the alps plugin was not unregistered (%s)", err)
        finally:
            self._client.close()
            if self._cluster is not None:
                self._cluster.close()
            if self._dask_log_level is not None:
                logging.getLogger("distributed").setLevel(self._dask_log_level)


def _connect(address: str) -> Any:
    """A ``distributed.Client`` of the scheduler at ``address``, or one line saying why not.

    Dask's own connect waits for the other side's handshake without a limit: at a port that is not a Dask
    scheduler's (the dashboard's HTTP port, 8787) ``Client(address)`` hung forever. The handshake is tried
    first, within the connect timeout.

    Raises:
        BackendUnavailableError: If nothing answers at ``address``.
        AlpsError: If what answers is not a Dask scheduler, or ``address`` is not an address.
    """
    timeout_s = float(dask.utils.parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), "s"))
    waited_s = timeout_s + 5  # past Dask's own connect timeout, so that only a handshake never come ends here

    async def handshake() -> None:
        comm = await asyncio.wait_for(distributed.comm.connect(address, timeout=timeout_s), waited_s)
        await comm.close()

    not_dask = (f"--dask-address {address}: not a Dask scheduler's address ({{}}); give the scheduler's "
                "tcp://HOST:PORT (8786 by default; 8787 is its dashboard's)")
    try:
        try:
            with ThreadPoolExecutor(1) as thread:  # a loop of its own, whatever runs in the caller's thread
                thread.submit(asyncio.run, handshake()).result()
        except TimeoutError as err:  # Dask's connect raises OSError: this is the handshake that never came
            raise AlpsError(not_dask.format(f"something answers there, but not as a Dask scheduler within "
                                            f"{waited_s:.0f} s")) from err
        return distributed.Client(address, timeout=timeout_s)
    except OSError as err:
        raise BackendUnavailableError(
            f"the Dask scheduler at {address} is not reachable ({type(err).__name__}); start it "
            "(`dask scheduler --host <private address>`) or drop --dask-address") from err
    except (ValueError, MemoryError) as err:  # not an address, or another service's bytes read as a message size
        raise AlpsError(not_dask.format(f"{type(err).__name__}: {shortened(str(err))}")) from err
