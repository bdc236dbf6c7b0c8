"""django_pgqrs.testing: what a project's own tests use to run and crash workflows."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from django.core.management import CommandError, call_command

from django_pgqrs import SimulatedCrash, Workflow, WorkflowBusy, WorkflowStep, resume
from django_pgqrs.testing import crash_at, drain
from tests import workflows
from tests.workflows import runs

pytestmark = pytest.mark.django_db  # inside the test's transaction, as most tests are


def test_drain_runs_started_workflows_in_the_tests_transaction():
    ok = workflows.add_three.start(1)
    failing = workflows.failing.start("card declined")
    other = workflows.add_three.using(queue="reports").start(10)
    drained = drain()
    by_id = {item.id: item for item in drained}
    assert (by_id[ok.id].status, by_id[ok.id].result) == ("SUCCESS", 4)
    assert by_id[failing.id].status == "ERROR"
    assert by_id[failing.id].error["message"] == "card declined"
    assert by_id[other.id].result == 13
    assert ok.result(timeout=0) == 4
    assert drain() == []  # nothing left


def test_drain_takes_only_the_queues_named():
    default, reports = (
        workflows.add_three.start(1),
        workflows.add_three.using(queue="reports").start(2),
    )
    assert [item.id for item in drain(["reports"])] == [reports.id]
    assert default.status() == "PENDING"


def test_a_crash_before_a_step_then_a_resume_does_not_run_finished_steps_again():
    with crash_at("produce"), pytest.raises(SimulatedCrash, match="'produce'"):
        workflows.then_produce.run(1)
    saved = Workflow.objects.get()
    assert (saved.status, saved.lease_token) == ("PENDING", None)
    assert list(saved.steps.values_list("step_id", flat=True)) == ["add_one", "add_one#2"]
    assert resume(saved.id) == [2, 3, "produced"]
    assert runs == {"add_one": 2, "produce": 1}


def test_a_crash_after_an_atomic_steps_body_rolls_its_writes_back():
    with crash_at("create_group", after_body=True), pytest.raises(SimulatedCrash):
        workflows.atomic_effects.run("editors")
    assert runs == {"create_group": 1}  # the body ran...
    assert not Group.objects.exists()  # ...and its writes went with the crash
    assert not WorkflowStep.objects.exists()
    group_id = resume(Workflow.objects.get().id)
    assert list(Group.objects.values_list("pk", flat=True)) == [group_id]


def test_a_crash_can_leave_the_lease_as_a_dead_process_leaves_it():
    with crash_at("produce", release=False), pytest.raises(SimulatedCrash):
        workflows.then_produce.run(1)
    saved = Workflow.objects.get()
    assert saved.status == "RUNNING" and saved.lease_token is not None
    with pytest.raises(WorkflowBusy):
        resume(saved.id)
    assert resume(saved.id, force=True) == [2, 3, "produced"]


def test_a_crash_stops_a_drain_as_it_stops_a_worker_and_the_next_drain_finishes():
    handle = workflows.then_produce.start(1)
    with crash_at("add_one", after_body=True), pytest.raises(SimulatedCrash):
        drain()
    assert [(item.id, item.result) for item in drain()] == [(handle.id, [2, 3, "produced"])]
    assert runs["add_one"] == 3  # the crashed call ran twice, the others once


def test_the_pgqrs_fixture_drains_and_crashes(pgqrs):
    handle = workflows.add_three.start(5)
    with pgqrs.crash_at("add_one"), pytest.raises(SimulatedCrash):
        pgqrs.drain()
    assert pgqrs.drain()[0].result == 8
    assert handle.status() == "SUCCESS"


def test_a_worker_started_inside_the_tests_transaction_says_why_it_sees_nothing():
    workflows.add_three.start(1)
    with pytest.raises(CommandError, match=r"cannot see what this transaction.*drain\(\)"):
        call_command("pgqrs_worker", "--burst")
