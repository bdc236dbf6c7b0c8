from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.db import connection

from tests import workflows
from tests.output import Output

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _reset_test_workflows() -> Iterator[None]:
    from django_pgqrs.testing import reset_clock

    workflows.runs.clear()
    workflows.failures.clear()
    workflows.hooks.clear()
    reset_clock()  # durable time as it is, whatever a test advanced
    yield
    workflows.failures.clear()
    workflows.hooks.clear()
    reset_clock()


@pytest.fixture
def postgres_only() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL only")


class Processes:
    """Starts manage.py commands in new processes that use the test database."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.trace = tmp_path / "trace.txt"
        self.hold = tmp_path / "hold"
        self.started: list[subprocess.Popen[str]] = []
        self._stderr: dict[int, Path] = {}
        self._outputs: dict[int, Output] = {}

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            DJANGO_SETTINGS_MODULE="tests.settings",
            PGQRS_TEST_DB_NAME=str(connection.settings_dict["NAME"]),
            PGQRS_TEST_TRACE=str(self.trace),
            PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "testproject")]),
            PYTHONUNBUFFERED="1",
        )
        env.update(extra)
        return env

    def start(self, *args: str, **env: str) -> subprocess.Popen[str]:
        """Start a command; its stdout is a pipe, its stderr (logs) goes to a file."""
        errors = self.tmp_path / f"stderr-{len(self.started)}.txt"
        with errors.open("w") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "django", *args],
                cwd=ROOT,
                env=self.env(**env),
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        self._stderr[process.pid] = errors
        self._outputs[process.pid] = Output(process)
        self.started.append(process)
        return process

    def output(self, process: subprocess.Popen[str]) -> Output:
        """The process's stdout, read line by line as it comes."""
        return self._outputs[process.pid]

    def stderr_of(self, process: subprocess.Popen[str]) -> str:
        return self._stderr[process.pid].read_text()

    def wait_for_stderr(
        self, process: subprocess.Popen[str], text: str, timeout: float = 30
    ) -> None:
        """Wait until the process has written ``text`` to its stderr."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.stderr_of(process):
                return
            if process.poll() is not None and text not in self.stderr_of(process):
                break
            time.sleep(0.02)
        raise AssertionError(f"no {text!r} in stderr: {self.stderr_of(process)}")

    def run(self, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "django", *args],
            cwd=ROOT,
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def traced(self) -> list[str]:
        return self.trace.read_text().split() if self.trace.exists() else []

    def wait_for_line(self, process: subprocess.Popen[str], text: str, timeout: float = 30) -> str:
        """Wait for a line of the process's stdout containing ``text``; return that line."""
        return self.output(process).wait_for(text, timeout)

    def stop_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)
            if process.stdout:
                process.stdout.close()


@pytest.fixture
def processes(tmp_path: Path, transactional_db: None) -> Iterator[Processes]:
    helper = Processes(tmp_path)
    yield helper
    helper.stop_all()


from tests.cluster import PrivateCluster, postgres_bindir  # noqa: E402


@pytest.fixture(scope="session")
def private_postgres() -> Iterator[PrivateCluster]:
    """A PostgreSQL cluster of the session's own, for tests that restart it or cut its sessions.

    The suite's server may be shared with other programs, which such tests would disturb.
    Skipped where PostgreSQL's server programs are not installed (a failure in CI), and in the
    SQLite run, whose tests have no use for it.
    """
    if os.environ.get("PGQRS_TEST_DB", "postgres") != "postgres":
        pytest.skip("PostgreSQL only")
    bindir = postgres_bindir()
    if bindir is None:
        message = "PostgreSQL's initdb not found (pg_config --bindir, /usr/lib/postgresql/*/bin)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    cluster = PrivateCluster(bindir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


from tests.bouncer import PgBouncer, pgbouncer_binary  # noqa: E402


@pytest.fixture(scope="session")
def pgbouncer(django_db_setup: None) -> Iterator[PgBouncer]:
    """A PgBouncer in transaction mode in front of the suite's server, for the whole session.

    Reach the test database through it by its name, on port ``pgbouncer.port``. Skipped where
    pgbouncer is not installed (a failure in CI), and in the SQLite run. It is stopped before
    the test database is dropped (hence ``django_db_setup``): its server connections would keep
    the DROP from happening.
    """
    if os.environ.get("PGQRS_TEST_DB", "postgres") != "postgres":
        pytest.skip("PostgreSQL only")
    if pgbouncer_binary() is None:
        message = "pgbouncer not found (PATH, /usr/sbin/pgbouncer); apt-get install pgbouncer"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    bouncer = PgBouncer()
    try:
        bouncer.start()
        yield bouncer
    finally:
        bouncer.stop()
