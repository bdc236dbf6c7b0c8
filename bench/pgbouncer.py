"""Enqueue-to-start latency of an idle worker, direct and behind PgBouncer in transaction mode.

    python bench/pgbouncer.py [--samples 100] [--pool-size 4]

Uses DATABASE_URL (default postgres://postgres@127.0.0.1:5432/pgqrs_bench, created if missing;
its workflows are deleted) and a PgBouncer of its own (tests/bouncer.py; Debian's pgbouncer,
run as the `postgres` user when root) on a free port, in front of that server. With one idle
worker, enqueues workflows one at a time and prints the enqueue-to-first-step latency, p50 and
p99, as bench/worker.py does, for the worker
  (a) connected to PostgreSQL directly (LISTEN/NOTIFY),
  (b) through PgBouncer, with PGQRS["LISTEN_DATABASE"] naming the server directly,
  (c) through PgBouncer without it: notifications cannot arrive, so it polls (POLL_SECONDS).
This process enqueues and waits over its direct connection in all three: only the worker's
path to the database differs.
"""

from __future__ import annotations

import argparse
import os
import sys
from decimal import Decimal

import common  # sets Django up; must come first

from tests.bouncer import PgBouncer, pgbouncer_binary


def transactions(bouncer: PgBouncer, dbname: str) -> Decimal:
    """How many transactions the bouncer has carried to ``dbname``."""
    rows = [row for row in bouncer.show("STATS") if row["database"] == dbname]
    return rows[0]["total_xact_count"] if rows else Decimal(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--pool-size", type=int, default=4, help="PgBouncer's default_pool_size")
    args = parser.parse_args()
    if pgbouncer_binary() is None:
        raise SystemExit("pgbouncer was not found (apt-get install pgbouncer).")
    common.setup()
    from django.db import connection

    from django_pgqrs.conf import conf

    db = connection.settings_dict
    if connection.vendor != "postgresql":
        raise SystemExit("DATABASE_URL must name a PostgreSQL database.")
    direct = os.environ["DATABASE_URL"]
    bouncer = PgBouncer(
        server_host=db["HOST"] or "127.0.0.1",
        server_port=int(db["PORT"] or 5432),
        pool_size=args.pool_size,
        user=db["USER"] or None,
        password=db["PASSWORD"] or None,
    )
    with bouncer:
        print(
            f"database: {db['HOST'] or 'local'}:{db['PORT'] or 5432}/{db['NAME']}; PgBouncer "
            f"{bouncer.port}, transaction mode, pool {args.pool_size}; one idle worker; "
            f"{os.cpu_count()} CPUs"
        )
        sys.stdout.flush()
        pooled = bouncer.url(db["NAME"])
        runs = [
            ("direct (LISTEN/NOTIFY)", {}),
            (
                "through PgBouncer, LISTEN_DATABASE direct",
                {"DATABASE_URL": pooled, "PGQRS_BENCH_LISTEN_DATABASE": direct},
            ),
            (
                f"through PgBouncer, no LISTEN_DATABASE (polls {conf.POLL_SECONDS:g}s)",
                {"DATABASE_URL": pooled},
            ),
        ]
        for label, env in runs:
            before = transactions(bouncer, db["NAME"])
            times = common.latency(args.samples, **env)
            # A worker that reached the server some other way would measure the wrong thing.
            if env and transactions(bouncer, db["NAME"]) == before:
                raise SystemExit(f"{label}: no transaction went through PgBouncer")
            print(f"{label:<48} {common.percentiles(times)}", flush=True)


if __name__ == "__main__":
    main()
