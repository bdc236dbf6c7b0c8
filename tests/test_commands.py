"""The management commands: pgqrs_install and pgqrs_resume."""

from __future__ import annotations

import datetime
import uuid
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.db.migrations.recorder import MigrationRecorder
from django.utils import timezone

from django_pgqrs import Workflow, create_workflow
from tests import workflows
from tests.workflows import runs


def command(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def pgqrs_tables() -> set[str]:
    return {"pgqrs_workflows", "pgqrs_workflow_steps"} & set(connection.introspection.table_names())


def failed_one_flaky(n: int = 1) -> int:
    workflows.failures.append(ValueError("boom"))
    ctx = create_workflow("one_flaky", n)
    with pytest.raises(ValueError):
        workflows.one_flaky(ctx, n)
    return ctx.id


def owned_by_another_process(workflow_id: int) -> None:
    Workflow.objects.filter(pk=workflow_id).update(
        status="RUNNING",
        lease_owner="elsewhere:4242",
        lease_token=uuid.uuid4(),
        lease_expires_at=timezone.now() + datetime.timedelta(hours=1),
    )


# --- pgqrs_install ------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_install_applies_the_migrations_then_says_the_tables_are_up_to_date():
    call_command("migrate", "django_pgqrs", "zero", verbosity=0)
    try:
        assert pgqrs_tables() == set()
        out = command("pgqrs_install")
        assert "Applied django_pgqrs.0001_initial" in out
        assert "django-pgqrs tables installed on 'default'." in out
        assert pgqrs_tables() == {"pgqrs_workflows", "pgqrs_workflow_steps"}
        assert (
            MigrationRecorder(connection)
            .migration_qs.filter(app="django_pgqrs", name="0001_initial")
            .exists()
        )
        assert workflows.add_three.run(1) == 4  # the tables work

        again = command("pgqrs_install")
        assert again.strip() == "django-pgqrs tables are up to date on 'default'; nothing to do."
    finally:
        call_command("migrate", "django_pgqrs", verbosity=0)


@pytest.mark.django_db
def test_install_on_an_installed_database_changes_nothing():
    assert "up to date" in command("pgqrs_install", "--database", "default")
    assert pgqrs_tables() == {"pgqrs_workflows", "pgqrs_workflow_steps"}


# --- pgqrs_resume: refusals ---------------------------------------------------------------------


@pytest.mark.django_db
def test_resume_of_an_unknown_id_says_it_does_not_exist():
    with pytest.raises(CommandError) as caught:
        command("pgqrs_resume", "999999")
    assert str(caught.value) == "Workflow 999999 does not exist."


@pytest.mark.django_db
def test_resume_of_a_workflow_whose_name_is_not_registered_names_it():
    gone = Workflow.objects.create(name="gone", status="ERROR", input={"args": [], "kwargs": {}})
    with pytest.raises(CommandError, match="No workflow named 'gone' is registered"):
        command("pgqrs_resume", str(gone.id))
    assert Workflow.objects.get(pk=gone.id).status == "ERROR"


@pytest.mark.django_db
def test_resume_of_a_workflow_owned_by_a_live_process_is_refused():
    workflow_id = failed_one_flaky()
    owned_by_another_process(workflow_id)
    runs.clear()
    with pytest.raises(CommandError, match="is being run by elsewhere:4242") as caught:
        command("pgqrs_resume", str(workflow_id))
    assert "--force" in str(caught.value)
    assert runs == {}
    saved = Workflow.objects.get(pk=workflow_id)
    assert (saved.status, saved.lease_owner) == ("RUNNING", "elsewhere:4242")


@pytest.mark.django_db
def test_resume_with_force_takes_a_workflow_over_from_a_live_process():
    workflow_id = failed_one_flaky()
    owned_by_another_process(workflow_id)
    runs.clear()
    out = command("pgqrs_resume", str(workflow_id), "--force")
    assert f"Workflow {workflow_id} (one_flaky) succeeded." in out
    assert "Result: [2, 2, 3]" in out
    assert runs == {"flaky": 1, "add_one": 1}
    saved = Workflow.objects.get(pk=workflow_id)
    assert (saved.status, saved.result, saved.lease_owner) == ("SUCCESS", [2, 2, 3], None)


@pytest.mark.django_db
def test_resume_of_a_cancelled_workflow_is_refused():
    workflow_id = failed_one_flaky()
    Workflow.objects.filter(pk=workflow_id).update(status="CANCELLED")
    runs.clear()
    with pytest.raises(CommandError, match=f"Workflow {workflow_id} was cancelled"):
        command("pgqrs_resume", str(workflow_id))
    assert runs == {}


# --- pgqrs_resume: running ----------------------------------------------------------------------


@pytest.mark.django_db
def test_resume_of_a_finished_workflow_prints_its_result_and_runs_nothing():
    workflows.add_three.run(1)
    saved = Workflow.objects.get(name="add_three")
    runs.clear()
    out = command("pgqrs_resume", str(saved.id))
    assert out.splitlines() == [
        f"Workflow {saved.id} (add_three) already succeeded; nothing to run.",
        "Result: 4",
    ]
    assert runs == {}
    assert Workflow.objects.get(pk=saved.id).attempts == saved.attempts


@pytest.mark.django_db
def test_resume_of_a_failed_workflow_finishes_it_and_prints_the_result():
    workflow_id = failed_one_flaky(5)
    runs.clear()
    out = command("pgqrs_resume", str(workflow_id))
    assert out.splitlines() == [
        f"Workflow {workflow_id} (one_flaky) succeeded.",
        "Result: [6, 6, 7]",
    ]
    assert runs == {"flaky": 1, "add_one": 1}  # the first add_one was replayed
    saved = Workflow.objects.get(pk=workflow_id)
    assert (saved.status, saved.result, saved.attempts) == ("SUCCESS", [6, 6, 7], 2)


@pytest.mark.django_db
def test_resume_of_a_workflow_whose_step_fails_again_says_it_failed():
    workflow_id = failed_one_flaky()
    workflows.failures.append(ValueError("again"))
    with pytest.raises(CommandError) as caught:
        command("pgqrs_resume", str(workflow_id))
    assert str(caught.value).startswith(
        f"Workflow {workflow_id} (one_flaky) failed: ValueError: again."
    )
    saved = Workflow.objects.get(pk=workflow_id)
    assert (saved.status, saved.error["message"], saved.attempts) == ("ERROR", "again", 2)


# --- pgqrs_resume in a process: exit status -----------------------------------------------------


def test_resume_exits_one_with_the_message_for_an_unknown_id(processes):
    finished = processes.run("pgqrs_resume", "999999")
    assert finished.returncode == 1
    assert "Workflow 999999 does not exist." in finished.stderr
    assert finished.stdout == ""


def test_resume_exits_one_when_the_step_fails_again(processes):
    ctx = create_workflow("failing", "no luck")
    with pytest.raises(RuntimeError):
        workflows.failing(ctx, "no luck")
    finished = processes.run("pgqrs_resume", str(ctx.id))
    assert finished.returncode == 1
    assert f"Workflow {ctx.id} (failing) failed: RuntimeError: no luck." in finished.stderr
    assert processes.traced() == ["fails"]  # the run in the new process
    saved = Workflow.objects.get(pk=ctx.id)
    assert (saved.status, saved.attempts) == ("ERROR", 2)
    assert saved.steps.get().attempts == 2
