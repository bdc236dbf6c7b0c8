"""The chaos harness: worker processes run workflows while they are killed, their database
connections cut and the database restarted; then every guarantee is checked.

``run_chaos(cluster, config, workdir)`` works on a fresh database of a ``PrivateCluster``:

1. migrates it and enqueues ``config.workflows`` workflows of the kinds in
   ``tests/chaos_workflows.py`` (some due at once, the rest spread over the run, so that there
   is work to interrupt until the end);
2. starts ``config.workers`` ``pgqrs_worker`` processes with short leases and, while workflows
   remain unfinished, SIGKILLs a worker (a busy one when it can) and starts a replacement,
   terminates the workers' database sessions, and restarts the cluster, until the configured
   counts are reached; then lets the workers finish and SIGTERMs them;
3. checks, from the database and from the trace the step bodies write:
   (a) every workflow succeeded, with the result its input implies, through the expected steps;
   (b) every atomic step's row exists exactly once (none for a step without a SUCCESS row);
   (c) no two bodies of one workflow ran at once in different processes or threads (a body
       cut short by a kill ends when its process was killed);
   (d) no step body started after that step's SUCCESS checkpoint had been committed (the
       checkpoint's ``completed_at`` is a lower bound of its commit);
   (e) nothing is left PENDING, RUNNING or SLEEPING;
   (f) every worker lived until killed or stopped, no thread of a worker died of an uncaught
       exception, and every worker exited 0 on SIGTERM.

A hung run ends at ``config.timeout``: the workers are killed and what is unfinished is reported.
This module imports neither Django nor pytest (the workflows run in the worker processes), so
the benchmark ``bench/chaos.py`` uses it too.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from tests.cluster import PrivateCluster

ROOT = Path(__file__).resolve().parent.parent

# Environment of the worker processes, read by tests/chaos_workflows.py.
TRACE_ENV = "PGQRS_CHAOS_TRACE"
STEP_MS_ENV = "PGQRS_CHAOS_STEP_MS"

UNFINISHED = ("PENDING", "RUNNING", "SLEEPING")

# --- The workload: what each kind of workflow does, computed without running it ---------------

KINDS = ("chaos_plain", "chaos_atomic", "chaos_retry", "chaos_loop", "chaos_primitives")
# One step longer than a lease: only the heartbeat keeps its workflow with its owner.
SLOW = "chaos_slow"
SLOW_LEASES = 1.3  # how long the slow step takes, in lease lengths


def kind_of(n: int) -> str:
    """The workflow that input ``n`` is given to: one in 25 is slow, the others in turn."""
    return SLOW if n % 25 == 12 else KINDS[n % len(KINDS)]


def step_key(name: str, call: int) -> str:
    """The checkpoint key of the ``call``-th call (1, 2, ...) of step ``name`` in a workflow."""
    return name if call == 1 else f"{name}#{call}"


def loop_length(n: int) -> int:
    """How many times ``chaos_loop(n)`` calls its ``tick`` step."""
    return 4 + n % 7


def failures_of(n: int) -> int:
    """How many first attempts of ``flaky`` fail, in each process, in ``chaos_retry(n)``."""
    return 1 + n % 2


@dataclass(frozen=True)
class Expected:
    """What a finished chaos workflow must have: its result, steps and atomic steps' rows."""

    result: int
    steps: frozenset[str]
    atomic: frozenset[str]


def expected(name: str, n: int) -> Expected:
    """The outcome of the chaos workflow ``name`` with input ``n``."""
    if name == "chaos_plain":
        return Expected(2 * n + 3, frozenset({"scale", "offset"}), frozenset())
    if name == "chaos_atomic":
        records = frozenset(step_key("record", call) for call in (1, 2, 3))
        return Expected(3 * n + 6, frozenset({"scale"}) | records, records)
    if name == "chaos_retry":
        return Expected(
            3 * n + 4, frozenset({"flaky", "flaky_record", "offset"}), frozenset({"flaky_record"})
        )
    if name == "chaos_loop":
        length = loop_length(n)
        ticks = frozenset(step_key("tick", index + 1) for index in range(length))
        total = length * n + sum(index * index for index in range(length))
        return Expected(total + 1, ticks | {"record"}, frozenset({"record"}))
    if name == "chaos_primitives":
        # A chaos_plain(n) child (checked as a workflow of its own), a sleep, a wait for it.
        primitives = {"pgqrs.start:chaos_plain", "pgqrs.sleep", "pgqrs.wait", "offset"}
        return Expected(2 * n + 3 + 7, frozenset(primitives), frozenset())
    if name == SLOW:
        return Expected(2 * n + 1, frozenset({"scale", "slow"}), frozenset())
    raise ValueError(f"not a chaos workflow: {name!r}")


# --- A database of a private cluster, for processes running tests.settings ---------------------


class PrivateDatabase:
    """A database of a ``PrivateCluster``, and the environment that points processes at it."""

    def __init__(self, cluster: PrivateCluster, name: str) -> None:
        self.cluster = cluster
        self.name = name

    @classmethod
    def create(cls, cluster: PrivateCluster, prefix: str) -> PrivateDatabase:
        database = cls(cluster, f"{prefix}_{uuid.uuid4().hex[:8]}")
        cluster.createdb(database.name)
        return database

    @property
    def settings(self) -> dict[str, str]:
        """Environment variables that make tests/settings.py use this database."""
        return {
            "PGQRS_TEST_DB": "postgres",
            "PGHOST": "127.0.0.1",
            "PGPORT": str(self.cluster.port),
            "PGUSER": "postgres",
            "PGPASSWORD": "",
            "PGQRS_TEST_DB_NAME": self.name,
        }

    def env(self, **extra: str) -> dict[str, str]:
        """The whole environment of a process using this database (as ``Processes.env``)."""
        env = dict(os.environ)
        env.update(
            DJANGO_SETTINGS_MODULE="tests.settings",
            PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "testproject")]),
            PYTHONUNBUFFERED="1",
        )
        env.update(self.settings)
        env.update(extra)
        return env

    def migrate(self, timeout: float = 120) -> None:
        # The test app has no migrations: --run-syncdb makes its tables.
        self._check(self.django("migrate", "--run-syncdb", "-v", "0", timeout=timeout))

    def enqueue(self, plan: list[tuple[str, list[Any], float]], timeout: float = 120) -> None:
        """Start workflows for workers: (name, arguments, seconds from now until due) each."""
        done = subprocess.run(
            [sys.executable, "-c", _ENQUEUE],
            cwd=ROOT,
            env=self.env(),
            input=json.dumps(plan),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        self._check(done)

    def django(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "django", *args],
            cwd=ROOT,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def connect(self, **options: Any) -> psycopg.Connection[Any]:
        return self.cluster.connect(self.name, **options)

    @staticmethod
    def _check(done: subprocess.CompletedProcess[str]) -> None:
        if done.returncode != 0:
            raise RuntimeError(f"{done.args[:4]} failed ({done.returncode}):\n{done.stderr}")


_ENQUEUE = """
import datetime, json, sys
import django
django.setup()
from django.db import transaction
from django_pgqrs import start_workflow
with transaction.atomic():
    for name, args, delay in json.load(sys.stdin):
        start_workflow(name, *args, run_at=datetime.timedelta(seconds=delay))
"""


# --- The driver ---------------------------------------------------------------------------------


@dataclass
class ChaosConfig:
    workflows: int = 150
    workers: int = 3
    concurrency: int = 2  # threads per worker process
    kills: int = 20
    cuts: int = 4  # times every session of the workers is terminated
    restarts: int = 1
    seconds: float = 25.0  # the kills, cuts and restarts are spread over most of this
    timeout: float = 180.0  # the whole run, set-up and checks included
    lease: float = 3.0
    heartbeat: float = 0.5
    poll: float = 0.2
    step_ms: tuple[float, float] = (2.0, 15.0)  # how long each step body takes
    seed: int | None = None
    tolerance: float = 0.005  # seconds of clock slack for (d)


@dataclass
class ChaosReport:
    workflows: int = 0
    kills: int = 0
    cuts: int = 0
    restarts: int = 0
    violations: list[str] = field(default_factory=list)
    seed: int = 0
    seconds: float = 0.0
    workers: int = 0
    concurrency: int = 0
    workers_started: int = 0
    kills_in_body: int = 0  # kills that interrupted at least one step body
    terminated: int = 0  # sessions the cuts terminated
    bodies: int = 0  # step bodies started
    database: str = ""
    workdir: str = ""
    stderr_tails: dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        return (
            f"workflows {self.workflows}, kills {self.kills}, connection cuts {self.cuts}, "
            f"restarts {self.restarts}, violations: {len(self.violations)}"
        )

    def render(self, limit: int = 40) -> str:
        """The whole report; its last line is ``line()``."""
        lines = [
            f"chaos: {self.workflows} workflows, {self.workers} worker processes x "
            f"{self.concurrency} threads, seed {self.seed}, {self.seconds:.1f} s "
            f"(database {self.database}, files in {self.workdir})",
            f"{self.kills} SIGKILLs ({self.kills_in_body} inside a step body), "
            f"{self.cuts} connection cuts ({self.terminated} sessions terminated), "
            f"{self.restarts} restarts; {self.workers_started} worker processes started, "
            f"{self.bodies} step bodies run",
        ]
        if self.violations:
            shown = self.violations[:limit]
            more = len(self.violations) - len(shown)
            lines.append(f"violations ({len(self.violations)}):")
            lines += [f"  {violation}" for violation in shown]
            if more:
                lines.append(f"  ... and {more} more")
        for name, tail in self.stderr_tails.items():
            lines.append(f"--- {name} (last lines, routine ones left out)")
            lines.append(tail)
        lines.append(self.line())
        return "\n".join(lines)


def run_chaos(cluster: PrivateCluster, config: ChaosConfig, workdir: Path) -> ChaosReport:
    """Run the chaos described by ``config`` on a new database of ``cluster``; report."""
    return Chaos(cluster, config, workdir).run()


@dataclass
class Body:
    """One run of a step body, from the trace."""

    workflow_id: int
    key: str
    pid: int
    thread: int
    start: float
    end: float | None = None
    outcome: str = "?"

    @property
    def owner(self) -> tuple[int, int]:
        return (self.pid, self.thread)


_PID = re.compile(r":(\d+)(?::\d+)?$")  # lease owners are host:pid or host:pid:thread
_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:")  # a worker's log lines start with a date


class Chaos:
    """One chaos run; see the module's docstring."""

    def __init__(self, cluster: PrivateCluster, config: ChaosConfig, workdir: Path) -> None:
        self.cluster = cluster
        self.config = config
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        seed = config.seed if config.seed is not None else random.randrange(2**32)
        self.rng = random.Random(seed)
        self.trace = workdir / "trace.txt"
        self.report = ChaosReport(
            seed=seed,
            workers=config.workers,
            concurrency=config.concurrency,
            workdir=str(workdir),
        )
        self.db: PrivateDatabase | None = None
        self.live: dict[int, subprocess.Popen[bytes]] = {}
        self.logs: dict[int, Path] = {}
        self.gone: dict[int, float] = {}  # pid -> when it was seen dead (after its kill)
        self.killed: set[int] = set()
        self.t0 = time.time()
        self._monitor: psycopg.Connection[Any] | None = None

    # --- The run --------------------------------------------------------------------------------

    def run(self) -> ChaosReport:
        config = self.config
        began = time.monotonic()
        deadline = began + config.timeout
        try:
            self.db = PrivateDatabase.create(self.cluster, "chaos")
            self.report.database = self.db.name
            self.db.migrate(timeout=self._left(deadline))
            self.db.enqueue(self._plan(), timeout=self._left(deadline))
            self.t0 = time.time()
            for _ in range(config.workers):
                self._start_worker()
            if self._storm(deadline):
                self._stop_workers(deadline)
            else:
                self.report.violations.append(
                    f"(e) the run did not end within its {config.timeout:.0f} s timeout; "
                    f"the workers were killed: {self._status_counts()}"
                )
            self._kill_all()
            self._check()
        finally:
            self._kill_all()
            self._close_monitor()
            self.report.seconds = time.monotonic() - began
        return self.report

    def _plan(self) -> list[tuple[str, list[Any], float]]:
        """A fifth of the workflows due at once, the rest spread over the run."""
        spread = 0.8 * self.config.seconds
        plan: list[tuple[str, list[Any], float]] = []
        for n in range(self.config.workflows):
            delay = 0.0 if n < self.config.workflows // 5 else self.rng.uniform(0, spread)
            plan.append((kind_of(n), [n], round(delay, 3)))
        self.report.workflows = len(plan)
        return plan

    def _storm(self, deadline: float) -> bool:
        """Kill, cut and restart on schedule until every workflow is finished; False if the
        deadline came first."""
        config = self.config
        window = 0.75 * config.seconds
        events = sorted(
            [(at, "kill") for at in self._times(config.kills, window)]
            + [(at, "cut") for at in self._times(config.cuts, window)]
            + [(at, "restart") for at in self._times(config.restarts, window)]
        )
        start = time.monotonic()
        next_look = 0.0
        while time.monotonic() < deadline:
            self._replace_dead()
            now = time.monotonic()
            if now >= next_look:
                next_look = now + 0.1
                if self._unfinished() == 0:
                    return True
            while events and events[0][0] <= now - start:
                _, what = events.pop(0)
                {"kill": self._kill, "cut": self._cut, "restart": self._restart}[what]()
            time.sleep(0.02)
        return False

    def _times(self, count: int, window: float) -> list[float]:
        """``count`` moments in ``window`` seconds, one at random in each equal slice."""
        return [window * (i + self.rng.uniform(0.1, 0.9)) / count for i in range(count)]

    # --- Workers --------------------------------------------------------------------------------

    def _start_worker(self) -> None:
        assert self.db is not None
        config = self.config
        log = self.workdir / f"worker-{self.report.workers_started}.log"
        env = self.db.env(
            PGQRS_TEST_LEASE_SECONDS=str(config.lease),
            PGQRS_TEST_HEARTBEAT_SECONDS=str(config.heartbeat),
            PGQRS_TEST_POLL_SECONDS=str(config.poll),
            # Many kills may hit one workflow; the poison-workflow limit is not under test here.
            PGQRS_TEST_MAX_RECOVERY_ATTEMPTS="1000",
            # Sleeps suspend their workflows, so that waking them is under chaos too.
            PGQRS_TEST_SUSPEND_AFTER_SECONDS="0.05",
            **{TRACE_ENV: str(self.trace), STEP_MS_ENV: "{},{}".format(*config.step_ms)},
        )
        with log.open("wb") as stderr:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "django",
                    "pgqrs_worker",
                    "--concurrency",
                    str(config.concurrency),
                    "--grace-seconds",
                    "10",
                ],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        self.live[process.pid] = process
        self.logs[process.pid] = log
        self.report.workers_started += 1

    def _kill(self) -> None:
        if not self.live:
            return
        busy = self._wait_busy()
        pid = self.rng.choice(busy or sorted(self.live))
        process = self.live.pop(pid)
        process.kill()
        process.wait(timeout=30)
        # Taken after the wait: the process was surely dead by then, so its bodies ended before.
        self.gone[pid] = time.time()
        self.killed.add(pid)
        self.report.kills += 1
        self._start_worker()

    def _cut(self) -> None:
        assert self.db is not None
        self._wait_busy()
        self.report.terminated += self.cluster.terminate_connections(self.db.name)
        self.report.cuts += 1

    def _restart(self) -> None:
        self._wait_busy()
        self.cluster.restart()
        self.report.restarts += 1

    def _replace_dead(self) -> None:
        """A worker that exits by itself broke its promise to survive; replace it."""
        for pid, process in list(self.live.items()):
            if process.poll() is not None:
                del self.live[pid]
                self.gone[pid] = time.time()
                self.report.violations.append(
                    f"(f) worker pid {pid} exited by itself with status {process.returncode} "
                    f"at {self._at(self.gone[pid])}"
                )
                self._start_worker()

    def _stop_workers(self, deadline: float) -> None:
        for process in self.live.values():
            process.send_signal(signal.SIGTERM)
        for pid, process in list(self.live.items()):
            try:
                status = process.wait(timeout=max(1.0, min(30.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)
                status = None
            del self.live[pid]
            self.gone[pid] = time.time()
            if status != 0:
                how = "did not exit" if status is None else f"exited with status {status}"
                self.report.violations.append(f"(f) worker pid {pid} {how} after SIGTERM")

    def _kill_all(self) -> None:
        for pid, process in list(self.live.items()):
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)
            self.gone.setdefault(pid, time.time())
        self.live.clear()

    # --- The database, from this process --------------------------------------------------------

    def _query(self, text: str, params: Any = None, patience: float = 30) -> list[Any]:
        """Run a query, reconnecting as often as needed: cuts and restarts end our session too."""
        assert self.db is not None
        give_up = time.monotonic() + patience
        while True:
            try:
                if self._monitor is None or self._monitor.closed:
                    self._monitor = self.db.connect(connect_timeout=5)
                return self._monitor.execute(text, params).fetchall()
            except (psycopg.OperationalError, psycopg.InterfaceError):
                self._close_monitor()
                if time.monotonic() > give_up:
                    raise
                time.sleep(0.1)

    def _close_monitor(self) -> None:
        if self._monitor is not None:
            with contextlib.suppress(psycopg.Error):
                self._monitor.close()
            self._monitor = None

    def _unfinished(self) -> int:
        rows = self._query(
            "SELECT count(*) FROM pgqrs_workflows WHERE status = ANY(%s)", [list(UNFINISHED)]
        )
        return int(rows[0][0])

    def _status_counts(self) -> str:
        rows = self._query("SELECT status, count(*) FROM pgqrs_workflows GROUP BY 1 ORDER BY 1")
        return ", ".join(f"{status} {count}" for status, count in rows)

    def _wait_busy(self, patience: float = 1.0) -> list[int]:
        """Live workers running a workflow, waiting up to ``patience`` seconds for one: a blow
        that lands on idle workers tests little, and the workers are idle much of the time."""
        give_up = time.monotonic() + patience
        while True:
            busy = [pid for pid in self._busy_pids() if pid in self.live]
            if busy or time.monotonic() > give_up:
                return busy
            time.sleep(0.005)

    def _busy_pids(self) -> list[int]:
        try:
            # Not the slow workflows' owners: busy for whole leases, they would draw every blow,
            # and a slow step must live long enough to show whether the heartbeat keeps it.
            rows = self._query(
                "SELECT DISTINCT lease_owner FROM pgqrs_workflows "
                "WHERE status = 'RUNNING' AND lease_owner IS NOT NULL AND name <> %s",
                [SLOW],
                patience=2,
            )
        except psycopg.Error:
            return []
        return [int(match[1]) for (owner,) in rows if (match := _PID.search(owner))]

    # --- The checks -----------------------------------------------------------------------------

    def _check(self) -> None:
        violations = self.report.violations
        workflows = self._query(
            "SELECT workflow_id, name, status, input, result, error, lease_owner "
            "FROM pgqrs_workflows ORDER BY workflow_id"
        )
        steps: Steps = {
            (workflow_id, step_id): (status, completed)
            for workflow_id, step_id, status, completed in self._query(
                "SELECT workflow_id, step_id, status, extract(epoch FROM completed_at)::float8 "
                "FROM pgqrs_workflow_steps"
            )
        }
        effects: dict[tuple[int, str], int] = {
            (workflow_id, key): count
            for workflow_id, key, count in self._query(
                "SELECT workflow_id, step_key, count(*) FROM tests_chaoseffect GROUP BY 1, 2"
            )
        }
        top_level = self._query("SELECT count(*) FROM pgqrs_workflows WHERE parent_id IS NULL")
        children = self._query("SELECT count(*) FROM pgqrs_workflows WHERE parent_id IS NOT NULL")
        started = sum(1 for n in range(self.report.workflows) if kind_of(n) == "chaos_primitives")
        if top_level[0][0] != self.report.workflows or children[0][0] != started:
            violations.append(
                f"(a) {top_level[0][0]} workflows and {children[0][0]} children saved, "
                f"{self.report.workflows} enqueued and {started} children started"
            )
        lines = self.trace.read_text().splitlines() if self.trace.exists() else []
        bodies, problems = read_trace(lines, self.gone, self.killed, time.time())
        self.report.bodies = len(bodies)
        self.report.kills_in_body = len(
            {body.pid for body in bodies if body.outcome == "killed"} & self.killed
        )
        violations += problems
        violations += check_outcomes(workflows, steps, effects)
        violations += check_bodies(bodies, steps, self.config.tolerance, self.t0)
        self._check_threads()
        if violations:
            self._collect_stderr()

    def _check_threads(self) -> None:
        """(f) No thread of a worker died of an uncaught exception (Python logs those)."""
        for pid, path in sorted(self.logs.items()):
            lines = path.read_text(errors="replace").splitlines()
            for i, line in enumerate(lines):
                if not line.startswith("Exception in thread "):
                    continue
                # The traceback runs until the next log line; its last unindented line is the
                # exception that ended the thread.
                block = []
                for later in lines[i + 1 :]:
                    if _LOG_LINE.match(later):
                        break
                    block.append(later)
                final = [text for text in block if text and not text[0].isspace()]
                thread = line.removeprefix("Exception in ").rstrip(":")
                self.report.violations.append(
                    f"(f) worker pid {pid}: {thread} died of "
                    f"{_one_line(final[-1]) if final else 'an unknown error'}"
                )

    def _collect_stderr(self, files: int = 6, lines: int = 20) -> None:
        """The telling lines of the workers' logs: first of the logs that name the workflows in
        violations (their lines about those), then of those with tracebacks or errors."""
        named = {
            int(found) for found in re.findall(r"workflow (\d+)", " ".join(self.report.violations))
        }
        about = re.compile(r"Workflow (\d+)\b")
        routine = (" started, attempt ", " succeeded in ", "Worker ")
        picked: list[tuple[int, str, list[str]]] = []
        for pid, path in self.logs.items():
            text = path.read_text(errors="replace").splitlines()
            relevant = [
                line for line in text if (match := about.search(line)) and int(match[1]) in named
            ]
            if relevant:
                picked.append((0, f"{path.name} (pid {pid})", relevant))
                continue
            rank = 1 if any("Traceback" in line for line in text) else 2
            kept = [line for line in text if not any(word in line for word in routine)]
            if kept and (rank == 1 or any(" ERROR " in line for line in kept)):
                picked.append((rank, f"{path.name} (pid {pid})", kept))
        for _, name, kept in sorted(picked, key=lambda item: item[0])[:files]:
            self.report.stderr_tails[name] = "\n".join(kept[-lines:])

    # --- Helpers --------------------------------------------------------------------------------

    def _at(self, moment: float) -> str:
        return _at(moment, self.t0)

    @staticmethod
    def _left(deadline: float) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the chaos run's timeout passed during its set-up")
        return left


# --- The checks, on what was saved and traced ---------------------------------------------------

# (workflow id, step id) -> (status, completed_at as seconds since the epoch)
Steps = Mapping[tuple[int, str], tuple[str, float | None]]


def read_trace(
    lines: list[str], gone: dict[int, float], killed: set[int], now: float
) -> tuple[list[Body], list[str]]:
    """The step bodies of a trace, and its inconsistencies. A body without an end ended when its
    process was seen dead (``gone``; ``killed`` if the harness killed it), else ``now``."""
    bodies: list[Body] = []
    problems: list[str] = []
    running: dict[tuple[int, int], Body] = {}
    for line in lines:
        event, workflow_id, key, pid, thread, at, outcome = line.split(" ")
        owner = (int(pid), int(thread))
        if event == "start":
            body = Body(int(workflow_id), key, owner[0], owner[1], float(at))
            running[owner] = body
            bodies.append(body)
            continue
        started = running.pop(owner, None)
        if started is None or (started.workflow_id, started.key) != (int(workflow_id), key):
            problems.append(f"(c) trace: an end without its start: {line}")
            continue
        started.end, started.outcome = float(at), outcome
    for body in running.values():
        body.end = gone.get(body.pid, now)
        body.outcome = "killed" if body.pid in killed else "cut short"
    return bodies, problems


def check_outcomes(
    workflows: list[Any], steps: Steps, effects: Mapping[tuple[int, str], int]
) -> list[str]:
    """(a), (b) and (e), from the rows of the workflows, their steps and the atomic steps' rows.

    ``workflows``: (id, name, status, input, result, error, lease owner) rows.
    """
    violations: list[str] = []
    steps_of: dict[int, dict[str, str]] = defaultdict(dict)
    for (workflow_id, step_id), (status, _) in steps.items():
        steps_of[workflow_id][step_id] = status
    effects_of: dict[int, dict[str, int]] = defaultdict(dict)
    for (workflow_id, key), count in effects.items():
        effects_of[workflow_id][key] = count
    for workflow_id, name, status, call, result, error, owner in workflows:
        n = call["args"][0]
        label = f"workflow {workflow_id} ({name}({n}))"
        want = expected(name, n)
        saved = steps_of.get(workflow_id, {})
        if status in UNFINISHED:
            violations.append(f"(e) {label} left {status}, owner {owner}")
        elif status != "SUCCESS":
            violations.append(f"(a) {label} ended {status}: {_error_text(error)}")
        elif result != want.result:
            violations.append(f"(a) {label} returned {result!r}, expected {want.result}")
        elif saved != dict.fromkeys(want.steps, "SUCCESS"):
            violations.append(
                f"(a) {label} succeeded with steps {sorted(saved.items())}, "
                f"expected {sorted(want.steps)}"
            )
        rows = effects_of.get(workflow_id, {})
        for key in sorted(want.atomic | rows.keys()):
            needed = 1 if key in want.atomic and saved.get(key) == "SUCCESS" else 0
            if rows.get(key, 0) != needed:
                violations.append(
                    f"(b) {label} step {key}: {rows.get(key, 0)} rows written, expected "
                    f"{needed} (step {saved.get(key, 'not saved')})"
                )
    return violations


def check_bodies(bodies: list[Body], steps: Steps, tolerance: float, t0: float) -> list[str]:
    """(c) no two bodies of a workflow overlap across processes or threads; (d) no body starts
    after its step's SUCCESS checkpoint (``completed_at``, plus ``tolerance`` seconds).

    Times in the messages are seconds since ``t0``.
    """
    violations: list[str] = []
    by_workflow: dict[int, list[Body]] = defaultdict(list)
    for body in bodies:
        by_workflow[body.workflow_id].append(body)
    for workflow_id, runs in sorted(by_workflow.items()):
        runs.sort(key=lambda body: body.start)
        for i, first in enumerate(runs):
            assert first.end is not None
            for second in runs[i + 1 :]:
                if second.start >= first.end:
                    break
                if second.owner != first.owner:
                    violations.append(
                        f"(c) workflow {workflow_id}: {_describe(first, t0)} overlaps "
                        f"{_describe(second, t0)}"
                    )
    for body in bodies:
        status, completed = steps.get((body.workflow_id, body.key), ("", None))
        if status != "SUCCESS" or completed is None:
            continue
        late = body.start - completed
        if late > tolerance:
            violations.append(
                f"(d) workflow {body.workflow_id} step {body.key}: {_describe(body, t0)} "
                f"started {late * 1000:.1f} ms after the step's SUCCESS checkpoint "
                f"(completed_at {_at(completed, t0)})"
            )
    return violations


def _describe(body: Body, t0: float) -> str:
    end = _at(body.end, t0) if body.end is not None else "?"
    return (
        f"{body.key} in pid {body.pid} thread {body.thread} "
        f"[{_at(body.start, t0)}, {end} {body.outcome}]"
    )


def _at(moment: float, t0: float) -> str:
    """A moment as seconds since ``t0`` (when the workers were started)."""
    return f"{moment - t0:.3f}s"


def _error_text(error: Any) -> str:
    if not isinstance(error, dict):
        return repr(error)
    step = f" in step {error['step']}" if error.get("step") else ""
    return f"{error.get('type')}: {_one_line(str(error.get('message')))}{step}"


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
