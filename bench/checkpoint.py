"""Cost of checkpointing: 3-step workflows against the floor of one raw INSERT + COMMIT.

    python bench/checkpoint.py [--workflows 500] [--rounds 3]

Uses DATABASE_URL (default postgres://postgres@127.0.0.1:5432/pgqrs_bench, created if missing).
Prints workflows/s, steps/s, SQL statements and write transactions per workflow, and the cost of
one workflow as a multiple of one raw psycopg INSERT + COMMIT measured in the same run on the same
server. Rounds alternate floor and workflows so that drift in the machine hits both alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "testproject")]
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/pgqrs_bench")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")


def ensure_database(url: str) -> None:
    import psycopg
    from testproject.database_url import parse

    db = parse(url)
    if not db["ENGINE"].endswith("postgresql"):
        return
    admin = psycopg.connect(
        host=db["HOST"],
        port=db["PORT"] or 5432,
        user=db["USER"],
        password=db["PASSWORD"],
        dbname="postgres",
        autocommit=True,
    )
    with admin:
        exists = admin.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", [db["NAME"]]
        ).fetchone()
        if not exists:
            admin.execute(f'CREATE DATABASE "{db["NAME"]}"')


ensure_database(os.environ["DATABASE_URL"])

import django  # noqa: E402

django.setup()

import psycopg  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402

from django_pgqrs import Workflow, create_workflow, step, workflow  # noqa: E402


@step
def fetch(ctx: Workflow, n: int) -> dict[str, object]:
    return {"n": n, "records": [{"id": 1, "name": "Alice"}, {"id": 2, "name": "Bob"}]}


@step
def transform(ctx: Workflow, data: dict[str, object]) -> dict[str, object]:
    return {"count": len(data["records"]), "n": data["n"]}  # type: ignore[arg-type]


@step
def save(ctx: Workflow, results: dict[str, object]) -> str:
    return f"saved {results['count']}"


@workflow(name="bench_three_steps")
def three_steps(ctx: Workflow, n: int) -> str:
    return save(ctx, transform(ctx, fetch(ctx, n)))


class Counter:
    """Counts the statements Django sends, and how many of them write."""

    def __init__(self) -> None:
        self.statements = 0
        self.writes = 0

    def __call__(self, execute, sql, params, many, context):  # type: ignore[no-untyped-def]
        self.statements += 1
        if not sql.lstrip().upper().startswith("SELECT"):
            self.writes += 1
        return execute(sql, params, many, context)


def floor(count: int) -> float:
    """Seconds per raw psycopg INSERT + COMMIT (autocommit) of a small jsonb row."""
    settings = connection.settings_dict
    raw = psycopg.connect(
        host=settings["HOST"],
        port=settings["PORT"] or 5432,
        user=settings["USER"],
        password=settings["PASSWORD"],
        dbname=settings["NAME"],
        autocommit=True,
    )
    with raw:
        raw.execute(
            "CREATE TABLE IF NOT EXISTS pgqrs_bench_floor (id bigserial PRIMARY KEY, v jsonb)"
        )
        start = time.perf_counter()
        for n in range(count):
            raw.execute("INSERT INTO pgqrs_bench_floor (v) VALUES (%s::jsonb)", [f'{{"n": {n}}}'])
        elapsed = time.perf_counter() - start
        raw.execute("DROP TABLE pgqrs_bench_floor")
    return elapsed / count


def run_inline(count: int) -> float:
    start = time.perf_counter()
    for n in range(count):
        three_steps.run(n)
    return (time.perf_counter() - start) / count


def create_then_call(count: int) -> float:
    start = time.perf_counter()
    for n in range(count):
        three_steps(create_workflow("bench_three_steps", n), n)
    return (time.perf_counter() - start) / count


def per_workflow_sql(fn) -> Counter:  # type: ignore[no-untyped-def]
    counter = Counter()
    with connection.execute_wrapper(counter):
        fn(1)
    return counter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workflows", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    call_command("migrate", verbosity=0)
    count = args.workflows
    # Warm up connections, caches and the JIT-less interpreter's code paths.
    floor(50), run_inline(50), create_then_call(50)
    results: dict[str, list[float]] = {"floor": [], "run": [], "create+call": []}
    for _ in range(args.rounds):
        results["floor"].append(floor(count))
        results["run"].append(run_inline(count))
        results["create+call"].append(create_then_call(count))
    base = statistics.median(results["floor"])
    print(
        f"server: {connection.vendor} {connection.settings_dict['HOST'] or 'local'}/"
        f"{connection.settings_dict['NAME']}, {count} workflows x {args.rounds} rounds (median)"
    )
    print(f"floor: raw psycopg INSERT+COMMIT {base * 1e6:.0f} us")
    print(
        f"{'path':<12} {'wf/s':>8} {'steps/s':>8} {'us/wf':>8} {'stmts/wf':>9} "
        f"{'writes/wf':>9} {'x floor':>8}"
    )
    paths = {"run": run_inline, "create+call": create_then_call}
    for name, fn in paths.items():
        seconds = statistics.median(results[name])
        sql = per_workflow_sql(fn)
        print(
            f"{name:<12} {1 / seconds:>8.0f} {3 / seconds:>8.0f} {seconds * 1e6:>8.0f} "
            f"{sql.statements:>9} {sql.writes:>9} {seconds / base:>8.2f}"
        )


if __name__ == "__main__":
    main()
