"""Saving workflows: to run here (``create_workflow``) or by a worker (``start_workflow``)."""

from __future__ import annotations

import datetime
import functools
import logging
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from django.utils import timezone

from . import clock, codec, registry
from .async_support import refuse_in_event_loop
from .conf import conf
from .exceptions import StorageError, WorkflowMismatch
from .handles import WorkflowHandle
from .inputs import arguments, encode_input
from .models import Workflow, WorkflowStatus
from .store import Store, store_for, workflows_alias

if TYPE_CHECKING:
    from .decorators import WorkflowFunction

logger = logging.getLogger("django_pgqrs.enqueue")
# Workflow names already warned about (see start_workflow).
_warned: set[str] = set()


def create_workflow(name: str, *args: Any, **kwargs: Any) -> Workflow:
    """Save a new PENDING workflow of the registered workflow ``name`` and return its context.

    Call the workflow function with the returned context to run it. Until then, for one lease
    length, workers leave it alone. Raise ``UnknownWorkflow`` for an unregistered name and
    ``TypeError`` if the arguments do not fit the function's signature.
    """
    refuse_in_event_loop("create_workflow()", "acreate_workflow()")
    definition = registry.get_workflow(name)
    arguments(definition, args, kwargs)
    text = encode_input(name, args, kwargs)
    store = store_for(workflows_alias())
    lease = conf.LEASE_SECONDS
    deadline = deadline_for(definition, None)
    inserted = store.insert(
        name=name, input_text=text, lease=lease, delay=lease, deadline_at=deadline
    )
    assert inserted is not None  # no idempotency key, no conflict
    workflow_id, created_at, run_at = inserted
    return Workflow.saved(
        store.alias,
        id=workflow_id,
        name=name,
        status=WorkflowStatus.PENDING,
        input=codec.loads(text),
        created_at=created_at,
        updated_at=created_at,
        run_at=run_at,
        deadline_at=deadline,
    )


def start_workflow(
    name: str,
    *args: Any,
    idempotency_key: str | None = None,
    queue: str = "default",
    priority: int = 0,
    run_at: datetime.datetime | datetime.timedelta | None = None,
    timeout: float | datetime.timedelta | None = None,
    **kwargs: Any,
) -> WorkflowHandle[Any]:
    """Save a PENDING workflow for a worker to run, and return a handle on it.

    Inside ``transaction.atomic()`` the workflow is saved (and workers hear of it) only if the
    transaction commits. A repeated ``idempotency_key`` returns the handle of the workflow saved
    with it, saving nothing. Higher ``priority`` runs first; ``run_at`` (a datetime, or a delay
    as a timedelta) defers the start; ``timeout`` (seconds, or a timedelta, from now) overrides
    the workflow's own. Called in a workflow's function, it starts a child workflow of it (see
    ``ctx.start_child``). Raise ``UnknownWorkflow``, ``TypeError`` for arguments that do not
    fit, ``WorkflowMismatch`` if the key belongs to a workflow of another name.
    """
    return start(
        name,
        args,
        kwargs,
        idempotency_key=idempotency_key,
        queue=queue,
        priority=priority,
        run_at=run_at,
        timeout=timeout,
    )


def start(
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    idempotency_key: str | None = None,
    queue: str = "default",
    priority: int = 0,
    run_at: datetime.datetime | datetime.timedelta | None = None,
    timeout: float | datetime.timedelta | None = None,
) -> WorkflowHandle[Any]:
    """``start_workflow`` with the workflow's arguments apart from the options, so that a
    workflow may take arguments named like them."""
    refuse_in_event_loop("start_workflow() (or fn.start())", "astart_workflow() (or fn.astart())")
    from . import primitives
    from .replay import running_here

    parent = running_here()
    if parent is not None:
        if run_at is not None:
            raise ValueError("A child workflow starts at once: run_at is for top-level starts.")
        return primitives.start_in(
            parent, name, args, kwargs, idempotency_key, queue, priority, timeout
        )
    definition = registry.get_workflow(name)
    if registry.unknown_elsewhere(name) and name not in _warned:
        _warned.add(name)
        logger.warning(
            "Workflow %r (%s) was defined after Django started: %s is not the workflows module "
            "of an installed app, nor imported by one, so worker processes do not know it and "
            "will not run it. Define it in <app>/workflows.py of an app in INSTALLED_APPS.",
            name,
            f"{definition.func.__module__}.{definition.func.__qualname__}",
            definition.func.__module__,
        )
    store = store_for(workflows_alias())
    workflow_id, _ = insert_or_find(
        store,
        definition,
        args,
        kwargs,
        idempotency_key=idempotency_key,
        queue=queue,
        priority=priority,
        run_at=run_at,
        deadline_at=deadline_for(definition, timeout),
    )
    return WorkflowHandle(workflow_id, store.alias)


def insert_or_find(
    store: Store,
    definition: WorkflowFunction[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    idempotency_key: str | None,
    queue: str,
    priority: int,
    run_at: datetime.datetime | datetime.timedelta | None,
    deadline_at: datetime.datetime | None,
    parent_id: int | None = None,
) -> tuple[int, bool]:
    """Save a PENDING workflow for workers (they hear of it when the transaction commits);
    return its id, and whether it saved a new one (True) or found the one saved with
    ``idempotency_key`` (False)."""
    name = definition.name
    arguments(definition, args, kwargs)
    if not isinstance(queue, str) or not 0 < len(queue) <= 64:
        raise ValueError(f"queue must be a name of 1 to 64 characters, not {queue!r}.")
    _check_text("queue", queue)
    if idempotency_key is not None:
        _check_text("idempotency_key", idempotency_key)
    # A delay counts from when the database saves the row, by its clock; a datetime is kept.
    delay, due = 0.0, None
    if isinstance(run_at, datetime.timedelta):
        delay = run_at.total_seconds()
    elif isinstance(run_at, datetime.datetime):
        if timezone.is_naive(run_at):
            raise ValueError("run_at must be an aware datetime (see django.utils.timezone).")
        due = run_at
    elif run_at is not None:
        raise TypeError(f"run_at must be a datetime or a timedelta, not {type(run_at).__name__}.")
    text = encode_input(name, args, kwargs)
    # The key's holder may be deleted (pruned) between the insert that found it and the
    # look-up: then the key is free, and the insert is tried again.
    for _ in range(3):
        inserted = store.insert(
            name=name,
            input_text=text,
            lease=conf.LEASE_SECONDS,
            delay=delay,
            run_at=due,
            queue=queue,
            priority=priority,
            idempotency_key=idempotency_key,
            parent_id=parent_id,
            deadline_at=deadline_at,
            # Workers hear of a workflow due now; one due later is found by their poll.
            notify=delay <= 0 and (due is None or due <= timezone.now()),
        )
        if inserted is not None:
            return inserted[0], True
        existing = (
            Workflow.objects.using(store.alias)
            .filter(idempotency_key=idempotency_key)
            .values_list("pk", "name")
            .first()
        )
        if existing is None:
            continue
        if existing[1] != name:
            raise WorkflowMismatch(
                f"The idempotency key {idempotency_key!r} belongs to workflow {existing[0]}, a "
                f"{existing[1]!r} workflow, not {name!r}."
            )
        return existing[0], False
    raise StorageError(
        store.alias,
        RuntimeError(f"the holder of idempotency key {idempotency_key!r} kept changing"),
    )


def deadline_for(
    definition: WorkflowFunction[..., Any], timeout: float | datetime.timedelta | None
) -> datetime.datetime | None:
    """The deadline of a workflow started now: ``timeout``, or the workflow's own, from now."""
    chosen = definition.timeout if timeout is None else timeout
    if chosen is None:
        return None
    return clock.now() + datetime.timedelta(seconds=timeout_seconds(chosen, "timeout"))


def timeout_seconds(timeout: float | datetime.timedelta, what: str) -> float:
    """``timeout`` in seconds; raise ``ValueError`` unless it is a positive number of them."""
    seconds = timeout.total_seconds() if isinstance(timeout, datetime.timedelta) else timeout
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0:
        raise ValueError(f"{what} must be a positive number of seconds, not {timeout!r}.")
    return float(seconds)


async def acreate_workflow(name: str, *args: Any, **kwargs: Any) -> Workflow:
    """``create_workflow`` for async code."""
    return await sync_to_async(create_workflow)(name, *args, **kwargs)


async def astart_workflow(
    name: str,
    *args: Any,
    idempotency_key: str | None = None,
    queue: str = "default",
    priority: int = 0,
    run_at: datetime.datetime | datetime.timedelta | None = None,
    timeout: float | datetime.timedelta | None = None,
    **kwargs: Any,
) -> WorkflowHandle[Any]:
    """``start_workflow`` for async code."""
    start = functools.partial(
        start_workflow,
        name,
        *args,
        idempotency_key=idempotency_key,
        queue=queue,
        priority=priority,
        run_at=run_at,
        timeout=timeout,
        **kwargs,
    )
    return await sync_to_async(start)()


def _check_text(what: str, value: object) -> None:
    """Refuse a name that the database cannot store: not text, or not encodable as UTF-8."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, not {type(value).__name__}.")
    if "\x00" in value or (not value.isascii() and not _encodable(value)):
        raise ValueError(f"{what} {value!r} holds characters the database cannot store.")


def _encodable(value: str) -> bool:
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True
