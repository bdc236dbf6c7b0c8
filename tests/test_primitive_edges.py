"""Primitives at their edges: cancelled children, races, waits on others, unwinding, clocks."""

from __future__ import annotations

import datetime
import threading
import time

import pytest
from django.db import connection, connections
from django.test import override_settings

from django_pgqrs import (
    PayloadError,
    Workflow,
    WorkflowCancelled,
    WorkflowSuspended,
    WorkflowUsageError,
    cancel_workflow,
    clock,
    create_workflow,
    fork_workflow,
    resume,
    send_event,
    step,
)
from django_pgqrs.checks import check_time_zones
from django_pgqrs.primitives import RECHECK_OTHERS_SECONDS
from django_pgqrs.testing import advance, drain
from tests import primitive_workflows as pw
from tests import workflows
from tests.workflows import runs

pytestmark = pytest.mark.django_db


def test_a_parent_whose_child_is_cancelled_fails_with_it_and_does_not_loop():
    with pytest.raises(WorkflowSuspended) as suspended:
        pw.one_child.run(5)  # started its child (not run yet), and waits for it
    parent = suspended.value.workflow_id
    child = Workflow.objects.get(parent=parent)
    cancel_workflow(child.id)
    (ran,) = drain()
    assert (ran.id, ran.status) == (parent, "ERROR")
    assert ran.error["type"] == "django_pgqrs.exceptions.WorkflowCancelled"
    saved = Workflow.objects.get(pk=parent)
    assert (saved.lease_token, saved.recovery_attempts) == (None, 0)


def test_a_child_whose_saved_input_no_longer_decodes_wakes_its_parent_as_it_fails():
    from tests.test_values import TAG, write_raw

    with pytest.raises(WorkflowSuspended) as suspended:
        pw.one_child.run(5)  # started its child (not run yet), and waits for it
    parent = suspended.value.workflow_id
    child = Workflow.objects.get(parent=parent)
    gone = {"args": [{TAG: "tests.nowhere:Gone", "v": 1}], "kwargs": {}}
    write_raw("pgqrs_workflows", "input", "workflow_id", child.id, gone)
    with pytest.raises(PayloadError):
        drain(limit=1)  # the child fails on its input...
    assert Workflow.objects.filter(pk=child.id).values_list("status", flat=True).get() == "ERROR"
    (ran,) = drain()  # ...and its end woke the parent, which fails with it
    assert (ran.id, ran.status) == (parent, "ERROR")
    assert Workflow.objects.get(pk=parent).error["type"] == "django_pgqrs.exceptions.WorkflowFailed"


def test_a_wait_for_a_workflow_that_is_not_a_child_looks_again_by_itself():
    first = pw.shares_a_child.start("shared")
    second = pw.shares_a_child.start("shared")  # gets the first one's child
    drain()
    assert Workflow.objects.filter(name="add_two").count() == 1
    assert first.result(timeout=0) == 3  # woken by its child's end
    assert second.status() == "SLEEPING"  # not its child: nobody wakes it...
    advance(RECHECK_OTHERS_SECONDS + 1)
    drain()
    assert second.result(timeout=0) == 3  # ...but it looks again by itself


def test_a_wait_for_a_workflow_finished_after_it_suspended_ends_at_its_next_look():
    other = workflows.add_three.create(1)  # the caller's, not due: drain leaves it
    waiting = pw.waits_for_other.start(other.id)
    assert drain()[0].status == "SLEEPING"
    workflows.add_three(other, 1)  # finished, waking nobody
    advance(RECHECK_OTHERS_SECONDS + 1)
    (ran,) = drain()
    assert (ran.id, ran.result) == (waiting.id, 4)


def test_names_with_a_hash_are_refused_they_would_collide_with_repeated_calls():
    with pytest.raises(ValueError, match="'#'"):
        step(name="price#2")(lambda ctx: None)
    with pytest.raises(ValueError, match=r"pgqrs\."):
        step(name="pgqrs.sleep")(lambda ctx: None)
    with pytest.raises(WorkflowUsageError, match="without '#'"):
        pw.waiter.run("approval#2", None)


def test_a_finally_around_a_wait_does_not_run_its_steps_when_the_workflow_suspends():
    handle = pw.cleans_up_after_waiting.start()
    assert drain()[0].status == "SLEEPING"
    assert runs == {}  # the cleanup step did not run on the way out of the suspension
    send_event(handle.id, "done", 1)
    (ran,) = drain()
    assert (ran.status, ran.result) == ("SUCCESS", [1])
    assert runs == {"cleanup": 1}


@pytest.mark.django_db(transaction=True)
def test_a_cancellation_during_a_short_in_process_sleep_stops_the_next_step():
    ctx = create_workflow("short_nap_then_step")

    def cancel_soon() -> None:
        time.sleep(0.3)
        cancel_workflow(ctx.id)
        connections.close_all()

    canceller = threading.Thread(target=cancel_soon)
    canceller.start()
    with pytest.raises(WorkflowCancelled):
        pw.short_nap_then_step(ctx)
    canceller.join()
    assert runs == {"before-nap": 1}  # after-nap's body never ran


def test_a_clock_here_behind_the_databases_does_not_send_a_due_workflow_back_to_sleep(
    monkeypatch,
):
    handle = pw.napper.start(101)
    real = clock.now
    monkeypatch.setattr(clock, "now", lambda: real() - datetime.timedelta(seconds=100))
    assert drain()[0].status == "SLEEPING"  # due in 1 s by the database's clock
    time.sleep(1.2)
    (ran,) = drain()  # by this clock, 99 s are left; the database said it was due
    assert (ran.id, ran.status) == (handle.id, "SUCCESS")


def test_time_zones_must_be_on():
    with override_settings(USE_TZ=False):
        assert [error.id for error in check_time_zones()] == ["django_pgqrs.E007"]
    assert check_time_zones() == []


def test_an_event_sent_to_a_failed_workflow_is_kept_for_when_it_is_resumed():
    workflows.failures.append(RuntimeError("first run fails"))
    ctx = create_workflow("one_flaky", 1)
    with pytest.raises(RuntimeError):
        workflows.one_flaky(ctx, 1)
    send_event(ctx.id, "late", "kept")
    assert Workflow.objects.get(pk=ctx.id).events.get().payload == "kept"


def test_a_workflow_past_its_deadline_cancels_its_unfinished_children():
    parent = pw.parent_that_times_out.start()
    drain()
    child = Workflow.objects.get(parent=parent.id)
    advance(61)
    drain()
    assert parent.status() == "ERROR"
    assert Workflow.objects.get(pk=child.id).status == "CANCELLED"


def test_a_workflow_run_inline_inside_another_is_refused():
    with pytest.raises(WorkflowUsageError, match=r"add_two\.start\(\.\.\.\)"):
        pw.runs_inline_inside.run()


def test_a_fork_gets_the_timeout_of_its_workflow_from_now():
    handle = pw.slow_steps.start(3)
    drain()
    fork = fork_workflow(handle.id, "pgqrs.sleep")
    assert fork.workflow().deadline_at > handle.workflow().deadline_at


@pytest.mark.django_db(transaction=True)
def test_a_child_ending_while_its_parent_suspends_still_wakes_it(postgres_only):
    """The child's end locks the parent's row until it commits: the parent's suspension waits
    for it, then sees the child ended."""
    at_suspend, child_woke = threading.Event(), threading.Event()
    outcome: list[object] = []

    def parent_hook(execute, sql, params, many, context):  # type: ignore[no-untyped-def]
        if "status = 'SLEEPING', run_at" in sql:
            at_suspend.set()
            child_woke.wait(10)
        return execute(sql, params, many, context)

    def child_hook(execute, sql, params, many, context):  # type: ignore[no-untyped-def]
        result = execute(sql, params, many, context)
        if "%(wake_id)s" in sql:
            child_woke.set()
            time.sleep(1)  # the child's end commits only now: the parent's suspension waits
        return result

    def parent() -> None:
        try:
            with connection.execute_wrapper(parent_hook):
                pw.one_child.run(5)
        except WorkflowSuspended as exc:
            outcome.append(exc.wake_at)
        finally:
            connection.close()

    def child() -> None:
        try:
            at_suspend.wait(10)
            with connection.execute_wrapper(child_hook):
                resume(Workflow.objects.get(name="add_two").pk)
        finally:
            connection.close()

    threads = [threading.Thread(target=parent), threading.Thread(target=child)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert Workflow.objects.get(name="add_two").status == "SUCCESS"
    parent_row = Workflow.objects.get(name="one_child")
    assert parent_row.run_at.year < 9999  # woken, not asleep for ever
    assert drain()[0].result == 7
