"""The flow run's log: Prefect's line per image left out, alps_client's warnings sent to the run's page in the UI.

Importing this module installs the filters on Prefect's task-run logger (pinned prefect: see requirements.txt).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator
from typing import Any

from prefect.context import FlowRunContext
from prefect.logging.handlers import APILogHandler

from flows.labelling import LABEL_IMAGE, NOT_STARTED


class _NoEmptyTraceback(logging.Filter):
    """Drops the traceback of a log record logged outside any exception.

    Prefect (pinned: see requirements.txt) logs a task run that returned a Failed state with ``exc_info=True``,
    outside any exception: every failed image's error line was followed by a line ``NoneType: None``, on the
    console and in the UI. The state's message says it all.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[0] is None:
            record.exc_info = None
        return True


class _NoLinePerImageDone(logging.Filter):
    """Drops Prefect's ``Finished in state Completed()`` line of each image, and that of each image not started.

    A run of 100,000 images printed 100,000 such lines on the console and sent as many to the Prefect API (its
    database, the flow run's log page). The progress bar and the run's summary count them; each task run's state
    stays in the UI; a failed image's line stays, and so does every line of the cluster and write tasks. Prefect's
    ``Task run failed with state: Failed(...)`` before a failed image's line goes too: it said the same, with the
    state's internals (``result=ImageOutcome(failed odd)``).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "task_name", None) != LABEL_IMAGE or not isinstance(record.msg, str):
            return True
        if record.msg.startswith("Task run failed with state: "):
            return False
        if not record.msg.startswith("Finished in state "):
            return True
        return not (record.msg.startswith("Finished in state Completed(") or NOT_STARTED in record.msg)


class _LibraryLogToRun(APILogHandler):
    """alps_client's warnings, sent to the flow run's log in the Prefect API as well (its page in the UI).

    The library does not know Prefect: its records went to the process's console only (a served run's: the
    `alps serve` process's), so a run watched in the UI never showed that k-means got fewer clusters than asked, a
    Triton server left the rotation, or the GPU was missing and the run went on the CPU. Records from threads
    outside any run context (the labelling threads, the Prefect API's watchdog) are given this run's id, and sent
    from a copy of the flow's context: there Prefect's settings lack the run's API (``temporary_settings`` is
    per context), and sending from such a thread started an ephemeral Prefect server of its own.
    """

    def __init__(self, flow_run_id: Any) -> None:
        super().__init__(level=logging.WARNING)
        self.flow_run_id = flow_run_id
        self.flow_context = contextvars.copy_context()

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "flow_run_id", None) is None:
            record.flow_run_id = self.flow_run_id
        self.flow_context.copy().run(super().emit, record)  # a copy: a context is entered by one thread at a time


@contextlib.contextmanager
def library_log_to_run() -> Iterator[None]:
    """Within: alps_client's warnings also in the current flow run's log (:class:`_LibraryLogToRun`)."""
    run = FlowRunContext.get()
    if run is None or run.flow_run is None:
        yield
        return
    handler = _LibraryLogToRun(run.flow_run.id)
    library = logging.getLogger("alps_client")
    library.addHandler(handler)
    try:
        yield
    finally:
        library.removeHandler(handler)


for _filter in (_NoEmptyTraceback(), _NoLinePerImageDone()):
    logging.getLogger("prefect.task_runs").addFilter(_filter)
