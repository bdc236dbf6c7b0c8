"""Handles on enqueued workflows: check on them, wait for their result."""

from __future__ import annotations

import time
from typing import Any

from .exceptions import WorkflowCancelled, WorkflowFailed, WorkflowNotFound, WorkflowTimeout
from .models import Workflow, WorkflowStatus

FINISHED = (WorkflowStatus.SUCCESS, WorkflowStatus.ERROR, WorkflowStatus.CANCELLED)


class WorkflowHandle:
    """A workflow saved for a worker to run, returned by ``fn.start()``."""

    def __init__(self, workflow_id: int, using: str = "default") -> None:
        self.id = workflow_id
        self.using = using

    def __repr__(self) -> str:
        return f"<WorkflowHandle {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WorkflowHandle) and (other.id, other.using) == (
            self.id,
            self.using,
        )

    def __hash__(self) -> int:
        return hash((self.id, self.using))

    def workflow(self) -> Workflow:
        """Return the workflow's row as it is now; raise ``WorkflowNotFound`` if deleted."""
        workflow = Workflow.objects.using(self.using).filter(pk=self.id).first()
        if workflow is None:
            raise WorkflowNotFound(self.id)
        return workflow

    def status(self) -> str:
        """Return the workflow's status now: PENDING, RUNNING, ..., SUCCESS, ERROR, CANCELLED."""
        return str(self._fields("status")[0])

    def _fields(self, *names: str) -> tuple[Any, ...]:
        """Read only these columns: a row whose other values no longer decode is still read."""
        row = Workflow.objects.using(self.using).filter(pk=self.id).values_list(*names).first()
        if row is None:
            raise WorkflowNotFound(self.id)
        return tuple(row)

    def result(self, timeout: float | None = None, poll: float = 0.05) -> Any:
        """Wait for the workflow to finish and return its result.

        Raise ``WorkflowFailed`` (with the saved ``error``) if it ended in ERROR,
        ``WorkflowCancelled`` if it was cancelled, and ``WorkflowTimeout`` if it has not finished
        after ``timeout`` seconds (None: wait for ever). Polls the database, at first every
        ``poll`` seconds, backing off to one second.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = poll
        while True:
            (status,) = self._fields("status")
            if status == WorkflowStatus.SUCCESS:
                return self._fields("result")[0]
            if status == WorkflowStatus.ERROR:
                raise WorkflowFailed(self.id, self._fields("error")[0])
            if status == WorkflowStatus.CANCELLED:
                raise WorkflowCancelled(self.id)
            if deadline is not None and time.monotonic() >= deadline:
                raise WorkflowTimeout(self.id, status, timeout or 0)
            wait = delay if deadline is None else min(delay, max(0, deadline - time.monotonic()))
            time.sleep(wait)
            delay = min(delay * 2, 1.0)
