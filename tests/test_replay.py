"""Running, failing and resuming workflows in one process."""

from __future__ import annotations

import asyncio
import threading

import pytest
from django.contrib.auth.models import Group
from django.db import connections

from django_pgqrs import (
    InputMismatch,
    NonDeterministicWorkflow,
    SimulatedCrash,
    StepFailed,
    StepOutsideWorkflow,
    UnknownWorkflow,
    Workflow,
    WorkflowCancelled,
    WorkflowMismatch,
    WorkflowStep,
    create_workflow,
    operations,
    resume,
)
from django_pgqrs.testing import crash_at
from tests import fault_workflows, workflows
from tests.fault_workflows import Declined, checkout
from tests.workflows import runs

pytestmark = pytest.mark.django_db


def steps_of(workflow_id: int) -> dict[str, WorkflowStep]:
    return {s.step_id: s for s in WorkflowStep.objects.filter(workflow_id=workflow_id)}


def test_create_workflow_saves_a_pending_workflow_with_its_input():
    ctx = create_workflow("add_three", 1)
    saved = Workflow.objects.get(pk=ctx.id)
    assert (saved.name, saved.status) == ("add_three", "PENDING")
    assert saved.input == {"args": [1], "kwargs": {}}
    assert saved.run_at > saved.created_at  # reserved for the caller for one lease


def test_calling_the_workflow_runs_every_step_and_saves_the_result():
    ctx = create_workflow("add_three", 1)
    assert workflows.add_three(ctx, 1) == 4
    saved = Workflow.objects.get(pk=ctx.id)
    assert (saved.status, saved.result, saved.error) == ("SUCCESS", 4, None)
    assert saved.lease_token is None and saved.lease_owner is None
    assert [(s.step_id, s.position, s.status, s.output) for s in saved.steps.all()] == [
        ("add_one", 1, "SUCCESS", 2),
        ("add_one#2", 2, "SUCCESS", 3),
        ("add_one#3", 3, "SUCCESS", 4),
    ]
    assert ctx.status == "SUCCESS" and ctx.result == 4


def test_run_creates_and_runs_in_one_call():
    assert workflows.add_three.run(10) == 13
    saved = Workflow.objects.get(name="add_three")
    assert (saved.status, saved.result, saved.attempts) == ("SUCCESS", 13, 1)


def test_a_failed_step_marks_the_workflow_error_and_records_the_error():
    workflows.failures.append(ValueError("boom"))
    ctx = create_workflow("one_flaky", 1)
    with pytest.raises(ValueError, match="boom"):
        workflows.one_flaky(ctx, 1)
    saved = Workflow.objects.get(pk=ctx.id)
    assert saved.status == "ERROR"
    assert saved.error["type"] == "ValueError"
    assert saved.error["message"] == "boom"
    assert saved.error["step"] == "flaky"
    assert "raise failures.pop(0)" in saved.error["traceback"]
    failed = steps_of(ctx.id)["flaky"]
    assert (failed.status, failed.attempts, failed.output) == ("ERROR", 1, None)
    assert failed.error["type"] == "ValueError" and "Traceback" in failed.error["traceback"]


def test_resume_skips_finished_steps_and_reruns_the_failed_one():
    workflows.failures.append(ValueError("boom"))
    ctx = create_workflow("one_flaky", 1)
    with pytest.raises(ValueError):
        workflows.one_flaky(ctx, 1)
    assert runs == {"add_one": 1, "flaky": 1}

    assert workflows.one_flaky(ctx, 1) == [2, 2, 3]
    assert runs == {"add_one": 2, "flaky": 2}  # the first add_one was replayed, not rerun
    saved = Workflow.objects.get(pk=ctx.id)
    assert (saved.status, saved.error, saved.attempts) == ("SUCCESS", None, 2)
    flaky = steps_of(ctx.id)["flaky"]
    assert (flaky.status, flaky.attempts, flaky.error) == ("SUCCESS", 2, None)


def test_resume_by_id_decodes_the_saved_input():
    workflows.failures.append(ValueError("boom"))
    ctx = create_workflow("one_flaky", 5)
    with pytest.raises(ValueError):
        workflows.one_flaky(ctx, 5)
    assert resume(ctx.id) == [6, 6, 7]


def test_a_finished_workflow_returns_its_saved_result_and_runs_nothing():
    ctx = create_workflow("add_three", 1)
    workflows.add_three(ctx, 1)
    runs.clear()
    assert workflows.add_three(ctx, 1) == 4
    assert workflows.add_three(Workflow.objects.get(pk=ctx.id), 1) == 4
    assert resume(ctx.id) == 4
    assert runs == {}
    assert Workflow.objects.get(pk=ctx.id).attempts == 1


def test_other_arguments_than_the_saved_input_are_refused():
    ctx = create_workflow("add_three", 1)
    workflows.add_three(ctx, 1)
    with pytest.raises(
        InputMismatch, match=r"created with arguments \{'n': 1\}.*called with \{'n': 2\}"
    ):
        workflows.add_three(ctx, 2)
    pending = create_workflow("add_three", 1)
    with pytest.raises(InputMismatch):
        workflows.add_three(pending, 3)
    assert Workflow.objects.get(pk=pending.id).status == "PENDING"


def test_arguments_are_compared_by_meaning_not_spelling():
    ctx = create_workflow("add_three", n=1)
    assert workflows.add_three(ctx, 1) == 4


def test_a_context_of_another_workflow_is_refused():
    ctx = create_workflow("add_three", 1)
    with pytest.raises(WorkflowMismatch, match="'add_three' workflow"):
        workflows.loop(ctx, 1)


def test_calling_with_something_else_than_a_context_says_what_to_pass():
    with pytest.raises(TypeError, match=r"add_three\.run"):
        workflows.add_three(1)  # type: ignore[arg-type]


def test_unknown_workflow_names_are_refused():
    with pytest.raises(UnknownWorkflow, match="No workflow named 'nope'"):
        create_workflow("nope", 1)


def test_arguments_that_do_not_fit_the_signature_are_refused_at_creation():
    with pytest.raises(TypeError, match="Workflow 'add_three': too many positional arguments"):
        create_workflow("add_three", 1, 2)
    with pytest.raises(TypeError, match="Workflow 'add_three': missing a required argument: 'n'"):
        workflows.add_three.start()  # type: ignore[call-arg]
    assert not Workflow.objects.exists()


def test_a_step_called_in_a_loop_gets_one_checkpoint_per_call():
    ctx = create_workflow("loop", 3)
    assert workflows.loop(ctx, 3) == [1, 2, 3]
    assert sorted(steps_of(ctx.id)) == ["add_one", "add_one#2", "add_one#3"]


def test_a_loop_replays_each_iterations_own_value():
    ctx = create_workflow("loop", 3)
    workflows.loop(ctx, 3)
    Workflow.objects.filter(pk=ctx.id).update(status="ERROR")
    WorkflowStep.objects.filter(workflow_id=ctx.id, step_id="add_one#3").delete()
    runs.clear()
    assert workflows.loop(ctx, 3) == [1, 2, 3]
    assert runs == {"add_one": 1}


def test_a_step_outside_a_workflow_is_refused():
    with pytest.raises(StepOutsideWorkflow, match="outside a running workflow"):
        workflows.add_one(None, 1)  # type: ignore[arg-type]
    ctx = create_workflow("add_three", 1)
    with pytest.raises(StepOutsideWorkflow):
        workflows.add_one(ctx, 1)
    assert runs == {}


def test_a_step_inside_a_step_is_part_of_its_body():
    assert workflows.nested.run(1) == 20
    workflow_id = Workflow.objects.get(name="nested").id
    assert list(steps_of(workflow_id)) == ["outer"]


def test_names_can_be_given():
    assert workflows.custom.run() == "named"
    saved = Workflow.objects.get()
    assert saved.name == "custom-name"
    assert list(steps_of(saved.id)) == ["renamed"]


def test_retries_rerun_the_body_and_count_attempts():
    workflows.failures.extend([OSError("one"), OSError("two")])
    assert workflows.with_retries.run() == "ok"
    step = WorkflowStep.objects.get()
    assert (step.status, step.attempts) == ("SUCCESS", 3)
    assert runs["retried"] == 3


def test_retries_give_up_after_the_last_attempt():
    workflows.failures.extend([OSError("1"), OSError("2"), OSError("3")])
    with pytest.raises(OSError, match="3"):
        workflows.with_retries.run()
    step = WorkflowStep.objects.get()
    assert (step.status, step.attempts, step.error["message"]) == ("ERROR", 3, "3")


def test_an_atomic_step_writes_with_its_checkpoint_or_not_at_all():
    workflows.failures.append(RuntimeError("after the write"))
    ctx = create_workflow("atomic_effects", "editors")
    with pytest.raises(RuntimeError):
        workflows.atomic_effects(ctx, "editors")
    assert not Group.objects.exists()  # rolled back with the failed step
    group_id = workflows.atomic_effects(ctx, "editors")
    assert list(Group.objects.values_list("pk", "name")) == [(group_id, "editors")]
    runs.clear()
    assert workflows.atomic_effects(ctx, "editors") == group_id
    assert runs == {}


def test_a_reordered_replay_is_refused_as_non_deterministic():
    ctx = create_workflow("loop", 2)
    workflows.loop(ctx, 2)
    # Saved order: add_one, add_one#2. Swap them as if the code had changed the call order.
    WorkflowStep.objects.filter(workflow_id=ctx.id, step_id="add_one").update(position=3)
    Workflow.objects.filter(pk=ctx.id).update(status="ERROR")
    with pytest.raises(NonDeterministicWorkflow) as caught:
        workflows.loop(ctx, 2)
    assert (caught.value.position, caught.value.saved, caught.value.called) == (
        1,
        "add_one#2",
        "add_one",
    )
    assert "step position 1" in str(caught.value)
    assert Workflow.objects.get(pk=ctx.id).status == "ERROR"


def test_a_step_added_before_saved_ones_does_not_shift_their_checkpoints():
    ctx = create_workflow("add_three", 1)
    workflows.add_three(ctx, 1)
    # As if an earlier deploy had only run two of the three calls, at other positions.
    WorkflowStep.objects.filter(workflow_id=ctx.id, step_id="add_one#3").delete()
    WorkflowStep.objects.filter(workflow_id=ctx.id).update(position=5)
    Workflow.objects.filter(pk=ctx.id).update(status="ERROR")
    runs.clear()
    assert workflows.add_three(ctx, 1) == 4
    assert runs == {"add_one": 1}


def test_an_interrupted_run_gives_its_workflow_back_and_can_resume():
    def interrupt(ctx: Workflow) -> None:
        raise KeyboardInterrupt

    workflows.hooks.append(interrupt)
    ctx = create_workflow("with_hook", 1)
    with pytest.raises(KeyboardInterrupt):
        workflows.with_hook(ctx, 1)
    saved = Workflow.objects.get(pk=ctx.id)
    assert (saved.status, saved.lease_owner, saved.lease_token) == ("PENDING", None, None)
    assert list(steps_of(ctx.id)) == ["add_one"]  # the interrupted step saved nothing
    assert workflows.with_hook(ctx, 1) == [2, "done"]
    assert runs == {"add_one": 1, "during_step": 2}


# --- Step errors the workflow went past ---------------------------------------------------------


def test_a_step_error_the_workflow_caught_is_replayed_not_run_again():
    """Payment declined, customer told, a later step fails: the resume must not charge again."""
    workflows.failures.extend([Declined("no funds", code=51), RuntimeError("mail server down")])
    ctx = create_workflow("checkout", 30)
    with pytest.raises(RuntimeError, match="mail server down"):
        checkout(ctx, 30)
    saved = Workflow.objects.get(pk=ctx.id)
    assert (saved.status, saved.error["step"]) == ("ERROR", "flaky")

    assert checkout(ctx, 30) == "declined:51"
    assert runs == {"charge_card": 1, "tell_customer_declined": 1, "flaky": 2}
    assert steps_of(ctx.id)["charge_card"].status == "ERROR"


def test_a_replayed_step_error_is_the_same_exception_with_its_arguments_and_attributes():
    workflows.failures.extend([Declined("no funds", code=51), RuntimeError("later")])
    ctx = create_workflow("describe_decline", 30)
    with pytest.raises(RuntimeError):
        fault_workflows.describe_decline(ctx, 30)
    described = fault_workflows.describe_decline(ctx, 30)
    assert (described["type"], described["args"], described["code"]) == (
        "Declined",
        ["no funds"],
        51,
    )
    assert "raised again from its checkpoint" in described["notes"][0]
    assert runs["charge_card"] == 1


def test_the_step_the_workflow_failed_on_runs_again_even_through_a_wrapping_error():
    ctx = create_workflow("wrapped_failure")
    with pytest.raises(RuntimeError, match="cannot be paid"):
        fault_workflows.wrapped_failure(ctx)
    assert Workflow.objects.get(pk=ctx.id).error["step"] == "raise_declined"
    with pytest.raises(RuntimeError):
        fault_workflows.wrapped_failure(ctx)
    assert runs == {"raise_declined": 2}


def test_a_saved_error_whose_class_is_gone_is_replayed_as_step_failed():
    workflows.failures.extend([Declined("no funds", code=51), RuntimeError("later")])
    ctx = create_workflow("checkout", 30)
    with pytest.raises(RuntimeError):
        checkout(ctx, 30)
    step = WorkflowStep.objects.get(workflow=ctx.id, step_id="charge_card")
    step.error = {**step.error, "class": "tests.fault_workflows:NoSuchError"}
    step.save()
    with pytest.raises(StepFailed, match=r"charge_card.*Declined: no funds") as caught:
        checkout(ctx, 30)
    assert caught.value.error["type"] == "tests.fault_workflows.Declined"
    assert "raised this error when it ran" in "".join(caught.value.__notes__)
    assert runs["charge_card"] == 1


# --- Retries ------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_retries_stop_once_the_workflow_is_cancelled():
    def cancel_from_elsewhere(ctx: Workflow) -> None:
        thread = threading.Thread(
            target=lambda: (operations.cancel([ctx.id]), connections.close_all())
        )
        thread.start()
        thread.join()

    workflows.hooks.append(cancel_from_elsewhere)
    ctx = create_workflow("retry_forever")
    with pytest.raises(WorkflowCancelled):
        fault_workflows.retry_forever(ctx)
    assert runs == {"always_failing": 1}
    assert Workflow.objects.get(pk=ctx.id).status == "CANCELLED"
    assert not WorkflowStep.objects.filter(workflow=ctx.id).exists()


# --- Exceptions that are not Exceptions ---------------------------------------------------------


def test_system_exit_in_the_main_thread_stops_the_process_and_gives_the_workflow_back():
    ctx = create_workflow("exiting", "exit")
    with pytest.raises(SystemExit):
        fault_workflows.exiting(ctx, "exit")
    saved = Workflow.objects.get(pk=ctx.id)
    assert (saved.status, saved.lease_token, saved.error) == ("PENDING", None, None)
    assert not saved.steps.exists()


def test_a_cancelled_error_from_a_step_is_saved_as_its_failure_and_not_retried():
    ctx = create_workflow("exiting", "cancelled")
    with pytest.raises(asyncio.CancelledError):
        fault_workflows.exiting(ctx, "cancelled")
    saved = Workflow.objects.get(pk=ctx.id)
    assert (saved.status, saved.error["type"], saved.error["step"]) == (
        "ERROR",
        "asyncio.exceptions.CancelledError",
        "exits",
    )
    assert runs == {"exits": 1}


def test_the_step_the_workflow_failed_on_runs_again_though_steps_ran_after_it():
    """``try: charge() finally: cleanup()``: the failed charge is not one the workflow went past."""
    workflows.failures.append(Declined("no funds", code=51))
    ctx = create_workflow("charge_then_clean_up", 30)
    with pytest.raises(Declined):
        fault_workflows.charge_then_clean_up(ctx, 30)
    assert Workflow.objects.get(pk=ctx.id).error["step"] == "charge_card"
    assert fault_workflows.charge_then_clean_up(ctx, 30) == "ch_30"
    assert runs == {"charge_card": 2, "cleanup": 1}


def test_a_caught_error_is_replayed_even_when_the_run_died_before_its_next_checkpoint():
    workflows.failures.append(Declined("no funds", code=51))
    ctx = create_workflow("checkout", 30)
    with crash_at("tell_customer_declined"), pytest.raises(SimulatedCrash):
        checkout(ctx, 30)
    assert checkout(ctx, 30) == "declined:51"
    assert runs == {"charge_card": 1, "tell_customer_declined": 1, "flaky": 1}


def test_the_failed_step_may_run_again_with_fixed_arguments():
    workflows.failures.append(RuntimeError("amount must be in cents"))
    ctx = create_workflow("charge_then_clean_up", 30)
    with pytest.raises(RuntimeError):
        fault_workflows.charge_then_clean_up(ctx, 30)
    fault_workflows.deployed.add("cents")
    try:
        assert fault_workflows.charge_then_clean_up(ctx, 30) == "ch_3000"
    finally:
        fault_workflows.deployed.clear()
