"""What the admin does besides showing workflows: its actions, their confirmation, and pages
of its own (the overview, a step's or a value's whole content).

Who may do what:

1. Seeing workflows needs the view permission; resuming, cancelling and forking need the
   ``operate_workflow`` permission, checked on every request (the list's actions and the
   buttons of a workflow's page alike); deleting needs the delete permission, and only finished
   workflows can be deleted: an unfinished one still belongs to the process running it, or to
   a worker that will.
2. Every action asks for confirmation first, then says what it did to each workflow, and leaves
   one admin log entry per workflow (``admin_actions``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet, TextField
from django.db.models.functions import Cast
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseRedirect,
)
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from . import admin_actions
from .admin_actions import OPERATIONS, Outcome
from .admin_display import error_html, whole_value
from .admin_overview import overview
from .management.cli import storable_id
from .models import FINISHED, UNFINISHED, Workflow, WorkflowEvent, WorkflowStep

if TYPE_CHECKING:  # the admin's classes are generic for type checkers only
    WorkflowAdminBase = admin.ModelAdmin[Workflow]
else:
    WorkflowAdminBase = admin.ModelAdmin


class WorkflowOperations(WorkflowAdminBase):
    """The operating half of ``WorkflowAdmin``: permissions, actions, and their pages."""

    def has_operate_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Resume, cancel and fork: the ``operate_workflow`` permission."""
        return request.user.has_perm(f"{self.opts.app_label}.operate_workflow")

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None and obj.status not in FINISHED:
            return False
        if obj is not None and obj.parent_id is not None:
            # A child of a parent that has not ended: the parent may still read its result.
            parents = Workflow.objects.using(obj._state.db or "default")
            if parents.filter(pk=obj.parent_id, status__in=UNFINISHED).exists():
                return False
        return super().has_delete_permission(request, obj)

    def response_action(
        self, request: HttpRequest, queryset: QuerySet[Any], *args: Any, **kwargs: Any
    ) -> Any:
        """Refuse a selection that holds something else than workflow ids (a forged request)."""
        selected = request.POST.getlist(ACTION_CHECKBOX_NAME)
        if not all(pk.isascii() and pk.isdigit() and storable_id(int(pk)) for pk in selected):
            return HttpResponseBadRequest("Workflow ids are numbers below 2**63.")
        return super().response_action(request, queryset, *args, **kwargs)

    # --- Actions --------------------------------------------------------------------------

    @admin.action(
        description="Resume selected workflows (a worker runs them)", permissions=["operate"]
    )
    def resume_workflows(self, request: HttpRequest, queryset: QuerySet[Workflow]) -> Any:
        return self.confirm_or_perform(request, queryset, "resume")

    @admin.action(description="Cancel selected workflows", permissions=["operate"])
    def cancel_workflows(self, request: HttpRequest, queryset: QuerySet[Workflow]) -> Any:
        return self.confirm_or_perform(request, queryset, "cancel")

    @admin.action(
        description="Fork selected failed workflows from the step they failed on",
        permissions=["operate"],
    )
    def fork_workflows(self, request: HttpRequest, queryset: QuerySet[Workflow]) -> Any:
        return self.confirm_or_perform(request, queryset, "fork")

    @admin.action(description="Delete selected finished workflows", permissions=["delete"])
    def delete_selected(self, request: HttpRequest, queryset: QuerySet[Workflow]) -> Any:
        return self.confirm_or_perform(request, queryset, "delete")

    def confirm_or_perform(
        self, request: HttpRequest, queryset: QuerySet[Workflow], name: str
    ) -> TemplateResponse | None:
        """The confirmation page of a list action; once confirmed, the action."""
        if request.POST.get("confirm") == "yes":
            self.perform(request, queryset, name)
            return None
        context = {
            "form_action": "",
            "hidden": [
                ("action", request.POST.get("action", "")),
                ("select_across", request.POST.get("select_across", "0")),
                ("index", "0"),
                *((ACTION_CHECKBOX_NAME, pk) for pk in request.POST.getlist(ACTION_CHECKBOX_NAME)),
            ],
            "cancel_url": request.get_full_path(),
        }
        return self.confirmation(request, queryset, name, context)

    def perform(self, request: HttpRequest, queryset: QuerySet[Workflow], name: str) -> Outcome:
        outcome = admin_actions.perform(name, queryset, _user_id(request))
        level = messages.SUCCESS if outcome.done else messages.WARNING
        self.message_user(request, outcome.message(), level)
        return outcome

    def confirmation(
        self,
        request: HttpRequest,
        queryset: QuerySet[Workflow],
        name: str,
        extra: dict[str, Any],
    ) -> TemplateResponse:
        operation = OPERATIONS[name]
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"{operation.title} workflows?",
            "operation": operation,
            **admin_actions.summary(queryset, operation),
            **extra,
        }
        return TemplateResponse(
            request, "admin/django_pgqrs/workflow/confirm_operation.html", context
        )

    def delete_model(self, request: HttpRequest, obj: Workflow) -> None:
        if not admin_actions.perform("delete", self._one(obj), _user_id(request)).done:
            raise PermissionDenied(
                "Only finished workflows can be deleted, and a child only once its parent ended."
            )

    def log_deletions(self, request: HttpRequest, queryset: Any) -> Any:
        """Deletions are logged where they are made (``admin_actions``)."""

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Workflow]) -> None:
        self.perform(request, queryset, "delete")

    def get_deleted_objects(
        self, objs: Any, request: HttpRequest
    ) -> tuple[list[Any], dict[str, int], set[str], list[Any]]:
        """What deleting a workflow deletes, counted (not listed step by step)."""
        workflows = list(objs)
        ids = [workflow.pk for workflow in workflows]
        steps = WorkflowStep.objects.filter(workflow_id__in=ids).count()
        events = WorkflowEvent.objects.filter(workflow_id__in=ids).count()
        listed: list[str] = [
            format_html('<a href="{}">{}</a>', change_url(w.pk), w) for w in workflows
        ]
        if steps:
            listed.append(f"its {steps:,} steps" if len(ids) == 1 else f"their {steps:,} steps")
        if events:
            listed.append(f"{events:,} events")
        counts = {"workflows": len(ids), "steps": steps, "events": events}
        # Django's delete view asked has_delete_permission(request, obj) before this.
        return listed, counts, set(), []

    def _one(self, workflow: Workflow) -> QuerySet[Workflow]:
        return Workflow.objects.using(workflow._state.db or "default").filter(pk=workflow.pk)

    # --- Pages of their own ---------------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        return [
            path("overview/", view(self.overview_view), name="django_pgqrs_workflow_overview"),
            path(
                "<int:object_id>/<str:operation>/confirm/",
                view(self.operate_view),
                name="django_pgqrs_workflow_operate",
            ),
            path(
                "<int:object_id>/steps/<int:step_id>/",
                view(self.step_view),
                name="django_pgqrs_workflow_step",
            ),
            path(
                "<int:object_id>/value/<str:what>/",
                view(self.value_view),
                name="django_pgqrs_workflow_value",
            ),
            *super().get_urls(),
        ]

    def overview_view(self, request: HttpRequest) -> TemplateResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Workflows overview",
            "changelist_url": reverse("admin:django_pgqrs_workflow_changelist"),
            **overview(self.get_queryset(request).db),
        }
        return TemplateResponse(request, "admin/django_pgqrs/workflow/overview.html", context)

    def operate_view(self, request: HttpRequest, object_id: int, operation: str) -> HttpResponse:
        """Resume, cancel or fork one workflow from its page: a confirmation, then the deed."""
        if operation not in ("resume", "cancel", "fork"):
            raise Http404
        if not self.has_operate_permission(request):
            raise PermissionDenied
        workflow = self.viewable(request, object_id)
        page = change_url(workflow.pk)
        if request.method == "POST" and request.POST.get("confirm") == "yes":
            outcome = self.perform(request, self._one(workflow), operation)
            if workflow.pk in outcome.forks:
                page = change_url(outcome.forks[workflow.pk])
            return HttpResponseRedirect(page)
        context = {
            "form_action": request.path,
            "hidden": [],
            "cancel_url": page,
            "workflow": workflow,
        }
        return self.confirmation(request, self._one(workflow), operation, context)

    def step_view(self, request: HttpRequest, object_id: int, step_id: int) -> TemplateResponse:
        """One step's whole output (and error)."""
        workflow = self.viewable(request, object_id)
        step = get_object_or_404(
            WorkflowStep.objects.using(workflow._state.db)
            .defer("output")
            .annotate(output_text=Cast("output", TextField())),
            workflow_id=workflow.pk,
            pk=step_id,
        )
        text = getattr(step, "output_text", None)
        return self.value_page(
            request,
            workflow,
            f"Step {step.step_id}",
            whole_value(text),
            error_html(step.error) if step.error else None,
        )

    def value_view(self, request: HttpRequest, object_id: int, what: str) -> TemplateResponse:
        """A workflow's whole input or result."""
        if what not in ("input", "result"):
            raise Http404
        workflow = self.viewable(request, object_id)
        text = (
            Workflow.objects.using(workflow._state.db)
            .filter(pk=workflow.pk)
            .values_list(Cast(what, TextField()), flat=True)
            .first()
        )
        return self.value_page(request, workflow, what.capitalize(), whole_value(text))

    def viewable(self, request: HttpRequest, object_id: int) -> Workflow:
        workflow = get_object_or_404(
            self.get_queryset(request).only("id", "name", "status"), pk=object_id
        )
        if not self.has_view_permission(request, workflow):
            raise PermissionDenied
        return workflow

    def value_page(
        self,
        request: HttpRequest,
        workflow: Workflow,
        title: str,
        value: SafeString,
        error: SafeString | None = None,
    ) -> TemplateResponse:
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"{title} of {workflow}",
            "workflow": workflow,
            "value": value,
            "error": error,
        }
        return TemplateResponse(request, "admin/django_pgqrs/workflow/value.html", context)


def _user_id(request: HttpRequest) -> int:
    """The id of the user acting (every admin view requires a logged-in staff user)."""
    if request.user.pk is None:
        raise PermissionDenied
    return int(request.user.pk)


def change_url(workflow_id: int) -> str:
    return reverse("admin:django_pgqrs_workflow_change", args=[workflow_id])
