"""Who may do what in the admin: viewing, operating (resume, cancel, fork) and deleting."""

from __future__ import annotations

import datetime

import pytest
from django.contrib.admin.models import DELETION, LogEntry
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from django_pgqrs import Workflow, create_workflow
from django_pgqrs.models import WorkflowStep
from tests import workflows

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:django_pgqrs_workflow_changelist"


def user_with(*codenames: str) -> Client:
    user = User.objects.create_user(f"user{User.objects.count()}", password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def viewer() -> Client:
    return user_with("view_workflow")


@pytest.fixture
def operator() -> Client:
    return user_with("view_workflow", "operate_workflow")


@pytest.fixture
def superuser() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("admin", "admin@example.com", "pw"))
    return client


def failed_workflow() -> Workflow:
    workflows.failures.append(ValueError("card declined"))
    ctx = create_workflow("one_flaky", 1)
    with pytest.raises(ValueError):
        workflows.one_flaky(ctx, 1)
    return Workflow.objects.get(pk=ctx.id)


def running_workflow() -> Workflow:
    workflow = Workflow.objects.create(
        name="add_three",
        status="RUNNING",
        lease_owner="worker-1:1",
        lease_expires_at=timezone.now() + datetime.timedelta(minutes=1),
    )
    WorkflowStep.objects.create(workflow=workflow, step_id="add_one", position=1, status="SUCCESS")
    return workflow


def post_action(client: Client, action: str, ids: list[int]):  # type: ignore[no-untyped-def]
    data = {"action": action, "index": "0", "_selected_action": ids, "confirm": "yes"}
    return client.post(reverse(CHANGELIST), data, follow=True)


def operate_url(workflow_id: int, operation: str) -> str:
    return reverse("admin:django_pgqrs_workflow_operate", args=[workflow_id, operation])


def test_a_view_only_user_sees_everything_and_is_offered_no_action(viewer):
    failed = failed_workflow()
    listing = viewer.get(reverse(CHANGELIST))
    assert listing.status_code == 200
    assert listing.context["action_form"] is None  # no action, no checkboxes
    assert 'class="action-select"' not in listing.content.decode()
    page = viewer.get(reverse("admin:django_pgqrs_workflow_change", args=[failed.id]))
    assert page.status_code == 200 and "card declined" in page.content.decode()
    assert page.context["operations"] == []
    assert operate_url(failed.id, "resume") not in page.content.decode()
    assert viewer.get(reverse("admin:django_pgqrs_workflow_overview")).status_code == 200


@pytest.mark.parametrize("action", ["resume_workflows", "cancel_workflows", "fork_workflows"])
def test_a_view_only_user_cannot_operate_by_posting_an_action(viewer, action):
    failed = failed_workflow()
    assert post_action(viewer, action, [failed.id]).status_code == 200  # the list, unchanged
    assert Workflow.objects.get(pk=failed.id).status == "ERROR"
    assert Workflow.objects.count() == 1  # no fork either
    assert not LogEntry.objects.exists()


@pytest.mark.parametrize("operation", ["resume", "cancel", "fork"])
def test_a_view_only_user_cannot_operate_from_a_workflows_page(viewer, operation):
    failed = failed_workflow()
    assert viewer.get(operate_url(failed.id, operation)).status_code == 403
    assert viewer.post(operate_url(failed.id, operation), {"confirm": "yes"}).status_code == 403
    assert Workflow.objects.get(pk=failed.id).status == "ERROR"
    assert Workflow.objects.count() == 1
    assert not LogEntry.objects.exists()


def test_an_operator_operates_but_does_not_delete(operator):
    failed = failed_workflow()
    offered = post_action(operator, "", []).context["action_form"].fields["action"].choices
    assert [value for value, _ in offered] == [
        "",
        "resume_workflows",
        "cancel_workflows",
        "fork_workflows",
    ]
    post_action(operator, "resume_workflows", [failed.id])
    assert Workflow.objects.get(pk=failed.id).status == "PENDING"
    post_action(operator, "cancel_workflows", [failed.id])
    assert Workflow.objects.get(pk=failed.id).status == "CANCELLED"
    post_action(operator, "delete_selected", [failed.id])
    delete = reverse("admin:django_pgqrs_workflow_delete", args=[failed.id])
    assert operator.post(delete, {"post": "yes"}).status_code == 403
    assert Workflow.objects.filter(pk=failed.id).exists()


def test_no_one_deletes_an_unfinished_workflow(superuser):
    running = running_workflow()
    workflows.add_three.run(1)
    done = Workflow.objects.get(status="SUCCESS")
    delete = reverse("admin:django_pgqrs_workflow_delete", args=[running.pk])
    assert superuser.get(delete).status_code == 403
    assert superuser.post(delete, {"post": "yes"}).status_code == 403
    page = superuser.get(reverse("admin:django_pgqrs_workflow_change", args=[running.pk]))
    assert delete not in page.content.decode()
    response = post_action(superuser, "delete_selected", [running.pk, done.pk])
    assert [str(m) for m in response.context["messages"]] == [
        f"1 deleted: {done.pk}; 1 skipped: {running.pk} still RUNNING"
    ]
    assert list(Workflow.objects.values_list("pk", flat=True)) == [running.pk]
    assert WorkflowStep.objects.filter(workflow=running).exists()


def test_deleting_a_finished_workflow_says_what_goes_with_it_and_is_logged(superuser):
    failed = failed_workflow()
    delete = reverse("admin:django_pgqrs_workflow_delete", args=[failed.id])
    confirmation = superuser.get(delete)
    assert "its 2 steps" in confirmation.content.decode()
    assert superuser.post(delete, {"post": "yes"}).status_code == 302
    assert not Workflow.objects.filter(pk=failed.id).exists()
    assert not WorkflowStep.objects.exists()
    entry = LogEntry.objects.get()
    assert (entry.object_id, entry.action_flag) == (str(failed.id), DELETION)


def test_every_action_logs_who_did_what_to_which_workflow(superuser):
    first, second = failed_workflow(), failed_workflow()
    post_action(superuser, "resume_workflows", [first.pk, second.pk])
    post_action(superuser, "cancel_workflows", [first.pk])
    entries = LogEntry.objects.order_by("pk")
    assert [(e.user.username, e.object_id, e.get_change_message()) for e in entries] == [
        ("admin", str(second.pk), "Resumed (was ERROR)."),
        ("admin", str(first.pk), "Resumed (was ERROR)."),
        ("admin", str(first.pk), "Cancelled (was PENDING)."),
    ]
    history = superuser.get(reverse("admin:django_pgqrs_workflow_history", args=[first.pk]))
    assert "Cancelled (was PENDING)." in history.content.decode()
