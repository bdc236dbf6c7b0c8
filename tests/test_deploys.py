"""Code that changes while workflows are under way: steps added before saved ones."""

from __future__ import annotations

import datetime
from collections.abc import Iterator

import django
import pytest
from django.utils import timezone

from django_pgqrs import (
    NonDeterministicWorkflow,
    Workflow,
    WorkflowStep,
    create_workflow,
    fork_workflow,
    registry,
)
from django_pgqrs.testing import drain
from tests import workflows
from tests.fault_workflows import deployed, fetch_all, fulfil
from tests.workflows import runs

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _old_code() -> Iterator[None]:
    deployed.clear()
    yield
    deployed.clear()


def positions(workflow_id: int) -> list[tuple[str, int, str]]:
    return list(
        WorkflowStep.objects.filter(workflow_id=workflow_id)
        .order_by("position")
        .values_list("step_id", "position", "status")
    )


def test_a_step_added_before_saved_ones_survives_every_later_resume():
    workflows.failures.append(RuntimeError("carrier down"))
    ctx = create_workflow("fulfil", 7)
    with pytest.raises(RuntimeError):
        fulfil(ctx, 7)

    deployed.add("validate_address")
    workflows.failures.append(RuntimeError("carrier down again"))
    with pytest.raises(RuntimeError, match="again"):
        fulfil(ctx, 7)  # the first resume after the deploy
    assert positions(ctx.id) == [
        ("validate_address", 1, "SUCCESS"),
        ("charge", 2, "SUCCESS"),
        ("pack", 3, "SUCCESS"),
        ("flaky", 4, "ERROR"),
    ]
    assert fulfil(ctx, 7) == ["valid:7", "charged:7", "packed:7", "shipped:7"]  # the next one
    assert runs == {"charge": 1, "pack": 1, "validate_address": 1, "flaky": 3}
    assert Workflow.objects.get(pk=ctx.id).status == "SUCCESS"


def test_a_call_of_a_saved_step_added_before_its_saved_calls_is_refused():
    """``fetch`` and ``fetch#2`` are saved; a new first ``fetch`` must not get their results."""
    workflows.failures.append(RuntimeError("later step down"))
    ctx = create_workflow("fetch_all", ["https://a.example", "https://b.example"])
    with pytest.raises(RuntimeError):
        fetch_all(ctx, ["https://a.example", "https://b.example"])

    deployed.add("extra_fetch")
    with pytest.raises(NonDeterministicWorkflow, match="'fetch' with other arguments") as caught:
        fetch_all(ctx, ["https://a.example", "https://b.example"])
    assert (caught.value.position, caught.value.saved) == (1, "fetch")
    assert runs == {"fetch:https://a.example": 1, "fetch:https://b.example": 1, "flaky": 1}
    saved = Workflow.objects.get(pk=ctx.id)
    assert (saved.status, saved.error["type"]) == (
        "ERROR",
        "django_pgqrs.exceptions.NonDeterministicWorkflow",
    )


def test_the_same_arguments_passed_another_way_are_the_same_call():
    workflows.failures.append(RuntimeError("later step down"))
    ctx = create_workflow("fetch_all", ["https://a.example"])
    with pytest.raises(RuntimeError):
        fetch_all(ctx, ["https://a.example"])
    step = WorkflowStep.objects.get(workflow=ctx.id, step_id="fetch")
    assert step.args_digest is not None
    deployed.add("keyword_fetch")  # fetch(ctx, url=url) where it was fetch(ctx, url)
    assert fetch_all(ctx, ["https://a.example"]) == ["page of https://a.example"]
    assert runs["fetch:https://a.example"] == 1


def failed_fulfil() -> Workflow:
    workflows.failures.append(RuntimeError("carrier down"))
    ctx = create_workflow("fulfil", 7)
    with pytest.raises(RuntimeError):
        fulfil(ctx, 7)
    return ctx


def test_a_step_renamed_in_the_code_keeps_its_checkpoints_through_its_name():
    ctx = failed_fulfil()
    deployed.add("renamed_pack")
    assert fulfil(ctx, 7) == ["charged:7", "packed:7", "shipped:7"]
    assert runs == {"charge": 1, "pack": 1, "flaky": 2}  # pack_renamed did not run


def test_a_step_removed_before_saved_ones_is_refused_saying_what_to_do():
    ctx = failed_fulfil()
    deployed.add("no_pack")
    with pytest.raises(NonDeterministicWorkflow, match="saved run called 'pack'") as caught:
        fulfil(ctx, 7)
    assert f"fork_workflow({ctx.id}, from_step=" in str(caught.value)
    fork = fork_workflow(ctx.id, "pack")  # the fix the message names: runs the rest anew
    assert drain()[0].result == ["charged:7", "shipped:7"]
    assert fork.status() == "SUCCESS"


def test_a_workflow_whose_name_no_longer_exists_waits_for_its_code_with_the_error_saved():
    handle = workflows.add_three.start(1)
    registry.unregister("add_three")  # as on a worker whose code no longer has it
    try:
        assert drain()[0].status == "PENDING"
    finally:
        registry.register(workflows.add_three)
    saved = Workflow.objects.get(pk=handle.id)
    assert (saved.status, saved.error["type"]) == (
        "PENDING",
        "django_pgqrs.exceptions.UnknownWorkflow",
    )
    assert saved.run_at > timezone.now() + datetime.timedelta(seconds=50)  # tried again later


@pytest.mark.skipif(django.VERSION >= (6, 0), reason="django.tasks exists from Django 6.0")
def test_a_tasks_workflow_on_a_django_without_tasks_is_given_back_with_the_reason():
    # Saved by a process of a newer deploy (Django 6), found by a worker still on Django 5.2.
    row = Workflow.objects.create(name="task:orders.tasks.send", input={"args": [], "kwargs": {}})
    drain()
    row.refresh_from_db()
    assert (row.status, row.lease_owner) == ("PENDING", None)
    assert "django_pgqrs.tasks cannot be imported" in row.error["message"]
    assert "Django 6.0" in row.error["message"]
