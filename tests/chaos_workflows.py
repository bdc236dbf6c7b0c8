"""Workflows of the chaos harness (tests/chaos.py); imported by tests.workflows, so registered.

Each result is a pure function of the input (``tests.chaos.expected`` computes it without
running anything). Every step body appends a ``start`` line to the file named by
PGQRS_CHAOS_TRACE when it begins and an ``end`` line when it returns or raises, and takes a
few random milliseconds (PGQRS_CHAOS_STEP_MS, "low,high"), so that kills land inside bodies.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator

from django.conf import settings

from django_pgqrs import Workflow, step, workflow
from tests.chaos import SLOW_LEASES, STEP_MS_ENV, TRACE_ENV, failures_of, loop_length, step_key
from tests.models import ChaosEffect

_lock = threading.Lock()
_trace_fd: tuple[int, int] | None = None  # (pid, fd): reopened in a forked child
# Attempts of each (workflow, step key) in this process: retried steps fail their first ones.
_attempts: Counter[tuple[int, str]] = Counter()


class ChaosFailure(Exception):
    """The deliberate failure of a retried step's first attempt(s)."""


def _trace(event: str, workflow_id: int, key: str, outcome: str) -> None:
    global _trace_fd
    path = os.environ.get(TRACE_ENV)
    if not path:
        return
    pid = os.getpid()
    with _lock:
        if _trace_fd is None or _trace_fd[0] != pid:
            _trace_fd = (pid, os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
        fd = _trace_fd[1]
    line = f"{event} {workflow_id} {key} {pid} {threading.get_native_id()} {time.time():.6f}"
    # One write on an O_APPEND descriptor: lines of concurrent writers never interleave.
    os.write(fd, f"{line} {outcome}\n".encode())


def _pause() -> None:
    """Half a body's time: bodies pause before and after their work."""
    low, high = (float(ms) for ms in os.environ.get(STEP_MS_ENV, "2,15").split(","))
    time.sleep(random.uniform(low, high) / 2000)


@contextlib.contextmanager
def body(ctx: Workflow, key: str) -> Iterator[None]:
    """Trace a step body, and make it last: a cut during the first pause leaves the body's own
    writes a dead connection; a kill during the second lands between an atomic step's writes
    and their commit."""
    _trace("start", ctx.id, key, "-")
    outcome = "ok"
    try:
        _pause()
        yield
        _pause()
    except BaseException as exc:
        outcome = type(exc).__name__
        raise
    finally:
        _trace("end", ctx.id, key, outcome)


def _attempt(ctx: Workflow, key: str) -> int:
    with _lock:
        _attempts[ctx.id, key] += 1
        return _attempts[ctx.id, key]


@step
def scale(ctx: Workflow, n: int, factor: int) -> int:
    with body(ctx, "scale"):
        return n * factor


@step
def offset(ctx: Workflow, value: int, delta: int) -> int:
    with body(ctx, "offset"):
        return value + delta


@step(atomic=True)
def record(ctx: Workflow, value: int, call: int) -> int:
    """Writes a row; ``call`` is this step's call number in the workflow (1, 2, ...)."""
    key = step_key("record", call)
    with body(ctx, key):
        ChaosEffect.objects.create(workflow_id=ctx.id, step_key=key, pid=os.getpid())
        return value + call


@step(retries=3, backoff=0.005)
def flaky(ctx: Workflow, value: int, failures: int) -> int:
    """Fails its first ``failures`` attempts in each process that runs it."""
    with body(ctx, "flaky"):
        if _attempt(ctx, "flaky") <= failures:
            raise ChaosFailure(f"attempt of flaky in workflow {ctx.id}")
        return value * 3


@step(atomic=True, retries=2, backoff=0.005)
def flaky_record(ctx: Workflow, value: int) -> int:
    """Writes a row, then fails its first attempt in each process: the row must roll back."""
    with body(ctx, "flaky_record"):
        ChaosEffect.objects.create(workflow_id=ctx.id, step_key="flaky_record", pid=os.getpid())
        if _attempt(ctx, "flaky_record") <= 1:
            raise ChaosFailure(f"attempt of flaky_record in workflow {ctx.id}")
        return value - 1


@step
def tick(ctx: Workflow, n: int, index: int) -> int:
    with body(ctx, step_key("tick", index + 1)):
        return n + index * index


@step
def slow(ctx: Workflow, value: int) -> int:
    """Outlasts a lease: its workflow stays with this process only if the heartbeat works."""
    with body(ctx, "slow"):
        time.sleep(SLOW_LEASES * settings.PGQRS["LEASE_SECONDS"])
        return value + 1


@workflow
def chaos_plain(ctx: Workflow, n: int) -> int:
    return offset(ctx, scale(ctx, n, 2), 3)


@workflow
def chaos_atomic(ctx: Workflow, n: int) -> int:
    value = scale(ctx, n, 3)
    for call in (1, 2, 3):
        value = record(ctx, value, call)
    return value


@workflow
def chaos_retry(ctx: Workflow, n: int) -> int:
    value = flaky(ctx, n, failures_of(n))
    return offset(ctx, flaky_record(ctx, value), 5)


@workflow
def chaos_loop(ctx: Workflow, n: int) -> int:
    total = sum(tick(ctx, n, index) for index in range(loop_length(n)))
    return record(ctx, total, 1)


@workflow
def chaos_slow(ctx: Workflow, n: int) -> int:
    return slow(ctx, scale(ctx, n, 2))


@workflow
def chaos_primitives(ctx: Workflow, n: int) -> int:
    """A child workflow, a sleep that suspends, a durable wait for the child."""
    child = chaos_plain.start(n)
    ctx.sleep(0.1 + (n % 3) * 0.1)
    value: int = child.result()
    return offset(ctx, value, 7)
