"""The engine: run a workflow, replay its saved steps, checkpoint new ones, hold its lease.

A run starts with a claim, one statement that takes the workflow's lease and returns its saved
checkpoints. Each step call then either returns its saved output (a replay: the body does not run)
or runs its body and writes one fenced checkpoint (see ``steps``). The run ends with one statement
that saves the result (or the error) and gives the lease up. So a first run of N steps costs N + 2
writes and no reads.

A run is refused inside the caller's open ``transaction.atomic()`` (test cases' blocks aside):
its checkpoints would commit or roll back with the caller's transaction, and a rollback would
lose steps that already ran. ``fn.start()`` joins the caller's transaction instead.

The engine knows nothing of workers or the admin; they call ``run_workflow`` and ``resume``.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from django.db import connections

from . import codec, registry, signals
from .async_support import refuse_in_event_loop
from .conf import conf
from .enqueue import deadline_for
from .exceptions import (
    LeaseLost,
    PayloadError,
    SimulatedCrash,
    StorageError,
    UnknownWorkflow,
    WorkflowBusy,
    WorkflowCancelled,
    WorkflowInTransaction,
    WorkflowMismatch,
    WorkflowNotFound,
    WorkflowSuspended,
    WorkflowTimedOut,
    WorkflowUsageError,
)
from .failures import error_info, error_text
from .inputs import arguments, check_input, encode_input, saved_call
from .lease import Lease, heartbeat, owner_name, process_owner
from .models import Workflow, WorkflowStatus
from .primitives import FOREVER, Suspend
from .replay import Run, current, running_here
from .steps import interruption, outage
from .store import Claimed, Store, in_test_case_only, store_for, workflows_alias

if TYPE_CHECKING:
    from .decorators import WorkflowFunction

logger = logging.getLogger("django_pgqrs.runtime")

# Workflows this process is running now, by id: a second call in this process is refused.
_running: dict[int, Run] = {}
# A forked child runs none of its parent's workflows.
os.register_at_fork(after_in_child=_running.clear)


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
    workflow, ``InputMismatch`` for arguments other than the saved input,
    ``WorkflowInTransaction`` inside the caller's ``transaction.atomic()``; a failing step's own
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
    _refuse_in_workflow(f"{definition.name}(ctx, ...)", definition.name)
    if workflow.id in _running:
        raise WorkflowBusy(workflow.id, f"{process_owner()} (this process)", "it finishes")
    saved_args, saved_kwargs = check_input(definition, workflow, args, kwargs)
    store = store_for(workflow._state.db or workflows_alias())
    savepoints = refuse_in_transaction(store.alias, f"{definition.name}(ctx, ...)", definition.name)
    lease = Lease(store.alias, workflow.id)
    previous = heartbeat.take_back(workflow.id)
    sent = time.monotonic()
    try:
        claimed = store.claim(
            workflow.id,
            definition.name,
            owner_name(),
            lease.token,
            conf.LEASE_SECONDS,
            force,
            previous=previous.token if previous else None,
        )
    except BaseException as exc:
        if previous is not None:
            heartbeat.leave(previous)
        if isinstance(exc, StorageError):
            heartbeat.leave(lease)  # the claim may have been made, and its reply lost
        raise
    if claimed is None:
        return _unclaimable(workflow, store)
    lease.confirm(sent, conf.LEASE_SECONDS)
    if claimed.took_over and signals.workflow_recovered.receivers:
        # Taken over here from an owner whose lease had expired (resume() after a crash).
        signals.send(
            signals.workflow_recovered,
            workflow_id=workflow.id,
            name=workflow.name,
            previous_owner=workflow.lease_owner,
            status=WorkflowStatus.RUNNING,
        )
    workflow.status = WorkflowStatus.RUNNING
    workflow.attempts = claimed.attempts
    workflow.recovery_attempts = claimed.recovery_attempts
    run = _run_of_claim(workflow, store, lease, claimed, savepoints)
    return _execute(definition, run, saved_args, saved_kwargs)


def start_and_run(
    definition: WorkflowFunction[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Create a workflow already owned by this process and run it: one statement to start."""
    _refuse_in_workflow(f"{definition.name}.run(...)", definition.name)
    arguments(definition, args, kwargs)
    text = encode_input(definition.name, args, kwargs)
    store = store_for(workflows_alias())
    savepoints = refuse_in_transaction(store.alias, f"{definition.name}.run(...)", definition.name)
    lease = Lease(store.alias, 0)
    deadline = deadline_for(definition, None)
    sent = time.monotonic()
    try:
        inserted = store.insert(
            name=definition.name,
            input_text=text,
            lease=conf.LEASE_SECONDS,
            owner=owner_name(),
            token=lease.token,
            deadline_at=deadline,
        )
    except StorageError:
        heartbeat.leave(lease)  # the row may have been saved, under this lease
        raise
    assert inserted is not None  # no idempotency key, no conflict
    workflow_id, created_at, run_at = inserted
    lease.workflow_id = workflow_id
    lease.confirm(sent, conf.LEASE_SECONDS)
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
        deadline_at=deadline,
    )
    run = Run(workflow, store, lease, {}, deadline=deadline, savepoints=savepoints)
    return _execute(definition, run, call["args"], call["kwargs"])


def run_claimed(claimed: Claimed, store: Store, lease: Lease, savepoints: bool = False) -> Any:
    """Run a workflow a worker has claimed (``store.claim_next``) to its end; return its result.

    Raise ``UnknownWorkflow`` (the workflow is released, not run) if its name is not registered
    here, and what the workflow raises. A workflow whose saved input no longer decodes (or fits)
    is saved as ERROR. ``savepoints``: the claim was made inside a test case's transaction (see
    ``refuse_in_transaction``).
    """
    try:
        definition = registry.get_workflow(claimed.name)
    except UnknownWorkflow as exc:
        store.release(claimed.workflow_id, lease.token, delay=60, error=error_text(exc))
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
        args, kwargs = saved_call(workflow)
        arguments(definition, args, kwargs)
    except Exception as exc:
        if isinstance(exc, TypeError) and not isinstance(exc, PayloadError):
            exc = PayloadError(
                f"The saved input of workflow {workflow.id} no longer fits the signature of "
                f"{definition.name}: {exc}."
            )
        workflow.status = WorkflowStatus.ERROR
        workflow.error = error_info(exc)
        # A child's end wakes its waiting parent, as every end does.
        store.end(
            workflow.id,
            lease.token,
            WorkflowStatus.ERROR,
            error=error_text(exc),
            wake_id=claimed.parent_id,
        )
        if signals.workflow_finished.receivers:
            _finished(workflow, exc)
        raise exc from None
    run = _run_of_claim(workflow, store, lease, claimed, savepoints)
    return _execute(definition, run, args, kwargs)


def _run_of_claim(
    workflow: Workflow, store: Store, lease: Lease, claimed: Claimed, savepoints: bool
) -> Run:
    return Run(
        workflow,
        store,
        lease,
        claimed.steps,
        parent_id=claimed.parent_id,
        deadline=claimed.deadline_at,
        due=claimed.due,
        savepoints=savepoints,
    )


def resume(workflow_id: int, *, force: bool = False) -> Any:
    """Run the saved workflow ``workflow_id`` to its end in this process; return its result.

    Raise ``WorkflowNotFound``, ``UnknownWorkflow`` if its name is not registered,
    ``PayloadError`` if its saved input no longer decodes, and what ``run_workflow`` raises.
    """
    refuse_in_event_loop("resume()", "aresume()")
    alias = workflows_alias()
    try:
        workflow = Workflow.objects.using(alias).get(pk=workflow_id)
    except (Workflow.DoesNotExist, ValueError):
        raise WorkflowNotFound(workflow_id) from None
    except PayloadError as exc:
        raise PayloadError(f"Workflow {workflow_id} cannot be resumed: {exc}") from None
    definition = registry.get_workflow(workflow.name)
    args, kwargs = saved_call(workflow)
    return run_workflow(definition, workflow, tuple(args), kwargs, force=force)


async def aresume(workflow_id: int, *, force: bool = False) -> Any:
    """``resume`` for async code: the workflow runs in a thread."""
    return await sync_to_async(resume)(workflow_id, force=force)


def _refuse_in_workflow(call: str, name: str) -> None:
    """A workflow run inline inside another workflow's function would not be tracked by it (a
    replay would run it again), nor could it wait: start it as a child instead."""
    if running_here() is not None:
        raise WorkflowUsageError(
            f"{call} was called in a workflow's function, where its run would not be saved with "
            f"it. Start it as a child: {name}.start(...) (a replay gets the same child), then "
            f"handle.result() to wait for it."
        )


def refuse_in_transaction(alias: str, call: str, name: str | None = None) -> bool:
    """Raise ``WorkflowInTransaction`` inside the caller's transaction on ``alias``.

    Test cases' own blocks (Django's ``TestCase``, pytest-django's ``django_db``) are allowed, as
    ``atomic(durable=True)`` allows them: return True then, so that step bodies run in savepoints
    and a failing one leaves the test's transaction usable.
    """
    if in_test_case_only(alias):
        return True
    connection = connections[alias]
    manual = connection.connection is not None and not connection.get_autocommit()
    if connection.in_atomic_block or manual:
        fn = name or "fn"
        raise WorkflowInTransaction(
            f"{call} was called inside a transaction (transaction.atomic()) on database "
            f"{alias!r}. A run's checkpoints would commit or roll back with that transaction, so "
            f"a rollback or a crash would lose steps that already ran. Start it with "
            f"{fn}.start(...), which joins your transaction and lets a worker run it once it "
            f"commits, or run it after the commit: transaction.on_commit(lambda: {fn}.run(...))."
        )
    return False


def _unclaimable(workflow: Workflow, store: Store) -> Any:
    """Explain why a claim found nothing to take, or return the saved result of a SUCCESS."""
    # Not the input: it is the caller's already, and may be what no longer decodes.
    row = Workflow.objects.using(store.alias).defer("input").filter(pk=workflow.id).first()
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
    workflow, lease = run.workflow, run.lease
    workflow._run = run
    _running[workflow.id] = run
    running = current.set(run)
    if not run.savepoints:
        # Inside a test case's transaction no other connection can see the row, so none can
        # take it over, and the heartbeat's connection could not renew it either.
        heartbeat.hold(lease)
    try:
        try:
            if signals.workflow_started.receivers:
                # In here: what a receiver raises that Django does not catch (Ctrl-C) is
                # handled as if the workflow's function had raised it.
                signals.send(
                    signals.workflow_started,
                    workflow=workflow,
                    name=workflow.name,
                    attempt=workflow.attempts,
                )
            value = definition.func(workflow, *args, **kwargs)
            text = codec.dump(
                value, f"result of workflow {definition.name!r}", conf.MAX_PAYLOAD_BYTES
            )
        except Suspend as suspend:
            _suspend(run, suspend)
            wake = None if suspend.wake == FOREVER else suspend.wake
            raise WorkflowSuspended(workflow.id, wake, suspend.reason) from None
        except StorageError as exc:
            # Not the workflow's failure: it keeps its last checkpoint; the lease is given back
            # once the database answers, or taken back by the next run here.
            heartbeat.leave(lease)
            _name_workflow(exc, workflow.id)
            raise
        except LeaseLost:
            raise
        except WorkflowCancelled as exc:
            if exc.workflow_id == workflow.id:
                raise  # this workflow was cancelled: it stops, saving nothing more
            _fail(run, exc)  # a workflow it waited for was: its failure, as any other error
            raise
        except BaseException as exc:
            if interruption(exc):
                if not (isinstance(exc, SimulatedCrash) and not exc.release):
                    _give_back(run)
                raise
            if outage(exc, run.store.alias):
                # The workflows' database was lost outside any step, by a query of the workflow
                # function itself (the engine's own writes say StorageError already). Not the
                # workflow's failure, as in a step's body.
                heartbeat.leave(lease)
                lost = StorageError(run.store.alias, exc)
                _name_workflow(lost, workflow.id)
                raise lost from exc
            _fail(run, exc)
            raise
        try:
            _end(run, WorkflowStatus.SUCCESS, result=text)
        except PayloadError as exc:  # the database refused the result
            _fail(run, exc)
            raise
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
        if signals.workflow_finished.receivers:
            _finished(workflow)
        return workflow.result
    finally:
        current.reset(running)
        heartbeat.drop(lease)
        _running.pop(workflow.id, None)
        workflow._run = None


def _suspend(run: Run, suspend: Suspend) -> None:
    """Leave the workflow SLEEPING until its wait ends (or it is woken), its lease given up."""
    try:
        suspended = run.store.suspend(
            run.workflow.id,
            run.lease.token,
            suspend.wake,
            event=suspend.event,
            children=suspend.children,
        )
    except StorageError as exc:
        heartbeat.leave(run.lease)
        _name_workflow(exc, run.workflow.id)
        raise
    if not suspended:
        raise run.lost_error()
    run.workflow.status = WorkflowStatus.SLEEPING


def _fail(run: Run, exc: BaseException) -> None:
    """Save the workflow as ERROR with ``exc``, naming (and marking) the step it failed on. A
    workflow past its deadline is over: its unfinished children are cancelled."""
    step = run.failure_step(exc)
    run.workflow.status = WorkflowStatus.ERROR
    run.workflow.error = error_info(exc, step)
    _end(run, WorkflowStatus.ERROR, error=error_text(exc, step), failed_step=step, cause=exc)
    if signals.workflow_finished.receivers:
        _finished(run.workflow, exc)
    if isinstance(exc, WorkflowTimedOut):
        from .operations import cancel_children

        cancel_children(run.workflow.id)


def _finished(workflow: Workflow, exc: BaseException | None = None) -> None:
    signals.send(
        signals.workflow_finished,
        workflow_id=workflow.id,
        name=workflow.name,
        status=workflow.status,
        result=workflow.result if workflow.status == WorkflowStatus.SUCCESS else None,
        error=workflow.error,
        exception=exc,
    )


def _end(
    run: Run,
    status: str,
    result: str | None = None,
    error: str | None = None,
    failed_step: str | None = None,
    cause: BaseException | None = None,
) -> None:
    """Write the run's end; raise ``StorageError`` (lease left for the heartbeat to give back)
    or the fence's error."""
    try:
        ended = run.store.end(
            run.workflow.id, run.lease.token, status, result, error, failed_step, run.parent_id
        )
    except StorageError as exc:
        heartbeat.leave(run.lease)
        _name_workflow(exc, run.workflow.id)
        raise
    if not ended:
        raise run.lost_error() from cause


def _name_workflow(exc: StorageError, workflow_id: int) -> None:
    if exc.workflow_id is None:
        exc.workflow_id = workflow_id
        exc.add_note(
            f"Workflow {workflow_id} keeps its last checkpoint: a worker finishes it once the "
            f"database is back, or `resume({workflow_id})` does."
        )


def _give_back(run: Run) -> None:
    """Give an interrupted run's workflow back at once, or when the database answers."""
    try:
        run.store.release(run.workflow.id, run.lease.token)
    except StorageError:
        heartbeat.leave(run.lease)
    run.workflow.status = WorkflowStatus.PENDING
