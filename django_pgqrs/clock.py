"""Durable time: the clock that sleeps, event timeouts and workflow deadlines are read on.

It is Django's clock (``timezone.now()``), plus an offset that only tests move
(``django_pgqrs.testing.advance``), so that a test of a workflow that sleeps a day runs at once.
Leases do not use it: they are counted on the database's clock (see ``statements``). A due time
is compared with the database's clock when a worker looks for due workflows, moved by the same
offset, so that both agree.
"""

from __future__ import annotations

import datetime

from django.utils import timezone

# Seconds the durable clock runs ahead of the real one (tests only).
_offset = 0.0


def now() -> datetime.datetime:
    """The durable clock's time, an aware datetime."""
    current = timezone.now()
    return current + datetime.timedelta(seconds=_offset) if _offset else current


def ahead() -> float:
    """How many seconds the durable clock runs ahead of the real one."""
    return _offset


def advance(seconds: float) -> None:
    """Move the durable clock forward (tests: see ``django_pgqrs.testing.advance``)."""
    global _offset
    if seconds < 0:
        raise ValueError("The durable clock only moves forward.")
    _offset += seconds


def reset() -> None:
    """Put the durable clock back on the real one."""
    global _offset
    _offset = 0.0
