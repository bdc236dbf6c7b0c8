"""The admin's overview: how many workflows are in each state, what is stuck, what failed.

Every query here is bounded, so that the page stays fast at millions of workflows:

1. Counts per status are exact for the statuses a partial index covers (all but SUCCESS), counted
   up to ``COUNT_UP_TO`` rows; SUCCESS (most rows) and larger counts are PostgreSQL's estimate,
   unless the whole table holds fewer rows than that. SQLite counts exactly.
2. Counts per name, and what finished in the last hour, are exact within a window: the newest
   ``WINDOW`` workflows (an index range of the primary key). The page says how far back it goes.
3. Stuck workflows and the latest failures are read from the partial index on active statuses.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from django.db import connections
from django.db.models import Count, Q
from django.utils import timezone

from . import registry
from .admin_display import ago, exact, when
from .admin_list import bounded_count, error_columns, planner_rows
from .models import FINISHED, Workflow, WorkflowStatus

COUNT_UP_TO = 100_000
WINDOW = 100_000
LISTED = 20


@dataclass
class StatusCount:
    status: str
    count: int
    estimated: bool = False

    @property
    def text(self) -> str:
        return f"{self.count:,}"


@dataclass
class NameRow:
    name: str
    registered: bool
    counts: dict[str, int] = field(default_factory=dict)
    finished_last_hour: int = 0
    failed_last_hour: int = 0
    # Of those that finished in the last hour: how many ended in each of the final statuses.
    last_hour: dict[str, int] = field(default_factory=dict)

    def cells(self) -> list[int]:
        return [self.counts.get(status, 0) for status in WorkflowStatus.values]


def status_counts(alias: str) -> list[StatusCount]:
    """Every status's count: exact up to ``COUNT_UP_TO`` where an index serves it, else an
    estimate (exact on SQLite)."""
    postgres = connections[alias].vendor == "postgresql"
    # SUCCESS has no index: counted only where the whole table is small enough to read.
    small = not postgres or planner_rows(Workflow.objects.using(alias)) <= COUNT_UP_TO
    counts = []
    for status in WorkflowStatus.values:
        rows = Workflow.objects.using(alias).filter(status=status)
        if status != WorkflowStatus.SUCCESS or small:
            count, estimated = bounded_count(rows, COUNT_UP_TO)
        else:
            count, estimated = planner_rows(rows.order_by()), True
        counts.append(StatusCount(status, count, estimated=estimated))
    return counts


def window(alias: str) -> tuple[int | None, datetime.datetime | None, int]:
    """The window of the newest ``WINDOW`` workflows: its lowest id, the creation time of that
    one, and how many it holds."""
    newest = Workflow.objects.using(alias).order_by("-pk").values_list("pk", flat=True)
    edge = list(newest[WINDOW - 1 : WINDOW])
    size = WINDOW
    lowest = edge[0] if edge else None
    if lowest is None:
        lowest = Workflow.objects.using(alias).order_by("pk").values_list("pk", flat=True).first()
        if lowest is None:
            return None, None, 0
        size = -1  # fewer than WINDOW: every workflow
    since = Workflow.objects.using(alias).filter(pk=lowest).values_list("created_at", flat=True)
    return lowest, since.first(), size


def by_name(alias: str, lowest: int | None, now: datetime.datetime) -> list[NameRow]:
    """Counts per name and status in the window, and what finished in the last hour."""
    rows: dict[str, NameRow] = {
        name: NameRow(name, registered=True) for name in registry.workflow_names()
    }
    if lowest is not None:
        hour_ago = now - datetime.timedelta(hours=1)
        recent = Q(updated_at__gte=hour_ago, status__in=FINISHED)
        groups = (
            Workflow.objects.using(alias)
            .filter(pk__gte=lowest)
            .order_by()
            .values_list("name", "status")
            .annotate(n=Count("pk"), last_hour=Count("pk", filter=recent))
        )
        for name, status, n, last_hour in groups:
            row = rows.setdefault(name, NameRow(name, registered=False))
            row.counts[status] = n
            row.finished_last_hour += last_hour
            if last_hour:
                row.last_hour[status] = last_hour
            if status == WorkflowStatus.ERROR:
                row.failed_last_hour += last_hour
    return sorted(rows.values(), key=lambda row: (-sum(row.counts.values()), row.name))


def split_idle(rows: list[NameRow]) -> tuple[list[NameRow], list[str]]:
    """The names with workflows in the window, and the registered names without any."""
    return [row for row in rows if row.counts], [row.name for row in rows if not row.counts]


def lease_expired(alias: str, now: datetime.datetime) -> list[Workflow]:
    """Running workflows whose owner stopped renewing its lease: a worker takes them back at
    its next poll; many here mean no worker polls."""
    rows = list(
        Workflow.objects.using(alias)
        .filter(status=WorkflowStatus.RUNNING, lease_expires_at__lt=now)
        .only("id", "name", "status", "lease_owner", "lease_expires_at", "attempts")
        .order_by("lease_expires_at")[:LISTED]
    )
    for row in rows:
        row.expired = when(row.lease_expires_at, now)  # type: ignore[attr-defined]
    return rows


def latest_failures(alias: str, now: datetime.datetime) -> list[Workflow]:
    rows = list(
        Workflow.objects.using(alias)
        .filter(status=WorkflowStatus.ERROR)
        .only("id", "name", "status", "updated_at", "attempts")
        .annotate(**error_columns())
        .order_by("-pk")[:LISTED]
    )
    for row in rows:
        row.failed = when(row.updated_at, now)  # type: ignore[attr-defined]
    return rows


def overview(alias: str) -> dict[str, Any]:
    """The overview page's context."""
    now = timezone.now()
    lowest, since, size = window(alias)
    names = by_name(alias, lowest, now)
    active, idle = split_idle(names)
    return {
        "status_counts": status_counts(alias),
        "window_size": size,
        "window_limit_text": f"{WINDOW:,}",
        "window_since_text": f"{exact(since)} ({ago(since, now)})" if since else "-",
        "count_up_to_text": f"{COUNT_UP_TO:,}",
        "statuses": WorkflowStatus.values,
        "names": active,
        "idle_names": idle,
        "finished_last_hour": sum(row.finished_last_hour for row in names),
        "failed_last_hour": sum(row.failed_last_hour for row in names),
        "last_hour": [
            (status, sum(row.last_hour.get(status, 0) for row in names)) for status in FINISHED
        ],
        "lease_expired": lease_expired(alias, now),
        "latest_failures": latest_failures(alias, now),
        "listed": LISTED,
    }
