"""A run of a workflow in this process: its saved checkpoints and the rules for replaying them.

A replayed run must take the path the saved run took. So each step call whose checkpoint is saved
is checked against it before its saved result (or saved error) is handed back:

1. Order: saved steps come back in the order they were saved. A step run for the first time may
   come between them (a deploy added it); it then takes its place in the call order, and the
   saved steps after it move one position down in the same write, so that the next resume sees
   the order of the current code.
2. Arguments: the call's arguments must be those of the saved call (compared by a digest). Keys
   are names (``fetch``, ``fetch#2``), so a call of ``fetch`` added before saved ones would
   otherwise be handed the saved result of another call.
3. Errors: a saved step error is raised again, not run, so that the workflow takes the same path
   (it caught the error and went on, or it would have). Only the step the workflow itself failed
   on runs again: its checkpoint was marked when the workflow was saved as ERROR. (A process that
   died between a step's error and the workflow's end left no mark: the resumed workflow gets
   the error again, fails with it, and the next resume runs the step.)
"""

from __future__ import annotations

import contextvars
import dataclasses
import datetime
import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import clock
from .exceptions import LeaseLost, NonDeterministicWorkflow, WorkflowCancelled
from .lease import Lease
from .models import StepStatus, Workflow, WorkflowStatus
from .store import SavedStep, Store

if TYPE_CHECKING:
    from .decorators import StepFunction


@dataclass(eq=False)
class Run:
    """The state of one run of a workflow in this process."""

    workflow: Workflow
    store: Store
    lease: Lease
    saved: dict[str, SavedStep]
    # The parent workflow, woken when this one ends; the time past which it fails (timeout).
    parent_id: int | None = None
    deadline: datetime.datetime | None = None
    # The due time a worker claimed the workflow at, by the database's clock (see reached()).
    due: datetime.datetime | None = None
    # The suspension on its way out of the workflow function (see primitives.suspend).
    suspending: BaseException | None = None
    thread: int = field(default_factory=threading.get_ident)
    pid: int = field(default_factory=os.getpid)
    # Inside a test case's transaction, step bodies run in savepoints (see runtime).
    savepoints: bool = False
    # Calls so far, in all and per step name.
    calls: int = 0
    per_name: dict[str, int] = field(default_factory=dict)
    # The position of the last step this run passed (replayed, or written).
    position: int = 0
    # The step whose body is running; a step called from inside it is part of it.
    step: StepFunction[..., Any] | None = None
    # Step errors raised in this run, by id: (exception, checkpoint key).
    errors: dict[int, tuple[BaseException, str]] = field(default_factory=dict)
    # Saved step ids in position order, and how many of them this run has passed.
    _order: list[str] = field(default_factory=list)
    _passed: int = 0
    # Saved step errors that run again: those the workflow failed on.
    rerun: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        self._order = sorted(self.saved, key=lambda key: self.saved[key].position)
        # A step waiting for its next attempt (a long retry backoff) runs again too.
        self.rerun = frozenset(
            key
            for key, step in self.saved.items()
            if step.status == StepStatus.ERROR
            and ((step.error or {}).get("failed_workflow") or (step.error or {}).get("retry_at"))
        )

    def reached(self, moment: datetime.datetime) -> bool:
        """Whether ``moment`` (a wake-up time, a deadline) has come.

        By the durable clock; or by the database's, which judged the workflow due at ``due``
        when a worker claimed it: a clock here a little behind the database's must not send the
        workflow back to sleep, again and again, for the few seconds between them.
        """
        return clock.now() >= moment or (self.due is not None and moment <= self.due)

    def next_step_id(self, name: str) -> str:
        """Return the checkpoint key of the next call of step ``name``: name, name#2, ..."""
        count = self.per_name[name] = self.per_name.get(name, 0) + 1
        self.calls += 1
        return name if count == 1 else f"{name}#{count}"

    def passing(self, step_id: str, saved: SavedStep, digest: str) -> None:
        """Check the call of a saved step against the saved run; raise if it differs."""
        expected = self._order[self._passed]
        if expected != step_id:
            raise NonDeterministicWorkflow(
                self.workflow.id, self.calls, saved=expected, called=step_id
            )
        # The arguments of a step that runs again may differ: fixing them is a way to resume.
        if saved.args_digest not in (None, digest) and step_id not in self.rerun:
            raise NonDeterministicWorkflow(
                self.workflow.id, self.calls, saved=step_id, called=step_id, other_arguments=True
            )
        self._passed += 1
        self.position = saved.position

    def new_position(self) -> tuple[int, bool]:
        """Return the position of a step run here for the first time, and whether the saved steps
        not reached yet must move down to make room (they do, in memory, at once)."""
        position = self.position + 1
        rest = self._order[self._passed :]
        shift = bool(rest) and self.saved[rest[0]].position <= position
        if shift:
            for key in rest:
                step = self.saved[key]
                self.saved[key] = dataclasses.replace(step, position=step.position + 1)
        return position, shift

    def unreplayed(self) -> list[str]:
        """Saved steps this run has not reached."""
        return self._order[self._passed :]

    def failure_step(self, exc: BaseException) -> str | None:
        """Return the step whose error the workflow failed with: ``exc`` itself, or the first
        step error it was raised from (``raise ... from``, or inside an ``except``)."""
        seen: set[int] = set()
        current: BaseException | None = exc
        while current is not None and id(current) not in seen:
            seen.add(id(current))
            found = self.errors.get(id(current))
            if found is not None and found[0] is current:
                return found[1]
            current = current.__cause__ or current.__context__
        return None

    def lost_error(self) -> LeaseLost | WorkflowCancelled:
        """The error for a write the fence refused: the workflow was cancelled, or taken over."""
        cancelled = (
            Workflow.objects.using(self.store.alias)
            .filter(pk=self.workflow.id, status=WorkflowStatus.CANCELLED)
            .exists()
        )
        if cancelled:
            self.workflow.status = WorkflowStatus.CANCELLED
            return WorkflowCancelled(self.workflow.id)
        return LeaseLost(self.workflow.id)


# The run of the workflow whose function is executing in this thread (and context), if any.
current: contextvars.ContextVar[Run | None] = contextvars.ContextVar("pgqrs_run", default=None)


def running_here() -> Run | None:
    """The run whose workflow function is executing here, outside any step's body; else None."""
    run = current.get()
    if run is None or run.step is not None or run.thread != threading.get_ident():
        return None
    return run


def current_workflow() -> Workflow | None:
    """The workflow whose function is running in this thread (its context, ``ctx``), from
    anywhere in it (a step's body, code it calls); None elsewhere."""
    run = current.get()
    return run.workflow if run is not None and run.thread == threading.get_ident() else None
