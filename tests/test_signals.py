"""Lifecycle signals: what they carry, that they follow the commit, and that a receiver that
raises breaks nothing."""

from __future__ import annotations

import datetime
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.conf import settings
from django.db import connections, transaction
from django.dispatch import Signal
from django.test import override_settings
from django.utils import timezone

from django_pgqrs import Workflow, WorkflowStep, cancel_workflow, resume, signals
from django_pgqrs.worker import Worker
from tests import workflows

pytestmark = pytest.mark.django_db(transaction=True)

Received = list[dict[str, Any]]


@pytest.fixture
def listen() -> Iterator[Callable[[Signal], Received]]:
    connected: list[tuple[Signal, Callable[..., None]]] = []

    def listen(signal: Signal) -> Received:
        got: Received = []

        def receiver(sender: Any, **kwargs: Any) -> None:
            got.append({"sender": sender, **kwargs})

        signal.connect(receiver, weak=False)
        connected.append((signal, receiver))
        return got

    yield listen
    for signal, receiver in connected:
        signal.disconnect(receiver)


def _committed_elsewhere(query: Callable[[], Any]) -> Any:
    """Run ``query`` on a connection of another thread: it sees committed rows only."""
    seen: list[Any] = []

    def look() -> None:
        try:
            seen.append(query())
        finally:
            connections.close_all()

    thread = threading.Thread(target=look)
    thread.start()
    thread.join()
    return seen[0]


def test_a_run_sends_started_each_step_and_finished(listen):
    started, steps, finished = (
        listen(signals.workflow_started),
        listen(signals.step_finished),
        listen(signals.workflow_finished),
    )
    assert workflows.add_three.run(1) == 4
    (start,) = started
    assert start["sender"] is Workflow
    assert (start["name"], start["attempt"]) == ("add_three", 1)
    assert [s["step_id"] for s in steps] == ["add_one", "add_one#2", "add_one#3"]
    assert {s["status"] for s in steps} == {"SUCCESS"}
    assert all(s["attempts"] == 1 and 0 <= s["duration"] < 5 for s in steps)
    (end,) = finished
    assert (end["status"], end["result"], end["error"]) == ("SUCCESS", 4, None)
    assert end["workflow_id"] == start["workflow"].id


def test_signals_come_after_the_commit_of_what_they_describe(listen):
    seen: list[Any] = []

    def on_step(sender: Any, workflow: Workflow, step_id: str, **kwargs: Any) -> None:
        seen.append(
            _committed_elsewhere(
                lambda: (
                    WorkflowStep.objects.filter(workflow_id=workflow.id, step_id=step_id)
                    .values_list("status", flat=True)
                    .first()
                )
            )
        )

    def on_end(sender: Any, workflow_id: int, **kwargs: Any) -> None:
        seen.append(
            _committed_elsewhere(
                lambda: Workflow.objects.values_list("status", flat=True).get(pk=workflow_id)
            )
        )

    signals.step_finished.connect(on_step)
    signals.workflow_finished.connect(on_end)
    try:
        workflows.atomic_effects.run("signals")  # an atomic step: its checkpoint commits later
    finally:
        signals.step_finished.disconnect(on_step)
        signals.workflow_finished.disconnect(on_end)
    assert seen == ["SUCCESS", "SUCCESS"]


def test_a_failure_sends_the_steps_error_and_the_workflows(listen):
    steps, finished = listen(signals.step_finished), listen(signals.workflow_finished)
    with pytest.raises(RuntimeError):
        workflows.failing.run("out of stock")
    (step,) = steps
    assert (step["step_id"], step["status"]) == ("fails", "ERROR")
    assert step["error"]["message"] == "out of stock"
    (end,) = finished
    assert end["status"] == "ERROR"
    assert end["error"]["type"] == "RuntimeError"
    assert end["error"]["step"] == "fails"
    assert isinstance(end["exception"], RuntimeError)


def test_a_receiver_that_raises_is_logged_and_breaks_nothing(listen, caplog):
    def broken(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("metrics backend down")

    for signal in (signals.workflow_started, signals.step_finished, signals.workflow_finished):
        signal.connect(broken)
    finished = listen(signals.workflow_finished)
    try:
        with caplog.at_level(logging.ERROR, logger="django.dispatch"):
            assert workflows.add_three.run(1) == 4
    finally:
        for signal in (signals.workflow_started, signals.step_finished, signals.workflow_finished):
            signal.disconnect(broken)
    assert finished[0]["status"] == "SUCCESS"  # the other receivers still got it
    logged = [r for r in caplog.records if r.name == "django.dispatch"]
    assert len(logged) == 5  # started, three steps, finished
    assert all("metrics backend down" in r.getMessage() for r in logged)
    assert all(r.exc_info for r in logged)  # with the receiver's traceback


def test_a_cancellation_is_sent_when_its_transaction_commits(listen):
    finished = listen(signals.workflow_finished)
    handle = workflows.add_three.start(1)
    with transaction.atomic():
        cancel_workflow(handle.id)
        assert finished == []
    (end,) = finished
    assert (end["workflow_id"], end["name"], end["status"]) == (handle.id, "add_three", "CANCELLED")


def test_a_rolled_back_cancellation_sends_nothing(listen):
    finished = listen(signals.workflow_finished)
    handle = workflows.add_three.start(1)
    with pytest.raises(ZeroDivisionError), transaction.atomic():
        cancel_workflow(handle.id)
        1 / 0  # noqa: B018
    assert finished == []
    assert handle.status() == "PENDING"


def _dead_owner(handle_id: int, recoveries: int = 0) -> None:
    Workflow.objects.filter(pk=handle_id).update(
        status="RUNNING",
        lease_owner="lost-host:42",
        lease_token="00000000-0000-0000-0000-000000000001",
        lease_expires_at=timezone.now() - datetime.timedelta(seconds=5),
        attempts=1,
        recovery_attempts=recoveries,
    )


# A worker takes nothing back for a heartbeat after it starts (live owners renew meanwhile).
quick_recovery = override_settings(PGQRS={**settings.PGQRS, "HEARTBEAT_SECONDS": 0.2})


@quick_recovery
def test_a_worker_taking_over_from_a_dead_owner_sends_recovered(listen):
    recovered, started = listen(signals.workflow_recovered), listen(signals.workflow_started)
    handle = workflows.add_three.start(1)
    _dead_owner(handle.id)
    Worker(burst=True).run()
    (event,) = recovered
    assert event["workflow_id"] == handle.id
    assert (event["previous_owner"], event["status"]) == ("lost-host:42", "PENDING")
    assert started[0]["attempt"] == 2
    assert handle.result(timeout=1) == 4


@quick_recovery
def test_a_workflow_that_kills_its_workers_too_often_is_sent_as_finished_in_error(listen):
    recovered, finished = listen(signals.workflow_recovered), listen(signals.workflow_finished)
    handle = workflows.add_three.start(1)
    _dead_owner(handle.id, recoveries=99)
    Worker(burst=True).run()
    assert recovered[0]["status"] == "ERROR"
    (end,) = finished
    assert end["status"] == "ERROR"
    assert end["error"]["type"] == "django_pgqrs.RecoveryLimitReached"


def test_resume_taking_over_from_a_dead_owner_sends_recovered(listen):
    recovered = listen(signals.workflow_recovered)
    handle = workflows.add_three.start(1)
    _dead_owner(handle.id)
    assert resume(handle.id) == 4
    (event,) = recovered
    assert (event["previous_owner"], event["status"]) == ("lost-host:42", "RUNNING")


def test_replayed_steps_send_nothing(listen):
    workflows.failures.append(ValueError("once"))
    with pytest.raises(ValueError):
        workflows.one_flaky.run(1)
    steps = listen(signals.step_finished)
    resume(Workflow.objects.get(name="one_flaky").id)
    assert [s["step_id"] for s in steps] == ["flaky", "add_one#2"]


def test_a_suspension_is_no_end(listen):
    from tests import primitive_workflows as pw

    finished = listen(signals.workflow_finished)
    pw.napper.start(3600)
    Worker(burst=True).run()
    assert finished == []


def test_a_workflow_started_by_a_receiver_is_its_own_not_a_child(listen):
    from tests import primitive_workflows as pw

    started: list[int] = []

    def start_one(sender: Any, workflow: Workflow, step_id: str, **kwargs: Any) -> None:
        if workflow.name == "napper":
            started.append(workflows.add_three.start(step_id.count("#")).id)

    signals.step_finished.connect(start_one)
    try:
        handle = pw.napper.start(3600)
        Worker(burst=True).run()
    finally:
        signals.step_finished.disconnect(start_one)
    (child_id,) = started
    assert Workflow.objects.get(pk=child_id).parent_id is None
    # Its replay (the wake-up after the sleep) is not disturbed by a start it did not make.
    Workflow.objects.filter(pk=handle.id).update(run_at=timezone.now())
    from django_pgqrs.testing import advance, reset_clock

    advance(3600)
    try:
        Worker(burst=True).run()
    finally:
        reset_clock()
    assert handle.status() == "SUCCESS"


def test_a_receiver_of_the_end_may_start_another_workflow(listen):
    follow_ups: list[int] = []

    def follow_up(sender: Any, name: str, status: str, **kwargs: Any) -> None:
        if name == "add_three":
            follow_ups.append(workflows.echo_value.start(status).id)

    signals.workflow_finished.connect(follow_up)
    try:
        workflows.add_three.run(1)
    finally:
        signals.workflow_finished.disconnect(follow_up)
    (pk,) = follow_ups
    assert Workflow.objects.get(pk=pk).status == "PENDING"


def test_a_failure_cancelled_later_is_not_sent_as_finished_again(listen):
    finished = listen(signals.workflow_finished)
    with pytest.raises(RuntimeError):
        workflows.failing.run("boom")
    cancel_workflow(Workflow.objects.get().id)
    assert [end["status"] for end in finished] == ["ERROR"]


def test_a_run_of_a_workflow_that_recovery_already_took_back_is_no_second_recovery(listen):
    recovered = listen(signals.workflow_recovered)
    handle = workflows.add_three.start(1)
    _dead_owner(handle.id)
    stale = Workflow.objects.get(pk=handle.id)  # as a caller read it, before the recovery
    from django_pgqrs.store import store_for

    store_for("default").reap(5)  # recovery took it back (a worker would send the signal)
    workflows.add_three(stale, 1)  # then a caller's stale copy runs it: no takeover
    assert recovered == []


@pytest.mark.django_db(transaction=False)
def test_a_receiver_whose_query_fails_in_a_test_case_leaves_the_run_alone(caplog):
    def broken_query(sender: Any, **kwargs: Any) -> None:
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT * FROM no_such_table")

    signals.step_finished.connect(broken_query)
    try:
        assert workflows.add_three.run(1) == 4
    finally:
        signals.step_finished.disconnect(broken_query)
    assert Workflow.objects.get().status == "SUCCESS"


@pytest.mark.django_db(transaction=False)
def test_a_cancellation_in_a_test_case_is_sent_right_after_its_write(listen):
    # As the engine's own signals are there: a test case's transaction never commits.
    finished = listen(signals.workflow_finished)
    handle = workflows.add_three.start(1)
    assert cancel_workflow(handle.id) is True
    (end,) = finished
    assert (end["workflow_id"], end["status"]) == (handle.id, "CANCELLED")


def test_a_receiver_that_cancels_its_own_workflow_stops_it_at_its_next_step(listen):
    ran = listen(signals.step_finished)

    def cancel_after_the_first(
        sender: Any, workflow: Workflow, step_id: str, **kwargs: Any
    ) -> None:
        if step_id == "add_one":
            cancel_workflow(workflow.id)

    signals.step_finished.connect(cancel_after_the_first)
    try:
        handle = workflows.add_three.start(1)
        Worker(burst=True).run()
    finally:
        signals.step_finished.disconnect(cancel_after_the_first)
    assert handle.status() == "CANCELLED"
    # The second step's body did not run: the cancellation reached this process's run at once,
    # not at the lease's next renewal (its checkpoint would have been refused, but too late).
    assert workflows.runs["add_one"] == 1
    assert [signal["step_id"] for signal in ran] == ["add_one"]
    assert list(WorkflowStep.objects.values_list("step_id", flat=True)) == ["add_one"]
