"""Settings of the benchmarks: the demo project plus the benchmark's workflows.

The database comes from DATABASE_URL (default: PostgreSQL database pgqrs_bench on localhost).
"""

import os

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/pgqrs_bench")

from testproject.settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "bench.benchapp"]  # noqa: F405

# bench/pgbouncer.py has a worker LISTEN on the server itself while its work goes through a pooler.
if os.environ.get("PGQRS_BENCH_LISTEN_DATABASE"):
    PGQRS = {**PGQRS, "LISTEN_DATABASE": os.environ["PGQRS_BENCH_LISTEN_DATABASE"]}  # noqa: F405

# bench/primitives.py has sleeps suspend their workflows, however short.
if os.environ.get("PGQRS_BENCH_SUSPEND_AFTER_SECONDS"):
    PGQRS = {
        **PGQRS,
        "SUSPEND_AFTER_SECONDS": float(os.environ["PGQRS_BENCH_SUSPEND_AFTER_SECONDS"]),
    }
