"""Workflows the tests run, registered like any app's: autodiscovered from this module.

``runs`` counts how often each step body ran in this process. Processes started by tests
append to the file named by PGQRS_TEST_TRACE instead, and wait in ``blocking_step`` while the
file named by PGQRS_TEST_HOLD exists.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

from django.contrib.auth.models import Group

from django_pgqrs import Workflow, step, workflow

runs: Counter[str] = Counter()
# Exceptions the next calls of `flaky` raise, first first.
failures: list[BaseException] = []


def trace(label: str) -> None:
    runs[label] += 1
    path = os.environ.get("PGQRS_TEST_TRACE")
    if path:
        with open(path, "a") as file:
            file.write(f"{label}\n")


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: decimal.Decimal


@step
def add_one(ctx: Workflow, n: int) -> int:
    trace("add_one")
    return n + 1


@step
def flaky(ctx: Workflow, value: Any) -> Any:
    trace("flaky")
    if failures:
        raise failures.pop(0)
    return value


@step
def echo(ctx: Workflow, value: Any) -> Any:
    trace("echo")
    return value


@workflow
def add_three(ctx: Workflow, n: int) -> int:
    return add_one(ctx, add_one(ctx, add_one(ctx, n)))


@workflow
def one_flaky(ctx: Workflow, n: int) -> list[Any]:
    first = add_one(ctx, n)
    second = flaky(ctx, first)
    return [first, second, add_one(ctx, second)]


@workflow
def loop(ctx: Workflow, count: int) -> list[int]:
    return [add_one(ctx, i) for i in range(count)]


@workflow
def echo_value(ctx: Workflow, value: Any) -> Any:
    return echo(ctx, value)


@workflow
def kinds(
    ctx: Workflow, when: datetime.datetime, point: Point, pair: tuple[int, int]
) -> dict[str, Any]:
    """Returns what it received, with the types it received them as."""
    assert isinstance(pair, tuple) and isinstance(point, Point), (pair, point)
    stamp = echo(ctx, when)
    assert isinstance(stamp, datetime.datetime)
    return {"when": stamp, "point": echo(ctx, point), "pair": pair, "id": uuid.UUID(int=7)}


@step(retries=2, backoff=0.01)
def retried(ctx: Workflow) -> str:
    trace("retried")
    if failures:
        raise failures.pop(0)
    return "ok"


@workflow
def with_retries(ctx: Workflow) -> str:
    return retried(ctx)


@step(atomic=True)
def create_group(ctx: Workflow, name: str) -> int:
    trace("create_group")
    group = Group.objects.create(name=name)
    if failures:
        raise failures.pop(0)
    return group.pk


@workflow
def atomic_effects(ctx: Workflow, name: str) -> int:
    return create_group(ctx, name)


@step
def outer(ctx: Workflow, n: int) -> int:
    trace("outer")
    return add_one(ctx, n) * 10


@workflow
def nested(ctx: Workflow, n: int) -> int:
    return outer(ctx, n)


@step(name="renamed")
def named_step(ctx: Workflow) -> str:
    trace("renamed")
    return "named"


@workflow(name="custom-name")
def custom(ctx: Workflow) -> str:
    return named_step(ctx)


# --- For processes started by tests ------------------------------------------------------------


@step
def step_one(ctx: Workflow, data: str) -> str:
    trace("step_one")
    return f"one:{data}"


@step
def blocking_step(ctx: Workflow, data: str) -> str:
    trace("step_two")
    hold = os.environ.get("PGQRS_TEST_HOLD")
    if hold:
        print(f"waiting in step two of workflow {ctx.id}", flush=True)
        while os.path.exists(hold):
            time.sleep(0.02)
    return f"two:{data}"


@workflow
def two_steps(ctx: Workflow, data: str) -> str:
    first = step_one(ctx, data)
    print(f"after step_one: {first}", flush=True)
    second = blocking_step(ctx, first)
    print(f"after step_two: {second}", flush=True)
    sys.stdout.flush()
    return second


# --- Values, statements, hooks -----------------------------------------------------------------

# What `remember` received as its input, one entry per run.
received: list[Any] = []
# What the next calls of `produce` return (exceptions are raised), first first.
produced: list[Any] = []
# Functions called with the context from inside the body of `during_step` and
# `atomic_during_step`, one per call, first first.
hooks: list[Callable[[Workflow], None]] = []


def unstorable(kind: str) -> Any:
    """A value no payload may hold: an arbitrary object, or a string holding NUL."""
    return object() if kind == "object" else "a\x00b"


@workflow
def remember(ctx: Workflow, value: Any) -> Any:
    received.append(value)
    return flaky(ctx, value)


@step
def produce(ctx: Workflow) -> Any:
    trace("produce")
    value = produced.pop(0) if produced else "produced"
    if isinstance(value, BaseException):
        raise value
    return value


@workflow
def then_produce(ctx: Workflow, n: int) -> list[Any]:
    first = add_one(ctx, n)
    return [first, add_one(ctx, first), produce(ctx)]


@workflow
def unstorable_result(ctx: Workflow, kind: str) -> Any:
    add_one(ctx, 1)
    return unstorable(kind)


@workflow
def many_then_flaky(ctx: Workflow, count: int) -> Any:
    for i in range(count):
        add_one(ctx, i)
    return flaky(ctx, count)


@step
def fails(ctx: Workflow, message: str) -> str:
    trace("fails")
    raise RuntimeError(message)


@workflow
def failing(ctx: Workflow, message: str) -> str:
    return fails(ctx, message)


@step
def during_step(ctx: Workflow) -> str:
    trace("during_step")
    if hooks:
        hooks.pop(0)(ctx)
    return "done"


@workflow
def with_hook(ctx: Workflow, n: int) -> list[Any]:
    first = add_one(ctx, n)
    return [first, during_step(ctx)]


@workflow
def with_two_hooks(ctx: Workflow) -> list[str]:
    return [during_step(ctx), during_step(ctx)]


@step(atomic=True)
def atomic_during_step(ctx: Workflow, name: str) -> int:
    trace("atomic_during_step")
    group = Group.objects.create(name=name)
    if hooks:
        hooks.pop(0)(ctx)
    return group.pk


@workflow
def atomic_with_hook(ctx: Workflow, name: str) -> int:
    return atomic_during_step(ctx, name)


from tests import worker_workflows  # noqa: E402, F401 - registers the worker tests' workflows


@workflow
def remember_output(ctx: Workflow, value: Any) -> Any:
    output = echo(ctx, value)
    received.append(output)
    return flaky(ctx, output)


@workflow
def per_key(ctx: Workflow, numbers: dict[str, int]) -> dict[str, int]:
    added = {key: add_one(ctx, n) for key, n in numbers.items()}
    flaky(ctx, None)
    return added


from tests import (  # noqa: E402 - registers the workflows of the other tests' modules
    chaos_workflows,  # noqa: F401
    fault_workflows,  # noqa: F401
    primitive_workflows,  # noqa: F401
)


@workflow
def prioritised(ctx: Workflow, priority: int, queue: str = "none") -> list[Any]:
    """Takes arguments named like options of a start."""
    return [priority, queue]
