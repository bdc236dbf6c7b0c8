"""What the benchmarks share: Django set up on the benchmark database, the floor, the paths."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "testproject")]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/pgqrs_bench")


def _ensure_database(url: str) -> None:
    import psycopg
    from testproject.database_url import parse

    db = parse(url)
    if not db["ENGINE"].endswith("postgresql"):
        return
    params = {"host": db["HOST"], "port": db["PORT"] or 5432, "user": db["USER"]}
    with psycopg.connect(
        **params, password=db["PASSWORD"], dbname="postgres", autocommit=True
    ) as admin:
        found = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [db["NAME"]])
        if not found.fetchone():
            admin.execute(f'CREATE DATABASE "{db["NAME"]}"')


def setup() -> None:
    """Create the benchmark database if needed, set Django up, migrate, start empty."""
    _ensure_database(os.environ["DATABASE_URL"])
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    reset()


def reset() -> None:
    """Delete every saved workflow (this is the benchmark's own database)."""
    from django.core.management.color import no_style
    from django.db import connection

    from django_pgqrs.models import Workflow, WorkflowEvent, WorkflowStep

    tables = [m._meta.db_table for m in (WorkflowStep, WorkflowEvent, Workflow)]
    connection.ops.execute_sql_flush(connection.ops.sql_flush(no_style(), tables))


def raw_connection() -> Any:
    """A plain psycopg connection (autocommit) to the benchmark database, outside Django."""
    import psycopg
    from django.db import connection

    settings = connection.settings_dict
    return psycopg.connect(
        host=settings["HOST"],
        port=settings["PORT"] or 5432,
        user=settings["USER"],
        password=settings["PASSWORD"],
        dbname=settings["NAME"],
        autocommit=True,
    )


def floor(count: int) -> float:
    """Seconds per raw psycopg INSERT + COMMIT (autocommit) of a small jsonb row."""
    with raw_connection() as raw:
        raw.execute(
            "CREATE TABLE IF NOT EXISTS pgqrs_bench_floor (id bigserial PRIMARY KEY, v jsonb)"
        )
        start = time.perf_counter()
        for n in range(count):
            raw.execute("INSERT INTO pgqrs_bench_floor (v) VALUES (%s::jsonb)", [f'{{"n": {n}}}'])
        elapsed = time.perf_counter() - start
        raw.execute("DROP TABLE pgqrs_bench_floor")
    return elapsed / count


def inline(count: int) -> float:
    """Seconds per 3-step workflow created and run in this process (``fn.run``)."""
    from bench.benchapp.workflows import three_steps

    start = time.perf_counter()
    for n in range(count):
        three_steps.run(n)
    return (time.perf_counter() - start) / count


def worker_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "django", "pgqrs_worker", *args]


def worker_env(**extra: str) -> dict[str, str]:
    """This process's environment, for a worker: the repository importable, ``extra`` added."""
    return dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "testproject")]),
        **extra,
    )


def latency(samples: int, **env: str) -> list[float]:
    """Seconds from enqueue to the first step's start on one idle worker, one workflow at a
    time, sorted. ``env``: added to the worker's environment. The worker's log is shown only if
    the measure fails."""
    import signal
    import subprocess
    import tempfile

    from bench.benchapp.workflows import started_at

    reset()
    with tempfile.TemporaryFile() as log:
        worker = subprocess.Popen(
            worker_command("-v", "0"), env=worker_env(**env), cwd=ROOT, stderr=log
        )
        try:
            # The worker is up, and has checked that notifications reach it (a check that
            # fails takes a couple of seconds).
            started_at.start().result(timeout=60)
            times = []
            for _ in range(samples):
                enqueued = time.time()
                began = started_at.start().result(timeout=60, poll=0.005)
                times.append(began - enqueued)
                time.sleep(0.01)
            return sorted(times)
        except BaseException:
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace"))
            raise
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=60)


def percentiles(times: list[float]) -> str:
    """p50 and p99 of sorted ``times``, in milliseconds."""
    p50 = times[len(times) // 2]
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    return f"{len(times)} samples: p50 {p50 * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms"
