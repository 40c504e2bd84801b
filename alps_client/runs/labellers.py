"""Where the per-image work runs: threads of this process, or a Dask cluster. Both label one item at a time.

A labeller owns what the work needs for the length of one run (the backend, the Dask client and its worker
plugin) and releases it on exit, so nothing of a run outlives it and no module keeps a cache.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Protocol

from alps_client._imports import lazy_import
from alps_client.backends import make_backend
from alps_client.errors import AlpsError
from alps_client.io.items import InputItem
from alps_client.runs.work import ImageOutcome, LabelJob, label_item


class Labeller(Protocol):
    """Labels items of one run; ``slots`` items may be in flight at once.

    ``closed`` turns true as the labeller is released: an item still in flight then (a stopped run's) fails for
    that reason, not its own. ``runs_on`` says what runs the model where the labeller knows it (onnxruntime's
    execution providers in this process), for the run's log; None where the configuration says all it knows
    (a Triton server, Dask workers).
    """

    slots: int
    closed: bool
    runs_on: str | None

    def label(self, item: InputItem) -> ImageOutcome:
        """One try at one item (the caller retries); see :func:`alps_client.runs.work.label_item`."""
        ...

    def close(self) -> None:
        """Release what the run held (the backend, the Dask client and workers)."""
        ...


class LocalLabeller:
    """Items labelled by the calling threads, sharing one backend.

    onnxruntime sessions and Triton clients are thread-safe for inference.

    Args:
        job: the run's shared settings.
        slots: items in flight (threads).
    """

    def __init__(self, job: LabelJob, slots: int) -> None:
        self.job = job
        self.slots = max(1, slots)
        self.closed = False
        self.backend = make_backend(job.config.backend)
        # A GPU asked for and not startable falls back to the CPU with a warning: this line says where it runs.
        providers = getattr(self.backend, "providers", None)
        self.runs_on = f"onnxruntime's {', then '.join(providers)} in this process" if providers else None

    def label(self, item: InputItem) -> ImageOutcome:
        """Label ``item`` in this thread."""
        return label_item(item, self.job, self.backend)

    def close(self) -> None:
        """Release the backend (it may wait for requests in flight)."""
        self.closed = True
        self.backend.close()


def check_workers(concurrency: int, dask_workers: int | None, dask_address: str | None = None) -> None:
    """Refuse a number of images in flight or of local Dask workers below one, or local workers beside a cluster.

    Raises:
        AlpsError: naming the flag (0 or a negative number would run nothing, or hang starting Dask; local
            workers with ``--dask-address`` were never started, unsaid).
        DependencyNotFoundError: If Dask is asked for and ``distributed`` is not installed.
    """
    if dask_workers is not None and dask_address:
        raise AlpsError(f"--dask-workers starts a Dask cluster of this machine's processes, --dask-address uses the "
                        f"one at {dask_address}: give one of them (start workers for that cluster with "
                        f"`dask worker {dask_address}`)")
    if concurrency < 1:
        raise AlpsError(f"--concurrency must be >= 1 (images in flight), got {concurrency}")
    if dask_workers is not None and dask_workers < 1:
        raise AlpsError(f"--dask-workers must be >= 1 (local Dask worker processes), got {dask_workers}; leave it "
                        "out to label on threads of this process")
    if dask_workers is not None or dask_address:  # found missing once the flow started (a --dry-run said nothing)
        lazy_import("distributed")


@contextmanager
def open_labeller(job: LabelJob, concurrency: int = 2, dask_address: str | None = None,
                  dask_workers: int | None = None) -> Iterator[Labeller]:
    """The labeller a run asked for, released on exit (also when the run fails).

    Args:
        job: the run's shared settings.
        concurrency: items in flight in this process (threads), without Dask.
        dask_address: scheduler of an existing Dask cluster (``tcp://host:8786``).
        dask_workers: start this many local Dask worker processes for the run (stopped on exit).

    Raises:
        BackendUnavailableError: If the backend (e.g. a Triton server) cannot be reached at start.
        ModelRepositoryError: If the model repository cannot be used.
        DependencyNotFoundError: If Dask is asked for and not installed.
    """
    if dask_address or dask_workers:
        from alps_client.runs.dask_labeller import DaskLabeller

        labeller: LocalLabeller | DaskLabeller = DaskLabeller(job, dask_address, dask_workers)
    else:
        labeller = LocalLabeller(job, concurrency)
    try:
        yield labeller
    except Exception:
        # The run's own error is what the user must see, not a failure to close a cluster that is already gone.
        with suppress(Exception):
            labeller.close()
        raise
    except BaseException:  # a stop: Ctrl-C, SIGTERM, SIGHUP
        _close_within(labeller, STOP_CLOSE_S)
        raise
    labeller.close()


# How long a stopped run waits for its labeller to be released, seconds. A backend stalled under its requests (a
# Triton server that stopped answering) held Ctrl-C until they timed out: 120 s by default.
STOP_CLOSE_S = 5.0


def _close_within(labeller: Labeller, seconds: float) -> None:
    """``labeller.close()``, waited for at most ``seconds`` (it goes on in the background); errors ignored."""

    def close() -> None:
        with suppress(Exception):
            labeller.close()

    closer = threading.Thread(target=close, name="alps-close-labeller", daemon=True)
    closer.start()
    closer.join(seconds)
