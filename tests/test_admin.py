"""The admin: watching workflows and operating on them."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from django_pgqrs import Workflow, WorkflowCancelled, create_workflow
from django_pgqrs.operations import cancel, requeue
from tests import workflows

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("admin", "admin@example.com", "pw"))
    return client


def failed_workflow() -> Workflow:
    workflows.failures.append(ValueError("card declined"))
    ctx = create_workflow("one_flaky", 1)
    with pytest.raises(ValueError):
        workflows.one_flaky(ctx, 1)
    return ctx


def test_the_list_shows_workflows_with_their_status_and_step_count(staff):
    workflows.add_three.run(1)
    failed = failed_workflow()
    page = staff.get(reverse("admin:django_pgqrs_workflow_changelist"))
    assert page.status_code == 200
    text = page.content.decode()
    assert "add_three" in text and "one_flaky" in text
    assert "SUCCESS" in text and "ERROR" in text
    filtered = staff.get(reverse("admin:django_pgqrs_workflow_changelist"), {"status": "ERROR"})
    assert list(filtered.context["cl"].result_list) == [Workflow.objects.get(pk=failed.id)]
    assert filtered.context["cl"].result_list[0].step_count == 2


def test_a_workflow_page_shows_its_steps_input_and_error(staff):
    failed = failed_workflow()
    page = staff.get(reverse("admin:django_pgqrs_workflow_change", args=[failed.id]))
    assert page.status_code == 200
    text = page.content.decode()
    assert "card declined" in text  # the error, on the workflow and on its step
    assert "flaky" in text and "add_one" in text  # the steps
    assert "&quot;args&quot;" in text  # the input, as JSON
    assert "Traceback" in text


def test_workflows_cannot_be_added_or_edited_in_the_admin(staff):
    failed = failed_workflow()
    assert staff.get(reverse("admin:django_pgqrs_workflow_add")).status_code == 403
    page = staff.post(
        reverse("admin:django_pgqrs_workflow_change", args=[failed.id]), {"status": "SUCCESS"}
    )
    assert page.status_code == 403
    assert Workflow.objects.get(pk=failed.id).status == "ERROR"


def test_the_resume_action_queues_failed_workflows_for_a_worker(staff):
    failed = failed_workflow()
    done = workflows.add_three.run(1) and Workflow.objects.get(name="add_three")
    page = staff.post(
        reverse("admin:django_pgqrs_workflow_changelist"),
        {"action": "resume_workflows", "_selected_action": [failed.id, done.id]},
        follow=True,
    )
    text = page.content.decode()
    assert "1 workflow(s) queued to resume" in text
    assert "1 skipped" in text
    assert Workflow.objects.get(pk=failed.id).status == "PENDING"
    assert Workflow.objects.get(pk=done.id).status == "SUCCESS"


def test_the_cancel_action_cancels_unfinished_workflows(staff):
    failed = failed_workflow()
    page = staff.post(
        reverse("admin:django_pgqrs_workflow_changelist"),
        {"action": "cancel_workflows", "_selected_action": [failed.id]},
        follow=True,
    )
    assert "1 workflow(s) cancelled" in page.content.decode()
    assert Workflow.objects.get(pk=failed.id).status == "CANCELLED"
    with pytest.raises(WorkflowCancelled):
        workflows.one_flaky(failed, 1)


def test_requeue_leaves_running_and_finished_workflows_alone():
    workflows.add_three.run(1)
    done = Workflow.objects.get()
    assert requeue([done.id]) == []
    assert cancel([done.id]) == []
    assert Workflow.objects.get(pk=done.id).status == "SUCCESS"


def test_a_workflow_cancelled_while_it_runs_stops_at_its_next_step():
    ctx = create_workflow("loop", 3)
    original = workflows.add_one.func

    def cancel_during_the_first_step(ctx_, n):  # type: ignore[no-untyped-def]
        if n == 0:
            cancel([ctx.id])
        return original(ctx_, n)

    workflows.add_one.func = cancel_during_the_first_step
    try:
        with pytest.raises(WorkflowCancelled):
            workflows.loop(ctx, 3)
    finally:
        workflows.add_one.func = original
    saved = Workflow.objects.get(pk=ctx.id)
    assert saved.status == "CANCELLED"
    assert not saved.steps.exists()  # the first step's checkpoint was refused


def test_a_parents_page_links_its_children_and_a_forks_page_its_original(staff):
    from django_pgqrs.testing import drain
    from tests import primitive_workflows

    parent = primitive_workflows.fan_out.start([1, 2])
    drain()
    children = list(Workflow.objects.filter(parent=parent.id).values_list("pk", flat=True))
    page = staff.get(reverse("admin:django_pgqrs_workflow_change", args=[parent.id])).content
    for child in children:
        assert reverse("admin:django_pgqrs_workflow_change", args=[child]).encode() in page
    child_page = staff.get(reverse("admin:django_pgqrs_workflow_change", args=[children[0]]))
    assert reverse("admin:django_pgqrs_workflow_change", args=[parent.id]).encode() in (
        child_page.content
    )


def test_the_fork_action_forks_failed_workflows_from_their_failed_step(staff):
    failed = failed_workflow()
    workflows.add_three.run(1)
    done = Workflow.objects.get(name="add_three")
    response = staff.post(
        reverse("admin:django_pgqrs_workflow_changelist"),
        {"action": "fork_workflows", "_selected_action": [failed.id, done.id]},
        follow=True,
    )
    text = response.content.decode()
    fork = Workflow.objects.get(forked_from=failed.id)
    assert f"{failed.id} as {fork.id}" in text
    assert f"Not forked (no failed step to fork from): {done.id}" in text
    assert list(fork.steps.values_list("step_id", flat=True)) == ["add_one"]
