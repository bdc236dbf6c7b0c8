"""Pruning a big table: retention.prune on about a million finished workflows.

    python bench/prune.py [--workflows 1000000] [--batch-size 10000] [--keep] [--without-index]

Creates its own database (PGQRS_BENCH_PRUNE_URL, default
postgres://postgres@127.0.0.1:5432/pgqrs_bench_prune; dropped first if it exists, and at the
end unless --keep), fills it with INSERT ... SELECT generate_series, prunes the workflows last
updated over 30 days ago (SUCCESS and CANCELLED, the defaults), prints the time and the rows
deleted per second, and checks that nothing that had to stay went. Loaded, by workflow id:

- N finished workflows, 3 steps each: 89% SUCCESS, 5% CANCELLED, 6% ERROR (kept: not asked
  for); 60 days old, but 6% updated a day ago (kept); a tenth of them children of the workflow
  before them (pruned with it, or kept with it; kept without it if failed or recent), and every
  hundredth with an event;
- N/100 unfinished ones (PENDING, RUNNING, SLEEPING), 60 days old, one step each, a tenth of
  them children of old finished workflows (kept: their children are not over);
- N/100 finished children of the unfinished ones, 60 days old (kept: their parents wait);
- N/100 pending forks of prunable workflows (kept, their forked_from_id set to NULL).

What must stay is worked out first by a recursive query of its own (what does not qualify, and
the children of what stays), and compared with what is left.
"""

from __future__ import annotations

import argparse
import datetime
import os
import time
from typing import TYPE_CHECKING, Any

URL = os.environ.get(
    "PGQRS_BENCH_PRUNE_URL", "postgres://postgres@127.0.0.1:5432/pgqrs_bench_prune"
)
os.environ["DATABASE_URL"] = URL

import common  # noqa: E402 - sets Django up on DATABASE_URL; must come after it

if TYPE_CHECKING:
    import psycopg

    from django_pgqrs.retention import PruneCounts

    Connection = psycopg.Connection[Any]

OLD = "statement_timestamp() - interval '60 days'"
RECENT = "statement_timestamp() - interval '1 day'"
INPUT = """'{"args": [1], "kwargs": {}}'::jsonb"""

# Deleting a workflow makes PostgreSQL look for rows whose forked_from_id refers to it (the
# foreign key's check); migration 0004 indexes that column, and --without-index drops the index.
DROP_INDEX = "DROP INDEX IF EXISTS pgqrs_wf_forked_from_idx"


def load(raw: Connection, n: int) -> None:
    """Fill the tables (see the module's docstring), then analyze them."""
    u = n // 100
    execute = raw.execute
    # Finished: id % 20 and id % 100 pick the status, id % 50 the age (7, 12, 33: recent), id % 10
    # the parent (3: the workflow before it, so 12 are recent parents, 22 old parents of failed
    # children, 32 old parents of recent children).
    execute(
        f"""
        INSERT INTO pgqrs_workflows (workflow_id, name, status, input, result, created_at,
            updated_at, attempts, recovery_attempts, queue, priority, run_at, parent_id,
            idempotency_key)
        SELECT i, 'bench', CASE WHEN i %% 20 = 0 OR i %% 100 = 23 THEN 'ERROR'
                WHEN i %% 20 = 1 THEN 'CANCELLED' ELSE 'SUCCESS' END,
            {INPUT}, '"done"'::jsonb, {OLD},
            CASE WHEN i %% 50 IN (7, 12, 33) THEN {RECENT} ELSE {OLD} END,
            1, 0, 'default', 0, {OLD},
            CASE WHEN i %% 10 = 3 THEN i - 1 END,
            CASE WHEN i %% 4 = 0 THEN 'key-' || i END
        FROM generate_series(1, %s) AS i""",
        [n],
    )
    execute(
        f"""
        INSERT INTO pgqrs_workflows (workflow_id, name, status, input, created_at, updated_at,
            attempts, recovery_attempts, queue, priority, run_at, parent_id, forked_from_id,
            lease_owner, lease_token, lease_expires_at)
        SELECT i, 'bench', kind.status, {INPUT}, {OLD}, {OLD}, 1, 0, 'default', 0, {OLD},
            CASE WHEN kind.status = 'SUCCESS' THEN i - %(u)s
                WHEN NOT kind.fork AND (i - %(n)s) %% 10 = 0 THEN (i - %(n)s) * 10 + 6 END,
            CASE WHEN kind.fork THEN (i - %(n)s - 2 * %(u)s) * 10 + 4 END,
            CASE WHEN kind.status = 'RUNNING' THEN 'bench:1' END,
            CASE WHEN kind.status = 'RUNNING' THEN gen_random_uuid() END,
            CASE WHEN kind.status = 'RUNNING' THEN statement_timestamp() + interval '1 hour' END
        FROM generate_series(%(n)s + 1, %(n)s + 3 * %(u)s) AS i,
        LATERAL (SELECT CASE
            WHEN i <= %(n)s + %(u)s THEN (ARRAY['PENDING', 'RUNNING', 'SLEEPING'])[i %% 3 + 1]
            WHEN i <= %(n)s + 2 * %(u)s THEN 'SUCCESS'
            ELSE 'PENDING' END AS status,
            i > %(n)s + 2 * %(u)s AS fork) AS kind""",
        {"n": n, "u": u},
    )
    execute(
        f"""
        INSERT INTO pgqrs_workflow_steps (workflow_id, step_id, position, status, output,
            attempts, started_at, completed_at)
        SELECT w, 'step' || s, s, 'SUCCESS', '{{"rows": 3}}'::jsonb, 1, {OLD}, {OLD}
        FROM generate_series(1, %(n)s) AS w, generate_series(1, 3) AS s
        UNION ALL
        SELECT w, 'step1', 1, 'SUCCESS', '1'::jsonb, 1, {OLD}, {OLD}
        FROM generate_series(%(n)s + 1, %(n)s + %(u)s) AS w""",
        {"n": n, "u": u},
    )
    execute(
        f"""
        INSERT INTO pgqrs_workflow_events (workflow_id, name, payload, created_at, received_at,
            received_by)
        SELECT i, 'go', '1'::jsonb, {OLD}, {OLD}, 'pgqrs.wait:go'
        FROM generate_series(5, %s, 100) AS i""",
        [n],
    )
    execute(
        "SELECT setval(pg_get_serial_sequence('pgqrs_workflows', 'workflow_id'), "
        "(SELECT max(workflow_id) FROM pgqrs_workflows))"
    )
    execute("ANALYZE pgqrs_workflows, pgqrs_workflow_steps, pgqrs_workflow_events")


def must_keep(raw: Connection) -> None:
    """Save the ids of what must stay, by a recursive query independent of the pruning code:
    what does not qualify itself, and the children of what stays."""
    raw.execute(
        """
        CREATE TABLE bench_keep AS
        WITH RECURSIVE keep(workflow_id) AS (
            SELECT w.workflow_id FROM pgqrs_workflows w
            WHERE w.status NOT IN ('SUCCESS', 'CANCELLED')
                OR w.updated_at >= statement_timestamp() - interval '30 days'
                OR EXISTS (SELECT 1 FROM pgqrs_workflows c WHERE c.parent_id = w.workflow_id
                           AND c.status IN ('PENDING', 'RUNNING', 'SLEEPING'))
            UNION
            SELECT c.workflow_id FROM pgqrs_workflows c JOIN keep ON c.parent_id = keep.workflow_id
        )
        SELECT workflow_id FROM keep"""
    )


def kinds(n: int) -> dict[str, str]:
    """What the layout says must stay, every row of it, by kind: conditions on workflow_id."""
    u = n // 100
    return {
        "unfinished": f"workflow_id BETWEEN {n + 1} AND {n + u}",
        "children of unfinished ones": f"workflow_id BETWEEN {n + u + 1} AND {n + 2 * u}",
        "parents of unfinished ones": (
            f"workflow_id % 100 = 6 AND workflow_id BETWEEN 106 AND {10 * u + 6}"
        ),
        "forks of pruned workflows": f"workflow_id > {n + 2 * u}",
        "failed": f"workflow_id <= {n} AND workflow_id % 20 = 0",
        "recent": f"workflow_id <= {n} AND workflow_id % 50 IN (7, 12)",
        "children of recent parents": f"workflow_id <= {n} AND workflow_id % 50 = 13",
        # Children of pruned parents that do not qualify themselves: kept, unlinked.
        "failed children": f"workflow_id <= {n} AND workflow_id % 100 = 23",
        "recent children": f"workflow_id <= {n} AND workflow_id % 50 = 33",
    }


def counts(raw: Connection, n: int) -> dict[str, int]:
    """Rows now: every table, what bench_keep holds, and each kind that must stay."""
    found = {
        "workflows": scalar(raw, "SELECT count(*) FROM pgqrs_workflows"),
        "steps": scalar(raw, "SELECT count(*) FROM pgqrs_workflow_steps"),
        "events": scalar(raw, "SELECT count(*) FROM pgqrs_workflow_events"),
        "kept workflows": scalar(
            raw, "SELECT count(*) FROM pgqrs_workflows JOIN bench_keep USING (workflow_id)"
        ),
        "kept steps": scalar(
            raw, "SELECT count(*) FROM pgqrs_workflow_steps JOIN bench_keep USING (workflow_id)"
        ),
        "kept events": scalar(
            raw, "SELECT count(*) FROM pgqrs_workflow_events JOIN bench_keep USING (workflow_id)"
        ),
        "linked forks": scalar(
            raw, "SELECT count(*) FROM pgqrs_workflows WHERE forked_from_id IS NOT NULL"
        ),
    }
    for kind, where in kinds(n).items():
        found[kind] = scalar(raw, f"SELECT count(*) FROM pgqrs_workflows WHERE {where}")
    unlinked = f"({kinds(n)['failed children']}) OR ({kinds(n)['recent children']})"
    found["linked children of pruned parents"] = scalar(
        raw, f"SELECT count(*) FROM pgqrs_workflows WHERE parent_id IS NOT NULL AND ({unlinked})"
    )
    return found


def check(before: dict[str, int], after: dict[str, int], pruned: PruneCounts) -> None:
    """Fail unless exactly what had to go went, and everything that had to stay is there."""
    problems = {
        f"{kind} missing": before[kind] - after[kind]
        for kind in [*kinds(0), "kept workflows", "kept steps", "kept events"]
    }
    problems["left that had to go"] = after["workflows"] - before["kept workflows"]
    problems["steps left that had to go"] = after["steps"] - before["kept steps"]
    problems["events left that had to go"] = after["events"] - before["kept events"]
    problems["pruned count wrong"] = pruned.workflows - (before["workflows"] - after["workflows"])
    problems["steps count wrong"] = pruned.steps - (before["steps"] - after["steps"])
    problems["events count wrong"] = pruned.events - (before["events"] - after["events"])
    problems["forks still linked"] = after["linked forks"]
    problems["children still linked"] = after["linked children of pruned parents"]
    bad = {what: count for what, count in problems.items() if count}
    if bad:
        raise SystemExit(f"FAILED: {bad}")
    print(
        f"checked: the {after['workflows']} workflows that had to stay are there, with their "
        f"{after['steps']} steps and {after['events']} events, and nothing else: "
        + ", ".join(f"{after[kind]} {kind}" for kind in kinds(0))
    )


def scalar(raw: Connection, sql: str) -> int:
    row = raw.execute(sql).fetchone()
    assert row is not None
    return int(row[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workflows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--keep", action="store_true", help="do not drop the database at the end")
    parser.add_argument(
        "--without-index",
        action="store_true",
        help="drop the index on forked_from_id first, to see what pruning costs without it",
    )
    args = parser.parse_args()
    n = args.workflows
    drop_database()
    common.setup()
    from django.db import connections

    from django_pgqrs.retention import prune

    try:
        with common.raw_connection() as raw:
            start = time.perf_counter()
            load(raw, n)
            if args.without_index:
                raw.execute(DROP_INDEX)
            must_keep(raw)
            before = counts(raw, n)
            print(
                f"loaded {before['workflows']} workflows, {before['steps']} steps, "
                f"{before['events']} events in {time.perf_counter() - start:.1f} s; "
                f"{before['kept workflows']} workflows must stay"
            )
            # Seconds each batch took: its transaction, and its locks, last about that long.
            batches: list[float] = []

            def progress(batch: PruneCounts, total: PruneCounts) -> None:
                batches.append(time.perf_counter() - start - sum(batches))

            start = time.perf_counter()
            pruned = prune(
                datetime.timedelta(days=30), batch_size=args.batch_size, progress=progress
            )
            elapsed = time.perf_counter() - start
            rows = pruned.workflows + pruned.steps + pruned.events
            print(
                f"pruned {pruned.workflows} workflows, {pruned.steps} steps, {pruned.events} "
                f"events in {len(batches)} batches of {args.batch_size}: {elapsed:.1f} s, "
                f"{pruned.workflows / elapsed:,.0f} workflows/s, {rows / elapsed:,.0f} rows/s; "
                f"a batch took {sorted(batches)[len(batches) // 2]:.2f} s (median), "
                f"{max(batches):.2f} s at most"
            )
            check(before, counts(raw, n), pruned)
    finally:
        connections.close_all()
        if not args.keep:
            drop_database()


def drop_database() -> None:
    import psycopg
    from testproject.database_url import parse

    db = parse(URL)
    params = {"host": db["HOST"], "port": db["PORT"] or 5432, "user": db["USER"]}
    with psycopg.connect(
        **params, password=db["PASSWORD"], dbname="postgres", autocommit=True
    ) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{db["NAME"]}"')


if __name__ == "__main__":
    main()
