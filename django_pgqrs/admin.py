"""The admin: watch workflows and their steps; resume or cancel them.

Workflows are written by the engine only, so the admin shows them read-only and operates on
them through actions that call the engine.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.db.models import Count, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from . import operations
from .exceptions import PgqrsError
from .models import Workflow, WorkflowStep

if TYPE_CHECKING:  # the admin's classes are generic for type checkers only
    StepInlineBase = admin.TabularInline[WorkflowStep, Workflow]
    WorkflowAdminBase = admin.ModelAdmin[Workflow]
else:
    StepInlineBase = admin.TabularInline
    WorkflowAdminBase = admin.ModelAdmin


def _pretty(value: Any) -> str:
    if value is None:
        return "-"
    return format_html("<pre>{}</pre>", json.dumps(value, indent=2, default=repr))


class ReadOnlyMixin:
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class WorkflowStepInline(ReadOnlyMixin, StepInlineBase):
    model = WorkflowStep
    extra = 0
    can_delete = False
    ordering = ["position"]
    fields = ("position", "step_id", "status", "attempts", "started_at", "completed_at", "result")
    readonly_fields = fields

    @admin.display(description="output or error")
    def result(self, step: WorkflowStep) -> str:
        if step.error:
            return format_html(
                "<pre>{}: {}</pre>", step.error.get("type"), step.error.get("message")
            )
        return _pretty(step.output)


@admin.register(Workflow)
class WorkflowAdmin(ReadOnlyMixin, WorkflowAdminBase):
    list_display = [
        "id",
        "name",
        "status",
        "step_count",
        "attempts",
        "queue",
        "created_at",
        "updated_at",
        "lease_owner",
    ]
    list_filter = ["status", "name", "queue"]
    search_fields = ["=id", "name", "idempotency_key"]
    date_hierarchy = "created_at"
    inlines = [WorkflowStepInline]
    actions = ["resume_workflows", "cancel_workflows", "fork_workflows"]
    _main = (
        "id",
        "name",
        "status",
        "queue",
        "priority",
        "run_at",
        "deadline_at",
        "parent_link",
        "children_links",
        "forked_from_link",
    )
    _data = ("input_json", "result_json", "error_json")
    _execution = (
        "attempts",
        "recovery_attempts",
        "lease_owner",
        "lease_expires_at",
        "idempotency_key",
        "created_at",
        "updated_at",
    )
    fieldsets = [
        (None, {"fields": _main}),
        ("Data", {"fields": _data}),
        ("Execution", {"fields": _execution}),
    ]
    readonly_fields = _main + _data + _execution

    def get_queryset(self, request: HttpRequest) -> QuerySet[Workflow]:
        return super().get_queryset(request).annotate(step_count=Count("steps"))

    @admin.display(description="steps", ordering="step_count")
    def step_count(self, workflow: Workflow) -> int:
        return getattr(workflow, "step_count", 0)

    @admin.display(description="parent")
    def parent_link(self, workflow: Workflow) -> str:
        return _link(workflow.parent_id)

    @admin.display(description="children")
    def children_links(self, workflow: Workflow) -> str:
        children = list(workflow.children.order_by("id").values_list("id", "name", "status")[:200])
        if not children:
            return "-"
        return format_html_join(
            ", ",
            '<a href="{}">{} {}</a> ({})',
            ((_url(pk), name, pk, status) for pk, name, status in children),
        )

    @admin.display(description="forked from")
    def forked_from_link(self, workflow: Workflow) -> str:
        return _link(workflow.forked_from_id)

    @admin.display(description="input")
    def input_json(self, workflow: Workflow) -> str:
        return _pretty(workflow.input)

    @admin.display(description="result")
    def result_json(self, workflow: Workflow) -> str:
        return _pretty(workflow.result)

    @admin.display(description="error")
    def error_json(self, workflow: Workflow) -> str:
        if not workflow.error:
            return "-"
        error = workflow.error
        return format_html(
            "<strong>{}</strong>: {}<pre>{}</pre>",
            error.get("type"),
            error.get("message"),
            error.get("traceback", ""),
        )

    @admin.action(description="Resume selected workflows (a worker runs them)")
    def resume_workflows(self, request: HttpRequest, queryset: QuerySet[Workflow]) -> None:
        resumed = operations.requeue([workflow.id for workflow in queryset])
        skipped = queryset.count() - len(resumed)
        self.message_user(request, f"{len(resumed)} workflow(s) queued to resume.")
        if skipped:
            self.message_user(
                request,
                f"{skipped} skipped: only failed or pending workflows can be resumed.",
                messages.WARNING,
            )

    @admin.action(description="Cancel selected workflows")
    def cancel_workflows(self, request: HttpRequest, queryset: QuerySet[Workflow]) -> None:
        cancelled = operations.cancel([workflow.id for workflow in queryset])
        skipped = queryset.count() - len(cancelled)
        self.message_user(request, f"{len(cancelled)} workflow(s) cancelled.")
        if skipped:
            self.message_user(
                request, f"{skipped} skipped: they had already finished.", messages.WARNING
            )

    @admin.action(description="Fork selected failed workflows from the step they failed on")
    def fork_workflows(self, request: HttpRequest, queryset: QuerySet[Workflow]) -> None:
        forked, skipped = [], []
        for workflow_id in queryset.values_list("id", flat=True):
            try:
                forked.append((workflow_id, operations.fork_workflow(workflow_id).id))
            except (ValueError, PgqrsError):
                skipped.append(workflow_id)
        if forked:
            self.message_user(
                request,
                "Forked (a worker runs them): "
                + ", ".join(f"{original} as {fork}" for original, fork in forked),
            )
        if skipped:
            self.message_user(
                request,
                f"Not forked (no failed step to fork from): {', '.join(map(str, skipped))}",
                messages.WARNING,
            )


def _url(workflow_id: int) -> str:
    return reverse("admin:django_pgqrs_workflow_change", args=[workflow_id])


def _link(workflow_id: int | None) -> str:
    if workflow_id is None:
        return "-"
    return format_html('<a href="{}">{}</a>', _url(workflow_id), workflow_id)
