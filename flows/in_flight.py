"""The task runs of a flow run that are in flight, so that a stopped run can record them as ended.

A run stopped by Ctrl-C or SIGTERM does not wait for the images in flight (see
:class:`flows.labelling.InterruptibleThreadPool`): their threads die with the process, before Prefect's task
engine records their end. On a user's Prefect API each such ``label-image`` task run stayed Running for ever in
the UI. The engine's own record of the task run is kept here while it runs, so that the stop can send its
end, Cancelled, the way the engine sends every state (an event; pinned prefect: see requirements.txt).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING
from uuid import UUID

from prefect.context import TaskRunContext
from prefect.states import Cancelled
from prefect.utilities.engine import emit_task_run_state_change_event

if TYPE_CHECKING:
    from prefect.client.schemas.objects import TaskRun


class TaskRunsInFlight:
    """The task runs started (in any thread) and not known to have ended, by task run id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[UUID, TaskRun] = {}

    def started(self) -> None:
        """Note the task run this is called in (from a task's body; outside a task run it does nothing)."""
        ctx = TaskRunContext.get()
        if ctx is not None and ctx.task_run is not None:
            with self._lock:
                self._runs[ctx.task_run.id] = ctx.task_run

    def cancel(self, ended: Iterable[tuple[UUID, str]]) -> int:
        """Record each task run in ``ended`` (``(task_run_id, message)``) that was started as Cancelled.

        The events are queued (Prefect's events worker sends them, as it does the engine's), so a dead API does not
        hold the caller; a task run never started (queued when the run stopped) was never recorded and is left out.

        Returns:
            How many task runs were recorded as cancelled.
        """
        count = 0
        for task_run_id, message in ended:
            with self._lock:
                task_run = self._runs.pop(task_run_id, None)
            if task_run is None or task_run.state is None or task_run.state.is_final():
                continue
            state = Cancelled(message=message)
            state.state_details.task_run_id = task_run.id
            state.state_details.flow_run_id = task_run.flow_run_id
            # A copy: the engine in the task's thread may still be updating its own.
            emit_task_run_state_change_event(task_run=task_run.model_copy(), initial_state=task_run.state,
                                             validated_state=state)
            count += 1
        return count
