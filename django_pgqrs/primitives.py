"""Durable primitives of a workflow: sleeps, events, child workflows, deadlines.

Each is made of checkpoints, as steps are, so that a replay returns what the first run got: a
sleep saves its wake-up time (a replay never sleeps twice, and after a crash only the time left
is waited); a wait for an event saves its deadline, then the event it received (each event is
received once); starting a child saves the child's id (a replay never starts it twice); waiting
for children saves how they ended.

A wait that is not over suspends the workflow: the run gives its lease up and leaves it
SLEEPING, due when the wait ends (a wake-up time, an event's deadline, the workflow's own
deadline), so that no worker thread is held meanwhile. What it waits for wakes it sooner: an
event sent to it, a child that ends. A worker then takes it, and its replay goes on from the
wait. Short sleeps (up to ``SUSPEND_AFTER_SECONDS``) are waited in the process instead.

Primitives are called from the workflow function itself, not from a step's body: a step may run
again, and what it did is not replayed.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn

from django.db import InterfaceError, OperationalError, transaction
from django.utils import timezone

from . import clock, codec, registry
from .conf import conf
from .exceptions import (
    StorageError,
    WorkflowCancelled,
    WorkflowFailed,
    WorkflowNotFound,
    WorkflowTimedOut,
    WorkflowUsageError,
)
from .models import FINISHED, Workflow, WorkflowStatus
from .replay import Run

if TYPE_CHECKING:
    from .handles import WorkflowHandle

# The wake-up time of a wait with no end: until it is woken.
FOREVER = datetime.datetime(9999, 1, 1, tzinfo=datetime.UTC)
# How often a wait for workflows looks again by itself: for workflows that are not its children
# (whose end wakes nobody), and for its children (in case one is deleted).
RECHECK_OTHERS_SECONDS = 60.0
RECHECK_CHILDREN_SECONDS = 600.0


class Suspend(BaseException):
    """Internal: the run stops, and the workflow sleeps until ``wake`` or until woken.

    A ``BaseException``, so that a workflow's ``except Exception`` does not stop it.
    """

    def __init__(
        self,
        wake: datetime.datetime,
        reason: str,
        event: str | None = None,
        children: list[int] | None = None,
    ) -> None:
        self.wake = wake
        self.reason = reason
        self.event = event
        self.children = children
        super().__init__(reason)


def suspend(
    run: Run,
    wake: datetime.datetime,
    reason: str,
    event: str | None = None,
    children: list[int] | None = None,
) -> NoReturn:
    """Stop the run here: the workflow sleeps until ``wake`` (or until woken), or until its
    deadline if that comes first.

    While the suspension unwinds the workflow function, its ``finally`` blocks and context
    managers run (Python's way); a step or primitive they call does not run then: it raises the
    suspension again, so that nothing is saved out of order.
    """
    if run.deadline is not None:
        wake = min(wake, run.deadline)
    stop = Suspend(wake, reason, event, children)
    run.suspending = stop
    raise stop


def run_of(ctx: Any, what: str) -> Run:
    """The run a primitive is called in; raise ``WorkflowUsageError`` where it cannot be."""
    from .steps import check_context

    run = check_context(ctx, what)
    if run.suspending is not None:
        raise run.suspending
    if run.step is not None:
        raise WorkflowUsageError(
            f"{what} was called inside step {run.step.name!r}. Call it from the workflow "
            f"function itself: a step's body may run again, and what it did is not replayed."
        )
    return run


# --- Sleep --------------------------------------------------------------------------------------


def sleep(ctx: Workflow, seconds: float | datetime.timedelta) -> None:
    """Sleep ``seconds`` durably (see the module's docstring)."""
    if isinstance(seconds, datetime.timedelta):
        seconds = seconds.total_seconds()
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not math.isfinite(seconds)
    ):
        raise WorkflowUsageError(f"ctx.sleep() takes a number of seconds, not {seconds!r}.")
    if seconds < 0:
        raise WorkflowUsageError(f"ctx.sleep() cannot sleep a negative time ({seconds}s).")
    run = run_of(ctx, "ctx.sleep()")
    wake = remember(run, "pgqrs.sleep", lambda: clock.now() + datetime.timedelta(seconds=seconds))
    _wait_until(run, wake)


def sleep_until(ctx: Workflow, when: datetime.datetime) -> None:
    """Sleep until ``when`` (an aware datetime) durably."""
    if not isinstance(when, datetime.datetime) or timezone.is_naive(when):
        raise WorkflowUsageError(
            f"ctx.sleep_until() takes an aware datetime (see django.utils.timezone), not {when!r}."
        )
    run = run_of(ctx, "ctx.sleep_until()")
    _wait_until(run, remember(run, "pgqrs.sleep", lambda: when))


def _wait_until(run: Run, wake: datetime.datetime) -> None:
    deadline = run.deadline
    end = wake if deadline is None else min(wake, deadline)
    if not run.reached(end):
        left = (end - clock.now()).total_seconds()
        if left > conf.SUSPEND_AFTER_SECONDS:
            suspend(run, end, f"sleeping until {wake}")
        _in_process(run, left)
    check_deadline(run, "the end of a sleep")


def _in_process(run: Run, seconds: float) -> None:
    """Wait here, holding the lease (the heartbeat renews it); stop if it is lost. Then make
    sure it still holds (cancelled meanwhile?) before the workflow goes on."""
    from .steps import touch

    finish = time.monotonic() + seconds
    while (left := finish - time.monotonic()) > 0:
        if run.lease.lost:
            raise run.lost_error()
        time.sleep(min(left, 0.5))
    touch(run)


# --- Events -------------------------------------------------------------------------------------


def send_event(workflow_id: int, name: str, payload: Any = None) -> None:
    """Send an event ``name`` with ``payload`` to a workflow; it waits for it with
    ``ctx.wait_for_event(name)``, before or after it was sent.

    Inside ``transaction.atomic()`` the event is delivered only if the transaction commits.
    Raise ``WorkflowNotFound`` or ``WorkflowFinished`` for a workflow that cannot receive it,
    ``PayloadError`` for a payload that cannot be stored.
    """
    from .exceptions import WorkflowFinished, WorkflowNotFound
    from .store import store_for, workflows_alias

    _check_name(name, "send_event()")
    text = codec.dump(payload, f"payload of event {name!r}", conf.MAX_PAYLOAD_BYTES)
    store = store_for(workflows_alias())
    if store.send_event(workflow_id, name, text) is not None:
        return
    status = (
        Workflow.objects.using(store.alias)
        .filter(pk=workflow_id)
        .values_list("status", flat=True)
        .first()
    )
    if status is None:
        raise WorkflowNotFound(workflow_id)
    raise WorkflowFinished(
        f"Workflow {workflow_id} is {status}: it has finished, and will never wait for event "
        f"{name!r}."
    )


def wait_for_event(ctx: Workflow, name: str, timeout: float | None = None) -> Any:
    """Wait durably for event ``name``; return its payload, or None once ``timeout`` seconds
    have passed without it."""
    _check_name(name, "ctx.wait_for_event()")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0
    ):
        raise WorkflowUsageError(
            f"ctx.wait_for_event() takes a timeout of more than 0 seconds, or None; not "
            f"{timeout!r}."
        )
    run = run_of(ctx, "ctx.wait_for_event()")
    until = remember(
        run,
        f"pgqrs.wait:{name}",
        lambda: None if timeout is None else clock.now() + datetime.timedelta(seconds=timeout),
    )
    step_id = run.next_step_id(f"pgqrs.event:{name}")
    saved = run.saved.get(step_id)
    if saved is not None:
        run.passing(step_id, saved, "")
        received = codec.loads(saved.output_text)
        return received[0] if received else None
    check_deadline(run, f"a wait for event {name!r}")
    position, shift = run.new_position()
    with _own_transaction(run):
        found, text = run.store.receive_event(run.workflow.id, name, step_id)
        if found:
            _save(run, step_id, position, shift, f"[{text or 'null'}]")
            return codec.loads(text)
    if until is not None and run.reached(until):
        _save(run, step_id, position, shift, "null")  # timed out
        return None
    suspend(run, until or FOREVER, f"waiting for event {name!r}", event=name)


def _check_name(name: object, what: str) -> None:
    # '#' is kept for the keys of repeated calls (approval, approval#2, ...).
    if not isinstance(name, str) or not name or len(name) > 200 or "#" in name:
        raise WorkflowUsageError(
            f"{what} takes an event name of 1 to 200 characters without '#', not {name!r}."
        )


@contextlib.contextmanager
def _own_transaction(run: Run) -> Iterator[None]:
    """A transaction of the engine's own on the workflows' database (a child's start with its
    checkpoint, an event's receipt with its checkpoint). A commit that loses its connection is
    an outage, ``StorageError``, not the workflow's failure: whether it committed, the next run
    reads (as for an atomic step's commit)."""
    from .steps import connection_gone  # steps imports this module

    alias = run.store.alias
    try:
        with transaction.atomic(using=alias):
            yield
    except (OperationalError, InterfaceError) as exc:
        if connection_gone(exc):
            raise StorageError(alias, exc) from exc
        raise


# --- Children -----------------------------------------------------------------------------------


def start_child(
    ctx: Workflow,
    workflow: str | Any,
    *args: Any,
    idempotency_key: str | None = None,
    queue: str | None = None,
    priority: int = 0,
    timeout: float | datetime.timedelta | None = None,
    **kwargs: Any,
) -> WorkflowHandle:
    """Start a child workflow of ``ctx`` (a workflow function or its name), once: a replay
    returns the handle of the child started the first time."""
    run = run_of(ctx, "ctx.start_child()")
    name = workflow if isinstance(workflow, str) else workflow.name
    return start_in(run, name, args, kwargs, idempotency_key, queue, priority, timeout)


def start_in(
    run: Run,
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    idempotency_key: str | None,
    queue: str | None,
    priority: int,
    timeout: float | datetime.timedelta | None,
) -> WorkflowHandle:
    """Start child ``name`` in ``run`` (``fn.start()`` in a workflow comes here)."""
    from .enqueue import deadline_for, insert_or_find
    from .handles import WorkflowHandle
    from .inputs import arguments

    if run.suspending is not None:
        raise run.suspending

    definition = registry.get_workflow(name)
    arguments(definition, args, kwargs)
    step_id = run.next_step_id(f"pgqrs.start:{name}")
    digest = codec.digest({"args": args, "kwargs": kwargs})
    saved = run.saved.get(step_id)
    if saved is not None:
        run.passing(step_id, saved, digest)
        return WorkflowHandle(codec.loads(saved.output_text), run.store.alias)
    check_deadline(run, f"the start of child workflow {name!r}")
    position, shift = run.new_position()
    with _own_transaction(run):
        child, _ = insert_or_find(
            run.store,
            definition,
            args,
            kwargs,
            idempotency_key=idempotency_key,
            queue=queue or run.workflow.queue or "default",
            priority=priority,
            run_at=None,
            deadline_at=deadline_for(definition, timeout),
            parent_id=run.workflow.id,
        )
        _save(run, step_id, position, shift, json.dumps(child), digest)
    return WorkflowHandle(child, run.store.alias)


def wait_all(
    ctx: Workflow | Run, handles: Iterable[WorkflowHandle], return_exceptions: bool = False
) -> list[Any]:
    """Wait durably until every workflow of ``handles`` has ended; return their results, in
    order. A failed or cancelled one raises its error (``WorkflowFailed``,
    ``WorkflowCancelled``) once all have ended; with ``return_exceptions``, it is in the list
    instead."""
    run = ctx if isinstance(ctx, Run) else run_of(ctx, "ctx.wait_all()")
    if run.suspending is not None:
        raise run.suspending
    ids = [handle.id for handle in handles]
    step_id = run.next_step_id("pgqrs.wait")
    digest = codec.digest(ids)
    saved = run.saved.get(step_id)
    if saved is not None:
        run.passing(step_id, saved, digest)
        return _results(ids, codec.loads(saved.output_text), return_exceptions)
    outcomes = run.store.outcomes(ids)
    missing = [i for i in ids if i not in outcomes]
    if missing:
        raise WorkflowNotFound(missing[0])  # deleted while it was waited for
    if all(outcomes[i][0] in FINISHED for i in ids):
        text = "[" + ",".join(_outcome_text(outcomes[i]) for i in ids) + "]"
        position, shift = run.new_position()
        _save(run, step_id, position, shift, text, digest)
        return _results(ids, codec.loads(text), return_exceptions)
    check_deadline(run, "a wait for child workflows")
    # A child's end wakes its parent; another workflow's end wakes nobody, so a wait for one
    # looks again now and then (and a wait for children, rarely, in case one is deleted).
    others = any(outcomes[i][3] != run.workflow.id for i in ids)
    look = RECHECK_OTHERS_SECONDS if others else RECHECK_CHILDREN_SECONDS
    end = clock.now() + datetime.timedelta(seconds=look)
    suspend(run, end, f"waiting for workflows {ids}", children=ids)


def _outcome_text(outcome: tuple[str, str | None, str | None, int | None]) -> str:
    status, result, error, _ = outcome
    return f'{{"status":"{status}","result":{result or "null"},"error":{error or "null"}}}'


def _results(ids: list[int], outcomes: list[dict[str, Any]], return_exceptions: bool) -> list[Any]:
    results: list[Any] = []
    for workflow_id, outcome in zip(ids, outcomes, strict=True):
        if outcome["status"] == WorkflowStatus.SUCCESS:
            results.append(outcome["result"])
            continue
        if outcome["status"] == WorkflowStatus.CANCELLED:
            error: Exception = WorkflowCancelled(workflow_id)
        else:
            error = WorkflowFailed(workflow_id, outcome["error"])
        if not return_exceptions:
            raise error
        results.append(error)
    return results


# --- Deadlines, and the checkpoints of primitives -----------------------------------------------


def check_deadline(run: Run, where: str) -> None:
    """Raise ``WorkflowTimedOut`` if the run's workflow is past its deadline."""
    if run.deadline is not None and run.reached(run.deadline):
        raise WorkflowTimedOut(run.workflow.id, run.deadline, where)


def remember(run: Run, name: str, compute: Callable[[], Any]) -> Any:
    """Return a value computed once for this workflow: on the first run, computed and saved; on
    a replay, the saved one."""
    step_id = run.next_step_id(name)
    saved = run.saved.get(step_id)
    if saved is not None:
        run.passing(step_id, saved, "")
        return codec.loads(saved.output_text)
    value = compute()
    position, shift = run.new_position()
    _save(run, step_id, position, shift, codec.dump(value, name))
    return value


def _save(
    run: Run, step_id: str, position: int, shift: bool, output: str, digest: str = ""
) -> None:
    """Checkpoint a primitive's value (a SUCCESS step without a body); raise if the lease is
    lost."""
    from .steps import write_checkpoint

    now = timezone.now()
    if not write_checkpoint(run, step_id, position, shift, 1, now, digest or None, output):
        raise run.lost_error()
    run.position = position
