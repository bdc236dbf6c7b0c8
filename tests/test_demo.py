"""The demo project prints the guide's expected output, line for line, on a fresh database."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent
MANAGE = ROOT / "testproject" / "manage.py"

# Copied from README.md, "Try it" (the guide's "Expected Output" without its annotations).
DATA_PIPELINE_OUTPUT = """\
Created workflow ID: 1
[workflow] Starting pipeline for https://api.example.com/data
[fetch_data] Fetching from https://api.example.com/data
[workflow] Fetched data: {'url': 'https://api.example.com/data', 'records': [...]}
[transform_data] Processing 2 records
[workflow] Transformed: {'records': [...], 'count': 2}
[save_results] Saving 2 records
[workflow] Complete: Saved 2 records successfully
Final result: Saved 2 records successfully
""".splitlines()

CRASH_DEMO_OUTPUT = """\
Created workflow: 1

=== RUN 1 (will crash) ===
[step_one] Executing
After step_one: processed_test
[step_two] Executing
[step_two] SIMULATING CRASH!
Caught crash: Simulated crash!

=== RUN 2 (resuming) ===
After step_one: processed_test
[step_two] Executing
After step_two: step2_processed_test
Final result: step2_processed_test
""".splitlines()


def postgres_url(name: str) -> str:
    settings = connection.settings_dict
    user = quote(settings["USER"] or "")
    password = f":{quote(settings['PASSWORD'])}" if settings["PASSWORD"] else ""
    return f"postgres://{user}{password}@{settings['HOST']}:{settings['PORT']}/{name}"


def postgres_admin() -> psycopg.Connection[Any]:
    settings = connection.settings_dict
    return psycopg.connect(
        host=settings["HOST"],
        port=settings["PORT"],
        user=settings["USER"],
        password=settings["PASSWORD"] or None,
        dbname="postgres",
        autocommit=True,
    )


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a brand-new, empty database for the demo project."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'demo.sqlite3'}"
        return
    if connection.vendor != "postgresql":
        pytest.skip("the suite runs on SQLite")
    name = f"test_pgqrs_demo_{os.getpid()}"
    with postgres_admin() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield postgres_url(name)
    finally:
        with postgres_admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run_demo(database_url: str, *args: str) -> list[str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key != "DJANGO_SETTINGS_MODULE" and not key.startswith("PGQRS_TEST")
    }
    env.update(DATABASE_URL=database_url, PYTHONUNBUFFERED="1")
    finished = subprocess.run(
        [sys.executable, str(MANAGE), "run_demo", *args],
        cwd=ROOT / "testproject",
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert finished.returncode == 0, finished.stderr
    return finished.stdout.splitlines()


def test_data_pipeline_prints_the_guides_expected_output(database_url):
    run_demo(database_url, "crash_demo")  # workflow 1 exists: --fresh must start over
    assert run_demo(database_url, "--fresh", "data_pipeline") == DATA_PIPELINE_OUTPUT


def test_crash_demo_prints_the_guides_expected_output(database_url):
    assert run_demo(database_url, "--fresh", "crash_demo") == CRASH_DEMO_OUTPUT


def test_run_demo_installs_the_tables_of_a_brand_new_database_and_starts_at_id_1(database_url):
    assert run_demo(database_url, "data_pipeline") == DATA_PIPELINE_OUTPUT
