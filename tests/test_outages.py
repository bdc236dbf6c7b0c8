"""Database outages: connections cut under running workers, on a cluster of the tests' own."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
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


@contextlib.contextmanager
def frozen(pids: set[int]) -> Iterator[None]:
    """Stop these server processes (SIGSTOP): their connections hang, as if no packet came back."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


SLOW_BEAT = {  # the defaults' ratio: a heartbeat a third of the lease
    "PGQRS_TEST_LEASE_SECONDS": "3",
    "PGQRS_TEST_HEARTBEAT_SECONDS": "1",
    "PGQRS_TEST_POLL_SECONDS": "0.1",
}


def test_a_heartbeat_whose_connection_hangs_is_replaced_before_the_lease_runs_out(
    processes, database, private_postgres
):
    database.enqueue([("worker_three", [2], 0.0)])
    processes.hold.touch()
    env = {**SLOW_BEAT, **database.settings}
    owner = processes.start("pgqrs_worker", PGQRS_TEST_HOLD=str(processes.hold), **env)
    processes.wait_for_line(owner, "holding workflow 1")
    time.sleep(1.5)  # the heartbeat's first renewal opens its connection
    owners_sessions = private_postgres.backends(database.name)
    rival = processes.start("pgqrs_worker", **env)
    processes.wait_for_stderr(rival, "started: queues default")
    with frozen(owners_sessions):
        time.sleep(3 * 3)  # three leases, while every session of the owner hangs
        assert Counter(processes.traced())["second:2"] == 1  # the rival did not take it
    processes.hold.unlink()
    row = wait_for_status(database, 1, "SUCCESS", timeout=30)
    assert (row["result"], row["recovery_attempts"]) == (5, 0)
    assert "starting a new heartbeat thread" in processes.stderr_of(owner)
    for worker in (owner, rival):
        worker.kill()


def test_cuts_more_frequent_than_a_lease_do_not_keep_recovery_from_taking_a_dead_owners_workflow(
    processes, database, private_postgres
):
    database.enqueue([("worker_three", [3], 0.0)])
    processes.hold.touch()
    env = {**SLOW_BEAT, **database.settings}
    doomed = processes.start("pgqrs_worker", PGQRS_TEST_HOLD=str(processes.hold), **env)
    processes.wait_for_line(doomed, "holding workflow 1")
    rescuer = processes.start("pgqrs_worker", **env)
    processes.wait_for_stderr(rescuer, "started: queues default")
    doomed.kill()
    processes.hold.unlink()
    deadline = time.monotonic() + 3 + 6  # a lease, and room for a loaded machine
    while workflow_row(database, 1)["recovery_attempts"] == 0:
        assert time.monotonic() < deadline, "recovery never took the workflow"
        private_postgres.terminate_connections(database.name)
        time.sleep(0.5)
    assert wait_for_status(database, 1, "SUCCESS", timeout=30)["result"] == 7
    rescuer.kill()


def test_a_worker_started_during_an_outage_does_not_take_live_owners_workflows(
    processes, database, private_postgres
):
    database.enqueue([("worker_three", [4], 0.0)])
    processes.hold.touch()
    env = {**SLOW_BEAT, **database.settings}
    owner = processes.start("pgqrs_worker", PGQRS_TEST_HOLD=str(processes.hold), **env)
    processes.wait_for_line(owner, "holding workflow 1")
    private_postgres.stop()
    try:
        newcomer = processes.start("pgqrs_worker", **env)
        processes.wait_for_stderr(newcomer, "unreachable")
        time.sleep(4)  # longer than a lease: the owner's has run out in the database
    finally:
        private_postgres.start()
    time.sleep(3)
    assert Counter(processes.traced())["second:4"] == 1
    processes.hold.unlink()
    row = wait_for_status(database, 1, "SUCCESS", timeout=30)
    assert (row["result"], row["recovery_attempts"]) == (9, 0)
    for worker in (owner, newcomer):
        worker.kill()


def test_a_burst_worker_waits_for_the_database_rather_than_leave_work_undone(
    processes, database, private_postgres
):
    database.enqueue([("worker_three", [n], 0.0) for n in range(3)])
    private_postgres.stop()
    try:
        worker = processes.start("pgqrs_worker", "--burst", **FAST, **database.settings)
        time.sleep(2)
        assert worker.poll() is None, processes.stderr_of(worker)
    finally:
        private_postgres.start()
    assert worker.wait(timeout=30) == 0, processes.stderr_of(worker)
    for n in range(3):
        assert workflow_row(database, n + 1)["status"] == "SUCCESS"


def test_a_second_signal_stops_a_worker_at_once_even_when_the_database_hangs(
    processes, database, private_postgres
):
    database.enqueue([("worker_three", [5], 0.0)])
    processes.hold.touch()
    worker = processes.start(
        "pgqrs_worker", PGQRS_TEST_HOLD=str(processes.hold), **FAST, **database.settings
    )
    processes.wait_for_line(worker, "holding workflow 1")
    with frozen(private_postgres.backends(database.name) | {private_postgres.postmaster()}):
        worker.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        worker.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert worker.wait(timeout=10) == 1
        assert time.monotonic() - started < 3
    processes.hold.unlink()


def test_an_inline_run_stopped_by_an_outage_names_its_workflow_and_gives_it_back_on_exit(
    processes, database, private_postgres
):
    processes.hold.touch()
    code = (
        "from django_pgqrs import StorageError\n"
        "from tests.fault_workflows import talks_to_the_database\n"
        "try:\n"
        "    talks_to_the_database.run(1, False)\n"
        "except StorageError as exc:\n"
        "    print('stopped', exc.workflow_id, flush=True)\n"
    )
    script = processes.start(
        "shell", "-c", code, PGQRS_TEST_HOLD=str(processes.hold), **database.settings
    )
    processes.wait_for_line(script, "querying in workflow 1")
    private_postgres.terminate_connections(database.name)
    time.sleep(0.5)  # the step's next query finds its connection gone
    processes.hold.unlink()
    assert processes.wait_for_line(script, "stopped").split() == ["stopped", "1"], (
        processes.stderr_of(script)
    )
    assert script.wait(timeout=20) == 0
    row = workflow_row(database, 1)
    assert row["status"] == "PENDING"  # given back as the process exited, not left to expire


# At the commit of the first transaction that saves a step whose id starts with a prefix of
# pgqrs_test_fault (or, for the prefix "end of a child", that ends a child workflow), the server
# ends the session, as an outage would at that moment. Once only: a sequence counts, and a
# sequence is not rolled back with the transaction.
FAULT_AT_COMMIT = """
CREATE TABLE pgqrs_test_fault (prefix text NOT NULL);
CREATE SEQUENCE pgqrs_test_fault_seq;
CREATE FUNCTION pgqrs_test_fault() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'pgqrs_workflows' THEN
        IF NEW.parent_id IS NULL OR NEW.status <> 'SUCCESS'
                OR NOT EXISTS (SELECT 1 FROM pgqrs_test_fault WHERE prefix = 'end of a child') THEN
            RETURN NULL;
        END IF;
    ELSIF NOT EXISTS (SELECT 1 FROM pgqrs_test_fault WHERE NEW.step_id LIKE prefix || '%%') THEN
        RETURN NULL;
    END IF;
    IF nextval('pgqrs_test_fault_seq') = 1 THEN
        PERFORM pg_terminate_backend(pg_backend_pid());
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER pgqrs_test_fault AFTER INSERT ON pgqrs_workflow_steps
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION pgqrs_test_fault();
CREATE CONSTRAINT TRIGGER pgqrs_test_fault AFTER UPDATE ON pgqrs_workflows
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION pgqrs_test_fault();
"""


@pytest.mark.parametrize(
    ("prefix", "name", "arguments", "result"),
    [
        ("pgqrs.start:", "one_child", [5], 7),
        ("pgqrs.event:", "waiter", ["go", None], ["payload", "received"]),
        ("end of a child", "one_child", [5], 7),
    ],
    ids=["starting a child", "receiving an event", "ending a child"],
)
def test_a_durable_primitive_whose_commit_meets_an_outage_is_not_failed(
    processes, database, prefix, name, arguments, result
):
    """The commit of a child's start, of an event's receipt or of a child's end (which wakes its
    parent) is the engine's own write: the loss of its connection is an outage (the workflow
    goes on from its last checkpoint), never the workflow's failure."""
    with database.connect(autocommit=True) as db:
        db.execute(FAULT_AT_COMMIT)
        db.execute("INSERT INTO pgqrs_test_fault VALUES (%s)", [prefix])
    database.enqueue([(name, arguments, 0.0)])
    worker = processes.start("pgqrs_worker", "--concurrency", "2", **FAST, **database.settings)
    if name == "waiter":
        wait_for_status(database, 1, "SLEEPING", timeout=20)
        sent = database.django(
            "shell", "-c", "from django_pgqrs import send_event; send_event(1, 'go', 'payload')"
        )
        assert sent.returncode == 0, sent.stderr
    row = wait_for_status(database, 1, "SUCCESS", timeout=30)
    stderr = processes.stderr_of(worker)
    interrupted = "Workflow 2 (add_two)" if prefix == "end of a child" else f"Workflow 1 ({name})"
    assert f"{interrupted} interrupted" in stderr, stderr
    shown = row["result"] if name == "one_child" else [row["result"][0], "received"]
    assert shown == result
    with database.connect() as db:
        # Two commits saved the step: the first was cut, the second (the next run's) held.
        assert db.execute("SELECT nextval('pgqrs_test_fault_seq')").fetchone() == (3,)
        workflows = db.execute("SELECT count(*) FROM pgqrs_workflows").fetchone()
    assert workflows == (2 if name == "one_child" else 1,)  # the child started once
    worker.terminate()
    assert worker.wait(timeout=20) == 0, processes.stderr_of(worker)
