"""The engine: run a workflow, replay its saved steps, checkpoint new ones, hold its lease.

A run starts with a claim, one statement that takes the workflow's lease and returns its saved
checkpoints. Each step call then either returns its saved output (a replay: the body does not run)
or runs its body and writes one fenced checkpoint. The run ends with one statement that saves the
result (or the error) and gives the lease up. So a first run of N steps costs N + 2 writes and no
reads.

The engine knows nothing of workers or the admin; they call ``run_workflow`` and ``resume``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.db import transaction
from django.utils import timezone

from . import codec, registry
from .conf import conf
from .exceptions import (
    LeaseLost,
    NonDeterministicWorkflow,
    PayloadError,
    StepOutsideWorkflow,
    StorageError,
    UnknownWorkflow,
    WorkflowBusy,
    WorkflowCancelled,
    WorkflowMismatch,
    WorkflowNotFound,
)
from .inputs import arguments, check_input, encode_input, saved_call
from .lease import Lease, heartbeat, owner_name, process_owner
from .models import StepStatus, Workflow, WorkflowStatus
from .store import Claimed, Store, store_for, workflows_alias

if TYPE_CHECKING:
    from .decorators import StepFunction, WorkflowFunction

logger = logging.getLogger("django_pgqrs.runtime")

# Workflows this process is running now, by id: a second call in this process is refused.
_running: dict[int, Run] = {}


@dataclass(eq=False)
class Run:
    """The state of one run of a workflow in this process."""

    workflow: Workflow
    store: Store
    lease: Lease
    # Saved checkpoints: step_id -> (position, status, decoded output, attempts).
    saved: dict[str, tuple[int, str, Any, int]]
    thread: int = field(default_factory=threading.get_ident)
    position: int = 0
    calls: dict[str, int] = field(default_factory=dict)
    in_step: bool = False
    failed_step: tuple[BaseException, str] | None = None
    # Saved SUCCESS step ids in call order, and how many of them this run has replayed.
    _order: list[str] = field(default_factory=list)
    _replayed: int = 0

    def __post_init__(self) -> None:
        done = [
            (pos, key) for key, (pos, status, _, _) in self.saved.items() if status == "SUCCESS"
        ]
        self._order = [key for _, key in sorted(done)]

    def next_step_id(self, name: str) -> str:
        """Return the checkpoint key of the next call of step ``name``: name, name#2, ..."""
        count = self.calls[name] = self.calls.get(name, 0) + 1
        self.position += 1
        return name if count == 1 else f"{name}#{count}"

    def replay(self, step_id: str) -> None:
        """Mark a saved step as replayed; raise if saved steps are replayed out of order.

        Steps run for the first time may come between saved ones (a step added to the code),
        but the saved ones must come back in the order they were saved.
        """
        expected = self._order[self._replayed]
        if expected != step_id:
            raise NonDeterministicWorkflow(
                self.workflow.id, self.position, saved=expected, called=step_id
            )
        self._replayed += 1

    def unreplayed(self) -> list[str]:
        return self._order[self._replayed :]


def error_info(exc: BaseException, step_id: str | None = None) -> dict[str, Any]:
    """Describe an exception for the ``error`` column: type, message, traceback."""
    kind = type(exc)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    # jsonb cannot hold NUL characters; an error message must still be saved.
    info: dict[str, Any] = {
        "type": name,
        "message": str(exc).replace("\x00", "\\x00"),
        "traceback": "".join(traceback.format_exception(exc))[-20_000:].replace("\x00", "\\x00"),
    }
    if step_id is not None:
        info["step"] = step_id
    return info


def _error_text(exc: BaseException, step_id: str | None = None) -> str:
    return json.dumps(error_info(exc, step_id), ensure_ascii=False)


# --- Workflows ----------------------------------------------------------------------------------


def run_workflow(
    definition: WorkflowFunction[..., Any],
    workflow: Workflow,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    force: bool = False,
) -> Any:
    """Run (or resume) ``workflow`` with ``definition``'s function in this process.

    Return the workflow's result: the saved one, without running anything, if it already
    succeeded. Raise ``WorkflowBusy`` if a live process owns it (``force`` takes it over),
    ``WorkflowCancelled``, ``WorkflowNotFound``, ``WorkflowMismatch`` for a context of another
    workflow, ``InputMismatch`` for arguments other than the saved input; a failing step's own
    exception after saving the failure.
    """
    if not isinstance(workflow, Workflow):
        raise TypeError(
            f"{definition.name}() takes the Workflow returned by create_workflow() as its first "
            f"argument, not {type(workflow).__name__}; use {definition.name}.run(...) to create "
            f"and run a workflow in one call."
        )
    if workflow.name != definition.name:
        raise WorkflowMismatch(
            f"Workflow {workflow.id} is a {workflow.name!r} workflow; it cannot be run by "
            f"{definition.name!r}."
        )
    if workflow.id in _running:
        raise WorkflowBusy(workflow.id, f"{process_owner()} (this process)", "it finishes")
    saved_args, saved_kwargs = check_input(definition, workflow, args, kwargs)
    store = store_for(workflow._state.db or workflows_alias())
    lease = Lease(store.alias, workflow.id)
    claimed = store.claim(
        workflow.id, definition.name, owner_name(), lease.token, conf.LEASE_SECONDS, force
    )
    if claimed is None:
        return _unclaimable(workflow, store)
    workflow.status = WorkflowStatus.RUNNING
    workflow.attempts = claimed.attempts
    workflow.recovery_attempts = claimed.recovery_attempts
    run = Run(workflow, store, lease, claimed.steps)
    return _execute(definition, run, saved_args, saved_kwargs)


def start_and_run(
    definition: WorkflowFunction[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Create a workflow already owned by this process and run it: one statement to start."""
    arguments(definition, args, kwargs)
    text = encode_input(definition.name, args, kwargs)
    store = store_for(workflows_alias())
    lease = Lease(store.alias, 0)
    inserted = store.insert(
        name=definition.name,
        input_text=text,
        lease=conf.LEASE_SECONDS,
        owner=owner_name(),
        token=lease.token,
    )
    assert inserted is not None  # no idempotency key, no conflict
    workflow_id, created_at, run_at = inserted
    lease.workflow_id = workflow_id
    call = codec.loads(text)
    workflow = Workflow.saved(
        store.alias,
        id=workflow_id,
        name=definition.name,
        status=WorkflowStatus.RUNNING,
        input=call,
        created_at=created_at,
        updated_at=created_at,
        run_at=run_at,
        attempts=1,
    )
    return _execute(definition, Run(workflow, store, lease, {}), call["args"], call["kwargs"])


def run_claimed(claimed: Claimed, store: Store, lease: Lease) -> Any:
    """Run a workflow a worker has claimed (``store.claim_next``) to its end; return its result.

    Raise ``UnknownWorkflow`` (the workflow is released, not run) if its name is not registered
    here, and what the workflow raises.
    """
    try:
        definition = registry.get_workflow(claimed.name)
    except UnknownWorkflow as exc:
        store.release(claimed.workflow_id, lease.token, delay=60, error=_error_text(exc))
        raise
    workflow = Workflow.saved(
        store.alias,
        id=claimed.workflow_id,
        name=claimed.name,
        status=WorkflowStatus.RUNNING,
        attempts=claimed.attempts,
        recovery_attempts=claimed.recovery_attempts,
    )
    try:
        workflow.input = codec.loads(claimed.input_text)
    except PayloadError as exc:
        store.end(workflow.id, lease.token, WorkflowStatus.ERROR, error=_error_text(exc))
        raise
    args, kwargs = saved_call(workflow)
    return _execute(definition, Run(workflow, store, lease, claimed.steps), args, kwargs)


def resume(workflow_id: int, *, force: bool = False) -> Any:
    """Run the saved workflow ``workflow_id`` to its end in this process; return its result.

    Raise ``WorkflowNotFound``, ``UnknownWorkflow`` if its name is not registered, and what
    ``run_workflow`` raises.
    """
    alias = workflows_alias()
    try:
        workflow = Workflow.objects.using(alias).get(pk=workflow_id)
    except (Workflow.DoesNotExist, ValueError):
        raise WorkflowNotFound(workflow_id) from None
    definition = registry.get_workflow(workflow.name)
    args, kwargs = saved_call(workflow)
    return run_workflow(definition, workflow, tuple(args), kwargs, force=force)


def _unclaimable(workflow: Workflow, store: Store) -> Any:
    """Explain why a claim found nothing to take, or return the saved result of a SUCCESS."""
    row = Workflow.objects.using(store.alias).filter(pk=workflow.id).first()
    if row is None:
        raise WorkflowNotFound(workflow.id)
    for name in ("status", "result", "error", "lease_owner", "lease_expires_at", "updated_at"):
        setattr(workflow, name, getattr(row, name))
    if row.name != workflow.name:
        raise WorkflowMismatch(f"Workflow {row.id} is a {row.name!r} workflow.")
    if row.status == WorkflowStatus.SUCCESS:
        return row.result
    if row.status == WorkflowStatus.CANCELLED:
        raise WorkflowCancelled(row.id)
    raise WorkflowBusy(row.id, row.lease_owner, row.lease_expires_at)


def _execute(
    definition: WorkflowFunction[..., Any], run: Run, args: Any, kwargs: dict[str, Any]
) -> Any:
    workflow, store, lease = run.workflow, run.store, run.lease
    workflow._run = run
    _running[workflow.id] = run
    heartbeat.hold(lease)
    try:
        try:
            value = definition.func(workflow, *args, **kwargs)
            text = codec.dump(
                value, f"result of workflow {definition.name!r}", conf.MAX_PAYLOAD_BYTES
            )
        except (LeaseLost, WorkflowCancelled, StorageError):
            # Not the workflow's failure: it keeps its last checkpoint for the next owner.
            raise
        except Exception as exc:
            step = run.failed_step[1] if run.failed_step and run.failed_step[0] is exc else None
            workflow.status = WorkflowStatus.ERROR
            workflow.error = error_info(exc, step)
            if not store.end(
                workflow.id, lease.token, WorkflowStatus.ERROR, error=_error_text(exc, step)
            ):
                raise _lost(run) from exc
            raise
        except BaseException:
            # Interrupted (KeyboardInterrupt, SystemExit): give the workflow back at once, if the
            # database answers (else its lease expires); the interruption goes on either way.
            with contextlib.suppress(StorageError):
                store.release(workflow.id, lease.token)
            workflow.status = WorkflowStatus.PENDING
            raise
        if not store.end(workflow.id, lease.token, WorkflowStatus.SUCCESS, result=text):
            raise _lost(run)
        leftover = run.unreplayed()
        if leftover:
            logger.warning(
                "Workflow %s (%s) finished without calling its saved steps %s; its code changed "
                "while it was under way.",
                workflow.id,
                definition.name,
                ", ".join(leftover),
            )
        workflow.status = WorkflowStatus.SUCCESS
        workflow.result = codec.loads(text)
        workflow.error = None
        return workflow.result
    finally:
        heartbeat.drop(lease)
        _running.pop(workflow.id, None)
        workflow._run = None


# --- Steps --------------------------------------------------------------------------------------


class _NotWritten(Exception):
    """Internal: the checkpoint was not written; roll an atomic step's writes back."""


def call_step(
    definition: StepFunction[..., Any], ctx: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Run one step call: return its saved output, or run its body and checkpoint the result."""
    run = ctx._run if isinstance(ctx, Workflow) else None
    if run is None:
        raise StepOutsideWorkflow(
            f"Step {definition.name!r} was called outside a running workflow. Call steps from a "
            f"@workflow function, passing its context (ctx) as the first argument."
        )
    if run.thread != threading.get_ident():
        raise StepOutsideWorkflow(
            f"Step {definition.name!r} was called from another thread than the one running "
            f"workflow {run.workflow.id}; steps must run one at a time in the workflow's thread."
        )
    if run.in_step:
        # A step called from inside a step is part of the outer step's body.
        return definition.func(ctx, *args, **kwargs)
    step_id = run.next_step_id(definition.name)
    saved = run.saved.get(step_id)
    if saved is not None and saved[1] == StepStatus.SUCCESS:
        run.replay(step_id)
        return saved[2]
    attempts = saved[3] if saved is not None else 0
    tries = 0
    while True:
        attempts += 1
        tries += 1
        started = timezone.now()
        run.in_step = True
        try:
            if definition.atomic:
                with transaction.atomic(using=run.store.alias):
                    text = _run_body(definition, ctx, args, kwargs, step_id)
                    if not _checkpoint(run, step_id, attempts, started, text):
                        raise _NotWritten
            else:
                text = _run_body(definition, ctx, args, kwargs, step_id)
        except _NotWritten:
            return _adopt(run, step_id)
        except (LeaseLost, WorkflowCancelled, StorageError):
            raise
        except Exception as exc:
            run.in_step = False
            if tries <= definition.retries and _retryable(definition, exc):
                time.sleep(definition.backoff * 2 ** (tries - 1))
                continue
            if not _checkpoint(run, step_id, attempts, started, None, exc):
                raise _lost(run) from exc
            run.failed_step = (exc, step_id)
            raise
        finally:
            run.in_step = False
        if not definition.atomic and not _checkpoint(run, step_id, attempts, started, text):
            return _adopt(run, step_id)
        return codec.loads(text)


def _run_body(
    definition: StepFunction[..., Any], ctx: Any, args: Any, kwargs: Any, step_id: str
) -> str:
    value = definition.func(ctx, *args, **kwargs)
    return codec.dump(value, f"result of step {step_id!r}", conf.MAX_PAYLOAD_BYTES)


def _retryable(definition: StepFunction[..., Any], exc: Exception) -> bool:
    return isinstance(exc, definition.retry_on) and not isinstance(exc, PayloadError)


def _checkpoint(
    run: Run,
    step_id: str,
    attempts: int,
    started: Any,
    output: str | None,
    exc: BaseException | None = None,
) -> bool:
    return run.store.checkpoint(
        workflow_id=run.workflow.id,
        token=run.lease.token,
        lease=conf.LEASE_SECONDS,
        step_id=step_id,
        position=run.position,
        status=StepStatus.SUCCESS if exc is None else StepStatus.ERROR,
        output=output,
        error=None if exc is None else _error_text(exc),
        attempts=attempts,
        started_at=started,
        completed_at=timezone.now(),
    )


def _adopt(run: Run, step_id: str) -> Any:
    """The checkpoint was not written: return the output saved by an earlier owner, or stop.

    A checkpoint is refused when the lease was lost, or when a previous owner (whose lease had
    expired) saved the same step after this run's claim read the checkpoints. The first saved
    output wins, so every run continues with the same value.
    """
    step = (
        run.workflow.steps.using(run.store.alias)
        .filter(step_id=step_id, status=StepStatus.SUCCESS)
        .first()
    )
    still_owner = (
        Workflow.objects.using(run.store.alias)
        .filter(pk=run.workflow.id, lease_token=run.lease.token)
        .exists()
    )
    if step is None or not still_owner:
        raise _lost(run)
    return step.output


def _lost(run: Run) -> LeaseLost | WorkflowCancelled:
    """The error for a write the fence refused: the workflow was cancelled, or taken over."""
    cancelled = (
        Workflow.objects.using(run.store.alias)
        .filter(pk=run.workflow.id, status=WorkflowStatus.CANCELLED)
        .exists()
    )
    if cancelled:
        run.workflow.status = WorkflowStatus.CANCELLED
        return WorkflowCancelled(run.workflow.id)
    return LeaseLost(run.workflow.id)
