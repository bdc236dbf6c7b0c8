"""Database outages: connections cut under running workers, on a cluster of the tests' own."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest

from tests.chaos import PrivateDatabase

pytestmark = pytest.mark.django_db(transaction=True)

FAST = {
    "PGQRS_TEST_LEASE_SECONDS": "1.5",
    "PGQRS_TEST_HEARTBEAT_SECONDS": "0.3",
    "PGQRS_TEST_POLL_SECONDS": "0.1",
}


@pytest.fixture
def database(private_postgres: Any) -> PrivateDatabase:
    database = PrivateDatabase.create(private_postgres, "outage")
    database.migrate()
    return database


def workflow_row(database: PrivateDatabase, workflow_id: int) -> dict[str, Any]:
    with database.connect() as db:
        cursor = db.execute(
            "SELECT status, result, error, attempts, recovery_attempts FROM pgqrs_workflows "
            "WHERE workflow_id = %s",
            [workflow_id],
        )
        columns = [column.name for column in cursor.description]
        return dict(zip(columns, cursor.fetchone(), strict=True))


def wait_for_status(database: PrivateDatabase, workflow_id: int, status: str, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = workflow_row(database, workflow_id)
        if row["status"] == status:
            return row
        time.sleep(0.05)
    raise AssertionError(f"workflow {workflow_id} is {row['status']}, not {status}: {row}")


def test_a_cut_connection_does_not_stop_the_heartbeat_nor_let_a_rival_run_the_step(
    processes, database, private_postgres
):
    """The owner's heartbeat reconnects: its lease outlives three lease lengths and a cut."""
    database.enqueue([("worker_three", [2], 0.0)])
    processes.hold.touch()
    env = {**FAST, **database.settings}
    owner = processes.start("pgqrs_worker", PGQRS_TEST_HOLD=str(processes.hold), **env)
    processes.wait_for_line(owner, "holding workflow 1")
    rival = processes.start("pgqrs_worker", **env)
    processes.wait_for_stderr(rival, "started: queues default")

    assert private_postgres.terminate_connections(database.name) > 0
    time.sleep(3 * 1.5)  # three lease lengths, inside one step: only renewals keep it
    processes.hold.unlink()

    row = wait_for_status(database, 1, "SUCCESS", timeout=20)
    assert (row["result"], row["attempts"], row["recovery_attempts"]) == (5, 1, 0)
    assert Counter(processes.traced()) == {"first:2": 1, "second:2": 1, "third:4": 1}
    assert "Could not renew" in processes.stderr_of(owner)
    assert "Exception in thread" not in processes.stderr_of(owner)
    for worker in (owner, rival):
        worker.terminate()
        assert worker.wait(timeout=20) == 0, processes.stderr_of(worker)


@pytest.mark.parametrize("atomic", [False, True], ids=["plain", "atomic"])
def test_a_step_whose_database_connection_is_cut_is_not_failed_and_the_workflow_finishes(
    processes, database, private_postgres, atomic
):
    database.enqueue([("talks_to_the_database", [41, atomic], 0.0)])
    processes.hold.touch()
    worker = processes.start(
        "pgqrs_worker", PGQRS_TEST_HOLD=str(processes.hold), **FAST, **database.settings
    )
    processes.wait_for_line(worker, "querying in workflow 1")
    assert private_postgres.terminate_connections(database.name) > 0
    processes.wait_for_stderr(worker, "Workflow 1 (talks_to_the_database) interrupted")
    processes.hold.unlink()

    row = wait_for_status(database, 1, "SUCCESS", timeout=20)
    assert (row["result"], row["error"]) == (42, None)
    assert processes.traced() == ["query_while_held", "query_while_held"]
    with database.connect() as db:
        steps = db.execute("SELECT step_id, status, attempts FROM pgqrs_workflow_steps").fetchall()
    assert steps == [("query_while_held", "SUCCESS", 1)]
    worker.terminate()
    assert worker.wait(timeout=20) == 0, processes.stderr_of(worker)
