"""The history of a workflow's runs: which workers ran it, how each run ended, earlier errors."""

from __future__ import annotations

import datetime

import pytest
from django.utils import timezone

from django_pgqrs import Workflow, resume
from django_pgqrs.statements import HISTORY_LIMIT
from django_pgqrs.store import store_for
from django_pgqrs.testing import advance, drain
from tests import primitive_workflows as pw
from tests import workflows

pytestmark = pytest.mark.django_db


def test_a_run_that_ends_leaves_its_attempt_worker_time_and_outcome():
    before = timezone.now()
    handle = workflows.add_three.start(1)
    drain()
    saved = Workflow.objects.get(pk=handle.id)
    (entry,) = saved.attempt_history
    assert entry["attempt"] == 1
    assert entry["outcome"] == "SUCCESS"
    assert entry["worker"]
    assert "error" not in entry
    assert before - datetime.timedelta(seconds=5) <= entry["ended_at"] <= timezone.now()
    assert saved.worker_ids == [entry["worker"]]


def test_an_error_resumed_to_success_is_kept_in_the_history():
    workflows.failures.append(ValueError("first failure"))
    with pytest.raises(ValueError, match="first failure"):
        workflows.one_flaky.run(1)
    saved = Workflow.objects.get(name=workflows.one_flaky.name)
    assert saved.error["type"] == "ValueError"
    resume(saved.id)
    saved.refresh_from_db()
    assert saved.status == "SUCCESS"
    assert saved.error is None  # the column holds the last failure only
    failed, succeeded = saved.attempt_history
    assert (failed["attempt"], failed["outcome"]) == (1, "ERROR")
    assert failed["error"]["type"] == "ValueError"
    assert failed["error"]["message"] == "first failure"
    assert "Traceback" in failed["error"]["traceback"]
    assert (succeeded["attempt"], succeeded["outcome"]) == (2, "SUCCESS")


def test_a_suspension_is_a_run_of_its_own():
    handle = pw.napper.start(3600)
    drain()
    advance(3600)
    drain()
    saved = Workflow.objects.get(pk=handle.id)
    assert [(e["attempt"], e["outcome"]) for e in saved.attempt_history] == [
        (1, "SLEEPING"),
        (2, "SUCCESS"),
    ]


def test_a_run_taken_back_from_a_dead_owner_is_recorded_as_lost():
    handle = workflows.add_three.start(1)
    Workflow.objects.filter(pk=handle.id).update(
        status="RUNNING",
        lease_owner="gone-host:1",
        lease_expires_at=timezone.now() - datetime.timedelta(seconds=1),
        attempts=1,
    )
    store_for("default").reap(5)
    drain()
    saved = Workflow.objects.get(pk=handle.id)
    lost, done = saved.attempt_history
    assert (lost["worker"], lost["outcome"]) == ("gone-host:1", "LOST")
    assert done["outcome"] == "SUCCESS"
    assert saved.worker_ids[0] == "gone-host:1"


def test_the_history_keeps_the_newest_entries_only():
    handle = workflows.add_three.start(1)
    drain()
    old = [
        {"attempt": n, "worker": "w", "ended_at": None, "outcome": "SLEEPING"}
        for n in range(HISTORY_LIMIT)
    ]
    Workflow.objects.filter(pk=handle.id).update(history=old, status="ERROR", attempts=60)
    resume(handle.id)
    history = Workflow.objects.get(pk=handle.id).history
    assert len(history) == HISTORY_LIMIT
    assert history[0]["attempt"] == 1  # the oldest went
    assert (history[-1]["attempt"], history[-1]["outcome"]) == (61, "SUCCESS")


def test_a_running_workflow_names_its_current_owner_last():
    workflow = Workflow(status="RUNNING", lease_owner="here:1", history=[{"worker": "there:2"}])
    assert workflow.worker_ids == ["there:2", "here:1"]


def test_a_resume_that_takes_over_from_a_dead_owner_records_the_lost_run():
    handle = workflows.add_three.start(1)
    Workflow.objects.filter(pk=handle.id).update(
        status="RUNNING",
        lease_owner="gone-host:1",
        lease_token="00000000-0000-0000-0000-000000000001",
        lease_expires_at=timezone.now() - datetime.timedelta(seconds=1),
        attempts=1,
    )
    resume(handle.id)
    lost, done = Workflow.objects.get(pk=handle.id).attempt_history
    assert (lost["attempt"], lost["worker"], lost["outcome"]) == (1, "gone-host:1", "LOST")
    assert lost["taken_over_by"] == done["worker"]
    assert (done["attempt"], done["outcome"]) == (2, "SUCCESS")


def test_cancelling_a_running_workflow_ends_its_run_in_the_history():
    from django_pgqrs import cancel_workflow

    handle = workflows.add_three.start(1)
    Workflow.objects.filter(pk=handle.id).update(
        status="RUNNING", lease_owner="busy-host:7", attempts=1
    )
    cancel_workflow(handle.id)
    saved = Workflow.objects.get(pk=handle.id)
    (entry,) = saved.attempt_history
    assert (entry["attempt"], entry["worker"], entry["outcome"]) == (1, "busy-host:7", "CANCELLED")
    assert saved.worker_ids == ["busy-host:7"]


@pytest.mark.parametrize("garbage", [{"not": "a list"}, "junk", 7, [1, "two", None]])
def test_a_history_that_is_not_the_engines_does_not_stop_runs_nor_recovery(garbage):
    stuck = workflows.add_three.start(1)
    other = workflows.add_three.start(2)
    for handle in (stuck, other):
        Workflow.objects.filter(pk=handle.id).update(
            status="RUNNING",
            lease_owner="gone-host:1",
            lease_expires_at=timezone.now() - datetime.timedelta(seconds=1),
            attempts=1,
        )
    Workflow.objects.filter(pk=stuck.id).update(history=garbage)
    assert len(store_for("default").reap(5)) == 2  # one bad row does not stop the others
    drain()
    for handle in (stuck, other):
        saved = Workflow.objects.get(pk=handle.id)
        assert saved.status == "SUCCESS"
        assert saved.attempt_history[-1]["outcome"] == "SUCCESS"
    assert Workflow(history=garbage).worker_ids == []
