"""Workflows for the worker tests (imported by tests.workflows, so autodiscovered)."""

from __future__ import annotations

import os
import signal
import time

from django_pgqrs import Workflow, step, workflow
from tests.workflows import trace


@step
def first(ctx: Workflow, n: int) -> int:
    trace(f"first:{n}")
    return n


@step
def second(ctx: Workflow, n: int) -> int:
    trace(f"second:{n}")
    hold = os.environ.get("PGQRS_TEST_HOLD")
    if hold and os.path.exists(hold):
        print(f"holding workflow {ctx.id}", flush=True)
        while os.path.exists(hold):
            time.sleep(0.02)
    return n * 2


@step
def third(ctx: Workflow, n: int) -> int:
    trace(f"third:{n}")
    return n + 1


@workflow
def worker_three(ctx: Workflow, n: int) -> int:
    """Three steps; the second waits while the file named by PGQRS_TEST_HOLD exists."""
    return third(ctx, second(ctx, first(ctx, n)))


@step
def die(ctx: Workflow) -> None:
    trace("die")
    os.kill(os.getpid(), signal.SIGKILL)


@workflow
def worker_poison(ctx: Workflow) -> None:
    """Kills the process that runs it, every time."""
    die(ctx)


@step
def fail(ctx: Workflow, message: str) -> None:
    raise ValueError(message)


@workflow
def worker_failing(ctx: Workflow, message: str) -> None:
    fail(ctx, message)
