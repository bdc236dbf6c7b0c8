"""The admin's list of workflows, fast at millions of rows.

1. No exact ``COUNT(*)`` of a large result: up to ``EXACT_UP_TO`` rows are counted (a bounded
   scan); past that, PostgreSQL's planner estimates the count, as big Django sites do. SQLite
   counts exactly.
2. Filters whose choices cost nothing: statuses from the model, names from the workflow registry,
   queues from one index probe per queue. No facets, no date hierarchy (both scan the table).
3. Searches that use an index: an id finds its row by primary key, a name by the registered
   names it starts, an idempotency key exactly; error text is looked for in the latest
   ``ERROR_SEARCH_WINDOW`` failures only.
4. The page's rows read only the columns the list shows, by id once the page's ids are known
   (so a deep page skips over index entries, not over rows); the steps table is read only for
   the last step of the page's unfinished workflows.
"""

from __future__ import annotations

import datetime
import json
from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ChangeList
from django.core.paginator import EmptyPage, Page, Paginator
from django.db import connections
from django.db.models import Case, OuterRef, Q, QuerySet, Subquery, When
from django.db.models.fields.json import KT
from django.db.models.functions import Left
from django.http import HttpRequest
from django.utils import timezone
from django.utils.functional import cached_property

from . import registry
from .management.cli import storable_id
from .models import UNFINISHED, Workflow, WorkflowStep

if TYPE_CHECKING:
    from django.contrib.admin import ModelAdmin

EXACT_UP_TO = 1_000
ERROR_SEARCH_WINDOW = 5_000
# Of a longer search term, its start is looked for in errors.
ERROR_SEARCH_LENGTH = 500
SEARCH_HELP = (
    "An id, the start of a workflow's name, an idempotency key, or words of an error message "
    f"(among the latest {ERROR_SEARCH_WINDOW:,} failures)."
)
# The columns the list shows; the others (input, result, the error's traceback, history) can
# be large.
LIST_COLUMNS = (
    "id",
    "name",
    "status",
    "queue",
    "attempts",
    "created_at",
    "updated_at",
    "started_at",
    "run_at",
    "lease_expires_at",
)


def bounded_count(queryset: QuerySet[Any], up_to: int) -> tuple[int, bool]:
    """How many rows ``queryset`` has, and whether that is an estimate: counted up to
    ``up_to``; past that, PostgreSQL's estimate (an exact count would read them all), and on
    SQLite the exact count."""
    rows = queryset.order_by().values("pk")
    counted = int(rows[: up_to + 1].count())
    if counted <= up_to:
        return counted, False
    if connections[rows.db].vendor != "postgresql":
        return int(rows.count()), False
    return max(counted, planner_rows(rows)), True


class EstimatedCountPaginator(Paginator):  # type: ignore[type-arg]
    """A paginator that counts up to ``EXACT_UP_TO`` rows and estimates past that."""

    estimated = False

    @property
    def exact_up_to(self) -> str:
        """How many rows are counted one by one, for the page to say."""
        return f"{EXACT_UP_TO:,}"

    @property
    def count_text(self) -> str:
        return f"{self.count:,}"

    @cached_property
    def count(self) -> int:
        count, self.estimated = bounded_count(self.object_list, EXACT_UP_TO)  # type: ignore[arg-type]
        return count

    def validate_number(self, number: Any) -> int:
        if not self.estimated:
            return super().validate_number(number)
        # Past an estimate, a page may be empty: shown empty rather than refused.
        page = max(1, int(number))
        if page > (2**63 - 1) // self.per_page:
            raise EmptyPage("That page is past any workflow.")
        return page

    def page(self, number: Any) -> Page:  # type: ignore[type-arg]
        number = self.validate_number(number)
        if not self.estimated:
            return super().page(number)
        bottom = (number - 1) * self.per_page
        return Page(self.object_list[bottom : bottom + self.per_page], number, self)


def planner_rows(queryset: QuerySet[Any]) -> int:
    """PostgreSQL's estimate of the number of rows of ``queryset`` (EXPLAIN, not run)."""
    sql, params = queryset.values("pk").query.sql_with_params()
    with connections[queryset.db].cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
        plan = cursor.fetchone()[0]
    if isinstance(plan, str):
        plan = json.loads(plan)
    return int(plan[0]["Plan"]["Plan Rows"])


class NameFilter(admin.SimpleListFilter):
    """The registered workflow names (not a DISTINCT over the table)."""

    title = "name"
    parameter_name = "name"

    def lookups(self, request: HttpRequest, model_admin: ModelAdmin[Any]) -> list[tuple[str, str]]:
        names = registry.workflow_names()
        value = self.value()
        if value and value not in names:
            names.append(value)
        return [(name, name) for name in names]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(name=value) if value else queryset


class QueueFilter(admin.SimpleListFilter):
    title = "queue"
    parameter_name = "queue"

    def lookups(self, request: HttpRequest, model_admin: ModelAdmin[Any]) -> list[tuple[str, str]]:
        queues = known_queues(model_admin.get_queryset(request).db)
        value = self.value()
        if value and value not in queues:
            queues.append(value)
        return [(queue, queue) for queue in queues]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(queue=value) if value else queryset


# A skip scan: one probe of the queue index per queue, where DISTINCT would read every row.
_QUEUES_SQL = {
    "postgresql": """
WITH RECURSIVE queues AS (
    (SELECT queue FROM pgqrs_workflows ORDER BY queue LIMIT 1)
    UNION ALL
    SELECT (SELECT w.queue FROM pgqrs_workflows w WHERE w.queue > queues.queue
            ORDER BY w.queue LIMIT 1)
    FROM queues WHERE queues.queue IS NOT NULL)
SELECT queue FROM queues WHERE queue IS NOT NULL LIMIT %s""",
    "sqlite": "SELECT DISTINCT queue FROM pgqrs_workflows ORDER BY queue LIMIT %s",
}


def known_queues(alias: str, limit: int = 100) -> list[str]:
    """The queues that hold workflows, sorted (at most ``limit``)."""
    connection = connections[alias]
    sql = _QUEUES_SQL.get(connection.vendor, _QUEUES_SQL["sqlite"])
    with connection.cursor() as cursor:
        cursor.execute(sql, [limit])
        return [queue for (queue,) in cursor.fetchall()]


class CreatedFilter(admin.SimpleListFilter):
    """A time range, counted back from now (served by the created_at index)."""

    title = "created"
    parameter_name = "created"
    ranges = {
        "1h": ("in the last hour", datetime.timedelta(hours=1)),
        "24h": ("in the last 24 hours", datetime.timedelta(days=1)),
        "7d": ("in the last 7 days", datetime.timedelta(days=7)),
        "30d": ("in the last 30 days", datetime.timedelta(days=30)),
    }

    def lookups(self, request: HttpRequest, model_admin: ModelAdmin[Any]) -> list[tuple[str, str]]:
        return [(key, label) for key, (label, _) in self.ranges.items()]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value not in self.ranges:
            return queryset
        return queryset.filter(created_at__gte=timezone.now() - self.ranges[value][1])


def error_columns() -> dict[str, Any]:
    """Annotations of a workflow's error, read in SQL: its type, message (cut) and step."""
    return {
        "error_type": KT("error__type"),
        "error_message": Left(KT("error__message"), 300),
        "error_step": KT("error__step"),
    }


def search(queryset: QuerySet[Workflow], term: str) -> QuerySet[Workflow]:
    """The workflows ``term`` names: by id, name prefix, idempotency key or error message."""
    term = term.strip()
    if not term:
        return queryset
    found = Q(idempotency_key=term)
    if term.isascii() and term.isdigit() and storable_id(int(term)):
        return queryset.filter(found | Q(pk=int(term)))
    prefix = term.lower()
    names = {name for name in registry.workflow_names() if name.lower().startswith(prefix)}
    found |= Q(name__in=sorted(names | {term}))
    # The start of a long term: SQLite refuses a LIKE pattern of 50,000 bytes.
    failed = error_matches(queryset.db, term[:ERROR_SEARCH_LENGTH])
    if failed:
        found |= Q(pk__in=failed)
    return queryset.filter(found)


def error_matches(alias: str, term: str, limit: int = 1000) -> list[int]:
    """Ids of the latest ``ERROR_SEARCH_WINDOW`` failed workflows whose error's type or
    message holds ``term`` (any case)."""
    latest = (
        Workflow.objects.using(alias)
        .filter(status="ERROR")
        .order_by("-pk")
        .values("pk")[:ERROR_SEARCH_WINDOW]
    )
    return list(
        Workflow.objects.using(alias)
        .filter(pk__in=Subquery(latest))
        .filter(Q(error__message__icontains=term) | Q(error__type__icontains=term))
        .order_by("-pk")
        .values_list("pk", flat=True)[:limit]
    )


class WorkflowChangeList(ChangeList):
    """The list's rows, read in two steps: the page's ids (an index scan, however deep the
    page), then only those rows, with the columns shown, their error's type, message and step,
    and for an unfinished one its last saved step."""

    def get_queryset(self, request: HttpRequest, exclude_parameters: Any = None) -> QuerySet[Any]:
        if any("\x00" in value for values in request.GET.lists() for value in values[1]):
            raise IncorrectLookupParameters("NUL in a parameter")
        return super().get_queryset(request, exclude_parameters).only(*LIST_COLUMNS)

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        ids = list(self.result_list.values_list("pk", flat=True))
        last = WorkflowStep.objects.filter(workflow_id=OuterRef("pk")).order_by("-position")
        rows = (
            self.root_queryset.filter(pk__in=ids)
            .only(*LIST_COLUMNS)
            .annotate(
                **error_columns(),
                # Evaluated for the page's unfinished workflows only.
                last_step=Case(
                    When(status__in=UNFINISHED, then=Subquery(last.values("step_id")[:1]))
                ),
            )
        )
        found = {row.pk: row for row in rows}
        self.result_list = [found[pk] for pk in ids if pk in found]
