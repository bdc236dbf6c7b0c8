"""Workflows for the tests of durable primitives (imported by tests.workflows, so registered)."""

from __future__ import annotations

import datetime
import os
import time
from typing import Any

from django_pgqrs import NonRetryable, Workflow, step, workflow
from tests.workflows import failures, trace


@step
def note(ctx: Workflow, what: str) -> str:
    trace(what)
    return what


@step
def stamp(ctx: Workflow, what: str) -> float:
    """The time (time.time()) at which it ran, so that a test can see when the workflow woke."""
    trace(what)
    return time.time()


@workflow
def napper(ctx: Workflow, seconds: float) -> list[Any]:
    before = note(ctx, "before")
    ctx.sleep(seconds)
    return [before, stamp(ctx, "after")]


@workflow
def wakes_at(ctx: Workflow, when: datetime.datetime) -> str:
    ctx.sleep_until(when)
    return note(ctx, "woke")


@workflow
def waiter(ctx: Workflow, name: str, timeout: float | None) -> list[Any]:
    note(ctx, "waiting")
    payload = ctx.wait_for_event(name, timeout=timeout)
    return [payload, stamp(ctx, "received")]


@workflow
def two_events(ctx: Workflow) -> list[Any]:
    return [ctx.wait_for_event("item"), ctx.wait_for_event("item")]


@workflow
def add_two(ctx: Workflow, n: int) -> int:
    note(ctx, f"child:{n}")
    return n + 2


@workflow
def failing_child(ctx: Workflow, message: str) -> None:
    note(ctx, "failing_child")
    raise ValueError(message)


@workflow
def fan_out(ctx: Workflow, numbers: list[int]) -> list[int]:
    handles = [add_two.start(n) for n in numbers]
    results: list[int] = ctx.wait_all(handles)
    note(ctx, "joined")
    return results


@workflow
def one_child(ctx: Workflow, n: int) -> Any:
    handle = ctx.start_child("add_two", n)
    return handle.result()


@workflow
def child_that_fails(ctx: Workflow) -> str:
    handle = failing_child.start("no stock")
    try:
        handle.result()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "no error"


@workflow
def parent_of_a_sleeper(ctx: Workflow) -> Any:
    return napper.start(3600).result()


@workflow(timeout=60)
def slow_steps(ctx: Workflow, count: int) -> int:
    for n in range(count):
        note(ctx, f"slow:{n}")
        ctx.sleep(600)
    return count


@step(retries=3, backoff=0.01)
def refuses(ctx: Workflow) -> str:
    trace("refuses")
    raise OrderGone("order 7 does not exist")


class OrderGone(NonRetryable):
    """A failure no retry can mend."""


@workflow
def non_retryable(ctx: Workflow) -> str:
    return refuses(ctx)


@step(retries=3, backoff=60, max_delay=120)
def flaky_service(ctx: Workflow) -> str:
    trace("flaky_service")
    if failures:
        raise failures.pop(0)
    return "served"


@workflow
def long_retries(ctx: Workflow) -> str:
    return flaky_service(ctx)


@workflow
def sleeps_in_a_step(ctx: Workflow) -> None:
    bad_step(ctx)


@step
def bad_step(ctx: Workflow) -> None:
    ctx.sleep(1)


@step
def held(ctx: Workflow, label: str) -> str:
    """Waits while the file named by PGQRS_TEST_HOLD exists (for crash tests)."""
    trace(label)
    hold = os.environ.get("PGQRS_TEST_HOLD")
    if hold and os.path.exists(hold):
        print(f"holding {label} of workflow {ctx.id}", flush=True)
        while os.path.exists(hold):
            time.sleep(0.02)
    return label


@workflow
def sleep_then_hold(ctx: Workflow, seconds: float) -> list[str]:
    first = held(ctx, "first")
    ctx.sleep(seconds)
    return [first, held(ctx, "second")]


@workflow
def wait_then_hold(ctx: Workflow) -> list[Any]:
    payload = ctx.wait_for_event("go")
    return [payload, held(ctx, "after-event")]


@workflow
def parent_holding(ctx: Workflow) -> list[Any]:
    handle = add_two.start(40)
    held(ctx, "parent")
    return [handle.id, handle.result()]


@workflow
def shares_a_child(ctx: Workflow, key: str) -> Any:
    """Starts a child with an idempotency key: a second parent gets the first one's child."""
    return add_two.using(idempotency_key=key).start(1).result()


@workflow
def waits_for_other(ctx: Workflow, other: int) -> Any:
    from django_pgqrs import WorkflowHandle

    return WorkflowHandle(other).result()


@workflow
def cleans_up_after_waiting(ctx: Workflow) -> list[Any]:
    try:
        payload = ctx.wait_for_event("done")
    finally:
        note(ctx, "cleanup")
    return [payload]


@workflow
def short_nap_then_step(ctx: Workflow) -> list[Any]:
    note(ctx, "before-nap")
    ctx.sleep(1.0)  # waited in the process (below SUSPEND_AFTER_SECONDS)
    return [note(ctx, "after-nap")]


@workflow(timeout=60)
def parent_that_times_out(ctx: Workflow) -> Any:
    handle = napper.start(3600)
    ctx.sleep(3600)
    return handle.id


@workflow
def runs_inline_inside(ctx: Workflow) -> Any:
    return add_two.run(1)
