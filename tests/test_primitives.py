"""Durable primitives: sleeps, events, child workflows, timeouts, cancellation, retries, forks."""

from __future__ import annotations

import datetime

import pytest
from django.db import transaction
from django.test import override_settings
from django.utils import timezone

from django_pgqrs import (
    Workflow,
    WorkflowCancelled,
    WorkflowFailed,
    WorkflowFinished,
    WorkflowHandle,
    WorkflowNotFound,
    WorkflowStep,
    WorkflowSuspended,
    WorkflowTimedOut,
    WorkflowUsageError,
    cancel_workflow,
    create_workflow,
    fork_workflow,
    resume,
    send_event,
)
from django_pgqrs.testing import advance, drain
from tests import primitive_workflows as pw
from tests import workflows
from tests.workflows import runs

pytestmark = pytest.mark.django_db


# --- Sleep --------------------------------------------------------------------------------------


def test_a_long_sleep_suspends_the_workflow_and_it_wakes_when_due():
    handle = pw.napper.start(3600)
    (ran,) = drain()
    assert ran.status == "SLEEPING"
    saved = Workflow.objects.get(pk=handle.id)
    assert saved.lease_token is None  # no lease held, no worker thread held
    assert saved.run_at > timezone.now() + datetime.timedelta(minutes=59)
    assert drain() == []  # not due yet
    advance(3600)
    (ran,) = drain()
    assert ran.status == "SUCCESS"
    assert ran.result[0] == "before"
    assert runs == {"before": 1, "after": 1}


def test_a_replay_never_sleeps_twice_and_waits_only_the_time_left():
    handle = pw.napper.start(100)
    drain()
    wake = Workflow.objects.get(pk=handle.id).run_at
    advance(60)
    assert drain() == []  # not due
    with pytest.raises(WorkflowSuspended):
        resume(handle.id)  # a replay (as after a crash) sleeps until the same time
    assert Workflow.objects.get(pk=handle.id).run_at == wake
    advance(41)
    assert drain()[0].status == "SUCCESS"
    sleeps = WorkflowStep.objects.filter(workflow=handle.id, step_id="pgqrs.sleep")
    assert sleeps.count() == 1


@override_settings(PGQRS={"SUSPEND_AFTER_SECONDS": 2})
def test_a_short_sleep_is_waited_in_the_process():
    started = timezone.now()
    result = pw.napper.run(0.3)
    assert timezone.now() - started >= datetime.timedelta(seconds=0.3)
    assert result[0] == "before"


def test_an_inline_run_that_sleeps_long_returns_control_saying_so():
    with pytest.raises(WorkflowSuspended, match=r"sleeping until .* pgqrs_worker") as caught:
        pw.napper.run(3600)
    assert caught.value.wake_at > timezone.now()
    advance(3601)
    assert resume(caught.value.workflow_id)[0] == "before"


def test_sleep_until_a_time_in_the_past_does_not_wait():
    assert pw.wakes_at.run(timezone.now() - datetime.timedelta(days=1)) == "woke"


@pytest.mark.parametrize(
    ("seconds", "message"),
    [(-1, "negative"), ("10", "number of seconds"), (float("nan"), "number of seconds")],
)
def test_a_sleep_that_cannot_be_is_refused(seconds, message):
    with pytest.raises(WorkflowUsageError, match=message):
        pw.napper.run(seconds)


def test_a_sleep_inside_a_step_or_outside_a_workflow_is_refused():
    with pytest.raises(WorkflowUsageError, match="inside step 'bad_step'"):
        pw.sleeps_in_a_step.run()
    with pytest.raises(Exception, match="outside a running workflow"):
        create_workflow("napper", 1).sleep(1)


# --- Events -------------------------------------------------------------------------------------


def test_an_event_sent_while_the_workflow_waits_wakes_it_with_its_payload():
    handle = pw.waiter.start("approved", None)
    assert drain()[0].status == "SLEEPING"
    send_event(handle.id, "approved", {"by": "ops"})
    (ran,) = drain()
    assert (ran.status, ran.result[0]) == ("SUCCESS", {"by": "ops"})


def test_an_event_sent_before_the_wait_is_kept_and_received():
    handle = pw.waiter.start("approved", None)
    send_event(handle.id, "approved", "early")
    (ran,) = drain()
    assert ran.result[0] == "early"


def test_each_event_is_received_once_in_the_order_sent():
    handle = pw.two_events.start()
    send_event(handle.id, "item", 1)
    send_event(handle.id, "item", 2)
    send_event(handle.id, "item", 3)
    assert drain()[0].result == [1, 2]
    received = Workflow.objects.get(pk=handle.id).events.order_by("id")
    assert [e.received_by for e in received] == ["pgqrs.event:item", "pgqrs.event:item#2", None]


def test_a_wait_times_out_with_none():
    handle = pw.waiter.start("approved", 30)
    drain()
    advance(31)
    (ran,) = drain()
    assert ran.result[0] is None
    assert Workflow.objects.get(pk=handle.id).status == "SUCCESS"


def test_a_replay_gets_the_same_event_and_the_same_deadline():
    ctx = create_workflow("waiter", "approved", 300)
    send_event(ctx.id, "approved", "first")
    pw.waiter(ctx, "approved", 300)
    Workflow.objects.filter(pk=ctx.id).update(status="ERROR")
    runs.clear()
    assert pw.waiter(ctx, "approved", 300)[0] == "first"
    assert runs == {}  # everything replayed


@pytest.mark.django_db(transaction=True)
def test_an_event_sent_in_a_rolled_back_transaction_is_not_delivered():
    handle = pw.waiter.start("approved", None)
    drain()
    with pytest.raises(RuntimeError), transaction.atomic():
        send_event(handle.id, "approved", "never")
        raise RuntimeError("roll back")
    assert drain() == []
    assert Workflow.objects.get(pk=handle.id).status == "SLEEPING"


def test_events_to_an_unknown_or_finished_workflow_are_refused():
    with pytest.raises(WorkflowNotFound):
        send_event(987654, "approved")
    workflows.add_three.run(1)
    with pytest.raises(WorkflowFinished, match="SUCCESS"):
        send_event(Workflow.objects.get(name="add_three").id, "approved")


@pytest.mark.parametrize(("name", "timeout"), [("", None), (3, None), ("ok", 0), ("ok", -5)])
def test_a_wait_that_cannot_be_is_refused(name, timeout):
    with pytest.raises(WorkflowUsageError):
        pw.waiter.run(name, timeout)


# --- Child workflows ----------------------------------------------------------------------------


def test_a_parent_fans_out_and_joins_its_children():
    parent = pw.fan_out.start([1, 2, 3])
    drained = drain()
    by_name = {item.name: item for item in drained if item.id == parent.id}
    assert by_name["fan_out"].status == "SUCCESS"
    assert parent.result(timeout=0) == [3, 4, 5]
    children = Workflow.objects.filter(parent=parent.id)
    assert sorted(children.values_list("status", flat=True)) == ["SUCCESS"] * 3
    assert runs["joined"] == 1


def test_a_replay_never_starts_a_child_twice():
    ctx = create_workflow("one_child", 5)
    with pytest.raises(WorkflowSuspended):
        pw.one_child(ctx, 5)  # started the child, then waits for it
    with pytest.raises(WorkflowSuspended):
        pw.one_child(ctx, 5)  # replayed: the same child, still waited for
    assert Workflow.objects.filter(parent=ctx.id).count() == 1
    drain()
    assert WorkflowHandle(ctx.id).result(timeout=0) == 7


def test_a_child_that_fails_fails_the_parents_wait_with_its_error():
    handle = pw.child_that_fails.start()
    drain()
    assert handle.result(timeout=0).startswith("WorkflowFailed: Workflow")
    assert "no stock" in handle.result(timeout=0)


def test_cancelling_a_parent_cancels_its_unfinished_children():
    parent = pw.parent_of_a_sleeper.start()
    drain()
    child = Workflow.objects.get(parent=parent.id)
    assert child.status == "SLEEPING"
    assert cancel_workflow(parent.id) is True
    assert Workflow.objects.get(pk=child.id).status == "CANCELLED"
    with pytest.raises(WorkflowCancelled):
        parent.result(timeout=0)


# --- Timeouts -----------------------------------------------------------------------------------


def test_a_workflow_past_its_timeout_ends_as_error_at_its_next_wait():
    pw.slow_steps.start(5)
    drain()
    advance(61)
    (ran,) = drain()  # woken at its deadline, not at the end of its 600 s sleep
    assert ran.status == "ERROR"
    assert ran.error["type"] == "django_pgqrs.exceptions.WorkflowTimedOut"
    assert runs == {"slow:0": 1}


def test_a_timeout_given_at_the_start_overrides_the_workflows_own():
    handle = pw.slow_steps.using(timeout=3600).start(1)
    drain()
    advance(601)
    assert drain()[0].status == "SUCCESS"
    assert handle.workflow().deadline_at is not None


def test_a_deadline_reached_before_a_step_stops_the_workflow_there():
    ctx = create_workflow("slow_steps", 2)
    advance(120)
    with pytest.raises(WorkflowTimedOut, match="before step 'note'"):
        pw.slow_steps(ctx, 2)
    assert runs == {}


# --- Cancellation -------------------------------------------------------------------------------


def test_a_sleeping_workflow_is_cancelled_at_once_and_resuming_it_needs_force():
    handle = pw.napper.start(3600)
    drain()
    assert handle.cancel() is True
    assert handle.status() == "CANCELLED"
    with pytest.raises(WorkflowCancelled, match="force"):
        resume(handle.id)
    with pytest.raises(WorkflowSuspended):
        resume(handle.id, force=True)  # runs again, and sleeps again
    assert handle.cancel() is True
    assert cancel_workflow(handle.id) is False  # already cancelled


# --- Retry policy -------------------------------------------------------------------------------


def test_a_non_retryable_error_fails_the_step_at_once():
    with pytest.raises(pw.OrderGone):
        pw.non_retryable.run()
    step = WorkflowStep.objects.get(step_id="refuses")
    assert (step.status, step.attempts) == ("ERROR", 1)
    assert runs == {"refuses": 1}


def test_a_long_backoff_suspends_the_workflow_until_the_next_attempt():
    workflows.failures.extend([ConnectionError("down 1"), ConnectionError("down 2")])
    handle = pw.long_retries.start()
    (ran,) = drain()
    assert ran.status == "SLEEPING"
    step = WorkflowStep.objects.get(workflow=handle.id)
    assert (step.status, step.attempts) == ("ERROR", 1)
    assert [e["message"] for e in step.error["attempt_errors"]] == ["down 1"]
    advance(61)
    assert drain()[0].status == "SLEEPING"  # the second attempt failed too: 120 s more
    advance(121)
    (ran,) = drain()
    assert (ran.status, ran.result) == ("SUCCESS", "served")
    step = WorkflowStep.objects.get(workflow=handle.id)
    assert (step.status, step.attempts) == ("SUCCESS", 3)
    assert runs == {"flaky_service": 3}


def test_the_retries_of_a_suspended_step_are_counted_across_its_wakes():
    workflows.failures.extend([ConnectionError(str(n)) for n in range(5)])
    handle = pw.long_retries.start()
    for _ in range(3):
        assert drain()[0].status == "SLEEPING"
        advance(121)
    (ran,) = drain()
    assert ran.status == "ERROR"
    step = WorkflowStep.objects.get(workflow=handle.id)
    assert step.attempts == 4  # the first try and its 3 retries
    assert [e["message"] for e in step.error["attempt_errors"]] == ["0", "1", "2", "3"]


# --- Forks --------------------------------------------------------------------------------------


def test_a_fork_keeps_the_checkpoints_before_a_step_and_runs_the_rest():
    workflows.failures.append(RuntimeError("bug"))
    ctx = create_workflow("one_flaky", 1)
    with pytest.raises(RuntimeError):
        workflows.one_flaky(ctx, 1)
    fork = fork_workflow(ctx.id)  # from the step it failed on
    assert fork.workflow().forked_from_id == ctx.id
    assert list(fork.workflow().steps.values_list("step_id", flat=True)) == ["add_one"]
    drain()
    assert fork.result(timeout=0) == [2, 2, 3]
    assert runs == {"add_one": 2, "flaky": 2}
    assert Workflow.objects.get(pk=ctx.id).status == "ERROR"  # the original is left as it was


def test_forking_from_a_step_that_was_not_saved_says_which_were():
    ctx = create_workflow("add_three", 1)
    workflows.add_three(ctx, 1)
    with pytest.raises(ValueError, match=r"no saved step 'nope'.*add_one, add_one#2, add_one#3"):
        fork_workflow(ctx.id, "nope")
    assert fork_workflow(ctx.id, "add_one#3").workflow().steps.count() == 2


def test_failed_result_of_a_child_is_raised_as_workflow_failed():
    handle = pw.failing_child.start("gone")
    drain()
    with pytest.raises(WorkflowFailed, match="gone"):
        handle.result(timeout=0)
