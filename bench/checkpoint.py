"""Cost of checkpointing: 3-step workflows against the floor of one raw INSERT + COMMIT.

    python bench/checkpoint.py [--workflows 500] [--rounds 3]

Uses DATABASE_URL (default postgres://postgres@127.0.0.1:5432/pgqrs_bench, created if missing;
its workflows are deleted). Prints workflows/s, steps/s, SQL statements and write statements per
workflow, and the cost of one workflow as a multiple of one raw psycopg INSERT + COMMIT measured
in the same run on the same server. "sql alone" sends the engine's five statements of a ``run``
workflow through raw psycopg: the cost of the SQL itself, without Python, Django or the engine.
Rounds alternate floor and workflows, so that drift in the machine hits both alike; the medians
are printed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import common  # sets Django up; must come first


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


def create_then_call(count: int) -> float:
    """Seconds per workflow the guide's way: create_workflow, then call the function."""
    from bench.benchapp.workflows import three_steps
    from django_pgqrs import create_workflow

    start = time.perf_counter()
    for n in range(count):
        three_steps(create_workflow("bench_three_steps", n), n)
    return (time.perf_counter() - start) / count


def sql_alone(count: int) -> float:
    """Seconds per workflow for the engine's own five statements sent by raw psycopg (prepared).

    The part of a workflow's cost that is the SQL itself; the rest is Python: Django's cursor,
    the engine, the encoding.
    """
    import datetime
    import json
    import uuid

    from django_pgqrs.store import store_for

    store = store_for("default")
    output = json.dumps({"n": 1, "records": [{"id": 1, "name": "Alice"}, {"id": 2, "name": "Bob"}]})
    with common.raw_connection() as raw:
        start = time.perf_counter()
        for n in range(count):
            token = uuid.uuid4()
            insert = {
                "name": "bench_three_steps",
                "status": "RUNNING",
                "input": json.dumps({"args": [n], "kwargs": {}}),
                "owner": "bench",
                "token": token,
                "lease": 30.0,
                "delay": 0.0,
                "run_at": None,
                "queue": "default",
                "priority": 0,
                "idempotency_key": None,
                "parent_id": None,
                "deadline_at": None,
                "ahead": 0.0,
            }
            workflow_id = raw.execute(store.sql_insert, insert, prepare=True).fetchone()[0]
            for position, step_id in enumerate(("fetch", "transform", "save"), 1):
                now = datetime.datetime.now(datetime.UTC)
                checkpoint = {
                    "id": workflow_id,
                    "token": token,
                    "lease": 30.0,
                    "step_id": step_id,
                    "position": position,
                    "status": "SUCCESS",
                    "output": output,
                    "error": None,
                    "attempts": 1,
                    "started_at": now,
                    "completed_at": now,
                    "args_digest": "0123456789abcdef",
                }
                (sql,) = store.sql_checkpoint  # one statement on PostgreSQL
                raw.execute(sql, checkpoint, prepare=True).fetchone()
            end = {"id": workflow_id, "token": token, "status": "SUCCESS", "lease": 0.0}
            end.update(result='"saved 2"', error=None)
            raw.execute(store.sql_end, end, prepare=True).fetchone()
        return (time.perf_counter() - start) / count


def statements(path: Callable[[int], float]) -> Counter:
    from django.db import connection

    counter = Counter()
    with connection.execute_wrapper(counter):
        path(1)
    return counter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workflows", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    common.setup()
    from django.db import connection

    count = args.workflows
    paths = {"run": common.inline, "create+call": create_then_call, "sql alone": sql_alone}
    common.floor(50)
    for path in paths.values():  # warm up connections and caches
        path(50)
    seconds: dict[str, list[float]] = {"floor": [], **{name: [] for name in paths}}
    for _ in range(args.rounds):
        seconds["floor"].append(common.floor(count))
        for name, path in paths.items():
            seconds[name].append(path(count))
    base = statistics.median(seconds["floor"])
    db = connection.settings_dict
    print(
        f"database: {connection.vendor} {db['HOST'] or 'local'}/{db['NAME']}; "
        f"{count} workflows x {args.rounds} rounds, medians"
    )
    print(f"floor: raw psycopg INSERT+COMMIT {base * 1e6:.0f} us")
    print(
        f"{'path':<12} {'wf/s':>7} {'steps/s':>8} {'us/wf':>7} {'stmts/wf':>9} "
        f"{'writes/wf':>10} {'x floor':>8}"
    )
    for name, path in paths.items():
        median = statistics.median(seconds[name])
        sql = statements(path) if path is not sql_alone else statements(common.inline)
        print(
            f"{name:<12} {1 / median:>7.0f} {3 / median:>8.0f} {median * 1e6:>7.0f} "
            f"{sql.statements:>9} {sql.writes:>10} {median / base:>8.2f}"
        )


if __name__ == "__main__":
    main()
