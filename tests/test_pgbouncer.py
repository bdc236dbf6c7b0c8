"""Behind PgBouncer in transaction mode: runs, workers and notifications through the pooler.

The processes under test reach the test database through the session's bouncer (PGHOST and
PGPORT in their environment); this test process stays on its direct connection, to set up and
check the data. The bouncer's pool is smaller than the number of clients, so that server
connections, and whatever a client leaves on them, are shared.
"""

from __future__ import annotations

import signal
import time
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import pytest
from django.db import connection

from django_pgqrs import Workflow
from tests.bouncer import PgBouncer
from tests.worker_workflows import worker_three

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("postgres_only")]

PREPARED = "prepared statements"

# Run by `manage.py shell -c` in each process: THREADS threads start together, and each runs
# RUNS workflows one after the other, on a connection of its own; a line per run on stdout.
CONCURRENT_RUNS = """
import logging, os, sys, threading
from django.db import connections
from tests.workflows import add_three

logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
first, threads, runs = (int(os.environ[name]) for name in ("FIRST", "THREADS", "RUNS"))
together = threading.Barrier(threads)
failed = []

def run_some(thread):
    together.wait()
    try:
        for n in range(first + thread * runs, first + (thread + 1) * runs):
            try:
                sys.stdout.write(f"ran {n} {add_three.run(n)}\\n")
            except Exception as exc:
                failed.append(n)
                sys.stdout.write(f"failed {n} {type(exc).__name__}: {exc}\\n")
            sys.stdout.flush()
    finally:
        connections.close_all()

started = [threading.Thread(target=run_some, args=(t,)) for t in range(threads)]
for thread in started:
    thread.start()
for thread in started:
    thread.join()
sys.exit(1 if failed else 0)
"""


def through(bouncer: PgBouncer) -> dict[str, str]:
    """The environment that sends a process's database connections through the bouncer."""
    return {"PGHOST": "127.0.0.1", "PGPORT": str(bouncer.port)}


def direct_url() -> str:
    """A postgres:// URL of the test database on the server itself, not through the bouncer."""
    db = connection.settings_dict
    password = f":{quote(db['PASSWORD'], safe='')}" if db["PASSWORD"] else ""
    return (
        f"postgres://{quote(db['USER'], safe='')}{password}@{db['HOST'] or '127.0.0.1'}:"
        f"{db['PORT'] or 5432}/{quote(db['NAME'], safe='')}"
    )


def transactions_through(bouncer: PgBouncer) -> Decimal:
    """How many transactions the bouncer has carried to the test database so far."""
    name = connection.settings_dict["NAME"]
    stats = [row for row in bouncer.show("STATS") if row["database"] == name]
    return stats[0]["total_xact_count"] if stats else Decimal(0)


def lines_with(text: str, log: str) -> list[str]:
    return [line for line in log.splitlines() if text in line]


def prepared_warnings(log: str) -> list[str]:
    """The lines of ``log`` about prepared statements; each must be the store's warning."""
    found = lines_with(PREPARED, log)
    assert all("WARNING django_pgqrs.store:" in line for line in found), found
    return found


def test_inline_runs_from_many_threads_and_processes_succeed_through_the_pooler(
    processes: Any, pgbouncer: PgBouncer
) -> None:
    """40 `.run()` calls at once, 2 processes x 4 threads, default settings: prepared statements
    break on shared server connections, and each process falls back, saying so once."""
    before = transactions_through(pgbouncer)
    threads, runs = 4, 5
    started = [
        processes.start(
            "shell",
            "-c",
            CONCURRENT_RUNS,
            FIRST=str(n * threads * runs),
            THREADS=str(threads),
            RUNS=str(runs),
            **through(pgbouncer),
        )
        for n in range(2)
    ]
    ran: dict[int, int] = {}
    for process in started:
        lines = processes.output(process).rest(timeout=120)
        assert process.wait(timeout=30) == 0, "\n".join(lines) + processes.stderr_of(process)
        runs_of = [line.split() for line in lines if line.startswith("ran ")]
        ran.update({int(n): int(result) for _, n, result in runs_of})
        stderr = processes.stderr_of(process)
        assert len(prepared_warnings(stderr)) <= 1, stderr
        assert "Traceback" not in stderr, stderr

    assert ran == {n: n + 3 for n in range(40)}
    saved = Workflow.objects.filter(name="add_three")
    assert {w.input["args"][0]: (w.status, w.result) for w in saved} == {
        n: ("SUCCESS", n + 3) for n in range(40)
    }
    assert not Workflow.objects.filter(status__in=["ERROR", "RUNNING"]).exists()
    # The runs went through the bouncer (each run is several transactions).
    assert transactions_through(pgbouncer) - before >= 40 * 3


def test_a_worker_through_the_pooler_runs_started_workflows(
    processes: Any, pgbouncer: PgBouncer
) -> None:
    handles = [worker_three.start(n) for n in range(8)]
    done = processes.run(
        "pgqrs_worker", "--burst", "--concurrency", "2", timeout=120, **through(pgbouncer)
    )
    assert done.returncode == 0, done.stderr
    assert [handle.result(timeout=5) for handle in handles] == [2 * n + 1 for n in range(8)]
    assert "stopped: 8 workflows run (8 succeeded, 0 failed)" in done.stderr
    assert len(prepared_warnings(done.stderr)) <= 1, done.stderr
    assert not Workflow.objects.exclude(status="SUCCESS").exists()


def test_a_worker_listening_through_the_pooler_says_notifications_cannot_arrive_and_polls(
    processes: Any, pgbouncer: PgBouncer
) -> None:
    """A LISTEN through a transaction pooler stays on a server connection that others get:
    nothing arrives. The worker names the setting that fixes it, and finds work by polling."""
    worker = processes.start("pgqrs_worker", PGQRS_TEST_POLL_SECONDS="0.5", **through(pgbouncer))
    processes.wait_for_stderr(worker, "started: queues default")
    assert worker_three.start(3).result(timeout=20) == 7
    processes.wait_for_stderr(worker, "LISTEN_DATABASE")
    assert worker_three.start(4).result(timeout=20) == 9  # and again, a poll or more later

    warnings = lines_with("LISTEN_DATABASE", processes.stderr_of(worker))
    assert len(warnings) == 1, warnings  # said once, not at every poll
    assert "WARNING" in warnings[0] and "notifications" in warnings[0]
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0, processes.stderr_of(worker)


def test_with_listen_database_an_idle_worker_behind_the_pooler_wakes_on_notify(
    processes: Any, pgbouncer: PgBouncer
) -> None:
    """Its LISTEN on a direct connection, its work through the pooler: a NOTIFY wakes it."""
    worker = processes.start(
        "pgqrs_worker",
        PGQRS_TEST_POLL_SECONDS="30",
        PGQRS_TEST_LISTEN_DATABASE=direct_url(),
        **through(pgbouncer),
    )
    processes.wait_for_stderr(worker, "started: queues default")
    time.sleep(0.5)  # let it go idle, listening
    assert worker_three.start(4).result(timeout=10) == 9  # far sooner than its 30 s poll

    stderr = processes.stderr_of(worker)
    assert not lines_with("LISTEN_DATABASE", stderr), stderr
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0, processes.stderr_of(worker)
