"""The workflow the benchmarks run: three small steps, like the guide's data pipeline."""

from __future__ import annotations

import time

from django_pgqrs import Workflow, step, workflow


@step
def fetch(ctx: Workflow, n: int) -> dict[str, object]:
    return {"n": n, "records": [{"id": 1, "name": "Alice"}, {"id": 2, "name": "Bob"}]}


@step
def transform(ctx: Workflow, data: dict[str, object]) -> dict[str, object]:
    return {"count": len(data["records"]), "n": data["n"]}  # type: ignore[arg-type]


@step
def save(ctx: Workflow, results: dict[str, object]) -> str:
    return f"saved {results['count']}"


@workflow(name="bench_three_steps")
def three_steps(ctx: Workflow, n: int) -> str:
    return save(ctx, transform(ctx, fetch(ctx, n)))


@step
def clock(ctx: Workflow) -> float:
    return time.time()


@workflow(name="bench_started_at")
def started_at(ctx: Workflow) -> float:
    """Returns the time its first step started: enqueue-to-start latency."""
    return clock(ctx)


@workflow(name="bench_sleeper")
def sleeper(ctx: Workflow, seconds: float) -> list[float]:
    """Returns when it went to sleep and when it woke: sleep-to-wake latency."""
    before = clock(ctx)
    ctx.sleep(seconds)
    return [before, clock(ctx)]


@workflow(name="bench_waiter")
def waiter(ctx: Workflow) -> float:
    """Returns when it went on after receiving event "go": event-to-wake latency."""
    ctx.wait_for_event("go")
    return clock(ctx)
