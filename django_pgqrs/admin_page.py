"""The admin's page of one workflow: its values, its steps as a timeline, its earlier attempts.

A workflow may have thousands of steps and megabytes of output: the page shows ``STEPS_PER_PAGE``
steps at a time, and of each value its first ``PREVIEW_CHARS`` characters (cut by the
database, not after reading it all), with a link to the whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from django.db.models import QuerySet, TextField
from django.db.models.functions import Cast, Left, Length
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.safestring import SafeString

from .admin_display import duration, status_badge, stored_value, value_preview, when
from .models import FINISHED, Workflow, WorkflowStep

STEPS_PER_PAGE = 100
# A workflow's input and result are shown whole up to this many characters of JSON.
VALUE_CHARS = 100_000
# A step's output, folded in the timeline.
PREVIEW_CHARS = 2_000


def with_values(queryset: QuerySet[Workflow], limit: int = VALUE_CHARS) -> QuerySet[Workflow]:
    """``queryset`` with its input and result as JSON text cut at ``limit + 1`` characters
    (``input_text``, ``input_length``...) instead of decoded values."""
    annotations: dict[str, Any] = {}
    for name in ("input", "result"):
        text = Cast(name, TextField())
        annotations[f"{name}_text"] = Left(text, limit + 1)
        annotations[f"{name}_length"] = Length(text)
    return queryset.defer("input", "result").annotate(**annotations)


def value_url(workflow_id: int, what: str) -> str:
    return reverse("admin:django_pgqrs_workflow_value", args=[workflow_id, what])


def shown_value(workflow: Workflow, name: str) -> SafeString:
    text = getattr(workflow, f"{name}_text", None)
    length = getattr(workflow, f"{name}_length", None) or 0
    return stored_value(text, length, VALUE_CHARS, value_url(workflow.pk, name))


@dataclass
class TimelineStep:
    step: WorkflowStep
    badge: SafeString
    started: SafeString
    took: str
    offset: float  # where the step starts on the workflow's time line, in percent
    width: float
    output: SafeString
    error: dict[str, Any] | None


def steps(request: HttpRequest, workflow: Workflow) -> dict[str, Any]:
    """The page of the workflow's steps that ``?steps=N`` (or ``last``) asks for."""
    saved = WorkflowStep.objects.using(workflow._state.db).filter(workflow_id=workflow.pk)
    total = saved.count()
    pages = max(1, math.ceil(total / STEPS_PER_PAGE))
    asked = request.GET.get("steps", "1")
    page = pages if asked == "last" else int(asked) if asked.isascii() and asked.isdigit() else 1
    page = min(max(page, 1), pages)
    first = (page - 1) * STEPS_PER_PAGE
    output = Cast("output", TextField())
    rows = list(
        saved.order_by("position")
        .defer("output")
        .annotate(output_text=Left(output, PREVIEW_CHARS + 1), output_length=Length(output))[
            first : first + STEPS_PER_PAGE
        ]
    )
    start = workflow.created_at
    end = workflow.updated_at if workflow.status in FINISHED else timezone.now()
    span = max((end - start).total_seconds(), 0.001)
    timeline = []
    for step in rows:
        began = step.started_at or step.completed_at
        took = (
            (step.completed_at - step.started_at).total_seconds()
            if step.started_at and step.completed_at
            else None
        )
        offset = 0.0
        if began is not None:
            offset = min(max((began - start).total_seconds() / span * 100, 0.0), 99.5)
        url = reverse("admin:django_pgqrs_workflow_step", args=[workflow.pk, step.pk])
        timeline.append(
            TimelineStep(
                step=step,
                badge=status_badge(step.status),
                started=when(began),
                took=duration(took),
                offset=round(offset, 2),
                width=round(min(max((took or 0) / span * 100, 0.5), 100 - offset), 2),
                output=value_preview(
                    getattr(step, "output_text", None),
                    getattr(step, "output_length", None) or 0,
                    PREVIEW_CHARS,
                    url,
                ),
                error=step.error,
            )
        )
    links: dict[str, int | str] = {}
    if page > 1:
        links.update(first=1, previous=page - 1)
    if page < pages:
        links.update(next=page + 1, last="last")
    return {
        "steps": timeline,
        "steps_total": total,
        "steps_first": first + 1 if rows else 0,
        "steps_last": first + len(rows),
        "steps_page": page,
        "steps_links": links,
    }


def attempts(workflow: Workflow) -> list[dict[str, Any]]:
    """The workflow's runs that ended, newest first, with the error of each failure."""
    runs = []
    for entry in reversed(workflow.attempt_history):
        error = entry.get("error") if isinstance(entry.get("error"), dict) else None
        runs.append(
            {
                "attempt": entry.get("attempt"),
                "worker": entry.get("worker") or "-",
                "ended": when(entry.get("ended_at")),
                "outcome": status_badge(str(entry.get("outcome", "?"))),
                "error": error,
            }
        )
    return runs
