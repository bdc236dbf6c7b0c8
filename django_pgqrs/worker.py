"""The worker: claims due workflows and runs them; takes back workflows whose owner died.

One worker process runs ``concurrency`` runner threads. Each runner claims the most urgent due
workflow of the worker's queues (``SELECT ... FOR UPDATE SKIP LOCKED``, so workers on many
machines share the work through PostgreSQL alone), runs it through the engine, and claims the
next. When nothing is due, runners sleep until a notification (PostgreSQL ``LISTEN``; a commit
that makes a workflow due sends ``NOTIFY``) or the poll interval wakes them.

The main thread listens, and every poll interval takes back workflows whose owner stopped
renewing its lease (``Store.reap``): they become PENDING for any worker, or ERROR after
``MAX_RECOVERY_ATTEMPTS`` takeovers. It also handles SIGTERM and SIGINT: stop claiming, let the
running workflows finish within the grace period, then give back the leases of the rest so that
another worker takes them at once. A second signal gives them back and exits at once.

Every thread is supervised: whatever a workflow raises, its runner logs it and claims the next;
a database outage makes runners wait and retry; the main thread restarts a runner (or the lease
heartbeat) that stopped. Only a runner that fails again and again outside any workflow (the
tables are missing, say) stops the worker, which then exits with an error instead of idling.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from django.conf import settings
from django.db import DatabaseError, InterfaceError, connections, router

from . import runtime
from .conf import conf
from .exceptions import (
    LeaseLost,
    StorageError,
    UnknownWorkflow,
    WorkflowCancelled,
    WorkflowInTransaction,
)
from .lease import Lease, heartbeat, owner_name, process_owner
from .models import Workflow, WorkflowStatus
from .store import CHANNEL, Store, store_for

logger = logging.getLogger("django_pgqrs.worker")

# A runner that fails this many times in a row outside any workflow gives up, and the worker
# stops with an error.
RUNNER_FAILURES = 5


@dataclass
class Summary:
    """What a worker did, for its exit line."""

    succeeded: int = 0
    failed: int = 0
    released: int = 0
    recovered: int = 0
    started: float = field(default_factory=time.monotonic)
    # Why the worker stopped on its own, if it did: its runners could not go on.
    fatal: str | None = None

    def __str__(self) -> str:
        ran = self.succeeded + self.failed
        return (
            f"{ran} workflows run ({self.succeeded} succeeded, {self.failed} failed), "
            f"{self.released} given back, {self.recovered} recovered from dead owners, "
            f"in {time.monotonic() - self.started:.1f}s"
        )


class Wakeup:
    """Wakes idle runners; a ring between their claim and their wait is not lost."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._rings = 0

    def ring(self) -> None:
        with self._condition:
            self._rings += 1
            self._condition.notify_all()

    def rings(self) -> int:
        return self._rings

    def wait(self, seen: int, timeout: float) -> None:
        with self._condition:
            if self._rings == seen:
                self._condition.wait(timeout)


class Worker:
    """Runs due workflows of ``queues`` until stopped (or, with ``burst``, until none is due)."""

    def __init__(
        self,
        queues: list[str] | None = None,
        concurrency: int = 1,
        burst: bool = False,
        grace: float = 30.0,
        using: str | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1.")
        self.queues = queues or ["default"]
        self.concurrency = concurrency
        self.burst = burst
        self.grace = grace
        self.alias = using or router.db_for_write(Workflow) or "default"
        self.summary = Summary()
        self.wakeup = Wakeup()
        self.stopping = threading.Event()
        self._signals = 0
        self._lock = threading.Lock()
        self._leases: dict[int, Lease] = {}  # runner thread id -> lease of its current workflow
        self._runners: list[threading.Thread] = []
        self._finished: set[int] = set()  # runners (by index) that ended on purpose
        # No recovery before this time (time.monotonic()): see _outage().
        self._reap_after = 0.0

    @property
    def store(self) -> Store:
        return store_for(self.alias)

    # --- Main thread ---------------------------------------------------------------------------

    def run(self) -> Summary:
        """Work until stopped; return what was done. Installs SIGTERM/SIGINT handlers.

        Raise ``WorkflowInTransaction`` if called inside a transaction (a test's): the runners'
        connections could not see what it has not committed.
        """
        if connections[self.alias].in_atomic_block:
            raise WorkflowInTransaction(
                "The worker was started inside a transaction (a test case's?). It runs "
                "workflows in threads of its own, whose database connections cannot see what "
                "this transaction has not committed, so it would find nothing to run. In a test, "
                "run queued workflows with django_pgqrs.testing.drain(), or use a test that "
                "commits (TransactionTestCase, pytest.mark.django_db(transaction=True))."
            )
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        logger.info(
            "Worker %s started: queues %s, concurrency %d%s",
            process_owner(),
            ",".join(self.queues),
            self.concurrency,
            ", burst" if self.burst else "",
        )
        try:
            self._wait_for_database()
            if not self.stopping.is_set():
                self._reap()
                self._runners = [self._start_runner(n) for n in range(self.concurrency)]
                self._listen()
                self._drain()
        finally:
            for lease in self._give_back(list(self._leases.values()) + heartbeat.leftovers()):
                logger.warning(
                    "Could not give back workflow %s; its lease will expire", lease.workflow_id
                )
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            logger.info("Worker %s stopped: %s", process_owner(), self.summary)
        return self.summary

    def stop(self) -> None:
        """Stop claiming; running workflows finish within the grace period."""
        self.stopping.set()
        self.wakeup.ring()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals == 1:
            logger.info(
                "Worker %s: %s received, finishing running workflows (up to %ss); "
                "send it again to stop at once",
                process_owner(),
                signal.Signals(signum).name,
                self.grace,
            )
            self.stop()
        else:
            raise SystemExit(1)

    def _wait_for_database(self) -> None:
        delay = 0.5
        while not self.stopping.is_set():
            try:
                connections[self.alias].ensure_connection()
                return
            except (DatabaseError, InterfaceError) as exc:
                logger.warning(
                    "Database %r unreachable (%s); retrying in %.1fs", self.alias, exc, delay
                )
                self.stopping.wait(delay)
                delay = min(delay * 2, 10.0)

    def _start_runner(self, number: int) -> threading.Thread:
        thread = threading.Thread(
            target=self._runner, args=(number,), name=f"pgqrs-runner-{number}", daemon=True
        )
        thread.start()
        return thread

    def _listen(self) -> None:
        """Until stopping: wake runners on notifications and each poll; recover dead owners'."""
        listener = None
        if self.store.vendor == "postgresql":
            listener = Listener(self.alias, on_failure=self._outage)
        next_poll = 0.0
        try:
            while not self.stopping.is_set():
                try:
                    if self.burst and not any(thread.is_alive() for thread in self._runners):
                        return
                    # Wait in short slices, so that a stop is noticed at once whatever the poll.
                    now = time.monotonic()
                    slice_ = max(0.0, min(0.25, next_poll - now))
                    if listener is not None and listener.wait(self.queues, slice_):
                        self.wakeup.ring()
                    elif listener is None:
                        self.stopping.wait(slice_)
                    if time.monotonic() >= next_poll:
                        next_poll = time.monotonic() + conf.POLL_SECONDS
                        self.wakeup.ring()
                        self._reap()
                        self._supervise()
                except Exception:
                    logger.exception("Worker %s: unexpected error; it goes on", process_owner())
                    self.stopping.wait(conf.POLL_SECONDS)
        finally:
            if listener is not None:
                listener.close()

    def _supervise(self) -> None:
        """Restart runner threads that stopped unexpectedly, and the heartbeat if it did."""
        heartbeat.ensure_alive()
        for number, thread in enumerate(self._runners):
            if thread.is_alive() or number in self._finished or self.stopping.is_set():
                continue
            logger.error("Worker %s: runner %d had stopped; restarting it", process_owner(), number)
            self._runners[number] = self._start_runner(number)

    def _drain(self) -> None:
        """After a stop: wait for runners up to the grace period, then give leases back."""
        deadline = time.monotonic() + self.grace
        for thread in self._runners:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            left = list(self._leases.values())
            self._leases.clear()
        if left:
            logger.warning(
                "Worker %s: grace period over; giving back %d running workflow(s): %s",
                process_owner(),
                len(left),
                ", ".join(str(lease.workflow_id) for lease in left),
            )
        for lease in self._give_back(left):
            heartbeat.leave(lease)

    def _give_back(self, leases: list[Lease]) -> list[Lease]:
        """Release ``leases`` so that other workers take them now; return those not released."""
        failed = []
        for lease in leases:
            # Its run, if still going, must not start another step (nor write) from now on.
            lease.lost = True
            try:
                if store_for(lease.alias).release(lease.workflow_id, lease.token):
                    self._count("released")
            except StorageError:
                failed.append(lease)
        return failed

    def _outage(self) -> None:
        """The database was out of reach: hold recovery back for one lease length.

        During an outage no owner can renew its lease, so leases run out while their owners
        still run steps. Once the database is back, every owner's heartbeat renews within a
        second; taking their workflows before that would run the same steps twice. The owners
        that died meanwhile are taken over one lease later.
        """
        self._reap_after = time.monotonic() + conf.LEASE_SECONDS

    def _reap(self) -> int:
        """Take back workflows whose owners' leases expired; return how many."""
        if time.monotonic() < self._reap_after:
            return 0
        try:
            reaped = self.store.reap(conf.MAX_RECOVERY_ATTEMPTS)
        except StorageError as exc:
            logger.warning("Recovery skipped: %s", exc)
            self.store.close_if_broken()
            self._outage()
            return 0
        except Exception:
            logger.exception("Recovery failed")
            self.store.close_if_broken()
            return 0
        for item in reaped:
            if item.status == WorkflowStatus.ERROR:
                logger.error(
                    "Workflow %s (%s): its owner %s died again; recovery limit of %d reached, "
                    "marked ERROR",
                    item.workflow_id,
                    item.name,
                    item.owner,
                    conf.MAX_RECOVERY_ATTEMPTS,
                )
            else:
                logger.warning(
                    "Workflow %s (%s): its owner %s stopped renewing its lease; it will run again",
                    item.workflow_id,
                    item.name,
                    item.owner,
                )
        self._count("recovered", len(reaped))
        return len(reaped)

    def _count(self, what: str, n: int = 1) -> None:
        with self._lock:
            setattr(self.summary, what, getattr(self.summary, what) + n)

    # --- Runner threads ------------------------------------------------------------------------

    def _runner(self, number: int) -> None:
        failures = 0
        try:
            while not self.stopping.is_set():
                try:
                    seen = self.wakeup.rings()
                    if self._run_one():
                        failures = 0
                        continue
                    failures = 0
                    if self.burst:
                        # Nothing due: one more look after taking back dead owners' workflows.
                        if self._reap() == 0 and not self._run_one():
                            self._finished.add(number)
                            return
                        continue
                    self.wakeup.wait(seen, conf.POLL_SECONDS)
                except Exception as exc:
                    failures += 1
                    logger.exception(
                        "Worker %s: runner %d failed outside any workflow (%d in a row)",
                        process_owner(),
                        number,
                        failures,
                    )
                    self.store.close_if_broken()
                    if failures >= RUNNER_FAILURES:
                        self._give_up(f"runner {number} failed {failures} times in a row: {exc}")
                        self._finished.add(number)
                        return
                    self.stopping.wait(min(conf.POLL_SECONDS * failures, 10.0))
        finally:
            connections.close_all()

    def _give_up(self, why: str) -> None:
        """Stop the worker because its runners cannot go on; it exits with an error."""
        with self._lock:
            if self.summary.fatal is None:
                self.summary.fatal = why
        logger.critical("Worker %s is stopping: %s", process_owner(), why)
        self.stop()

    def _run_one(self) -> bool:
        """Claim one due workflow and run it; return False if none was due."""
        lease = Lease(self.alias, 0)
        sent = time.monotonic()
        try:
            claimed = self.store.claim_next(
                self.queues, owner_name(), lease.token, conf.LEASE_SECONDS
            )
        except StorageError as exc:
            logger.warning("Could not claim a workflow: %s", exc)
            self.store.close_if_broken()
            self._outage()
            self.stopping.wait(conf.POLL_SECONDS)
            return False
        if claimed is None:
            return False
        lease.workflow_id = claimed.workflow_id
        lease.confirm(sent, conf.LEASE_SECONDS)
        ident = threading.get_ident()
        with self._lock:
            self._leases[ident] = lease
        label = f"{claimed.workflow_id} ({claimed.name})"
        logger.info("Workflow %s started, attempt %d", label, claimed.attempts)
        started = time.monotonic()
        try:
            runtime.run_claimed(claimed, self.store, lease)
        except LeaseLost:
            logger.warning("Workflow %s: lease lost to another process; stopped", label)
        except WorkflowCancelled:
            logger.info("Workflow %s was cancelled; stopped", label)
        except StorageError as exc:
            # Its lease is given back by the heartbeat once the database answers.
            logger.warning("Workflow %s interrupted: %s", label, exc)
            self.store.close_if_broken()
            self._outage()
        except UnknownWorkflow as exc:
            logger.error("Workflow %s not run: %s", label, exc)
        except BaseException as exc:
            # Whatever the workflow raised, SystemExit included, was saved as its failure: a
            # runner thread never stops for a workflow.
            self._count("failed")
            logger.warning(
                "Workflow %s failed after %.3fs: %s: %s",
                label,
                time.monotonic() - started,
                type(exc).__name__,
                exc,
            )
        else:
            self._count("succeeded")
            logger.info("Workflow %s succeeded in %.3fs", label, time.monotonic() - started)
        finally:
            with self._lock:
                self._leases.pop(ident, None)
        return True


class Listener:
    """A PostgreSQL connection that LISTENs for due workflows; reconnects after failures.

    Each new connection first checks that notifications reach it: one sent through the
    workflows' database must arrive. Through a pooler in transaction mode it does not (the LISTEN
    stays on a server connection the pooler hands to others); the worker then says so once and
    polls, until ``PGQRS['LISTEN_DATABASE']`` names a direct connection.
    """

    PROBE_SECONDS = 2.0

    def __init__(self, alias: str, on_failure: Callable[[], None] = lambda: None) -> None:
        self.alias = alias
        self.on_failure = on_failure
        self._connection: Any = None
        self._retry_at = 0.0
        self._deaf = False

    def wait(self, queues: list[str], timeout: float) -> bool:
        """Wait up to ``timeout`` for a notification about ``queues``; False if none came."""
        deadline = time.monotonic() + timeout
        try:
            connection = self._connect()
            if connection is None:
                time.sleep(timeout)
                return False
            for notify in connection.notifies(timeout=timeout):
                if notify.payload in queues:
                    return True
                if time.monotonic() >= deadline:
                    break
        except Exception as exc:  # any failure of the listening connection: poll instead
            logger.warning("Listening for notifications failed (%s); polling until it is back", exc)
            self.on_failure()
            self.close()
            self._retry_at = time.monotonic() + 1.0
        return False

    def _connect(self) -> Any:
        if self._connection is not None:
            return self._connection
        if self._deaf or time.monotonic() < self._retry_at:
            return None
        target = conf.LISTEN_DATABASE
        if target is None or target in settings.DATABASES:
            wrapper = connections[target or self.alias]
            connection = wrapper.get_new_connection(wrapper.get_connection_params())
        else:
            import psycopg

            connection = psycopg.connect(target)
        self._connection = connection
        connection.autocommit = True
        connection.execute(f"LISTEN {CHANNEL}")
        if not self._hears(connection):
            self._deaf = True
            self.close()
            logger.warning(
                "This worker's LISTEN connection gets no notifications from database %r (a "
                "connection pooler in transaction mode, such as PgBouncer, cannot carry "
                "them); it polls every %ss instead. Set PGQRS['LISTEN_DATABASE'] to a database "
                "alias or URL that connects to PostgreSQL directly.",
                self.alias,
                conf.POLL_SECONDS,
            )
            return None
        return connection

    def _hears(self, connection: Any) -> bool:
        """Send a notification through the workflows' database; whether it arrives here."""
        probe = f"probe:{uuid.uuid4().hex}"
        with connections[self.alias].cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, probe])
        deadline = time.monotonic() + self.PROBE_SECONDS
        for notify in connection.notifies(timeout=self.PROBE_SECONDS):
            if notify.payload == probe:
                return True
            if time.monotonic() >= deadline:
                break
        return False

    def close(self) -> None:
        if self._connection is not None:
            # Closing a broken connection may fail too; it is gone either way.
            with contextlib.suppress(Exception):
                self._connection.close()
            self._connection = None
