"""Several databases: where the workflow tables live decides which writes are exactly once."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.test import override_settings

from django_pgqrs import Workflow, create_workflow
from django_pgqrs.checks import check_routing
from tests import workflows

pytestmark = pytest.mark.django_db(databases=["default", "other"], transaction=True)


class WorkflowsOnOther:
    """Puts django-pgqrs on the "other" database; every other app stays on "default"."""

    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        return "other" if model._meta.app_label == "django_pgqrs" else None

    db_for_write = db_for_read


class EverythingOnOther:
    def db_for_read(self, model: Any, **hints: Any) -> str:
        return "other"

    db_for_write = db_for_read


ROUTERS = "tests.test_routing."


def test_workflow_tables_apart_from_the_models_steps_write_are_warned_about():
    with override_settings(DATABASE_ROUTERS=[ROUTERS + "WorkflowsOnOther"]):
        (warning,) = check_routing()
    assert warning.id == "django_pgqrs.W002"
    assert "on database 'other'" in warning.msg and "auth" in warning.msg
    assert "Route django_pgqrs" in warning.hint
    with override_settings(DATABASE_ROUTERS=[ROUTERS + "EverythingOnOther"]):
        assert check_routing() == []
    assert check_routing() == []  # no router: all on default


def test_an_atomic_steps_writes_on_the_workflows_database_commit_with_its_checkpoint():
    with override_settings(DATABASE_ROUTERS=[ROUTERS + "EverythingOnOther"]):
        workflows.failures.append(RuntimeError("after the write"))
        ctx = create_workflow("atomic_effects", "editors")
        with pytest.raises(RuntimeError):
            workflows.atomic_effects(ctx, "editors")
        assert not Group.objects.exists()  # rolled back with the failed step
        workflows.atomic_effects(ctx, "editors")
        assert Group.objects.count() == 1
        assert Workflow.objects.using("other").get().status == "SUCCESS"
    assert not Workflow.objects.using("default").exists()


def test_an_atomic_steps_writes_on_another_database_commit_on_their_own():
    """At least once, not exactly once: the write stays although the step failed."""
    with override_settings(DATABASE_ROUTERS=[ROUTERS + "WorkflowsOnOther"]):
        workflows.failures.append(RuntimeError("after the write"))
        ctx = create_workflow("atomic_effects", "editors")
        with pytest.raises(RuntimeError):
            workflows.atomic_effects(ctx, "editors")
        assert Group.objects.using("default").count() == 1
        assert Workflow.objects.using("other").get().status == "ERROR"
