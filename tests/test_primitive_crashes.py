"""Primitives under SIGKILL: a worker dies inside a sleep, after an event, after starting a child."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from django_pgqrs import Workflow, send_event
from tests import primitive_workflows as pw

pytestmark = pytest.mark.django_db(transaction=True)

FAST = {
    "PGQRS_TEST_LEASE_SECONDS": "1.5",
    "PGQRS_TEST_HEARTBEAT_SECONDS": "0.3",
    "PGQRS_TEST_POLL_SECONDS": "0.1",
}


def test_a_worker_killed_in_a_sleep_is_replaced_and_only_the_time_left_is_waited(processes):
    handle = pw.sleep_then_hold.start(4)
    started = time.monotonic()
    doomed = processes.start("pgqrs_worker", PGQRS_TEST_SUSPEND_AFTER_SECONDS="10", **FAST)
    processes.wait_for_stderr(doomed, "started, attempt 1")
    time.sleep(1)  # inside the 4 s sleep, waited in the process
    doomed.kill()
    heir = processes.start("pgqrs_worker", PGQRS_TEST_SUSPEND_AFTER_SECONDS="10", **FAST)
    assert handle.result(timeout=30) == ["first", "second"]
    assert 4 <= time.monotonic() - started < 4 + 6  # the sleep ended when first planned
    assert Counter(processes.traced()) == {"first": 1, "second": 1}
    assert Workflow.objects.get(pk=handle.id).recovery_attempts == 1
    heir.kill()


def test_a_worker_killed_after_receiving_an_event_leaves_it_received_once(processes):
    handle = pw.wait_then_hold.start()
    processes.hold.touch()
    doomed = processes.start("pgqrs_worker", PGQRS_TEST_HOLD=str(processes.hold), **FAST)
    processes.wait_for_stderr(doomed, "suspended: waiting for event 'go'")
    send_event(handle.id, "go", {"n": 1})
    send_event(handle.id, "go", {"n": 2})
    processes.wait_for_line(doomed, f"holding after-event of workflow {handle.id}")
    doomed.kill()
    processes.hold.unlink()
    heir = processes.start("pgqrs_worker", **FAST)
    assert handle.result(timeout=30) == [{"n": 1}, "after-event"]  # the same event, again
    events = Workflow.objects.get(pk=handle.id).events.order_by("id")
    assert [e.received_by for e in events] == ["pgqrs.event:go", None]  # the second is kept
    heir.kill()


def test_a_worker_killed_after_starting_a_child_does_not_start_it_twice(processes):
    handle = pw.parent_holding.start()
    processes.hold.touch()
    doomed = processes.start("pgqrs_worker", PGQRS_TEST_HOLD=str(processes.hold), **FAST)
    processes.wait_for_line(doomed, f"holding parent of workflow {handle.id}")
    doomed.kill()
    processes.hold.unlink()
    heir = processes.start("pgqrs_worker", "--concurrency", "2", **FAST)
    child_id, result = handle.result(timeout=30)
    assert result == 42
    assert list(Workflow.objects.filter(parent=handle.id).values_list("pk", flat=True)) == [
        child_id
    ]
    assert Counter(processes.traced())["child:40"] == 1
    heir.kill()


def test_an_idle_worker_wakes_a_waiting_workflow_as_soon_as_its_event_is_sent(
    processes, postgres_only
):
    handle = pw.waiter.start("approved", None)
    worker = processes.start("pgqrs_worker", PGQRS_TEST_POLL_SECONDS="30")
    processes.wait_for_stderr(worker, "suspended: waiting for event 'approved'")
    sent = time.time()
    send_event(handle.id, "approved", "yes")
    payload, received = handle.result(timeout=10)
    assert payload == "yes"
    assert received - sent < 5  # far sooner than the 30 s poll: NOTIFY woke it
    worker.kill()
