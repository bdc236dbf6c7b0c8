"""Handles on enqueued workflows: check on them, wait for their result."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Generic, cast

from asgiref.sync import sync_to_async

from .async_support import refuse_in_event_loop
from .exceptions import WorkflowCancelled, WorkflowFailed, WorkflowNotFound, WorkflowTimeout
from .models import Workflow, WorkflowStatus
from .replay import running_here

if TYPE_CHECKING:
    from typing_extensions import TypeVar

    # A handle built from an id alone (``WorkflowHandle(42)``) does not know its result's type.
    R = TypeVar("R", default=Any)
else:
    from typing import TypeVar

    R = TypeVar("R")


class WorkflowHandle(Generic[R]):
    """A workflow saved for a worker to run, returned by ``fn.start()``.

    Generic in the workflow's result: ``handle.result()`` of ``fn.start(...)`` is typed as
    ``fn`` returns. ``WorkflowHandle(workflow_id)`` is a handle on any saved workflow.
    """

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
        refuse_in_event_loop("handle.workflow()", "handle.aworkflow()")
        workflow = Workflow.objects.using(self.using).filter(pk=self.id).first()
        if workflow is None:
            raise WorkflowNotFound(self.id)
        return workflow

    async def aworkflow(self) -> Workflow:
        """``workflow()`` for async code."""
        return await sync_to_async(self.workflow)()

    def status(self) -> str:
        """Return the workflow's status now: PENDING, RUNNING, ..., SUCCESS, ERROR, CANCELLED."""
        refuse_in_event_loop("handle.status()", "handle.astatus()")
        return str(self._fields("status")[0])

    def cancel(self) -> bool:
        """Cancel the workflow (and its unfinished children); False if it had finished. See
        ``cancel_workflow``."""
        from .operations import cancel_workflow

        return cancel_workflow(self.id)

    async def astatus(self) -> str:
        """``status()`` for async code."""
        return await sync_to_async(self.status)()

    def _fields(self, *names: str) -> tuple[Any, ...]:
        """Read only these columns: a row whose other values no longer decode is still read."""
        row = Workflow.objects.using(self.using).filter(pk=self.id).values_list(*names).first()
        if row is None:
            raise WorkflowNotFound(self.id)
        return tuple(row)

    def result(self, timeout: float | None = None, poll: float = 0.05) -> R:
        """Wait for the workflow to finish and return its result.

        Raise ``WorkflowFailed`` (with the saved ``error``) if it ended in ERROR,
        ``WorkflowCancelled`` if it was cancelled, and ``WorkflowTimeout`` if it has not finished
        after ``timeout`` seconds (None: wait for ever). Polls the database, at first every
        ``poll`` seconds, backing off to one second. Called in a workflow's function, it waits
        durably instead: the workflow suspends until this one ends (``timeout`` is not used
        there: the waiting workflow's own timeout is).
        """
        run = running_here()
        if run is not None:
            # In a workflow's function: a durable wait (the workflow suspends until it ends).
            from .primitives import wait_all

            return wait_all(run, [self])[0]  # type: ignore[no-any-return]
        refuse_in_event_loop("handle.result()", "handle.aresult()")
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = poll
        while True:
            done, value = self._outcome(deadline, timeout)
            if done:
                return cast(R, value)
            time.sleep(_pause(delay, deadline))
            delay = min(delay * 2, 1.0)

    async def aresult(self, timeout: float | None = None, poll: float = 0.05) -> R:
        """``result()`` for async code: waits without blocking the event loop."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = poll
        while True:
            done, value = await sync_to_async(self._outcome)(deadline, timeout)
            if done:
                return cast(R, value)
            await asyncio.sleep(_pause(delay, deadline))
            delay = min(delay * 2, 1.0)

    def _outcome(self, deadline: float | None, timeout: float | None) -> tuple[bool, Any]:
        """(True, result) once the workflow succeeded; raise if it failed, was cancelled, or
        ``deadline`` passed; (False, None) while it is unfinished."""
        (status,) = self._fields("status")
        if status == WorkflowStatus.SUCCESS:
            return True, self._fields("result")[0]
        if status == WorkflowStatus.ERROR:
            raise WorkflowFailed(self.id, self._fields("error")[0])
        if status == WorkflowStatus.CANCELLED:
            raise WorkflowCancelled(self.id)
        if deadline is not None and time.monotonic() >= deadline:
            raise WorkflowTimeout(self.id, status, timeout or 0)
        return False, None


def _pause(delay: float, deadline: float | None) -> float:
    """How long to wait before looking again: ``delay``, but not past the deadline."""
    return delay if deadline is None else min(delay, max(0.0, deadline - time.monotonic()))
