"""Running one step call: replay its checkpoint, or run its body and write its checkpoint.

On the happy path a step costs one write (its checkpoint, which also renews the lease) and no
read. Before a body runs, the run checks its lease without a statement: the heartbeat says if it
was lost, and a lease last confirmed more than half a lease ago is confirmed first (one statement,
only when a workflow spent that long between steps), so that no body starts while another process
may own the workflow.

What a body raises decides what is saved:

- an ``Exception``: retried per the step's options, then saved as the step's error;
- a lost database connection of the workflows' database: not the step's failure, an outage. The
  run stops with ``StorageError``, saving nothing, and the workflow runs again from its last
  checkpoint once the database is back;
- ``KeyboardInterrupt`` or ``SystemExit`` in the main thread (where Python delivers Ctrl-C and
  signals): the process is being stopped; nothing is saved, as if it had been killed;
- any other ``BaseException`` (either of those in a worker's thread, where only the code can
  have raised it; ``asyncio.CancelledError``): saved as the step's error, never retried.
"""

from __future__ import annotations

import datetime
import functools
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django.db import InterfaceError, OperationalError, connections, transaction
from django.utils import timezone

from . import clock, codec, failures, signals
from .conf import conf
from .exceptions import (
    LeaseLost,
    NestedAtomicStep,
    NonRetryable,
    PayloadError,
    SimulatedCrash,
    StepOutsideWorkflow,
    StorageError,
    WorkflowCancelled,
)
from .lease import heartbeat
from .models import StepStatus, Workflow
from .primitives import check_deadline, suspend
from .replay import Run

if TYPE_CHECKING:
    from .decorators import StepFunction

# How many failed attempts a step's saved error lists.
_HISTORY = 20
# SQLSTATEs of a server that ended the connection (admin shutdown, crash, starting up), besides
# class 08, connection exceptions.
_SERVER_GONE = frozenset({"57P01", "57P02", "57P03"})


class _NotWritten(Exception):
    """Internal: the checkpoint was not written; roll an atomic step's writes back."""


def call_step(
    definition: StepFunction[..., Any], ctx: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Run one step call: return its saved output, or run its body and checkpoint the result."""
    run = _run_of(definition, ctx)
    if run.suspending is not None:
        raise run.suspending  # called on the way out of a suspension (see primitives.suspend)
    if run.step is not None:
        return _nested(definition, run, ctx, args, kwargs)
    check_lease(run)
    step_id = run.next_step_id(definition.name)
    digest = codec.digest(_arguments(definition, args, kwargs))
    saved = run.saved.get(step_id)
    if saved is None:
        position, shift = run.new_position()
        return _run_body(definition, run, ctx, args, kwargs, step_id, digest, position, shift, 0)
    run.passing(step_id, saved, digest)
    if saved.status == StepStatus.SUCCESS:
        try:
            return codec.loads(saved.output_text)
        except PayloadError as exc:
            raise PayloadError(
                f"The saved result of step {step_id!r} of workflow {run.workflow.id} cannot be "
                f"decoded: {exc}"
            ) from None
    if step_id not in run.rerun:
        error = failures.rebuild(saved.error or {}, step_id)
        run.errors[id(error)] = (error, step_id)
        raise error
    pending = saved.error or {}
    tries, history = 0, None
    if "retry_at" in pending and not pending.get("failed_workflow"):
        # The next attempt of a series of retries that a long wait suspended.
        retry_at = datetime.datetime.fromisoformat(pending["retry_at"])
        if not run.reached(retry_at):
            check_deadline(run, f"step {step_id!r}")
            suspend(run, retry_at, f"step {step_id!r} retries at {retry_at}")
        tries, history = int(pending.get("tries", 0)), pending.get("attempt_errors")
    return _run_body(
        definition,
        run,
        ctx,
        args,
        kwargs,
        step_id,
        digest,
        saved.position,
        False,
        saved.attempts,
        tries,
        history,
    )


def check_lease(run: Run) -> None:
    """Raise if the run's lease is lost; confirm it first if its last confirmation is old."""
    lease = run.lease
    if lease.lost:
        raise run.lost_error()
    if lease.stale(conf.LEASE_SECONDS):
        heartbeat.ensure_alive()
        _touch(run)


def touch(run: Run) -> None:
    """Confirm the run's lease (one statement); raise if it was lost or cancelled."""
    _touch(run)


def _touch(run: Run) -> None:
    sent = time.monotonic()
    if not run.store.touch(run.workflow.id, run.lease.token, conf.LEASE_SECONDS):
        raise run.lost_error()
    run.lease.confirm(sent, conf.LEASE_SECONDS)


def _run_of(definition: StepFunction[..., Any], ctx: Any) -> Run:
    return check_context(ctx, f"Step {definition.name!r}")


def check_context(ctx: Any, what: str) -> Run:
    """The run of the workflow context ``ctx``; raise ``StepOutsideWorkflow`` if ``what`` (a
    step, a primitive) is called outside it: no running workflow, another thread, a fork."""
    run = ctx._run if isinstance(ctx, Workflow) else None
    if run is None:
        raise StepOutsideWorkflow(
            f"{what} was called outside a running workflow. Call it from a @workflow "
            f"function, passing its context (ctx) as the first argument."
        )
    if run.thread != threading.get_ident():
        raise StepOutsideWorkflow(
            f"{what} was called from another thread than the one running workflow "
            f"{run.workflow.id}; a workflow's steps run one at a time in its thread."
        )
    if run.pid != os.getpid():
        raise StepOutsideWorkflow(
            f"{what} was called in a process forked from the one running workflow "
            f"{run.workflow.id}; only that process may run its steps."
        )
    return run


def _nested(definition: StepFunction[..., Any], run: Run, ctx: Any, args: Any, kwargs: Any) -> Any:
    """A step called from inside a step is part of the outer step's body."""
    outer = run.step
    assert outer is not None
    if not definition.atomic:
        return definition.func(ctx, *args, **kwargs)
    if not outer.atomic:
        raise NestedAtomicStep(
            f"Step {definition.name!r} is atomic, but it was called from inside step "
            f"{outer.name!r}, which is not: its writes would be made again whenever "
            f"{outer.name!r} runs again. Call {definition.name!r} from the workflow itself, or "
            f"make {outer.name!r} atomic too (@step(atomic=True))."
        )
    # Inside the outer step's transaction: a savepoint, so a failure rolls back its writes only.
    with transaction.atomic(using=run.store.alias):
        return definition.func(ctx, *args, **kwargs)


def _arguments(definition: StepFunction[..., Any], args: Any, kwargs: Any) -> dict[str, Any]:
    """The call's arguments by parameter name (the context left out), as the digest sees them."""
    bound = definition.signature.bind(None, *args, **kwargs).arguments
    bound.pop(definition.context_name)
    return bound


def _run_body(
    definition: StepFunction[..., Any],
    run: Run,
    ctx: Any,
    args: Any,
    kwargs: Any,
    step_id: str,
    digest: str,
    position: int,
    shift: bool,
    attempts: int,
    tries: int = 0,
    history: list[dict[str, Any]] | None = None,
) -> Any:
    """Run a step's body (with its retries) and save its checkpoint; return its result.

    ``tries`` and ``history``: the tries made so far of a series of retries that a long wait
    suspended, and their errors.
    """
    alias = run.store.alias
    in_transaction = definition.atomic or run.savepoints
    history = list(history or [])
    while True:
        check_deadline(run, f"step {step_id!r}")
        attempts += 1
        tries += 1
        started = timezone.now()
        run.step = definition
        committing = False
        try:
            if in_transaction:
                with transaction.atomic(using=alias):
                    text = _body(definition, ctx, args, kwargs, step_id, alias)
                    if definition.atomic and not write_checkpoint(
                        run, step_id, position, shift, attempts, started, digest, text
                    ):
                        raise _NotWritten
                    committing = True
            else:
                text = _body(definition, ctx, args, kwargs, step_id, alias)
        except _NotWritten:
            return _adopt(run, step_id)
        except (LeaseLost, StorageError):
            raise
        except BaseException as exc:
            run.step = None
            if isinstance(exc, WorkflowCancelled) and exc.workflow_id == run.workflow.id:
                raise
            if interruption(exc):
                raise
            if outage(exc, alias) or (committing and connection_gone(exc)):
                # The commit of the step's transaction may or may not have happened: the next
                # claim reads what was saved.
                raise StorageError(alias, exc) from exc
            history = [*history, _attempt(attempts, exc)][-_HISTORY:]
            if tries <= definition.retries and _retryable(definition, exc):
                delay = definition.delay(tries)
                if delay <= conf.SUSPEND_AFTER_SECONDS:
                    _wait_to_retry(run, delay)
                    continue
                # A long wait: the workflow sleeps until the next attempt, holding no thread.
                retry_at = clock.now() + datetime.timedelta(seconds=delay)
                pending = {
                    "retry_at": retry_at.isoformat(),
                    "tries": tries,
                    "attempt_errors": history,
                }
                if not write_checkpoint(
                    run, step_id, position, shift, attempts, started, digest, exc=exc, extra=pending
                ):
                    raise run.lost_error() from exc
                suspend(run, retry_at, f"step {step_id!r} retries at {retry_at}")
            extra = {"attempt_errors": history}
            if not write_checkpoint(
                run, step_id, position, shift, attempts, started, digest, exc=exc, extra=extra
            ):
                raise run.lost_error() from exc
            run.position = position
            run.errors[id(exc)] = (exc, step_id)
            if signals.step_finished.receivers:
                _finished(run, step_id, attempts, started, failures.error_info(exc, step_id))
            raise
        finally:
            run.step = None
        if not definition.atomic and not write_checkpoint(
            run, step_id, position, shift, attempts, started, digest, text
        ):
            return _adopt(run, step_id)
        run.position = position
        if signals.step_finished.receivers:
            _finished(run, step_id, attempts, started)
        return codec.loads(text)


def _finished(
    run: Run,
    step_id: str,
    attempts: int,
    started: datetime.datetime,
    error: dict[str, Any] | None = None,
) -> None:
    signals.send(
        signals.step_finished,
        workflow=run.workflow,
        step_id=step_id,
        status=StepStatus.SUCCESS if error is None else StepStatus.ERROR,
        attempts=attempts,
        duration=(timezone.now() - started).total_seconds(),
        error=error,
    )


def _attempt(attempt: int, exc: BaseException) -> dict[str, Any]:
    """One failed attempt, for the step's saved error: its number, its error's type and
    message."""
    info = failures.error_info(exc)
    return {"attempt": attempt, "type": info["type"], "message": info["message"][:2000]}


def _body(
    definition: StepFunction[..., Any], ctx: Any, args: Any, kwargs: Any, step_id: str, alias: str
) -> str:
    try:
        if probes:
            _probe(definition.name, after_body=False)
        value = definition.func(ctx, *args, **kwargs)
        if probes:
            _probe(definition.name, after_body=True)
    except (OperationalError, InterfaceError) as exc:
        # Looked at here, before an atomic block's end replaces the broken connection.
        if outage(exc, alias):
            raise StorageError(alias, exc) from exc
        raise
    return codec.dump(value, f"result of step {step_id!r}", conf.MAX_PAYLOAD_BYTES)


# Test hooks (django_pgqrs.testing): called around each step body with the step's name; they may
# raise SimulatedCrash. Empty outside tests, which costs a step one truth test.
probes: list[Callable[[str, bool], None]] = []


def _probe(step: str, after_body: bool) -> None:
    for probe in list(probes):
        probe(step, after_body)


def interruption(exc: BaseException) -> bool:
    """Whether ``exc`` stops this process rather than fails the code: Ctrl-C or ``SystemExit``
    in the main thread (Python delivers signals there only), or a test's simulated crash."""
    if isinstance(exc, SimulatedCrash):
        return True
    # Python delivers Ctrl-C and signals to the main thread only: elsewhere (a worker's runner)
    # a KeyboardInterrupt or SystemExit is what the code raised, its failure.
    main = threading.current_thread() is threading.main_thread()
    return isinstance(exc, KeyboardInterrupt | SystemExit) and main


def outage(exc: BaseException, alias: str) -> bool:
    """Whether a body's database error is the loss of the workflows' database, not a failure:
    the error says the connection is gone, and this thread's connection to that database is."""
    if not connection_gone(exc):
        return False
    raw = connections[alias].connection
    if raw is None:
        return True
    # psycopg 3 says "broken"; psycopg 2 "closed". SQLite has neither, and no connection to lose.
    return bool(getattr(raw, "broken", False) or getattr(raw, "closed", False))


def connection_gone(exc: BaseException) -> bool:
    """Whether a database error says its connection is gone, rather than that the server
    answered (a deadlock, a lock timeout, a cancelled query, a constraint)."""
    if not isinstance(exc, OperationalError | InterfaceError):
        return False
    sqlstate = getattr(exc.__cause__, "sqlstate", None)
    return sqlstate is None or sqlstate.startswith("08") or sqlstate in _SERVER_GONE


def _retryable(definition: StepFunction[..., Any], exc: BaseException) -> bool:
    return (
        isinstance(exc, Exception)
        and isinstance(exc, definition.retry_on)
        and not isinstance(exc, PayloadError | NonRetryable)
    )


def _wait_to_retry(run: Run, seconds: float) -> None:
    """Wait out a retry's backoff; raise if the workflow was cancelled or taken over."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if run.lease.lost:
            raise run.lost_error()
        time.sleep(min(left, 0.5))
    # The heartbeat may not have noticed yet: a cancellation must stop the retries now.
    _touch(run)


def write_checkpoint(
    run: Run,
    step_id: str,
    position: int,
    shift: bool,
    attempts: int,
    started: Any,
    digest: str | None,
    output: str | None = None,
    exc: BaseException | None = None,
    extra: dict[str, Any] | None = None,
) -> bool:
    """Save a step's checkpoint: its output, or its error (with ``extra`` keys); confirm the
    lease it renews. A checkpoint dropped with its connection is written once more."""
    sent = time.monotonic()
    write = functools.partial(
        run.store.checkpoint,
        workflow_id=run.workflow.id,
        token=run.lease.token,
        lease=conf.LEASE_SECONDS,
        step_id=step_id,
        position=position,
        status=StepStatus.SUCCESS if exc is None else StepStatus.ERROR,
        output=output,
        error=None if exc is None else failures.error_text(exc, None, extra),
        attempts=attempts,
        started_at=started,
        completed_at=timezone.now(),
        args_digest=digest,
        shift=shift,
    )
    try:
        written = write()
    except StorageError:
        if connections[run.store.alias].in_atomic_block:
            raise  # the transaction is lost with the connection
        # The connection was dropped (the store closed it): once more, on a new one. If the first
        # attempt did commit, this one writes nothing and the saved output is adopted.
        written = write()
    if written:
        run.lease.confirm(sent, conf.LEASE_SECONDS)
    return written


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
        raise run.lost_error()
    return step.output
