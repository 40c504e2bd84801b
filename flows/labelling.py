"""The per-image stage of the flow: every image through the ``label-image`` task, on a pool a stop does not wait for.

Images are started a few at a time, so that a run whose machinery is down (``--stop-after-failures`` in a row)
starts no more; a stop (Ctrl-C, SIGTERM, a cancel in the UI) records the images in flight as cancelled. Every
image ends with exactly one outcome: none is lost.
"""

from __future__ import annotations

import contextlib
import queue
import signal
import traceback
from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

from prefect import get_run_logger, task
from prefect.cache_policies import NONE
from prefect.futures import PrefectFuture
from prefect.states import Cancelled, Failed, State
from prefect.task_runners import ThreadPoolTaskRunner

from alps_client.errors import AlpsError
from alps_client.io.items import InputItem
from alps_client.runs import allocator
from alps_client.runs.labellers import Labeller
from alps_client.runs.plan import RunPlan
from alps_client.runs.retry import FailureStreak, call_with_retries, describe, is_transient
from alps_client.runs.threads import DaemonThreadPool, get_interruptibly
from alps_client.runs.work import ImageOutcome, LabelJob, done_outcome
from flows import artifacts
from flows.in_flight import TaskRunsInFlight

if TYPE_CHECKING:
    from typing_extensions import Self

LABEL_IMAGE = "label-image"
# The reason given for the images a stopped run never started (see label_all).
NOT_STARTED = "not started: the run stopped starting images (see its error)"
# An image in flight when the run was stopped: not labelled, and not its own failure.
STOPPED_UNDER_IT = "not finished: the run was stopped (a rerun labels it)"


def is_stop(exc_type: type[BaseException]) -> bool:
    """Whether an exception stops the run rather than failing it.

    Ctrl-C, SIGTERM as Prefect raises it in a flow run, the command line's own stops (SIGHUP): every
    BaseException that is no Exception.
    """
    return not issubclass(exc_type, Exception)


class InterruptibleThreadPool(ThreadPoolTaskRunner):
    """Prefect's thread pool, but a stopped run (Ctrl-C, SIGTERM) does not wait for the images in flight.

    It starts no other image either. The work in flight is lost anyway, and a backend call may hang (a stalled
    server) or take minutes; finished shards are already on disk (written atomically). Its threads are daemons
    (:class:`DaemonThreadPool`), so that neither does the process: a flow run cancelled in the Prefect UI ends
    at once, not when Prefect's runner kills it 30 s later.
    """

    def __enter__(self) -> Self:
        super().__enter__()
        self._executor = DaemonThreadPool(self._max_workers, initializer=self._register_worker_thread)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc_value: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None and is_stop(exc_type) and self._executor is not None:
            # Prefect's own shutdown waits for running tasks (pinned prefect: see requirements.txt).
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        super().__exit__(exc_type, exc_value, tb)


# Each task run is named after its image (its stem, as last_run.json lists it), to find it in the UI.
@task(name=LABEL_IMAGE, task_run_name="label-image: {item.stem}", cache_policy=NONE)
def label_image_task(item: InputItem, labeller: Labeller, delays: list[float],
                     streak: FailureStreak, in_flight: TaskRunsInFlight) -> ImageOutcome | State:
    """Label one image, retrying transient failures; a failure after that ends the task run failed.

    The image's end is recorded in ``streak`` here, before the next image queued on this thread can begin: once it
    is tripped (``--stop-after-failures`` in a row, or a full output disk), that image and every other is not
    started.

    Returns:
        The image's outcome (labelled, skipped, or rejected as a bad input), or a Failed state whose data is
        the ``failed`` outcome: one line in the UI, the traceback of an unexpected error in ``detail``; a
        Cancelled state if the run was stopped (the labeller released) under the image, or stopped starting
        images before it began (its data the ``not started`` outcome).
    """
    in_flight.started()  # a stop that does not wait for this image records its end (see label_all)
    if streak.tripped:
        return Cancelled(message=f"{item.stem}: {NOT_STARTED}",
                         data=ImageOutcome("failed", item.stem, item.source, reason=NOT_STARTED))
    logger = get_run_logger()

    def warn(retry: int, delay: float, err: BaseException) -> None:
        if labeller.closed:  # the run stopped under this image: no retry
            raise err
        logger.warning("%s: try %d of %d failed (%s); trying again in %.3g s", item.stem, retry, len(delays) + 1,
                       describe(err), delay)

    try:
        outcome = call_with_retries(lambda: labeller.label(item), delays, warn)
    except Exception as err:  # noqa: BLE001 (any processing failure: the image is good, reported missing)
        if labeller.closed:
            # A stopped run (Ctrl-C, SIGTERM) released the backend under this image: whatever that raised here
            # (a session gone, a closed connection) says nothing about the image.
            return Cancelled(message=f"{item.stem}: {STOPPED_UNDER_IT}")
        detail = "" if isinstance(err, AlpsError) or is_transient(err) else "".join(traceback.format_exception(err))
        outcome = ImageOutcome("failed", item.stem, item.source, reason=describe(err), detail=detail,
                               ends_run=isinstance(err, AlpsError) and err.ends_run)
        streak.record(outcome.status, outcome.reason, outcome.ends_run)
        return Failed(message=f"{item.stem}: {outcome.reason}", data=outcome)
    streak.record(outcome.status)
    return outcome


def label_all(plan: RunPlan, job: LabelJob, labeller: Labeller, progress_bar: bool
               ) -> tuple[list[ImageOutcome], str]:
    """Every item through ``label-image`` with ``labeller.slots`` in flight; one outcome per item, none lost.

    An item done when the run began, whose shard is still current, is skipped without a task run.

    Items are submitted a few at a time, so that once ``--stop-after-failures`` images in a row have failed
    (the machinery is down) no other image is started: those left get a ``failed`` outcome saying so.

    Returns:
        The outcomes, and why the run stopped starting images ("" when it did not).
    """
    delays = plan.config.backend.retry_delays()
    streak = FailureStreak(plan.config.backend.stop_after_failures)
    outcomes = []
    finished: queue.SimpleQueue[PrefectFuture[Any]] = queue.SimpleQueue()
    waiting = iter(plan.items)
    in_flight: dict[PrefectFuture[Any], InputItem] = {}
    started = TaskRunsInFlight()
    with artifacts.Progress(len(plan.items), progress_bar) as progress, \
            InterruptibleThreadPool(max_workers=labeller.slots) as runner, _ended_on_stop(in_flight, started):

        def start_next() -> None:
            for item in waiting:
                # An image done when the run began is said skipped here, without a task run: one each grew Prefect's
                # database by ~20 KB per image at every rerun (38 MB for a rerun of 2,000 finished images).
                done = done_outcome(item, job) if item.stem in plan.done else None
                if done is not None:
                    outcomes.append(done)
                    progress.advance(done.status)
                    streak.record(done.status)
                    continue
                future = runner.submit(label_image_task, parameters={
                    "item": item, "labeller": labeller, "delays": delays, "streak": streak, "in_flight": started})
                in_flight[future] = item
                future.add_done_callback(finished.put)
                return

        for _ in range(2 * labeller.slots):  # the next image is queued before a slot frees up
            start_next()
        n_finished = 0
        while in_flight:
            future = get_interruptibly(finished)  # a bare finished.get() could sleep through Ctrl-C
            item = in_flight.pop(future)
            try:
                outcome = future.result(raise_on_failure=False)
            except Exception as err:  # noqa: BLE001 (the task machinery failed: still this image's failure)
                outcome = err
            if not isinstance(outcome, ImageOutcome):  # the task machinery failed, not the image: its end unrecorded
                outcome = ImageOutcome("failed", item.stem, item.source, reason=describe(outcome)
                                       if isinstance(outcome, BaseException) else f"task ended: {outcome!r}")
                streak.record(outcome.status, outcome.reason)
            outcomes.append(outcome)
            progress.advance(outcome.status)
            n_finished += 1
            if n_finished % allocator.RELEASE_EVERY == 0:  # kept in the threads' arenas, it grew the run's RSS
                allocator.release_freed_memory()
            if not streak.tripped:  # else the images queued behind the ones in flight are not started
                start_next()
    allocator.release_freed_memory()  # before k-means and the dataset's write
    stopped = streak.reason() if streak.tripped else ""
    for item in waiting:  # never started: missing, like a failed image, so that the rerun labels them
        outcomes.append(ImageOutcome("failed", item.stem, item.source, reason=NOT_STARTED))
    progress.close()
    return outcomes, stopped


@contextlib.contextmanager
def _ended_on_stop(in_flight: dict[PrefectFuture[Any], InputItem], started: TaskRunsInFlight) -> Iterator[None]:
    """On a stop (Ctrl-C, SIGTERM, SIGHUP), record the images in flight as cancelled and log why, then stop.

    The run does not wait for them (:class:`InterruptibleThreadPool`): without this their task runs stayed Running
    in the UI for ever, and the run's log did not say what became of them.
    """
    try:
        yield
    except BaseException as stop:
        if not is_stop(type(stop)):
            raise
        # Those that ended are left as they are (TaskRunsInFlight.cancel); those never started were never recorded.
        n_cancelled = started.cancel((future.task_run_id, f"{item.stem}: {STOPPED_UNDER_IT}")
                                     for future, item in in_flight.items())
        get_run_logger().error("%s: the run stops; %d image(s) in flight end cancelled, not finished; the finished "
                               "images are kept: run the same command again to resume", _stop_reason(stop),
                               n_cancelled)
        raise


def _stop_reason(stop: BaseException) -> str:
    """What stopped the run, in words: ``interrupted (SIGINT, Ctrl-C)``, ``SIGTERM received``."""
    if isinstance(stop, KeyboardInterrupt):
        return "interrupted (SIGINT, Ctrl-C)"
    signum = getattr(stop, "signal", None)  # Prefect's TerminationSignal: its SIGTERM handler's
    if isinstance(signum, int):
        return f"{signal.Signals(signum).name} received"
    return describe(stop)
