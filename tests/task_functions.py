"""Tasks (django.tasks, Django 6.0+) run by django_pgqrs.tasks.PgqrsBackend in the tests."""

from __future__ import annotations

import os
import time
from typing import Any

from django.tasks import TaskContext, task

from django_pgqrs import Workflow, current_workflow, step
from tests.workflows import trace


@task
def add(a: int, b: int) -> int:
    return a + b


@task()
async def add_async(a: int, b: int) -> int:
    return a + b


@task
def echo(*args: Any, **kwargs: Any) -> list[Any]:
    return [list(args), kwargs]


@task
def fail(message: str) -> None:
    raise ValueError(message)


@task
def exit_task() -> None:
    raise SystemExit("This task failed due to SystemExit")


@task
def unstorable_result() -> object:
    return object()


@task(takes_context=True)
def my_id(context: TaskContext, expected_attempt: int) -> str:
    assert isinstance(context, TaskContext)
    assert context.attempt == expected_attempt, context.attempt
    return context.task_result.id


@task(priority=10, queue_name="emails")
def send_email(to: str) -> str:
    return f"sent to {to}"


@step
def reserve(ctx: Workflow, order: str) -> str:
    trace("reserve")
    return f"reserved {order}"


@step
def charge(ctx: Workflow, order: str) -> str:
    trace("charge")
    hold = os.environ.get("PGQRS_TEST_HOLD")
    if hold:
        print(f"waiting in charge of workflow {ctx.id}", flush=True)
        while os.path.exists(hold):
            time.sleep(0.02)
    return f"charged {order}"


@task
def checkout(order: str) -> list[str]:
    """A task with durable steps: reached through current_workflow()."""
    ctx = current_workflow()
    assert ctx is not None
    return [reserve(ctx, order), charge(ctx, order)]


@task
def follow_up(n: int) -> int:
    return n


@task
def schedule_then_nap(n: int) -> int:
    """Enqueues a deferred task, then waits durably: the replay after the wait must not
    enqueue it again."""
    import datetime

    from django.utils import timezone

    later = timezone.now() + datetime.timedelta(days=1)
    result = follow_up.using(run_after=later).enqueue(n)
    ctx = current_workflow()
    assert ctx is not None
    ctx.sleep(3600)
    return int(result.id)


@task(takes_context=True)
def nap_then_count(context: TaskContext) -> int:
    ctx = current_workflow()
    assert ctx is not None
    ctx.sleep(3600)
    return context.attempt


@task
def takes_ctx(ctx: str) -> str:
    return ctx
