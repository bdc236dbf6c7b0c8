"""The operators' commands: pgqrs_list, pgqrs_show, pgqrs_cancel, pgqrs_requeue, pgqrs_prune;
and retention.prune, which pgqrs_prune wraps."""

from __future__ import annotations

import datetime
import json
import uuid
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command, load_command_class
from django.core.management.base import CommandError
from django.db import connection, transaction
from django.db.transaction import TransactionManagementError
from django.utils import timezone

from django_pgqrs import Workflow, WorkflowStep, create_workflow, start_workflow
from django_pgqrs.models import WorkflowEvent
from django_pgqrs.retention import PruneCounts, prune
from tests import workflows

DAY = datetime.timedelta(days=1)
T0 = datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.UTC)


def command(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def make(
    status: str = "SUCCESS",
    *,
    age: datetime.timedelta = datetime.timedelta(0),
    steps: int = 0,
    events: int = 0,
    name: str = "job",
    **fields: Any,
) -> Workflow:
    """A workflow row created and last updated ``age`` ago, with ``steps`` steps and ``events``
    events."""
    workflow = Workflow.objects.create(
        name=name, status=status, input={"args": [], "kwargs": {}}, **fields
    )
    for position in range(steps):
        WorkflowStep.objects.create(
            workflow=workflow, step_id=f"s{position}", position=position, status="SUCCESS"
        )
    for n in range(events):
        WorkflowEvent.objects.create(workflow=workflow, name=f"e{n}")
    then = timezone.now() - age
    Workflow.objects.filter(pk=workflow.pk).update(created_at=then, updated_at=then)
    workflow.refresh_from_db()
    return workflow


def failed_one_flaky(n: int = 1) -> int:
    workflows.failures.append(ValueError("boom"))
    ctx = create_workflow("one_flaky", n)
    with pytest.raises(ValueError):
        workflows.one_flaky(ctx, n)
    return ctx.id


def alive() -> set[int]:
    return set(Workflow.objects.values_list("pk", flat=True))


# --- pgqrs_list ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_list_shows_a_table_newest_first_with_the_error_of_failures():
    workflows.add_three.run(1)
    failed = failed_one_flaky()
    done = Workflow.objects.get(name="add_three")
    lines = command("pgqrs_list").splitlines()
    assert lines[0].split() == [
        "ID",
        "NAME",
        "STATUS",
        "QUEUE",
        "ATTEMPTS",
        "CREATED",
        "UPDATED",
        "ERROR",
    ]
    assert lines[1].split()[:5] == [str(failed), "one_flaky", "ERROR", "default", "1"]
    assert lines[1].endswith("  ValueError: boom")
    assert lines[2].split()[:5] == [str(done.id), "add_three", "SUCCESS", "default", "1"]
    created = timezone.localtime(done.created_at).strftime("%Y-%m-%d %H:%M:%S")
    assert created in lines[2]
    assert len(lines) == 3


@pytest.mark.django_db
def test_list_cuts_long_errors_to_one_line():
    make("ERROR", error={"type": "ValueError", "message": "line one\nline two " + "x" * 100})
    (row,) = command("pgqrs_list").splitlines()[1:]
    error = row[row.index("ValueError") :]
    assert error.startswith("ValueError: line one line two xxx")
    assert error.endswith("...")
    assert len(error) == 60


@pytest.mark.django_db
def test_list_filters_by_status_name_queue_and_time():
    old = make("ERROR", age=3 * DAY, name="a")
    recent_error = make("ERROR", name="a", queue="slow")
    running = make("RUNNING", name="b")
    make("SUCCESS", name="a")

    def ids(*args: str) -> list[int]:
        return [row["id"] for row in json.loads(command("pgqrs_list", "--json", *args))]

    assert ids("--status", "error", "RUNNING") == [running.id, recent_error.id, old.id]
    assert ids("--status", "ERROR", "--name", "a") == [recent_error.id, old.id]
    assert ids("--queue", "slow") == [recent_error.id]
    assert ids("--status", "ERROR", "--since", "2d") == [recent_error.id]
    assert ids("--status", "ERROR", "--since", "90m") == [recent_error.id]
    since = (timezone.now() - 4 * DAY).date().isoformat()
    assert ids("--status", "ERROR", "--since", since) == [recent_error.id, old.id]
    assert ids("--name", "nothing") == []


@pytest.mark.django_db
def test_list_shows_the_newest_ones_up_to_the_limit_and_says_there_are_more():
    made = [make().id for _ in range(4)]
    out = command("pgqrs_list", "--limit", "3").splitlines()
    assert [line.split()[0] for line in out[1:4]] == [str(pk) for pk in made[:0:-1]]
    assert out[4] == "(the newest 3; --limit N shows more)"
    assert len(command("pgqrs_list", "--limit", "4").splitlines()) == 5
    assert len(json.loads(command("pgqrs_list", "--json", "--limit", "3"))) == 3


@pytest.mark.django_db
def test_list_as_json_has_stable_keys_and_iso_times():
    failed = failed_one_flaky()
    parent = make("RUNNING")
    child = make("SUCCESS", parent=parent, queue="q", priority=5)
    Workflow.objects.filter(pk=child.pk).update(created_at=T0, updated_at=T0)
    rows = json.loads(command("pgqrs_list", "--json"))
    assert rows[0] == {
        "id": child.id,
        "name": "job",
        "status": "SUCCESS",
        "queue": "q",
        "priority": 5,
        "attempts": 0,
        "created_at": "2024-05-01T12:00:00+00:00",
        "updated_at": "2024-05-01T12:00:00+00:00",
        "parent_id": parent.id,
        "error": None,
    }
    assert rows[2]["id"] == failed
    assert rows[2]["error"] == {"type": "ValueError", "message": "boom"}
    assert list(rows[2]) == list(rows[0])


@pytest.mark.django_db
def test_list_says_when_nothing_matches():
    assert command("pgqrs_list") == "No workflows match.\n"
    assert json.loads(command("pgqrs_list", "--json")) == []


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "yesterday"], "argument --since: 'yesterday' is neither a duration"),
        (["--since", "3y"], "argument --since: '3y' is neither a duration"),
        (["--status", "DONE"], "argument --status: invalid choice: 'DONE'"),
        (["--limit", "0"], "argument --limit: 0 is not at least 1"),
        (["--limit", "1000001"], "argument --limit: 1000001 is more than 1000000"),
        (["--limit", "9" * 5000], r"argument --limit: 9{37}\.\.\. is more than 1000000"),
        (["--since", "99999999w"], "argument --since: '99999999w' is too long ago"),
        (["--since", "9" * 5000 + "s"], r"argument --since: '9{37}\.\.\.' is too long ago"),
    ],
)
def test_list_refuses_bad_arguments(args, message):
    with pytest.raises(CommandError, match=message):
        command("pgqrs_list", *args)


# --- pgqrs_show ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_show_prints_a_failed_workflow_with_its_traceback_and_steps():
    workflow_id = failed_one_flaky(5)
    out = command("pgqrs_show", str(workflow_id))
    head, _, rest = out.partition("\n\n")
    lines = head.splitlines()
    assert lines[0] == f"Workflow {workflow_id}: one_flaky"
    fields = {line[:17].strip(): line[17:].strip() for line in lines[1:]}
    assert fields["status"] == "ERROR"
    assert fields["queue"] == "default (priority 0)"
    assert fields["attempts"] == "1 (0 after a lost owner)"
    assert fields["lease"] == fields["parent"] == fields["children"] == "-"
    assert fields["forked from"] == fields["forks"] == "-"
    assert 'Input:\n  {\n    "args": [\n      5\n    ],\n    "kwargs": {}\n  }' in rest
    assert "Error (step flaky): ValueError: boom\n  Traceback (most recent call last):" in rest
    assert "Result:" not in rest
    steps = rest[rest.index("Steps (2):") :].splitlines()
    assert steps[1].split() == [
        "POS",
        "STEP",
        "STATUS",
        "ATTEMPTS",
        "DURATION",
        "COMPLETED",
        "ERROR",
    ]
    assert steps[2].split()[:4] == ["1", "add_one", "SUCCESS", "1"]
    assert steps[3].split()[:4] == ["2", "flaky", "ERROR", "1"]
    assert steps[3].endswith("ValueError: boom")
    assert " ms " in steps[2]


@pytest.mark.django_db
def test_show_prints_the_result_of_a_finished_workflow():
    workflows.add_three.run(1)
    workflow = Workflow.objects.get(name="add_three")
    out = command("pgqrs_show", str(workflow.id))
    assert "\n\nResult:\n  4\n\nSteps (3):\n" in out
    assert "Error" not in out


@pytest.mark.django_db
def test_show_as_json_gives_relations_lease_and_steps_in_position_order():
    original = make("ERROR", error={"type": "KeyError", "message": "'x'", "step": "b"})
    parent = make("SLEEPING")
    workflow = make(
        "RUNNING",
        parent=parent,
        forked_from=original,
        lease_owner="host:42",
        lease_token=uuid.uuid4(),
        lease_expires_at=T0,
        idempotency_key="order-1",
    )
    children = [make("PENDING", parent=workflow), make("SUCCESS", parent=workflow)]
    fork = make("PENDING", forked_from=workflow)
    WorkflowStep.objects.create(
        workflow=workflow,
        step_id="later",
        position=1,
        status="ERROR",
        attempts=3,
        started_at=T0,
        completed_at=T0 + datetime.timedelta(seconds=2.5),
        error={"type": "OSError", "message": "down", "traceback": "Traceback...", "class": "x"},
    )
    WorkflowStep.objects.create(
        workflow=workflow, step_id="first", position=0, status="SUCCESS", output={"n": [1]}
    )
    data = json.loads(command("pgqrs_show", str(workflow.id), "--json"))
    assert list(data) == [
        "id",
        "name",
        "status",
        "queue",
        "priority",
        "attempts",
        "recovery_attempts",
        "created_at",
        "started_at",
        "updated_at",
        "run_at",
        "deadline_at",
        "lease_owner",
        "lease_expires_at",
        "idempotency_key",
        "parent_id",
        "forked_from_id",
        "error",
        "input",
        "result",
        "runs",
        "children",
        "forks",
        "steps",
    ]
    assert data["lease_owner"] == "host:42"
    assert data["lease_expires_at"] == "2024-05-01T12:00:00+00:00"
    assert (data["parent_id"], data["forked_from_id"]) == (parent.id, original.id)
    assert data["children"] == [
        {"id": children[0].id, "name": "job", "status": "PENDING"},
        {"id": children[1].id, "name": "job", "status": "SUCCESS"},
    ]
    assert data["forks"] == [fork.id]
    assert data["input"] == {"args": [], "kwargs": {}}
    assert data["result"] is None and data["error"] is None
    assert data["steps"] == [
        {
            "position": 0,
            "step_id": "first",
            "status": "SUCCESS",
            "attempts": 1,
            "started_at": None,
            "completed_at": None,
            "duration_seconds": None,
            "error": None,
            "output": {"n": [1]},
        },
        {
            "position": 1,
            "step_id": "later",
            "status": "ERROR",
            "attempts": 3,
            "started_at": "2024-05-01T12:00:00+00:00",
            "completed_at": "2024-05-01T12:00:02.500000+00:00",
            "duration_seconds": 2.5,
            "error": {
                "type": "OSError",
                "message": "down",
                "traceback": "Traceback...",
                "step": None,
            },
            "output": None,
        },
    ]
    text = command("pgqrs_show", str(workflow.id))
    assert "  lease            host:42 until 2024-05-01 12:00:00\n" in text
    assert f"  parent           {parent.id}\n" in text
    assert f"  children         {children[0].id} (PENDING), {children[1].id} (SUCCESS)\n" in text
    assert f"  forked from      {original.id}\n  forks            {fork.id}\n" in text
    assert "  idempotency key  order-1\n" in text
    assert text.splitlines()[-1].split()[:5] == ["1", "later", "ERROR", "3", "2.5"]


@pytest.mark.django_db
def test_show_prints_payloads_as_saved_even_when_they_no_longer_decode():
    workflow = make()
    gone = {"__pgqrs__": "enum", "v": ["tests.nowhere.Gone", "A"]}
    with connection.cursor() as cursor:
        cast = "::jsonb" if connection.vendor == "postgresql" else ""
        cursor.execute(
            f"UPDATE pgqrs_workflows SET result = %s{cast} WHERE workflow_id = %s",
            [json.dumps(gone), workflow.id],
        )
    assert json.loads(command("pgqrs_show", "--json", str(workflow.id)))["result"] == gone
    assert '"__pgqrs__": "enum"' in command("pgqrs_show", str(workflow.id))


@pytest.mark.django_db
def test_show_of_an_unknown_id_says_it_does_not_exist():
    with pytest.raises(CommandError) as caught:
        command("pgqrs_show", "999999")
    assert str(caught.value) == "Workflow 999999 does not exist."
    with pytest.raises(CommandError, match=r"^Workflow 100000000000000000000 does not exist\.$"):
        command("pgqrs_show", str(10**20))


def write(sql: str, params: list[Any]) -> None:
    """Write a row as a hand would, past the models."""
    cast = "::jsonb" if connection.vendor == "postgresql" else ""
    with connection.cursor() as cursor:
        cursor.execute(sql.replace("{cast}", cast), params)


@pytest.mark.django_db
def test_show_lists_the_first_and_the_last_steps_of_a_long_workflow(monkeypatch):
    from django_pgqrs.management.commands import pgqrs_show

    monkeypatch.setattr(pgqrs_show, "EDGE_STEPS", 2)
    few, many = make(steps=4), make(steps=7)

    def listed(workflow: Workflow) -> list[str]:
        text = command("pgqrs_show", str(workflow.id))
        return text[text.index("Steps (") :].splitlines()

    assert [line.split()[:2] for line in listed(few)[2:]] == [[str(n), f"s{n}"] for n in range(4)]
    lines = listed(many)
    assert lines[0] == "Steps (7):"
    assert [line.split()[0] for line in lines[2:4] + lines[5:]] == ["0", "1", "5", "6"]
    assert lines[4] == "  ... 3 more steps (--json lists them all)"
    assert len(json.loads(command("pgqrs_show", str(many.id), "--json"))["steps"]) == 7
    WorkflowStep.objects.filter(workflow=many, position__in=[3, 6]).delete()
    assert listed(many)[4] == "  ... 1 more step (--json lists them all)"


@pytest.mark.django_db
@pytest.mark.parametrize("steps", [0, 1, 3])
def test_show_json_written_step_by_step_is_what_json_dumps_writes(steps):
    workflow = make(steps=steps)
    # U+2028 and U+0085 end lines for str.splitlines(), and JSON leaves them as they are.
    WorkflowStep.objects.filter(workflow=workflow).update(output={"text": "a\u2028b\x85c\nd"})
    out = command("pgqrs_show", str(workflow.id), "--json")
    data = json.loads(out)
    assert out == json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    assert [step["output"] for step in data["steps"]] == [{"text": "a\u2028b\x85c\nd"}] * steps


@pytest.mark.django_db
def test_show_gives_an_error_that_is_not_an_object_as_its_message():
    workflow = make("ERROR")
    WorkflowStep.objects.create(workflow=workflow, step_id="s", position=0, status="ERROR")
    write(
        "UPDATE pgqrs_workflows SET error = %s{cast} WHERE workflow_id = %s",
        ['"the disk is full"', workflow.id],
    )
    write(
        "UPDATE pgqrs_workflow_steps SET error = %s{cast} WHERE workflow_id = %s",
        ['["a", 1]', workflow.id],
    )
    text = command("pgqrs_show", str(workflow.id))
    assert "\nError: the disk is full\n" in text
    assert text.splitlines()[-1].split()[:3] == ["0", "s", "ERROR"]
    assert text.splitlines()[-1].endswith('  ["a", 1]')
    data = json.loads(command("pgqrs_show", str(workflow.id), "--json"))
    assert data["error"] == {
        "type": None,
        "message": "the disk is full",
        "traceback": None,
        "step": None,
    }
    assert data["steps"][0]["error"]["message"] == '["a", 1]'


@pytest.mark.django_db
def test_show_prints_a_traceback_that_is_not_text_and_a_run_whose_error_is_text():
    workflow = make(
        "ERROR",
        error={"type": "E", "message": "m", "traceback": 5},
        history=[{"attempt": 1, "outcome": "ERROR", "error": "by hand"}],
    )
    text = command("pgqrs_show", str(workflow.id))
    assert "\nError: E: m\n  5\n" in text
    assert text.split("Runs (1):")[1].splitlines()[2].endswith("  by hand")
    data = json.loads(command("pgqrs_show", str(workflow.id), "--json"))
    assert data["error"]["traceback"] == 5
    assert data["runs"][0]["error"] == {"type": None, "message": "by hand", "step": None}


@pytest.mark.django_db
@pytest.mark.parametrize("ended", ["9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+05:00"])
def test_show_prints_a_time_past_the_range_of_utc_with_its_own_offset(ended):
    workflow = make("ERROR", history=[{"attempt": 1, "outcome": "ERROR", "ended_at": ended}])
    text = command("pgqrs_show", str(workflow.id))
    assert f"  {ended.replace('T', ' ')}\n" in text.split("Runs (1):")[1]
    data = json.loads(command("pgqrs_show", str(workflow.id), "--json"))
    assert data["runs"][0]["ended_at"] == ended


@pytest.mark.django_db
def test_show_prints_a_payload_python_cannot_read_as_saved():
    workflow = make("SUCCESS")
    write(
        "UPDATE pgqrs_workflows SET input = %s{cast}, result = %s{cast} WHERE workflow_id = %s",
        ['{"args": [1e5000], "kwargs": {}}', "2e400", workflow.id],
    )
    data = json.loads(
        command("pgqrs_show", str(workflow.id), "--json"),
        parse_constant=lambda name: pytest.fail(f"not JSON: {name}"),
    )
    # The text as saved: jsonb writes the number out in full, SQLite as given.
    assert isinstance(data["input"], str) and data["input"].startswith('{"args": [')
    assert data["input"].endswith('], "kwargs": {}}')
    # 2e400 past a float: as saved on SQLite; jsonb gives its digits, an int here.
    assert data["result"] == ("2e400" if connection.vendor == "sqlite" else 2 * 10**400)
    text = command("pgqrs_show", str(workflow.id))
    assert f"\nInput:\n  {data['input']}\n" in text


@pytest.mark.django_db
def test_show_prints_errors_and_history_python_cannot_read_as_saved():
    workflow = make("ERROR")
    WorkflowStep.objects.create(workflow=workflow, step_id="s", position=0, status="ERROR")
    error = '{"type": "E", "message": 1e5000}'
    write(
        "UPDATE pgqrs_workflows SET error = %s{cast}, history = %s{cast} WHERE workflow_id = %s",
        [error, '[{"attempt": 1e5000}]', workflow.id],
    )
    write(
        "UPDATE pgqrs_workflow_steps SET error = %s{cast} WHERE workflow_id = %s",
        [error, workflow.id],
    )
    data = json.loads(command("pgqrs_show", str(workflow.id), "--json"))
    assert data["error"]["type"] is None and data["error"]["message"].startswith('{"type": "E"')
    assert data["steps"][0]["error"] == data["error"]
    assert data["runs"] == []
    assert '\nError: {"type": "E", "message": 1' in command("pgqrs_show", str(workflow.id))


@pytest.mark.django_db
def test_show_prints_a_payload_nested_too_deep_for_python_as_saved(postgres_only):
    workflow = make("SUCCESS")
    deep = "[" * 2000 + "]" * 2000  # jsonb takes it; json.loads runs out of recursion
    write(
        "UPDATE pgqrs_workflows SET result = %s{cast} WHERE workflow_id = %s", [deep, workflow.id]
    )
    assert json.loads(command("pgqrs_show", str(workflow.id), "--json"))["result"] == deep
    assert f"\nResult:\n  {deep}\n" in command("pgqrs_show", str(workflow.id))


# --- pgqrs_cancel and pgqrs_requeue -------------------------------------------------------------


@pytest.mark.django_db
def test_cancel_says_what_it_cancelled_and_what_it_skipped():
    pending, running, failed = make("PENDING"), make("RUNNING"), make("ERROR")
    done, cancelled = make("SUCCESS"), make("CANCELLED")
    child = make("SLEEPING", parent=running)
    ids = [pending.id, running.id, done.id, failed.id, cancelled.id, pending.id]
    out = command("pgqrs_cancel", *map(str, ids))
    assert out == (
        f"cancelled {pending.id}, {running.id}, {failed.id}; "
        f"cancelled with them (unfinished children): {child.id}; "
        f"skipped {done.id}: already SUCCESS; skipped {cancelled.id}: already CANCELLED\n"
    )
    statuses = dict(Workflow.objects.values_list("pk", "status"))
    assert [statuses[pk] for pk in (pending.id, running.id, failed.id, child.id)] == [
        "CANCELLED"
    ] * 4
    assert statuses[done.id] == "SUCCESS"


@pytest.mark.django_db
def test_cancel_of_an_unknown_id_cancels_the_others_then_fails():
    pending = make("PENDING")
    out = StringIO()
    with pytest.raises(CommandError) as caught:
        call_command("pgqrs_cancel", str(pending.id), "999998", "999999", stdout=out)
    assert str(caught.value) == "Workflows 999998, 999999 do not exist."
    assert out.getvalue() == f"cancelled {pending.id}\n"
    assert Workflow.objects.get(pk=pending.id).status == "CANCELLED"
    with pytest.raises(CommandError, match=r"^Workflow 999999 does not exist\.$"):
        command("pgqrs_cancel", "999999")


@pytest.mark.django_db
def test_requeue_queues_failed_workflows_and_skips_the_others():
    failed = failed_one_flaky()
    running, done = make("RUNNING"), make("SUCCESS")
    out = command("pgqrs_requeue", str(failed), str(running.id), str(done.id))
    assert out == (
        f"requeued {failed}; skipped {running.id}: still RUNNING; "
        f"skipped {done.id}: already SUCCESS\n"
    )
    assert Workflow.objects.get(pk=failed).status == "PENDING"
    assert Workflow.objects.get(pk=running.id).status == "RUNNING"
    with pytest.raises(CommandError, match=r"^Workflow 999999 does not exist\.$"):
        command("pgqrs_requeue", "999999")


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["pgqrs_cancel", "pgqrs_requeue"])
def test_an_id_no_column_can_hold_does_not_exist(name):
    failed = make("ERROR")
    out = StringIO()
    outside = [str(2**63), str(-(2**63) - 1), str(10**30)]
    with pytest.raises(CommandError) as caught:
        call_command(name, str(failed.id), *outside, str(2**63 - 1), stdout=out)
    assert str(caught.value) == f"Workflows {', '.join(outside)}, {2**63 - 1} do not exist."
    assert out.getvalue().startswith(("cancelled", "requeued"))
    assert Workflow.objects.get(pk=failed.id).status in ("CANCELLED", "PENDING")


@pytest.mark.django_db
def test_cancel_and_requeue_need_integer_ids():
    with pytest.raises(CommandError, match="the following arguments are required: ID"):
        command("pgqrs_cancel")
    with pytest.raises(CommandError, match="argument ID: invalid int value: 'x'"):
        command("pgqrs_requeue", "x")


# --- retention.prune and pgqrs_prune ------------------------------------------------------------


@pytest.mark.django_db
def test_prune_deletes_old_succeeded_and_cancelled_workflows_with_their_steps_and_events():
    old = [make("SUCCESS", age=40 * DAY, steps=3, events=1), make("CANCELLED", age=31 * DAY)]
    kept = [
        make("SUCCESS", age=29 * DAY, steps=2),  # too recent
        make("ERROR", age=40 * DAY, steps=1),  # failed ones only when asked
        make("PENDING", age=40 * DAY),
        make("RUNNING", age=40 * DAY, steps=1),
        make("SLEEPING", age=40 * DAY, events=1),
    ]
    out = command("pgqrs_prune", "--older-than", "30d")
    lines = out.splitlines()
    assert lines[0] == "batch 1: deleted 2 workflows (3 steps, 1 event); 2 in all"
    assert lines[1].startswith("Pruned 2 workflows last updated before ")
    assert lines[1].endswith(" (SUCCESS, CANCELLED): 3 steps, 1 event.")
    assert alive() == {w.id for w in kept}
    assert WorkflowStep.objects.filter(workflow_id__in=[w.id for w in old]).count() == 0
    assert WorkflowStep.objects.count() == 4
    assert WorkflowEvent.objects.count() == 1
    again = command("pgqrs_prune", "--older-than", "30d")
    assert again.startswith("No workflows last updated before ")
    assert again.endswith(" (SUCCESS, CANCELLED) to prune.\n")


@pytest.mark.django_db
def test_prune_takes_failed_workflows_when_asked_and_a_date_as_cutoff():
    failed, done = make("ERROR", age=10 * DAY), make("SUCCESS", age=10 * DAY)
    cutoff = (timezone.now() - 5 * DAY).isoformat()
    out = command("pgqrs_prune", "--older-than", cutoff, "--status", "error")
    assert out.splitlines()[0] == "batch 1: deleted 1 workflow (0 steps); 1 in all"
    assert alive() == {done.id}
    assert failed.id not in alive()


@pytest.mark.django_db
def test_prune_never_deletes_a_child_before_its_parent():
    old = 40 * DAY
    # A finished child of an unfinished parent: the parent will want its outcome.
    waiting = make("SLEEPING", age=old)
    waited_for = make("SUCCESS", age=old, parent=waiting, steps=1)
    # A finished child of a finished parent that is kept (too recent): kept with it.
    recent = make("SUCCESS", age=DAY)
    child_of_recent = make("SUCCESS", age=old, parent=recent)
    # A parent whose child has not finished: kept, so that the child's end finds it.
    parent_of_running = make("SUCCESS", age=old)
    running = make("RUNNING", age=old, parent=parent_of_running)
    # A tree that goes: the parent, its finished children and grandchildren.
    root = make("SUCCESS", age=old, steps=2)
    child = make("CANCELLED", age=old, parent=root, steps=1)
    grandchild = make("SUCCESS", age=old, parent=child, events=2)
    # Children of a pruned parent that do not qualify themselves stay, without their parent.
    failed_child = make("ERROR", age=old, parent=root)
    recent_child = make("SUCCESS", age=DAY, parent=child)

    counts = prune(30 * DAY)
    assert counts == PruneCounts(workflows=3, steps=3, events=2)
    gone = {root.id, child.id, grandchild.id}
    assert alive() == {
        waiting.id,
        waited_for.id,
        recent.id,
        child_of_recent.id,
        parent_of_running.id,
        running.id,
        failed_child.id,
        recent_child.id,
    }
    assert not gone & alive()
    parents = dict(Workflow.objects.values_list("pk", "parent_id"))
    assert parents[waited_for.id] == waiting.id
    assert parents[child_of_recent.id] == recent.id
    assert parents[running.id] == parent_of_running.id
    assert parents[failed_child.id] is None
    assert parents[recent_child.id] is None


@pytest.mark.django_db
def test_prune_unlinks_forks_of_what_it_deletes():
    original = make("SUCCESS", age=40 * DAY)
    fork = make("PENDING", forked_from=original)
    old_fork = make("SUCCESS", age=40 * DAY, forked_from=make("ERROR", age=40 * DAY))
    assert prune(30 * DAY).workflows == 2
    assert original.id not in alive() and old_fork.id not in alive()
    assert Workflow.objects.get(pk=fork.id).forked_from_id is None
    assert Workflow.objects.get(pk=fork.id).updated_at == fork.updated_at


@pytest.mark.django_db
def test_prune_works_in_batches_and_reports_each():
    made = [make("SUCCESS", age=40 * DAY, steps=2).id for _ in range(7)]
    child = make("SUCCESS", age=40 * DAY, parent_id=made[0], steps=1)
    seen: list[tuple[PruneCounts, PruneCounts]] = []
    total = prune(
        30 * DAY, batch_size=3, progress=lambda b, t: seen.append((b, PruneCounts(**vars(t))))
    )
    assert [(b.workflows, b.steps, t.workflows) for b, t in seen] == [
        (4, 7, 4),  # the first batch took the child along
        (3, 6, 7),
        (1, 2, 8),
    ]
    assert total == PruneCounts(workflows=8, steps=15, events=0)
    assert child.id not in alive()
    out = command("pgqrs_prune", "--older-than", "30d", "--batch-size", "3")
    assert out.startswith("No ")


@pytest.mark.django_db
def test_prune_prints_a_line_per_batch():
    for _ in range(5):
        make("SUCCESS", age=40 * DAY, steps=3)
    lines = command("pgqrs_prune", "--older-than", "30d", "--batch-size", "2").splitlines()
    assert lines[:3] == [
        "batch 1: deleted 2 workflows (6 steps); 2 in all",
        "batch 2: deleted 2 workflows (6 steps); 4 in all",
        "batch 3: deleted 1 workflow (3 steps); 5 in all",
    ]
    assert lines[3].startswith("Pruned 5 workflows last updated before ")
    assert lines[3].endswith(" (SUCCESS, CANCELLED): 15 steps.")
    assert len(lines) == 4


@pytest.mark.django_db
def test_prune_dry_run_counts_the_same_batches_and_deletes_nothing():
    for _ in range(3):
        make("SUCCESS", age=40 * DAY, steps=3, events=1)
    parent = make("CANCELLED", age=40 * DAY)
    make("SUCCESS", age=40 * DAY, parent=parent, steps=1)
    make("RUNNING", age=40 * DAY)
    before = alive()
    out = command("pgqrs_prune", "--older-than", "30d", "--batch-size", "2", "--dry-run")
    assert out.splitlines() == [
        "batch 1: would delete 2 workflows (6 steps, 2 events); 2 in all",
        "batch 2: would delete 3 workflows (4 steps, 1 event); 5 in all",
        out.splitlines()[2],
    ]
    assert out.splitlines()[2].startswith("Would prune 5 workflows last updated before ")
    assert out.splitlines()[2].endswith(" (SUCCESS, CANCELLED): 10 steps, 3 events.")
    assert alive() == before
    assert prune(30 * DAY, dry_run=True) == prune(30 * DAY) == PruneCounts(5, 10, 3)
    assert prune(30 * DAY) == PruneCounts()


@pytest.mark.django_db
def test_prune_with_verbosity_zero_prints_the_summary_only():
    make("SUCCESS", age=40 * DAY)
    out = command("pgqrs_prune", "--older-than", "30d", "-v", "0")
    assert out.startswith("Pruned 1 workflow last updated before ")
    assert len(out.splitlines()) == 1


@pytest.mark.django_db
def test_pruned_workflows_free_their_idempotency_keys():
    first = start_workflow("add_three", 1, idempotency_key="order-7")
    Workflow.objects.filter(pk=first.id).update(
        status="SUCCESS", updated_at=timezone.now() - 40 * DAY
    )
    assert start_workflow("add_three", 1, idempotency_key="order-7").id == first.id
    prune(30 * DAY)
    again = start_workflow("add_three", 1, idempotency_key="order-7")
    assert again.id != first.id
    assert Workflow.objects.get(pk=again.id).status == "PENDING"


@pytest.mark.django_db
def test_prune_refuses_to_run_inside_a_transaction():
    make("SUCCESS", age=40 * DAY)
    with transaction.atomic(), pytest.raises(TransactionManagementError, match="each batch"):
        prune(30 * DAY)
    assert len(alive()) == 1


@pytest.mark.django_db
def test_prune_refuses_statuses_that_are_not_finished_ones():
    with pytest.raises(ValueError, match="statuses must be finished ones"):
        prune(DAY, ["SUCCESS", "RUNNING"])
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        prune(DAY, batch_size=0)
    with pytest.raises(ValueError, match="aware datetime"):
        prune(datetime.datetime(2024, 1, 1))
    with pytest.raises(CommandError, match="argument --status: invalid choice: 'RUNNING'"):
        command("pgqrs_prune", "--older-than", "1d", "--status", "RUNNING")
    with pytest.raises(CommandError, match="the following arguments are required: --older-than"):
        command("pgqrs_prune")


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-size", "1000001"], "argument --batch-size: 1000001 is more than 1000000"),
        (["--batch-size", str(10**20)], "argument --batch-size: 100000000000000000000 is more"),
        (["--older-than", "1000000000d"], "argument --older-than: '1000000000d' is too long ago"),
        (["--older-than", "9" * 22 + "s"], "argument --older-than: '9{22}s' is too long ago"),
    ],
)
def test_prune_refuses_numbers_past_its_bounds(args, message):
    make("SUCCESS", age=40 * DAY)
    with pytest.raises(CommandError, match=message):
        command("pgqrs_prune", "--older-than", "1d", *args)
    assert len(alive()) == 1


@pytest.mark.django_db
def test_prune_takes_the_largest_batch_size():
    make("SUCCESS", age=40 * DAY)
    out = command("pgqrs_prune", "--older-than", "30d", "--batch-size", "1000000")
    assert out.startswith("batch 1: deleted 1 workflow")
    assert not alive()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("cutoff", "printed", "pruned"),
    [
        ("9999-12-31T23:00:00-05:00", "9999-12-31 23:59:59", True),
        ("0001-01-01T00:00:00+05:00", "0001-01-01 00:00:00", False),
    ],
)
def test_prune_takes_a_cutoff_past_the_range_of_utc_as_its_end(cutoff, printed, pruned):
    """9999-12-31T23:00:00-05:00 is 10000-01-01 in UTC, which no database time reaches: the
    last time there is, the same cutoff for every row."""
    from django_pgqrs.management import cli

    extreme = cli.moment(cutoff)
    assert extreme in (
        datetime.datetime.max.replace(tzinfo=datetime.UTC),
        datetime.datetime.min.replace(tzinfo=datetime.UTC),
    )
    make("SUCCESS", age=40 * DAY)
    out = command("pgqrs_prune", "--older-than", cutoff)
    assert f"last updated before {printed} (SUCCESS, CANCELLED)" in out
    assert bool(alive()) is not pruned
    listed = json.loads(command("pgqrs_list", "--json", "--since", cutoff))
    assert len(listed) == (0 if pruned else len(alive()))


def test_times_that_do_not_fit_in_utc_or_here_keep_their_offset(settings):
    from django_pgqrs.management import cli

    end = datetime.datetime(
        9999, 12, 31, 23, 0, tzinfo=datetime.timezone(-datetime.timedelta(hours=5))
    )
    assert cli.local(end) == "9999-12-31 23:00:00-05:00"
    assert cli.iso(end) == "9999-12-31T23:00:00-05:00"
    settings.TIME_ZONE = "Asia/Tokyo"
    last = datetime.datetime(9999, 12, 31, 20, 0, tzinfo=datetime.UTC)
    assert cli.local(last) == "9999-12-31 20:00:00+00:00"  # 10000-01-01 in Tokyo
    assert cli.iso(last) == "9999-12-31T20:00:00+00:00"
    assert cli.local(T0) == "2024-05-01 21:00:00"


@pytest.mark.django_db(transaction=True)
def test_each_batch_is_committed_before_the_next_begins():
    for _ in range(4):
        make("SUCCESS", age=40 * DAY, steps=1)
    remaining: list[int] = []

    def progress(batch: PruneCounts, total: PruneCounts) -> None:
        assert not connection.in_atomic_block
        with connection.cursor() as cursor:  # what other connections see now
            cursor.execute("SELECT count(*) FROM pgqrs_workflows")
            remaining.append(cursor.fetchone()[0])

    prune(30 * DAY, batch_size=1, progress=progress)
    assert remaining == [3, 2, 1, 0]


@pytest.mark.django_db(transaction=True)
def test_prune_passes_over_workflows_another_transaction_holds(postgres_only):
    held, free = make("SUCCESS", age=40 * DAY), make("SUCCESS", age=40 * DAY)
    other = connection.copy()
    try:
        with other.cursor() as cursor:
            cursor.execute("BEGIN")
            cursor.execute(
                "SELECT 1 FROM pgqrs_workflows WHERE workflow_id = %s FOR UPDATE", [held.id]
            )
            assert prune(30 * DAY) == PruneCounts(1, 0, 0)
            cursor.execute("ROLLBACK")
    finally:
        other.close()
    assert alive() == {held.id}
    assert free.id not in alive()


# --- In processes: exit statuses and help ------------------------------------------------------


def test_commands_exit_with_one_on_errors_and_two_on_bad_arguments(processes):
    pending = make("PENDING")
    shown = processes.run("pgqrs_show", "999999")
    assert (shown.returncode, shown.stdout) == (1, "")
    assert shown.stderr.strip() == "CommandError: Workflow 999999 does not exist."
    cancelled = processes.run("pgqrs_cancel", str(pending.id), "999999")
    assert cancelled.returncode == 1
    assert cancelled.stdout == f"cancelled {pending.id}\n"
    assert cancelled.stderr.strip() == "CommandError: Workflow 999999 does not exist."
    bad = processes.run("pgqrs_prune", "--older-than", "soon")
    assert bad.returncode == 2
    assert "error: argument --older-than: 'soon' is neither a duration" in bad.stderr
    missing = processes.run("pgqrs_prune")
    assert missing.returncode == 2
    assert "error: the following arguments are required: --older-than" in missing.stderr


def test_list_and_prune_run_as_commands(processes):
    make("SUCCESS", age=40 * DAY, steps=2)
    listed = processes.run("pgqrs_list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [row["status"] for row in json.loads(listed.stdout)] == ["SUCCESS"]
    pruned = processes.run("pgqrs_prune", "--older-than", "30d")
    assert pruned.returncode == 0, pruned.stderr
    assert pruned.stdout.splitlines()[0] == "batch 1: deleted 1 workflow (2 steps); 1 in all"
    assert not alive()


@pytest.mark.parametrize(
    ("name", "words"),
    [
        (
            "pgqrs_list",
            ["--status STATUS [STATUS ...]", "--since DURATION_OR_DATE", "--json", "up to 1000000"],
        ),
        ("pgqrs_show", ["workflow_id", "--json", "traceback", "first 50 and the last 50"]),
        ("pgqrs_cancel", ["ID [ID ...]", "unfinished children", "status 1"]),
        ("pgqrs_requeue", ["ID [ID ...]", "last checkpoint", "status 1"]),
        (
            "pgqrs_prune",
            ["--older-than DURATION_OR_DATE", "--dry-run", "--batch-size", "up to 1000000"],
        ),
    ],
)
def test_help_describes_each_command(name, words):
    text = load_command_class("django_pgqrs", name).create_parser("manage.py", name).format_help()
    assert text.startswith(f"usage: manage.py {name} ")
    flat = " ".join(text.split())
    for word in words:
        assert " ".join(word.split()) in flat


def test_help_exits_zero(processes):
    helped = processes.run("pgqrs_prune", "--help")
    assert helped.returncode == 0
    assert "Delete finished workflows last updated before a cutoff" in " ".join(
        helped.stdout.split()
    )


@pytest.mark.django_db
def test_show_lists_the_runs_with_the_error_of_a_failure_that_was_resumed():
    from django_pgqrs import resume

    workflows.failures.append(ValueError("card declined"))
    with pytest.raises(ValueError):
        workflows.one_flaky.run(1)
    workflow_id = Workflow.objects.get().id
    resume(workflow_id)
    text = command("pgqrs_show", str(workflow_id))
    assert "Runs (2):" in text
    runs = text.split("Runs (2):")[1]
    assert "ERROR" in runs and "ValueError: card declined" in runs
    assert "SUCCESS" in runs
    data = json.loads(command("pgqrs_show", str(workflow_id), "--json"))
    first, second = data["runs"]
    assert (first["attempt"], first["outcome"]) == (1, "ERROR")
    assert first["error"] == {"type": "ValueError", "message": "card declined", "step": "flaky"}
    assert (second["outcome"], second["error"]) == ("SUCCESS", None)
    assert data["started_at"] is not None
