"""Leases: one process at a time advances a workflow, and a process that lost its lease cannot write."""

from __future__ import annotations

import datetime
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from django.contrib.auth.models import Group
from django.db import connections
from django.test import override_settings
from django.utils import timezone

from django_pgqrs import LeaseLost, Workflow, WorkflowBusy, WorkflowStep, create_workflow, resume
from django_pgqrs.lease import Lease, heartbeat, process_owner
from tests import fault_workflows, workflows
from tests.workflows import runs


@pytest.fixture(autouse=True)
def _clear_hooks() -> Iterator[None]:
    workflows.hooks.clear()
    yield
    workflows.hooks.clear()


def steal_lease(ctx: Workflow) -> None:
    """Give the workflow's lease to another owner, through another connection, and wait for it."""

    def update() -> None:
        try:
            Workflow.objects.filter(pk=ctx.id).update(
                lease_owner="thief:1", lease_token=uuid.UUID(int=1)
            )
        finally:
            connections.close_all()

    thread = threading.Thread(target=update)
    thread.start()
    thread.join()


# --- Two processes ------------------------------------------------------------------------------


def test_a_second_process_is_refused_while_the_first_runs_the_workflow(processes):
    ctx = create_workflow("two_steps", "x")
    processes.hold.touch()
    first = processes.start("pgqrs_resume", str(ctx.id), PGQRS_TEST_HOLD=str(processes.hold))
    output = processes.output(first)
    output.wait_for(f"waiting in step two of workflow {ctx.id}")
    owner = f"{socket.gethostname()}:{first.pid}"

    second = processes.run("pgqrs_resume", str(ctx.id))
    assert second.returncode == 1
    assert f"Workflow {ctx.id} is being run by {owner}" in second.stderr

    with pytest.raises(WorkflowBusy, match=f"being run by {owner}") as caught:
        resume(ctx.id)
    assert caught.value.owner == owner
    with pytest.raises(WorkflowBusy):
        workflows.two_steps(ctx, "x")
    assert runs == {}

    processes.hold.unlink()
    assert first.wait(timeout=30) == 0, processes.stderr_of(first)
    assert "Result: 'two:one:x'" in output.rest()
    assert processes.traced() == ["step_one", "step_two"]
    saved = Workflow.objects.get(pk=ctx.id)
    assert (saved.status, saved.result, saved.lease_owner) == ("SUCCESS", "two:one:x", None)
    assert (saved.attempts, saved.recovery_attempts) == (1, 0)


# --- Fencing ------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_checkpoint_after_the_lease_was_taken_is_refused_with_lease_lost():
    workflows.hooks.append(steal_lease)
    ctx = create_workflow("with_hook", 1)
    with pytest.raises(LeaseLost, match=f"lost its lease on workflow {ctx.id}"):
        workflows.with_hook(ctx, 1)
    assert runs == {"add_one": 1, "during_step": 1}
    assert list(WorkflowStep.objects.filter(workflow_id=ctx.id).values_list("step_id")) == [
        ("add_one",)
    ]
    saved = Workflow.objects.get(pk=ctx.id)
    # The new owner's row, untouched by the process that lost it.
    assert (saved.status, saved.lease_owner, saved.lease_token) == (
        "RUNNING",
        "thief:1",
        uuid.UUID(int=1),
    )
    assert (saved.result, saved.error) == (None, None)
    assert all(lease.workflow_id != ctx.id for lease in heartbeat.held())


@pytest.mark.django_db(transaction=True)
def test_a_failure_after_the_lease_was_taken_is_not_saved():
    def steal_then_fail(ctx: Workflow) -> None:
        steal_lease(ctx)
        raise ValueError("after losing the lease")

    workflows.hooks.append(steal_then_fail)
    ctx = create_workflow("with_hook", 1)
    with pytest.raises(LeaseLost):
        workflows.with_hook(ctx, 1)
    assert not WorkflowStep.objects.filter(workflow_id=ctx.id, step_id="during_step").exists()
    saved = Workflow.objects.get(pk=ctx.id)
    assert (saved.status, saved.lease_owner, saved.error) == ("RUNNING", "thief:1", None)


@pytest.mark.django_db(transaction=True)
def test_an_atomic_step_that_lost_its_lease_rolls_its_writes_back(postgres_only):
    workflows.hooks.append(steal_lease)
    ctx = create_workflow("atomic_with_hook", "editors")
    with pytest.raises(LeaseLost):
        workflows.atomic_with_hook(ctx, "editors")
    assert runs == {"atomic_during_step": 1}
    assert not Group.objects.exists()
    assert not WorkflowStep.objects.filter(workflow_id=ctx.id).exists()


# --- Heartbeat ----------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@override_settings(PGQRS={"LEASE_SECONDS": 60, "HEARTBEAT_SECONDS": 0.05})
def test_a_heartbeat_extends_the_lease_of_a_held_workflow_and_nothing_else():
    soon = timezone.now() + datetime.timedelta(seconds=2)
    held, other = create_workflow("add_three", 1), create_workflow("add_three", 2)
    tokens = {held.id: uuid.uuid4(), other.id: uuid.uuid4()}
    for workflow_id, token in tokens.items():
        Workflow.objects.filter(pk=workflow_id).update(
            status="RUNNING", lease_owner=process_owner(), lease_token=token, lease_expires_at=soon
        )
    before = {w.id: w for w in Workflow.objects.filter(pk__in=tokens)}
    leases = [Lease("default", held.id, tokens[held.id]), Lease("default", other.id, uuid.uuid4())]
    for lease in leases:
        heartbeat.hold(lease)
    try:
        assert heartbeat.beat() == 1
    finally:
        for lease in leases:
            heartbeat.drop(lease)
    after = {w.id: w for w in Workflow.objects.filter(pk__in=tokens)}
    assert after[held.id].lease_expires_at > timezone.now() + datetime.timedelta(seconds=50)
    assert after[held.id].updated_at == before[held.id].updated_at  # renewal is not progress
    assert after[held.id].lease_token == tokens[held.id]
    assert after[other.id].lease_expires_at == soon  # its token is not the one held


@pytest.mark.django_db(transaction=True)
def test_a_lease_held_by_another_thread_of_this_process_is_respected():
    ctx = create_workflow("add_three", 1)
    other_thread = f"{process_owner()}:999999"
    Workflow.objects.filter(pk=ctx.id).update(
        status="RUNNING",
        lease_owner=other_thread,
        lease_token=uuid.uuid4(),
        lease_expires_at=timezone.now() + datetime.timedelta(seconds=30),
    )
    with pytest.raises(WorkflowBusy, match=other_thread):
        workflows.add_three(ctx, 1)
    assert runs == {}


@pytest.mark.django_db(transaction=True)
def test_a_live_lease_under_this_processs_own_name_is_not_taken():
    """Two containers with one hostname, both PID 1: the name is the same, the token is not."""
    ctx = create_workflow("add_three", 1)
    Workflow.objects.filter(pk=ctx.id).update(
        status="RUNNING",
        lease_owner=process_owner(),
        lease_token=uuid.uuid4(),
        lease_expires_at=timezone.now() + datetime.timedelta(seconds=30),
    )
    with pytest.raises(WorkflowBusy, match=process_owner()):
        workflows.add_three(ctx, 1)
    assert runs == {}


@pytest.mark.django_db(transaction=True)
def test_a_run_takes_back_the_lease_a_failed_run_here_left_behind():
    """As after a run here lost its database connection before it could give the lease back."""
    ctx = create_workflow("add_three", 1)
    left = Lease("default", ctx.id)
    Workflow.objects.filter(pk=ctx.id).update(
        status="RUNNING",
        lease_owner=process_owner(),
        lease_token=left.token,
        lease_expires_at=timezone.now() + datetime.timedelta(seconds=30),
    )
    heartbeat.leave(left)
    assert workflows.add_three(ctx, 1) == 4
    saved = Workflow.objects.get(pk=ctx.id)
    assert (saved.status, saved.recovery_attempts) == ("SUCCESS", 0)
    assert heartbeat.take_back(ctx.id) is None


# --- Forks --------------------------------------------------------------------------------------


def running_row(lease_seconds: float) -> Lease:
    ctx = create_workflow("add_three", 1)
    lease = Lease("default", ctx.id)
    Workflow.objects.filter(pk=ctx.id).update(
        status="RUNNING",
        lease_owner=process_owner(),
        lease_token=lease.token,
        lease_expires_at=timezone.now() + datetime.timedelta(seconds=lease_seconds),
    )
    return lease


def in_child(body: Callable[[], None], timeout: int = 10) -> int:
    """Fork; run ``body`` in the child, which exits 0 if it returns (killed after ``timeout``)."""
    pid = os.fork()
    if pid == 0:
        signal.alarm(timeout)
        try:
            body()
        except BaseException:
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.django_db(transaction=True)
@override_settings(PGQRS={"LEASE_SECONDS": 1.5, "HEARTBEAT_SECONDS": 0.1})
def test_a_forked_child_does_not_renew_its_parents_leases():
    parents, childs = running_row(1.5), running_row(1.5)
    connections.close_all()  # the child must not share the parent's connection
    heartbeat.hold(parents)

    def child_holds_its_own() -> None:
        heartbeat.hold(childs)
        time.sleep(3)

    pid = os.fork()
    if pid == 0:
        signal.alarm(10)
        child_holds_its_own()
        os._exit(0)
    heartbeat.drop(parents)  # as if the parent had died
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    rows = {w.id: w.lease_expires_at for w in Workflow.objects.all()}
    assert rows[parents.workflow_id] < timezone.now() - datetime.timedelta(seconds=0.5)
    assert rows[childs.workflow_id] > timezone.now() - datetime.timedelta(seconds=0.5)


@pytest.mark.django_db(transaction=True)
def test_a_fork_while_another_thread_holds_the_heartbeats_lock_does_not_hang_the_child():
    lease = running_row(30)
    connections.close_all()
    holding, release = threading.Event(), threading.Event()

    def hold_the_lock() -> None:
        with heartbeat._lock:
            holding.set()
            release.wait(10)

    thread = threading.Thread(target=hold_the_lock)
    thread.start()
    holding.wait(5)
    try:
        assert in_child(lambda: (heartbeat.hold(lease), heartbeat.drop(lease))) == 0
    finally:
        release.set()
        thread.join()


@pytest.mark.django_db(transaction=True)
def test_a_step_called_in_a_forked_child_is_refused():
    assert fault_workflows.forking.run() == "child exited 0"
    assert runs == {}  # the child's call of during_step did not run
