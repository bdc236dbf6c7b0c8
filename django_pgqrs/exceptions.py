"""Errors raised by django-pgqrs.

Every error says what happened and what to do about it. All derive from ``PgqrsError`` so callers
can catch the library's errors without catching their own.
"""

from __future__ import annotations

import datetime


class PgqrsError(Exception):
    """Base class of every error django-pgqrs raises."""


class UnknownWorkflow(PgqrsError, LookupError):
    """No ``@workflow`` function is registered under a name."""

    def __init__(self, name: str, reason: str | None = None) -> None:
        self.name = name
        if reason is not None:  # a task's workflow: its task is not there any more
            super().__init__(f"No workflow named {name!r}: {reason}")
            return
        super().__init__(
            f"No workflow named {name!r} is registered. Define it with @workflow in a "
            f"'workflows' module of an installed app (or pass @workflow(name={name!r})), "
            f"so that it is registered when Django starts."
        )


class DuplicateWorkflowName(PgqrsError):
    """Two different functions were registered under one workflow name."""


class WorkflowNotFound(PgqrsError, LookupError):
    """No workflow row has the given id."""

    def __init__(self, workflow_id: object) -> None:
        self.workflow_id = workflow_id
        super().__init__(f"Workflow {workflow_id} does not exist.")


class WorkflowMismatch(PgqrsError, ValueError):
    """A workflow function was called with the context of a workflow of another name."""


class InputMismatch(PgqrsError, ValueError):
    """A workflow was called with arguments that differ from the input it was created with."""


class WorkflowBusy(PgqrsError):
    """Another process (or thread) holds the workflow's lease and is running it."""

    def __init__(self, workflow_id: object, owner: str | None, expires: object) -> None:
        self.workflow_id = workflow_id
        self.owner = owner
        super().__init__(
            f"Workflow {workflow_id} is being run by {owner or 'another process'} "
            f"(lease valid until {expires}). Wait for it to finish, or for the lease to expire "
            f"if that process died; `manage.py pgqrs_resume {workflow_id} --force` takes it over "
            f"now."
        )


class WorkflowCancelled(PgqrsError):
    """The workflow was cancelled; it will not run again."""

    def __init__(self, workflow_id: object) -> None:
        self.workflow_id = workflow_id
        super().__init__(
            f"Workflow {workflow_id} was cancelled; it will not run again (resume it with "
            f"force=True, or `manage.py pgqrs_resume {workflow_id} --force`, to run it anyway)."
        )


class LeaseLost(PgqrsError):
    """This process no longer owns the workflow it was running; it must stop.

    Another process took the workflow over (its lease had expired, or it was forced). Nothing was
    written by the step that noticed; the new owner carries the workflow on.
    """

    def __init__(self, workflow_id: object) -> None:
        self.workflow_id = workflow_id
        super().__init__(
            f"This process lost its lease on workflow {workflow_id}: another process has taken it "
            f"over, so this one stops without writing. Renew leases more often than "
            f"PGQRS['LEASE_SECONDS'] (see PGQRS['HEARTBEAT_SECONDS']) if this was not intended."
        )


class StorageError(PgqrsError):
    """The workflow tables could not be read or written: the database is unreachable, or failed.

    The workflow is not marked as failed: it stays with its last checkpoint and is run again
    (by a worker once its lease expires, or by calling it again) when the database is back.
    """

    # The workflow whose run it stopped, if it stopped one.
    workflow_id: int | None = None

    def __init__(self, alias: str, cause: BaseException) -> None:
        self.alias = alias
        super().__init__(
            f"django-pgqrs could not write to database {alias!r} ({cause}). The workflow keeps "
            f"its last checkpoint and runs again when the database is back."
        )


class WorkflowFailed(PgqrsError):
    """A workflow waited on through its handle ended in ERROR."""

    def __init__(self, workflow_id: object, error: dict[str, object] | None) -> None:
        self.workflow_id = workflow_id
        self.error = error or {}
        super().__init__(
            f"Workflow {workflow_id} failed: {self.error.get('type', 'error')}: "
            f"{self.error.get('message', '')}"
        )


class WorkflowTimeout(PgqrsError, TimeoutError):
    """A workflow waited on through its handle did not finish in time."""

    def __init__(self, workflow_id: object, status: str, timeout: float) -> None:
        self.workflow_id = workflow_id
        self.status = status
        super().__init__(
            f"Workflow {workflow_id} did not finish within {timeout} seconds (it is {status}). "
            f"Is a worker running (`manage.py pgqrs_worker`) for its queue? (In a test, "
            f"django_pgqrs.testing.drain() runs queued workflows.)"
        )


class PayloadError(PgqrsError, TypeError):
    """A value (input, step result, workflow result) cannot be stored as JSON."""


class NonDeterministicWorkflow(PgqrsError):
    """A replay called saved steps in another order, or with other arguments, than the run that
    saved them."""

    def __init__(
        self,
        workflow_id: object,
        position: int,
        saved: str,
        called: str,
        other_arguments: bool = False,
    ) -> None:
        self.workflow_id = workflow_id
        self.position = position
        self.saved = saved
        self.called = called
        if other_arguments:
            what = (
                f"the saved run called {saved!r} with other arguments than this run: a call of "
                f"the same step was added or removed before it, or its arguments come from "
                f"something that changed (time, randomness, I/O outside a step)"
            )
        else:
            what = f"the saved run called {saved!r} but this run called {called!r}"
        super().__init__(
            f"Workflow {workflow_id} is not deterministic: at step position {position} {what}. "
            f"A workflow must call its steps in the same order, with the same arguments, on every "
            f"run; move code that varies (time, randomness, I/O) into steps. For a workflow "
            f"saved by older code: finish it with the code that started it, cancel it, or fork "
            f"it from the first step that changed (fork_workflow({workflow_id}, from_step=...), "
            f"or `manage.py pgqrs_resume {workflow_id} --from-step ...`), which runs the rest "
            f"with the current code."
        )


class StepOutsideWorkflow(PgqrsError, RuntimeError):
    """A ``@step`` function was called without a running workflow's context."""


class NestedAtomicStep(PgqrsError, RuntimeError):
    """An ``atomic=True`` step was called from inside a step that is not atomic.

    Its writes could not happen exactly once: they would be repeated whenever the outer step runs
    again.
    """


class WorkflowInTransaction(PgqrsError, RuntimeError):
    """A workflow was run inside the caller's open ``transaction.atomic()`` block.

    Its checkpoints would commit, or roll back, with the caller's transaction: a rollback or a
    crash would lose steps that already ran. ``fn.start()`` joins the caller's transaction
    instead, and a worker runs the workflow once it commits.
    """


class StepFailed(PgqrsError):
    """A saved step error raised again on a replay, when its own exception cannot be rebuilt.

    ``error`` is the saved error (type, message, traceback); ``step`` the step's checkpoint key.
    """

    def __init__(self, step: str, error: dict[str, object]) -> None:
        self.step = step
        self.error = error
        super().__init__(
            f"Step {step!r} failed with {error.get('type', 'an error')}: {error.get('message', '')}"
        )


class SimulatedCrash(BaseException):
    """Raised by ``django_pgqrs.testing.crash_at`` to stop a run the way a killed process would.

    Nothing is saved for the step it stops (an atomic step's writes roll back), and the run's
    lease is given back (``release``) or left to expire, as a dead process leaves it. A
    ``BaseException``, so that a workflow's ``except Exception`` does not catch it.
    """

    def __init__(self, step: str, after_body: bool, release: bool) -> None:
        self.step = step
        self.after_body = after_body
        self.release = release
        where = "after its body ran" if after_body else "before its body ran"
        super().__init__(f"Simulated crash in step {step!r}, {where}.")


class WorkflowSuspended(PgqrsError):
    """A run stopped because its workflow waits: a sleep, an event or a child.

    The workflow is SLEEPING and keeps every checkpoint; a worker resumes it when it is due
    (``wake_at``, or sooner when what it waits for comes), as can ``resume(id)``.
    """

    def __init__(self, workflow_id: object, wake_at: datetime.datetime | None, reason: str) -> None:
        self.workflow_id = workflow_id
        self.wake_at = wake_at
        self.reason = reason
        when = "until it is woken" if wake_at is None else f"until {wake_at}"
        super().__init__(
            f"Workflow {workflow_id} is waiting ({reason}) {when}; it keeps its checkpoints. A "
            f"worker (manage.py pgqrs_worker) resumes it then, or resume({workflow_id}) does."
        )


class WorkflowTimedOut(PgqrsError):
    """A workflow went past its deadline (``@workflow(timeout=...)``, ``fn.using(timeout=...)``).

    Raised at its next step, sleep or wait; the workflow is saved as ERROR with it.
    """

    def __init__(self, workflow_id: object, deadline: object, where: str) -> None:
        self.workflow_id = workflow_id
        self.deadline = deadline
        super().__init__(
            f"Workflow {workflow_id} passed its deadline ({deadline}) before {where}; it is "
            f"stopped there. A step already running was not interrupted."
        )


class NonRetryable(PgqrsError):
    """Raise it (or a subclass) from a step to fail the step at once, whatever its retries.

    A ``PgqrsError``, so ``except PgqrsError`` sees it; subclass it for your own errors that no
    retry can mend (a card declined, an order that does not exist).
    """


class WorkflowFinished(PgqrsError):
    """An event was sent to a workflow that has already finished (SUCCESS, ERROR, CANCELLED)."""


class WorkflowUsageError(PgqrsError, RuntimeError):
    """A durable call (``ctx.sleep``, ``ctx.wait_for_event``, a child) made where it cannot be
    durable, or with arguments it cannot take."""
