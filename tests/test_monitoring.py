"""The guide's monitoring queries, run verbatim on the tables the engine writes."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import Any

import pytest
from demo import workflows as demo
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from django_pgqrs import PayloadError, Workflow, create_workflow
from tests import workflows

pytestmark = [
    pytest.mark.django_db(transaction=True, reset_sequences=True),
    pytest.mark.usefixtures("postgres_only"),
]

URL = "https://api.example.com/data"

# Copied from README.md, "Monitoring".
CHECK_WORKFLOW_STATUS = """
SELECT workflow_id, name, status, created_at, updated_at
FROM pgqrs_workflows
WHERE name = 'data_pipeline'
ORDER BY created_at DESC;
"""

CHECK_STEP_PROGRESS = """
SELECT w.workflow_id, w.name, w.status as wf_status,
       s.step_id, s.status as step_status, s.completed_at
FROM pgqrs_workflows w
LEFT JOIN pgqrs_workflow_steps s ON w.workflow_id = s.workflow_id
WHERE w.workflow_id = 1;
"""

FIND_STUCK_WORKFLOWS = """
SELECT * FROM pgqrs_workflows
WHERE status = 'RUNNING'
AND updated_at < NOW() - INTERVAL '1 hour';
"""


@pytest.fixture(autouse=True)
def _clear_hooks() -> Iterator[None]:
    workflows.hooks.clear()
    yield
    workflows.hooks.clear()


def query(sql: str) -> list[dict[str, Any]]:
    with connection.cursor() as cursor:
        cursor.execute(sql)
        columns = [column.name for column in cursor.description]
        return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]


def finished_pipeline() -> int:
    ctx = create_workflow("data_pipeline", URL)
    assert demo.data_pipeline(ctx, URL) == "Saved 2 records successfully"
    return ctx.id


def failed_pipeline() -> int:
    """A data_pipeline whose first step's result is refused as too large."""
    ctx = create_workflow("data_pipeline", URL)
    with override_settings(PGQRS={"MAX_PAYLOAD_BYTES": 80}), pytest.raises(PayloadError):
        demo.data_pipeline(ctx, URL)
    return ctx.id


def progress(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    for row in rows:
        if row["step_id"] is not None:
            assert isinstance(row["completed_at"], datetime.datetime)
    return sorted(
        (row["workflow_id"], row["name"], row["wf_status"], row["step_id"], row["step_status"])
        for row in rows
    )


def set_updated_at(workflow_id: int, when: datetime.datetime) -> None:
    assert Workflow.objects.filter(pk=workflow_id).update(updated_at=when) == 1


def test_status_query_lists_data_pipeline_workflows_newest_first():
    first = finished_pipeline()
    second = failed_pipeline()
    workflows.add_three.run(1)
    pending = create_workflow("data_pipeline", URL).id
    rows = query(CHECK_WORKFLOW_STATUS)
    assert [(row["workflow_id"], row["name"], row["status"]) for row in rows] == [
        (pending, "data_pipeline", "PENDING"),
        (second, "data_pipeline", "ERROR"),
        (first, "data_pipeline", "SUCCESS"),
    ]
    for row in rows:
        assert isinstance(row["created_at"], datetime.datetime)
        assert row["updated_at"] >= row["created_at"]


def test_step_progress_query_shows_every_step_of_a_finished_workflow():
    assert finished_pipeline() == 1
    failed_pipeline()
    assert progress(query(CHECK_STEP_PROGRESS)) == [
        (1, "data_pipeline", "SUCCESS", "fetch_data", "SUCCESS"),
        (1, "data_pipeline", "SUCCESS", "save_results", "SUCCESS"),
        (1, "data_pipeline", "SUCCESS", "transform_data", "SUCCESS"),
    ]


def test_step_progress_query_shows_the_failed_step_of_a_failed_workflow():
    assert failed_pipeline() == 1
    assert progress(query(CHECK_STEP_PROGRESS)) == [
        (1, "data_pipeline", "ERROR", "fetch_data", "ERROR"),
    ]


def test_step_progress_query_shows_a_running_workflow_and_its_finished_steps():
    seen: list[list[dict[str, Any]]] = []
    workflows.hooks.append(lambda ctx: seen.append(query(CHECK_STEP_PROGRESS)))
    assert workflows.with_hook.run(1) == [2, "done"]
    assert progress(seen[0]) == [(1, "with_hook", "RUNNING", "add_one", "SUCCESS")]
    assert progress(query(CHECK_STEP_PROGRESS)) == [
        (1, "with_hook", "SUCCESS", "add_one", "SUCCESS"),
        (1, "with_hook", "SUCCESS", "during_step", "SUCCESS"),
    ]


def test_step_progress_query_shows_a_pending_workflow_without_steps():
    create_workflow("data_pipeline", URL)
    rows = query(CHECK_STEP_PROGRESS)
    assert [tuple(row.values()) for row in rows] == [
        (1, "data_pipeline", "PENDING", None, None, None)
    ]


def test_stuck_query_finds_a_running_workflow_without_progress_for_two_hours():
    old = finished_pipeline()
    failed = failed_pipeline()
    found: dict[str, list[int]] = {}

    def look(ctx: Workflow) -> None:
        found["updated now"] = [row["workflow_id"] for row in query(FIND_STUCK_WORKFLOWS)]
        two_hours_ago = timezone.now() - datetime.timedelta(hours=2)
        for workflow_id in (ctx.id, old, failed):
            set_updated_at(workflow_id, two_hours_ago)
        found["two hours old"] = [row["workflow_id"] for row in query(FIND_STUCK_WORKFLOWS)]

    workflows.hooks.append(look)
    running = create_workflow("with_hook", 1)
    workflows.with_hook(running, 1)
    assert found == {"updated now": [], "two hours old": [running.id]}
    assert query(FIND_STUCK_WORKFLOWS) == []  # it finished


def test_a_checkpoint_takes_a_workflow_off_the_stuck_list():
    found: list[list[int]] = []

    def make_it_look_stuck(ctx: Workflow) -> None:
        set_updated_at(ctx.id, timezone.now() - datetime.timedelta(hours=2))
        found.append([row["workflow_id"] for row in query(FIND_STUCK_WORKFLOWS)])

    def look(ctx: Workflow) -> None:
        found.append([row["workflow_id"] for row in query(FIND_STUCK_WORKFLOWS)])

    workflows.hooks.extend([make_it_look_stuck, look])
    workflows.with_two_hooks.run()
    assert found == [[1], []]
