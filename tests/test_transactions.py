"""Workflows and database transactions: the caller's, an atomic step's, and a test case's."""

from __future__ import annotations

import datetime
import threading
import time

import pytest
from django.contrib.auth.models import Group
from django.db import IntegrityError, connections, transaction
from django.test import override_settings
from django.utils import timezone

from django_pgqrs import (
    NestedAtomicStep,
    Workflow,
    WorkflowInTransaction,
    WorkflowStep,
    create_workflow,
    resume,
)
from django_pgqrs.store import store_for
from tests import workflows
from tests.fault_workflows import long_atomic, nested_atomic
from tests.workflows import runs

# --- A run inside the caller's transaction ------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_run_inside_the_callers_atomic_block_is_refused_and_saves_nothing():
    with (
        transaction.atomic(),
        pytest.raises(WorkflowInTransaction, match=r"add_three\.start\(\.\.\.\)"),
    ):
        workflows.add_three.run(1)
    assert not Workflow.objects.exists()
    assert runs == {}


@pytest.mark.django_db(transaction=True)
def test_calling_or_resuming_a_workflow_inside_an_atomic_block_is_refused():
    ctx = create_workflow("add_three", 1)
    with transaction.atomic():
        with pytest.raises(WorkflowInTransaction, match="on_commit"):
            workflows.add_three(ctx, 1)
        with pytest.raises(WorkflowInTransaction):
            resume(ctx.id)
    assert Workflow.objects.get(pk=ctx.id).status == "PENDING"
    assert workflows.add_three(ctx, 1) == 4  # after the block, it runs


@pytest.mark.django_db(transaction=True)
def test_start_inside_an_atomic_block_joins_it_and_run_after_commit_works():
    with transaction.atomic():
        handle = workflows.add_three.start(1)
        transaction.on_commit(lambda: workflows.add_three.run(2))
    assert handle.status() == "PENDING"
    assert Workflow.objects.get(status="SUCCESS").result == 5


@pytest.mark.django_db
def test_a_test_cases_own_transaction_is_allowed():
    assert workflows.add_three.run(1) == 4


@pytest.mark.django_db
def test_a_step_failing_with_a_database_error_inside_a_test_case_is_saved_as_its_failure():
    """The step's body runs in a savepoint, so its failure leaves the test's transaction usable."""
    Group.objects.create(name="taken")

    def duplicate(ctx: Workflow) -> None:
        Group.objects.create(name="taken")

    workflows.hooks.append(duplicate)
    ctx = create_workflow("with_hook", 1)
    with pytest.raises(IntegrityError):
        workflows.with_hook(ctx, 1)
    saved = Workflow.objects.get(pk=ctx.id)
    assert (saved.status, saved.error["step"]) == ("ERROR", "during_step")
    assert WorkflowStep.objects.get(workflow=ctx.id, step_id="during_step").status == "ERROR"
    assert workflows.with_hook(ctx, 1) == [2, "done"]  # resumed, in the same test


# --- Times read inside a transaction ------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@override_settings(PGQRS={"LEASE_SECONDS": 1, "HEARTBEAT_SECONDS": 0.2})
def test_an_atomic_step_longer_than_the_lease_keeps_a_live_lease_and_its_workflow():
    seen = []

    def look(ctx: Workflow) -> None:
        row = Workflow.objects.get(pk=ctx.id)
        seen.append((row.lease_expires_at, row.updated_at, timezone.now()))
        # A worker's recovery, from another connection, must find nothing to take.
        reaped: list[object] = []
        thread = threading.Thread(target=lambda: reaped.extend(_reap()))
        thread.start()
        thread.join()
        seen.append(reaped)

    workflows.hooks.append(look)
    before = timezone.now()
    result = long_atomic.run(2.5)  # two and a half leases inside one transaction
    assert result[1] == "done"
    (expires, updated, now), reaped = seen
    assert expires > now  # the checkpoint did not write a lease that had run out
    assert updated > before + datetime.timedelta(seconds=2)  # nor a stale updated_at
    assert reaped == []
    saved = Workflow.objects.get(name="long_atomic")
    assert (saved.status, saved.recovery_attempts) == ("SUCCESS", 0)
    assert Group.objects.count() == 1


def _reap() -> list[object]:
    try:
        return list(store_for("default").reap(5))
    finally:
        connections.close_all()


@pytest.mark.django_db(transaction=True)
def test_a_delay_given_inside_a_transaction_counts_from_the_save_not_from_its_start():
    with transaction.atomic():
        Group.objects.create(name="first write")  # the transaction starts here
        time.sleep(1.0)
        saved_at = timezone.now()
        handle = workflows.add_three.using(run_at=datetime.timedelta(seconds=3)).start(1)
    due = handle.workflow().run_at
    assert due >= saved_at + datetime.timedelta(seconds=2.9)


@pytest.mark.django_db(transaction=True)
def test_a_due_time_is_kept_as_given():
    when = timezone.now() + datetime.timedelta(days=2, microseconds=7)
    assert workflows.add_three.using(run_at=when).start(1).workflow().run_at == when


# --- Atomic steps inside steps ------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_an_atomic_step_inside_a_plain_step_is_refused():
    with pytest.raises(NestedAtomicStep, match="make 'plain_outer' atomic"):
        nested_atomic.run("editors", "plain")
    assert not Group.objects.exists()
    saved = Workflow.objects.get()
    assert (saved.status, saved.error["type"]) == (
        "ERROR",
        "django_pgqrs.exceptions.NestedAtomicStep",
    )


@pytest.mark.django_db(transaction=True)
def test_an_atomic_step_inside_an_atomic_step_writes_once_with_its_checkpoint():
    group_id = nested_atomic.run("editors", "atomic")
    assert list(Group.objects.values_list("pk", flat=True)) == [group_id]
    saved = Workflow.objects.get()
    assert list(saved.steps.values_list("step_id", flat=True)) == ["atomic_outer"]
    runs.clear()
    assert resume(saved.id) == group_id
    assert runs == {}
