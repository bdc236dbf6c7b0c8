"""Helpers for your own test suite: run queued workflows in the test, crash a run on purpose.

``drain()`` runs every due workflow to its end in the test's own thread, on its own connection,
so it works inside the transaction of a ``TestCase`` or of pytest-django's ``django_db`` (a
worker's threads could not see what the test has not committed). ``crash_at()`` makes a run die
at a step the way a killed process would, so a test can then ``resume()`` or ``drain()`` and check
that finished steps did not run again. ``advance()`` moves durable time forward, so that a test
of a workflow that sleeps a day runs in milliseconds.

With pytest, ``pytest_plugins = ["django_pgqrs.testing"]`` in your root ``conftest.py`` also
gives the ``pgqrs`` fixture, with ``pgqrs.drain()`` and ``pgqrs.crash_at()``, after the database
is set up.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from . import clock
from .conf import conf
from .exceptions import SimulatedCrash

# Loaded by pytest before Django is set up (as a plugin), so nothing here imports the models at
# import time.

__all__ = ["Drained", "SimulatedCrash", "advance", "crash_at", "drain", "reset_clock"]


@dataclass(frozen=True)
class Drained:
    """A workflow ``drain()`` ran: its id, name and status, and its result or error."""

    id: int
    name: str
    status: str
    result: Any
    error: dict[str, Any] | None


def drain(queues: Iterable[str] | None = None, *, limit: int = 1000) -> list[Drained]:
    """Run every due workflow of ``queues`` (default: all) to its end here; say how each ended.

    Workflows that become due meanwhile (started by the ones that run) run too, up to ``limit``
    runs. A workflow that fails is saved as ERROR, as a worker would save it, and the others go
    on. A ``SimulatedCrash`` (see ``crash_at``) stops the drain, as a killed worker would stop.
    Workflows saved with ``create_workflow`` are the caller's to run for one lease length, and
    are not due before.
    """
    from .lease import Lease, owner_name
    from .models import Workflow
    from .runtime import refuse_in_transaction, run_claimed
    from .store import store_for, workflows_alias

    alias = workflows_alias()
    store = store_for(alias)
    savepoints = refuse_in_transaction(alias, "drain()")
    names = list(queues) if queues is not None else None
    ran: list[int] = []
    while len(ran) < limit:
        current = names if names is not None else _queues_with_work(alias)
        if not current:
            break
        lease = Lease(alias, 0)
        claimed = store.claim_next(current, owner_name(), lease.token, conf.LEASE_SECONDS)
        if claimed is None:
            break
        lease.workflow_id = claimed.workflow_id
        ran.append(claimed.workflow_id)
        # Its failure is saved with it, as a worker saves it; the drain goes on.
        with contextlib.suppress(Exception):
            run_claimed(claimed, store, lease, savepoints=savepoints)
    rows = Workflow.objects.using(alias).in_bulk(ran)
    return [_drained(rows[pk]) for pk in dict.fromkeys(ran) if pk in rows]


@contextlib.contextmanager
def crash_at(step: str, *, after_body: bool = False, release: bool = True) -> Iterator[None]:
    """Within the block, make the next run of step ``step`` die as a killed process would.

    The run stops with ``SimulatedCrash`` (a ``BaseException``) before the step's body runs, or
    ``after_body`` ran but before its checkpoint is saved (an atomic step's writes roll back).
    Nothing is saved for that step; the workflow's lease is given back, so that ``resume()`` or
    ``drain()`` can go on at once, or with ``release=False`` left to expire as a dead process
    leaves it (``resume(id, force=True)`` takes it over). Crashes once.
    """
    from . import steps

    fired = False

    def probe(name: str, after: bool) -> None:
        nonlocal fired
        if not fired and name == step and after == after_body:
            fired = True
            raise SimulatedCrash(step, after_body, release)

    steps.probes.append(probe)
    try:
        yield
    finally:
        steps.probes.remove(probe)


def advance(seconds: float | datetime.timedelta) -> None:
    """Move durable time forward by ``seconds``: sleeps, event timeouts, retry waits, deadlines
    and start times come that much sooner (``drain()`` then runs what became due). Leases are
    not moved. ``reset_clock()`` (or the end of a test using the ``pgqrs`` fixture) puts it back.
    """
    if isinstance(seconds, datetime.timedelta):
        seconds = seconds.total_seconds()
    clock.advance(seconds)


def reset_clock() -> None:
    """Put durable time back on the real clock."""
    clock.reset()


def _queues_with_work(alias: str) -> list[str]:
    from .models import Workflow, WorkflowStatus

    return sorted(
        set(
            Workflow.objects.using(alias)
            .filter(status__in=[WorkflowStatus.PENDING, WorkflowStatus.SLEEPING])
            .values_list("queue", flat=True)
        )
    )


def _drained(row: Any) -> Drained:
    return Drained(row.id, row.name, row.status, row.result, row.error)


try:
    import pytest
except ImportError:  # pytest is not needed to use drain() and crash_at()
    pass
else:

    class Pgqrs:
        """What the ``pgqrs`` fixture gives a test: ``drain()``, ``crash_at()``, ``advance()``."""

        drain = staticmethod(drain)
        crash_at = staticmethod(crash_at)
        advance = staticmethod(advance)

    @pytest.fixture
    def pgqrs(db: None) -> Iterator[Pgqrs]:
        """Run queued workflows in the test (``pgqrs.drain()``), crash runs
        (``pgqrs.crash_at("step")``), move durable time (``pgqrs.advance(3600)``); needs the
        database, as ``db`` does. Durable time is put back afterwards."""
        try:
            yield Pgqrs()
        finally:
            clock.reset()
