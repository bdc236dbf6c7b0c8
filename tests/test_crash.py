"""A process killed with SIGKILL inside a step: the workflow resumes without rerunning what finished."""

from __future__ import annotations

import socket
import time

from django.utils import timezone

from django_pgqrs import Workflow, create_workflow

SHORT_LEASE = {"PGQRS_TEST_LEASE_SECONDS": "1", "PGQRS_TEST_HEARTBEAT_SECONDS": "0.3"}


def kill_in_step_two(processes, workflow_id: int, **env: str) -> int:
    """Run the workflow in a child until it waits inside step two, then SIGKILL it."""
    processes.hold.touch()
    child = processes.start(
        "pgqrs_resume", str(workflow_id), PGQRS_TEST_HOLD=str(processes.hold), **env
    )
    processes.output(child).wait_for(f"waiting in step two of workflow {workflow_id}")
    child.kill()
    child.wait(timeout=10)
    assert child.returncode == -9
    return child.pid


def wait_for_lease_to_expire(workflow_id: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        expires = Workflow.objects.get(pk=workflow_id).lease_expires_at
        assert expires is not None
        if expires < timezone.now():
            return
        time.sleep(0.05)
    raise AssertionError(f"the lease of workflow {workflow_id} did not expire in {timeout}s")


def test_finished_step_is_not_run_again_after_sigkill_and_forced_resume(processes):
    ctx = create_workflow("two_steps", "x")
    pid = kill_in_step_two(processes, ctx.id)

    saved = Workflow.objects.get(pk=ctx.id)
    assert (saved.status, saved.lease_owner) == ("RUNNING", f"{socket.gethostname()}:{pid}")
    assert list(saved.steps.values_list("step_id", "status")) == [("step_one", "SUCCESS")]

    refused = processes.run("pgqrs_resume", str(ctx.id))
    assert refused.returncode == 1
    assert f"is being run by {socket.gethostname()}:{pid}" in refused.stderr
    assert processes.traced() == ["step_one", "step_two"]

    forced = processes.run("pgqrs_resume", str(ctx.id), "--force")
    assert forced.returncode == 0, forced.stderr
    assert "Result: 'two:one:x'" in forced.stdout
    assert "after step_one: one:x" in forced.stdout  # replayed, printed by the workflow
    assert processes.traced() == ["step_one", "step_two", "step_two"]

    saved = Workflow.objects.get(pk=ctx.id)
    assert (saved.status, saved.result, saved.lease_owner) == ("SUCCESS", "two:one:x", None)
    assert (saved.attempts, saved.recovery_attempts) == (2, 0)
    assert list(saved.steps.order_by("position").values_list("step_id", "attempts")) == [
        ("step_one", 1),
        ("blocking_step", 1),
    ]


def test_a_killed_workflow_is_resumed_without_force_once_its_lease_expired(processes):
    ctx = create_workflow("two_steps", "x")
    kill_in_step_two(processes, ctx.id, **SHORT_LEASE)
    wait_for_lease_to_expire(ctx.id)

    resumed = processes.run("pgqrs_resume", str(ctx.id), **SHORT_LEASE)
    assert resumed.returncode == 0, resumed.stderr
    assert "Result: 'two:one:x'" in resumed.stdout
    assert processes.traced() == ["step_one", "step_two", "step_two"]

    saved = Workflow.objects.get(pk=ctx.id)
    assert (saved.status, saved.result) == ("SUCCESS", "two:one:x")
    assert saved.recovery_attempts == 1
    assert saved.steps.get(step_id="step_one").attempts == 1
