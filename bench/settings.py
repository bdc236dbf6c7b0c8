"""Settings of the benchmarks: the demo project plus the benchmark's workflows.

The database comes from DATABASE_URL (default: PostgreSQL database pgqrs_bench on localhost).
"""

import os

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/pgqrs_bench")

from testproject.settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "bench.benchapp"]  # noqa: F405
