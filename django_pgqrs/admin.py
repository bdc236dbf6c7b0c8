"""The admin: watch workflows, see why one failed, and resume, cancel or fork it.

Workflows are written by the engine only, so the admin shows them read-only, and operates on
them through the engine (``operations``); who may do what is in ``admin_views``. Built to stay
fast at millions of workflows: the list in ``admin_list``, a workflow's page in ``admin_page``,
the overview in ``admin_overview``.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.translation import gettext

from . import admin_page
from .admin_actions import OPERATIONS
from .admin_display import duration, error_html, moment, status_badge, when
from .admin_list import (
    SEARCH_HELP,
    CreatedFilter,
    EstimatedCountPaginator,
    NameFilter,
    QueueFilter,
    WorkflowChangeList,
    search,
)
from .admin_views import WorkflowOperations, change_url
from .models import FINISHED, UNFINISHED, Workflow


@admin.register(Workflow)
class WorkflowAdmin(WorkflowOperations):
    list_display = [
        "id",
        "name",
        "status_badge",
        "queue",
        "attempts",
        "took",
        "created",
        "updated",
        "step",
    ]
    list_display_links = ["id", "name"]
    list_filter = ["status", NameFilter, QueueFilter, CreatedFilter]
    # The search box; get_search_results does the searching (see admin_list.search).
    search_fields = ["name"]
    search_help_text = SEARCH_HELP
    sortable_by = ["id", "created"]
    list_per_page = 100
    paginator = EstimatedCountPaginator
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    actions = ["resume_workflows", "cancel_workflows", "fork_workflows", "delete_selected"]
    _main = (
        "id",
        "name",
        "status_badge",
        "queue",
        "priority",
        "run_at_time",
        "deadline_at_time",
        "parent_link",
        "children_links",
        "forked_from_link",
    )
    _data = ("input_json", "result_json", "error_json")
    _execution = (
        "attempts",
        "recovery_attempts",
        "workers",
        "lease_owner",
        "lease_expires_at_time",
        "idempotency_key",
        "created_at_time",
        "started_at_time",
        "attempted_at_time",
        "updated_at_time",
        "took",
    )
    fieldsets = [
        (None, {"fields": _main}),
        ("Data", {"fields": _data}),
        ("Execution", {"fields": _execution}),
    ]
    readonly_fields = _main + _data + _execution

    # --- Permissions ----------------------------------------------------------------------

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    # --- The list -------------------------------------------------------------------------

    def action_checkbox(self, obj: Workflow) -> SafeString:
        """The row's checkbox, written out: rendering the form widget's template costs about a
        millisecond a row."""
        return format_html(
            '<input type="checkbox" name="{}" value="{}" class="action-select" aria-label="{}">',
            ACTION_CHECKBOX_NAME,
            obj.pk,
            format_html(gettext("Select this object for an action - {}"), str(obj)),
        )

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[WorkflowChangeList]:
        return WorkflowChangeList

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Workflow], search_term: str
    ) -> tuple[QuerySet[Workflow], bool]:
        return search(queryset, search_term), False

    @admin.display(description="status")
    def status_badge(self, workflow: Workflow) -> SafeString:
        note = ""
        expires = workflow.lease_expires_at
        if workflow.status == "RUNNING" and expires is not None and expires < timezone.now():
            note = "lease expired"
        return status_badge(workflow.status, note)

    @admin.display(description="step, error")
    def step(self, workflow: Workflow) -> SafeString:
        """Where a failed workflow failed, and its error; where an unfinished one is."""
        if workflow.status == "ERROR":
            failed = getattr(workflow, "error_step", None)
            where = format_html("failed at <code>{}</code>: ", failed) if failed else ""
            return format_html("{}{}", where, self.error_summary(workflow))
        last = getattr(workflow, "last_step", None)
        if workflow.status in UNFINISHED and last:
            return format_html("after <code>{}</code>", last)
        return format_html("{}", "-")

    @admin.display(description="duration")
    def took(self, workflow: Workflow) -> str:
        """From its first start (or its creation, for one saved before that was recorded) to
        its end, or to now."""
        start = workflow.started_at or workflow.created_at
        if workflow.status == "PENDING" and workflow.started_at is None:
            return "-"  # not started yet
        end = workflow.updated_at if workflow.status in FINISHED else timezone.now()
        text = duration(max((end - start).total_seconds(), 0.0))
        return text if workflow.status in FINISHED else f"{text} so far"

    @admin.display(description="created", ordering="created_at")
    def created(self, workflow: Workflow) -> SafeString:
        return when(workflow.created_at)

    @admin.display(description="updated")
    def updated(self, workflow: Workflow) -> SafeString:
        if workflow.status in ("PENDING", "SLEEPING") and workflow.run_at > timezone.now():
            return format_html("due {}", when(workflow.run_at))
        return when(workflow.updated_at)

    def error_summary(self, workflow: Workflow) -> SafeString:
        kind = getattr(workflow, "error_type", None)
        if not kind:
            return format_html("{}", "")
        message = getattr(workflow, "error_message", None) or ""
        return format_html(
            '<span class="pgqrs-error" title="{}"><strong>{}</strong>: {}</span>',
            message,
            kind.rsplit(".", 1)[-1],
            message if len(message) <= 120 else message[:120] + "…",
        )

    # --- The workflow page ----------------------------------------------------------------

    def get_object(
        self, request: HttpRequest, object_id: str, from_field: str | None = None
    ) -> Workflow | None:
        try:
            pk = int(object_id)
        except ValueError:
            return None
        queryset = admin_page.with_values(self.get_queryset(request))
        return queryset.filter(pk=pk).first()

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Workflow | None = None,
    ) -> HttpResponse:
        if obj is not None:
            context.update(admin_page.steps(request, obj))
            context["attempts"] = admin_page.attempts(obj)
            context["operations"] = self.page_operations(request, obj)
            context["overview_url"] = reverse("admin:django_pgqrs_workflow_overview")
        return super().render_change_form(request, context, add, change, form_url, obj)

    def page_operations(self, request: HttpRequest, workflow: Workflow) -> list[dict[str, str]]:
        """The buttons the page shows: the operations this user may do that make sense now."""
        if not self.has_operate_permission(request, workflow):
            return []
        buttons = []
        for name in ("resume", "cancel", "fork"):
            if workflow.status not in OPERATIONS[name].acts_on:
                continue
            if name == "fork" and not (workflow.error or {}).get("step"):
                continue
            url = reverse("admin:django_pgqrs_workflow_operate", args=[workflow.pk, name])
            buttons.append({"name": name, "title": OPERATIONS[name].title, "url": url})
        return buttons

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
            ((change_url(pk), name, pk, status) for pk, name, status in children),
        )

    @admin.display(description="forked from")
    def forked_from_link(self, workflow: Workflow) -> str:
        return _link(workflow.forked_from_id)

    @admin.display(description="input")
    def input_json(self, workflow: Workflow) -> SafeString:
        return admin_page.shown_value(workflow, "input")

    @admin.display(description="result")
    def result_json(self, workflow: Workflow) -> SafeString:
        return admin_page.shown_value(workflow, "result")

    @admin.display(description="error")
    def error_json(self, workflow: Workflow) -> SafeString:
        return error_html(workflow.error)

    @admin.display(description="run at")
    def run_at_time(self, workflow: Workflow) -> SafeString:
        return moment(workflow.run_at)

    @admin.display(description="deadline")
    def deadline_at_time(self, workflow: Workflow) -> SafeString:
        return moment(workflow.deadline_at)

    @admin.display(description="lease expires at")
    def lease_expires_at_time(self, workflow: Workflow) -> SafeString:
        return moment(workflow.lease_expires_at)

    @admin.display(description="created at")
    def created_at_time(self, workflow: Workflow) -> SafeString:
        return moment(workflow.created_at)

    @admin.display(description="started at", ordering="started_at")
    def started_at_time(self, workflow: Workflow) -> SafeString:
        return moment(workflow.started_at)

    @admin.display(description="latest run started at")
    def attempted_at_time(self, workflow: Workflow) -> SafeString:
        return moment(workflow.attempted_at)

    @admin.display(description="updated at")
    def updated_at_time(self, workflow: Workflow) -> SafeString:
        return moment(workflow.updated_at)

    @admin.display(description="workers")
    def workers(self, workflow: Workflow) -> str:
        return ", ".join(map(str, workflow.worker_ids)) or "-"


def _link(workflow_id: int | None) -> str:
    if workflow_id is None:
        return "-"
    return format_html('<a href="{}">{}</a>', change_url(workflow_id), workflow_id)
