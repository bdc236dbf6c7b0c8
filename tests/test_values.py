"""Values going through workflows: what the code receives, and what is refused before saving."""

from __future__ import annotations

import datetime
import decimal
import json
import math
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection
from django.test import override_settings

from django_pgqrs import PayloadError, Workflow, WorkflowStep, create_workflow, resume
from tests import fault_workflows, workflows
from tests.test_codec import typed
from tests.workflows import Point, runs

pytestmark = pytest.mark.django_db

COLOR = "tests.fault_workflows:Color"
TAG = "__pgqrs__"


def write_raw(table: str, column: str, key: str, key_value: object, value: object) -> None:
    """Write ``value`` to a payload column as JSON exactly as given, bypassing the codec."""
    cast = "::jsonb" if connection.vendor == "postgresql" else ""
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET {column} = %s{cast} WHERE {key} = %s",
            [json.dumps(value), key_value],
        )


WHEN = datetime.datetime(2024, 5, 17, 13, 45, 12, 123456, tzinfo=datetime.UTC)
POINT = Point(3, decimal.Decimal("1.50"))

VALUE = {
    "when": WHEN,
    "day": datetime.date(2024, 5, 17),
    "at": datetime.time(9, 30),
    "wait": datetime.timedelta(hours=2),
    "price": decimal.Decimal("19.90"),
    "id": uuid.UUID(int=42),
    "pair": (1, (2, 3)),
    "tags": {"a", "b"},
    "frozen": frozenset({1}),
    "raw": b"\x00\x01",
    "point": POINT,
    "ratio": float("inf"),
    "by_id": {1: "one", (2, 3): "pair"},
}


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    workflows.received.clear()
    workflows.produced.clear()
    yield
    workflows.received.clear()
    workflows.produced.clear()


def step_rows(workflow_id: int) -> list[tuple[Any, ...]]:
    return list(
        WorkflowStep.objects.filter(workflow_id=workflow_id)
        .order_by("position")
        .values_list(
            "step_id",
            "position",
            "status",
            "output",
            "error",
            "attempts",
            "started_at",
            "completed_at",
        )
    )


def stored_text(column: str, workflow_id: int) -> str:
    with connection.cursor() as cursor:
        cast = "::text" if connection.vendor == "postgresql" else ""
        cursor.execute(
            f"SELECT {column}{cast} FROM pgqrs_workflows WHERE workflow_id = %s", [workflow_id]
        )
        return cursor.fetchone()[0]


# --- What the workflow receives -----------------------------------------------------------------


def test_the_kinds_workflow_gets_its_input_as_the_types_it_was_created_with():
    ctx = create_workflow("kinds", WHEN, POINT, (1, 2))
    result = workflows.kinds(ctx, WHEN, POINT, (1, 2))
    expected = {"when": WHEN, "point": POINT, "pair": (1, 2), "id": uuid.UUID(int=7)}
    assert result == expected
    assert typed(result) == typed(expected)


def test_the_kinds_workflow_gets_the_same_types_when_resumed():
    ctx = create_workflow("kinds", WHEN, POINT, (1, 2))
    first = workflows.kinds(ctx, WHEN, POINT, (1, 2))
    # As if the run had stopped before its last step: resume it from the saved state.
    WorkflowStep.objects.filter(workflow_id=ctx.id, step_id="echo#2").delete()
    Workflow.objects.filter(pk=ctx.id).update(status="ERROR")
    resumed = resume(ctx.id)
    assert runs["echo"] == 3  # the first echo was replayed
    assert resumed == first
    assert typed(resumed) == typed(first)


def test_the_first_run_and_a_resume_receive_equal_input_of_the_same_types():
    workflows.failures.append(ValueError("first run fails"))
    ctx = create_workflow("remember", VALUE)
    with pytest.raises(ValueError):
        workflows.remember(ctx, VALUE)
    assert workflows.remember(ctx, VALUE) == VALUE  # resumed with the context
    assert resume(ctx.id) == VALUE  # already finished: the saved result
    assert len(workflows.received) == 2
    for received in workflows.received:
        assert received == VALUE
        assert typed(received) == typed(VALUE)


def test_a_resume_by_id_receives_the_saved_input_decoded():
    workflows.failures.append(ValueError("first run fails"))
    ctx = create_workflow("remember", VALUE)
    with pytest.raises(ValueError):
        workflows.remember(ctx, VALUE)
    assert typed(resume(ctx.id)) == typed(VALUE)
    assert [typed(value) for value in workflows.received] == [typed(VALUE)] * 2


def test_the_first_run_receives_the_input_as_decoded_not_as_passed():
    """A bytearray is stored as bytes, so the first run already gets bytes, as a resume would."""
    workflows.failures.append(ValueError("first run fails"))
    ctx = create_workflow("remember", bytearray(b"ab"))
    with pytest.raises(ValueError):
        workflows.remember(ctx, bytearray(b"ab"))
    resume(ctx.id)
    assert workflows.received == [b"ab", b"ab"]
    assert [type(value) for value in workflows.received] == [bytes, bytes]


def test_a_dict_input_keeps_its_key_order_when_resumed_by_id():
    """A workflow that loops over a dict must call its steps in the same order on a resume."""
    value = {"bb": 1, "a": 2, "ccc": {"z": 1, "y": 2}}
    workflows.failures.append(ValueError("first run fails"))
    ctx = create_workflow("remember", value)
    with pytest.raises(ValueError):
        workflows.remember(ctx, value)
    resume(ctx.id)
    first, resumed = workflows.received
    assert list(first) == list(resumed) == ["bb", "a", "ccc"]
    assert list(first["ccc"]) == list(resumed["ccc"]) == ["z", "y"]


def test_a_loop_over_a_dict_input_gets_each_keys_own_step_result_on_a_resume():
    workflows.failures.append(ValueError("first run fails"))
    ctx = create_workflow("per_key", {"bb": 10, "a": 20})
    with pytest.raises(ValueError):
        workflows.per_key(ctx, {"bb": 10, "a": 20})
    assert resume(ctx.id) == {"bb": 11, "a": 21}


def test_a_replayed_step_output_keeps_its_key_order():
    value = {"bb": 1, "a": 2}
    workflows.failures.append(ValueError("first run fails"))
    ctx = create_workflow("remember_output", value)
    with pytest.raises(ValueError):
        workflows.remember_output(ctx, value)
    workflows.remember_output(ctx, value)
    first, replayed = workflows.received
    assert runs["echo"] == 1
    assert list(first) == list(replayed) == ["bb", "a"]


def test_run_passes_the_decoded_input_too():
    assert workflows.echo_value.run((1, [2])) == (1, [2])
    assert typed(workflows.remember.run(VALUE)) == typed(VALUE)
    assert typed(workflows.received[0]) == typed(VALUE)


def test_a_step_result_reaches_the_workflow_decoded_on_the_first_run():
    result = workflows.echo_value.run({"pair": (1, 2), "n": decimal.Decimal("1.0")})
    assert typed(result) == typed({"pair": (1, 2), "n": decimal.Decimal("1.0")})


# --- Reading saved values through the models ----------------------------------------------------


def test_model_fields_return_decoded_python_values():
    value = (decimal.Decimal("1.10"), (1, 2), WHEN)
    workflows.echo_value.run(value)
    saved = Workflow.objects.get(name="echo_value")
    assert typed(saved.result) == typed(value)
    assert typed(saved.input) == typed({"args": [value], "kwargs": {}})
    step = WorkflowStep.objects.get(workflow=saved)
    assert typed(step.output) == typed(value)
    assert str(step.output[0]) == "1.10"


def test_a_plain_json_input_and_result_are_stored_as_themselves():
    value = {"name": "x", "items": [1, 2.5, None, True]}
    workflows.echo_value.run(value)
    saved = Workflow.objects.get(name="echo_value")
    for column, expected in (("input", {"args": [value], "kwargs": {}}), ("result", value)):
        text = stored_text(column, saved.id)
        assert "__pgqrs__" not in text
        assert json.loads(text) == expected


# --- Values that cannot be stored ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "type_name"), [("object", "builtins.object"), ("nul", "builtins.str")]
)
def test_an_unstorable_step_result_is_saved_as_error_and_changes_nothing_saved_before(
    kind, type_name
):
    workflows.produced.append(ValueError("first run fails"))
    ctx = create_workflow("then_produce", 1)
    with pytest.raises(ValueError):
        workflows.then_produce(ctx, 1)
    before = step_rows(ctx.id)
    assert [(row[0], row[2]) for row in before] == [
        ("add_one", "SUCCESS"),
        ("add_one#2", "SUCCESS"),
        ("produce", "ERROR"),
    ]

    workflows.produced.append(workflows.unstorable(kind))
    with pytest.raises(PayloadError) as caught:
        workflows.then_produce(ctx, 1)
    message = str(caught.value)
    assert "result of step 'produce'" in message
    assert f"(type {type_name})" in message

    after = step_rows(ctx.id)
    assert after[:2] == before[:2]
    produce = WorkflowStep.objects.get(workflow_id=ctx.id, step_id="produce")
    assert (produce.status, produce.output, produce.attempts) == ("ERROR", None, 2)
    assert produce.error["type"] == "django_pgqrs.exceptions.PayloadError"
    assert "result of step 'produce'" in produce.error["message"]
    assert not WorkflowStep.objects.filter(workflow_id=ctx.id, step_id="produce", status="SUCCESS")
    saved = Workflow.objects.get(pk=ctx.id)
    assert (saved.status, saved.result) == ("ERROR", None)
    assert saved.error["type"] == "django_pgqrs.exceptions.PayloadError"
    assert saved.error["step"] == "produce"


def test_an_unstorable_step_result_is_not_retried():
    workflows.produced.append(object())
    with pytest.raises(PayloadError):
        workflows.then_produce.run(1)
    assert runs["produce"] == 1
    assert WorkflowStep.objects.get(step_id="produce").status == "ERROR"


def test_a_step_can_succeed_after_its_unstorable_result_was_refused():
    workflows.produced.append(object())
    ctx = create_workflow("then_produce", 1)
    with pytest.raises(PayloadError):
        workflows.then_produce(ctx, 1)
    assert workflows.then_produce(ctx, 1) == [2, 3, "produced"]
    assert runs == {"add_one": 2, "produce": 2}


def test_a_step_result_larger_than_the_limit_is_refused():
    workflows.produced.append("x" * 5000)
    with (
        override_settings(PGQRS={"MAX_PAYLOAD_BYTES": 1000}),
        pytest.raises(PayloadError) as caught,
    ):
        workflows.then_produce.run(1)
    assert "result of step 'produce'" in str(caught.value)
    assert "MAX_PAYLOAD_BYTES'] (1000)" in str(caught.value)
    assert WorkflowStep.objects.get(step_id="produce").status == "ERROR"
    assert Workflow.objects.get(name="then_produce").status == "ERROR"


@pytest.mark.parametrize(
    ("value", "type_name"), [(object(), "builtins.object"), ("a\x00b", "builtins.str")]
)
def test_an_unstorable_input_is_refused_and_nothing_is_saved(value, type_name):
    with pytest.raises(PayloadError) as caught:
        create_workflow("echo_value", value)
    message = str(caught.value)
    assert "input of workflow 'echo_value'" in message
    assert f"(type {type_name})" in message
    assert "at ['args'][0]" in message
    with pytest.raises(PayloadError):
        workflows.echo_value.run(value)
    with pytest.raises(PayloadError, match=r"at \['kwargs'\]\['value'\]"):
        create_workflow("echo_value", value=[value])
    assert not Workflow.objects.exists()
    assert not WorkflowStep.objects.exists()
    assert runs == {}


def test_an_input_larger_than_the_limit_is_refused_and_nothing_is_saved():
    with override_settings(PGQRS={"MAX_PAYLOAD_BYTES": 100}), pytest.raises(PayloadError):
        create_workflow("echo_value", "x" * 200)
    assert not Workflow.objects.exists()


@pytest.mark.parametrize("kind", ["object", "nul"])
def test_an_unstorable_workflow_result_marks_the_workflow_error(kind):
    ctx = create_workflow("unstorable_result", kind)
    with pytest.raises(PayloadError) as caught:
        workflows.unstorable_result(ctx, kind)
    assert "result of workflow 'unstorable_result'" in str(caught.value)
    saved = Workflow.objects.get(pk=ctx.id)
    assert (saved.status, saved.result) == ("ERROR", None)
    assert saved.error["type"] == "django_pgqrs.exceptions.PayloadError"
    assert "result of workflow 'unstorable_result'" in saved.error["message"]
    assert saved.lease_token is None
    assert list(saved.steps.values_list("step_id", "status", "output")) == [
        ("add_one", "SUCCESS", 2)
    ]


def test_an_unstorable_workflow_result_of_run_marks_the_workflow_error():
    with pytest.raises(PayloadError):
        workflows.unstorable_result.run("object")
    assert Workflow.objects.get(name="unstorable_result").status == "ERROR"


# --- Values that do not compare or encode as usual ----------------------------------------------


def test_a_nan_in_the_input_does_not_stop_the_workflow_from_running_or_resuming():
    ctx = create_workflow("echo_value", {"reading": float("nan")})
    assert math.isnan(workflows.echo_value(ctx, {"reading": float("nan")})["reading"])
    Workflow.objects.filter(pk=ctx.id).update(status="ERROR")
    assert math.isnan(resume(ctx.id)["reading"])


def test_minus_zero_keeps_its_sign_through_the_database():
    workflows.echo_value.run([-0.0, 0.0])
    saved = Workflow.objects.get(name="echo_value").result
    assert [math.copysign(1, x) for x in saved] == [-1, 1]


def test_strings_that_utf8_cannot_encode_go_through_a_workflow_intact():
    name = os.fsdecode(b"scan-\xff.pdf")
    handle = workflows.echo_value.start([name])
    assert handle.workflow().input == {"args": [[name]], "kwargs": {}}
    assert fault_workflows.atomic_echo.run(name) == name
    assert runs["atomic_echo"] == 1  # stored once, not retried for an encoding error
    assert workflows.echo_value.run(name) == name


def test_a_step_error_whose_message_utf8_cannot_encode_is_saved():
    name = os.fsdecode(b"scan-\xff.pdf")
    with pytest.raises(RuntimeError):
        workflows.failing.run(f"cannot open {name}")
    saved = Workflow.objects.get(name="failing")
    assert saved.status == "ERROR"
    assert saved.error["message"] == "cannot open scan-\\udcff.pdf"
    assert saved.lease_token is None


# --- Saved values that no longer decode ---------------------------------------------------------


def test_a_saved_step_result_that_no_longer_decodes_fails_the_workflow_naming_the_step():
    workflows.failures.append(RuntimeError("later step fails"))
    ctx = create_workflow("colored", "RED")
    with pytest.raises(RuntimeError):
        fault_workflows.colored(ctx, "RED")
    # As if the member RED had been removed from the Enum by a deploy.
    pick = WorkflowStep.objects.get(workflow=ctx.id, step_id="pick").pk
    write_raw(
        "pgqrs_workflow_steps", "output", "id", pick, {TAG: "enum", "cls": COLOR, "v": "purple"}
    )
    with pytest.raises(PayloadError, match=r"saved result of step 'pick'.*'purple'"):
        fault_workflows.colored(ctx, "RED")
    saved = Workflow.objects.get(pk=ctx.id)
    assert (saved.status, saved.lease_token) == ("ERROR", None)
    assert "'purple' is not a valid Color" in saved.error["message"]
    # Restored (here: the saved value mended), the workflow resumes.
    write_raw("pgqrs_workflow_steps", "output", "id", pick, {TAG: "enum", "cls": COLOR, "v": "red"})
    assert fault_workflows.colored(ctx, "RED") == "red"
    assert runs["pick"] == 1


def test_a_saved_input_that_no_longer_decodes_cannot_be_resumed_and_says_why():
    ctx = create_workflow("color_input", fault_workflows.Color.RED)
    purple = {TAG: "enum", "cls": COLOR, "v": "purple"}
    write_raw("pgqrs_workflows", "input", "workflow_id", ctx.id, {"args": [purple], "kwargs": {}})
    with pytest.raises(PayloadError, match=f"Workflow {ctx.id} cannot be resumed.*purple"):
        resume(ctx.id)
    assert Workflow.objects.filter(pk=ctx.id, status="PENDING").exists()
