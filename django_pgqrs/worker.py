"""The worker: claims due workflows and runs them; takes back workflows whose owner died.

One worker process runs ``concurrency`` runner threads. Each runner claims the most urgent due
workflow of the worker's queues (``SELECT ... FOR UPDATE SKIP LOCKED``, so workers on many
machines share the work through PostgreSQL alone), runs it through the engine, and claims the
next. When nothing is due, runners sleep until a notification (PostgreSQL ``LISTEN``; a commit
that makes a workflow due sends ``NOTIFY``) or the poll interval wakes them.

A poller thread listens, and every poll interval takes back workflows whose owner stopped
renewing its lease (``Store.reap``): they become PENDING for any worker, or ERROR after
``MAX_RECOVERY_ATTEMPTS`` takeovers. The main thread touches no database, so that it always
answers signals: on SIGTERM or SIGINT it stops claiming, lets the running workflows finish within
the grace period, then gives back the leases of the rest so that another worker takes them at
once. A second signal gives them back and exits at once (a database that does not answer gets a
second or so).

Every thread is supervised: whatever a workflow raises, its runner logs it and claims the next;
a database outage makes runners wait and retry; the main thread restarts a runner, the poller or
the lease heartbeat if one stopped. Only a runner that fails again and again outside any workflow
(the tables are missing, say) stops the worker, which then exits with an error instead of idling.

Recovery waits after an outage. While the database is out of reach no owner can renew its lease,
so leases run out under live owners; once it is back, their heartbeats renew within a second or
so, and taking their workflows before that would run steps twice. So a worker takes nothing back
for a short grace after it starts (it cannot know how long the database was away before) and
after it saw the database away long enough for leases to run out. Brief cuts do not count.
"""

from __future__ import annotations

import datetime
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

from django.db import DatabaseError, InterfaceError, connections, router

from . import clock, operations, runtime, signals
from .conf import conf
from .exceptions import (
    LeaseLost,
    StorageError,
    UnknownWorkflow,
    WorkflowCancelled,
    WorkflowInTransaction,
    WorkflowSuspended,
)
from .lease import Lease, heartbeat, owner_name, process_owner
from .listener import Listener, Wakeup
from .models import Workflow, WorkflowStatus
from .store import Reaped, Store, store_for

logger = logging.getLogger("django_pgqrs.worker")

# A runner that fails this many times in a row outside any workflow gives up, and the worker
# stops with an error.
RUNNER_FAILURES = 5
# How long giving back leases may take when stopping, after the grace period, and after a second
# signal; past that, the leases are left to run out.
GIVE_BACK_SECONDS = 5.0
GIVE_BACK_AT_ONCE_SECONDS = 1.0


@dataclass
class Summary:
    """What a worker did, for its exit line."""

    succeeded: int = 0
    failed: int = 0
    released: int = 0
    recovered: int = 0
    suspended: int = 0
    started: float = field(default_factory=time.monotonic)
    # Why the worker stopped on its own, if it did: its runners could not go on.
    fatal: str | None = None

    def __str__(self) -> str:
        ran = self.succeeded + self.failed
        return (
            f"{ran} workflow{'' if ran == 1 else 's'} run ({self.succeeded} succeeded, "
            f"{self.failed} failed), {self.suspended} suspended, "
            f"{self.released} given back, {self.recovered} recovered from dead owners, "
            f"in {time.monotonic() - self.started:.1f}s"
        )


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
        self._poller: threading.Thread | None = None
        self._connected = threading.Event()  # the database answered once: runners may start
        # Recovery waits until then (time.monotonic()), and since when the database has failed.
        self._reap_after = float("inf")
        self._hold_said = 0.0  # the hold (its _reap_after) that _say_recovery_waits told of
        self._failing_since: float | None = None

    @property
    def store(self) -> Store:
        return store_for(self.alias)

    # --- Main thread: signals and supervision, no database --------------------------------------

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
            self._poller = self._start(self._poll, "pgqrs-poller")
            self._supervise_until_stopped()
            self.stop()  # a burst worker's runners are done: so is its poller
            self._drain()
        finally:
            self.stop()
            if self._poller is not None:
                self._poller.join(GIVE_BACK_AT_ONCE_SECONDS)
            with self._lock:
                left = list(self._leases.values())
            for lease in self._give_back(left, GIVE_BACK_AT_ONCE_SECONDS, leftovers=True):
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

    def _start(self, target: Callable[..., None], name: str, *args: object) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        return thread

    def _supervise_until_stopped(self) -> None:
        """Start the runners once the database answers; restart threads that stopped; return
        when stopping (or, with ``burst``, when every runner is done)."""
        next_look = 0.0
        while not self.stopping.wait(0.1):
            if not self._runners and self._connected.is_set():
                self._runners = [
                    self._start(self._runner, f"pgqrs-runner-{n}", n)
                    for n in range(self.concurrency)
                ]
            if self.burst and self._runners and not any(t.is_alive() for t in self._runners):
                return
            if time.monotonic() >= next_look:
                next_look = time.monotonic() + conf.POLL_SECONDS
                self._supervise()

    def _supervise(self) -> None:
        """Restart the poller and runners that stopped unexpectedly, and the heartbeat."""
        heartbeat.ensure_alive()
        if self._poller is not None and not self._poller.is_alive() and not self.stopping.is_set():
            logger.error("Worker %s: the poller had stopped; restarting it", process_owner())
            self._poller = self._start(self._poll, "pgqrs-poller")
        for number, thread in enumerate(self._runners):
            if thread.is_alive() or number in self._finished or self.stopping.is_set():
                continue
            logger.error("Worker %s: runner %d had stopped; restarting it", process_owner(), number)
            self._runners[number] = self._start(self._runner, f"pgqrs-runner-{number}", number)

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
        for lease in self._give_back(left, GIVE_BACK_SECONDS):
            heartbeat.leave(lease)

    def _give_back(
        self, leases: list[Lease], seconds: float, leftovers: bool = False
    ) -> list[Lease]:
        """Release ``leases`` so that other workers take them now, within ``seconds`` (from a
        thread of its own: the database may not answer); return those not released. With
        ``leftovers``, also those that failed runs here left."""
        if not leases and not leftovers:
            return []
        failed = list(leases)

        def give_back() -> None:
            try:
                if leftovers:
                    heartbeat.give_back_leftovers()
                for lease in leases:
                    # Its run, if still going, must not start another step (nor write) from now.
                    lease.lost = True
                    try:
                        if store_for(lease.alias).release(lease.workflow_id, lease.token):
                            self._count("released")
                        failed.remove(lease)
                    except StorageError:
                        pass
            finally:
                connections.close_all()

        self._start(give_back, "pgqrs-give-back").join(seconds)
        return list(failed)

    # --- Poller thread: notifications and recovery ----------------------------------------------

    def _poll(self) -> None:
        """Wait for the database, then until stopping: wake runners on notifications and each
        poll, and take back dead owners' workflows."""
        listener = None
        try:
            self._wait_for_database()
            if self.stopping.is_set():
                return
            # Started now: the database may just be back from an outage of unknown length.
            self._hold_recovery()
            self._connected.set()
            if self.store.vendor == "postgresql":
                listener = Listener(self.alias)
            next_poll = 0.0
            while not self.stopping.is_set():
                try:
                    # Wait in short slices, so that a stop is noticed at once whatever the poll.
                    slice_ = max(0.0, min(0.25, next_poll - time.monotonic()))
                    if listener is not None and listener.wait(self.queues, slice_):
                        self.wakeup.ring()
                    elif listener is None:
                        self.stopping.wait(slice_)
                    if time.monotonic() >= next_poll:
                        next_poll = time.monotonic() + conf.POLL_SECONDS
                        self.wakeup.ring()
                        self._reap()
                except Exception:
                    logger.exception("Worker %s: the poller failed; it goes on", process_owner())
                    self.stopping.wait(conf.POLL_SECONDS)
        finally:
            if listener is not None:
                listener.close()
            connections.close_all()

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

    def _hold_recovery(self) -> None:
        """Take nothing back for a grace: long enough for live owners to renew their leases."""
        grace = min(conf.LEASE_SECONDS / 2, conf.HEARTBEAT_SECONDS + 1.0)
        self._reap_after = time.monotonic() + grace

    def _say_recovery_waits(self) -> None:
        """Say once per hold why a worker with nothing else to do sits idle (``--burst``)."""
        with self._lock:
            if self._hold_said == self._reap_after:
                return
            self._hold_said = self._reap_after
        logger.info(
            "Worker %s: a running workflow's lease expired; waiting %.1fs before taking it "
            "back, in case its owner is alive and about to renew it",
            process_owner(),
            max(0.0, self._reap_after - time.monotonic()),
        )

    def _storage_failed(self) -> None:
        with self._lock:
            if self._failing_since is None:
                self._failing_since = time.monotonic()

    def _storage_ok(self) -> None:
        """The database answered: if it was away long enough for leases to run out, hold
        recovery back (see the module's docstring)."""
        with self._lock:
            since, self._failing_since = self._failing_since, None
        if since is not None and time.monotonic() - since >= self._long_outage():
            self._hold_recovery()

    def _any_expired(self) -> bool:
        try:
            return self.store.any_expired()
        except StorageError:
            return False

    def _long_outage(self) -> float:
        # Renewed every heartbeat, a lease has at least LEASE - HEARTBEAT left: an outage of half
        # that, as seen here, may have begun earlier elsewhere.
        return (conf.LEASE_SECONDS - conf.HEARTBEAT_SECONDS) / 2

    def _reap(self, wait: bool = False) -> int:
        """Take back workflows whose owners' leases expired; return how many. During a hold,
        take nothing (or, with ``wait``, wait it out)."""
        if self._failing_since is not None:
            # Ask first: the answer may start a hold, which this round must respect.
            try:
                self.store.ping()
            except StorageError:
                return 0
            self._storage_ok()
        if time.monotonic() < self._reap_after:
            if not wait or not self._any_expired():
                return 0
            self._say_recovery_waits()
            while (left := self._reap_after - time.monotonic()) > 0:
                if self.stopping.wait(min(0.25, left)):
                    return 0
        try:
            reaped = self.store.reap(conf.MAX_RECOVERY_ATTEMPTS)
        except StorageError as exc:
            logger.warning("Recovery skipped: %s", exc)
            self._storage_failed()
            return 0
        except Exception:
            logger.exception("Recovery failed")
            self.store.close_if_broken()
            return 0
        self._storage_ok()
        failed = [item.workflow_id for item in reaped if item.status == WorkflowStatus.ERROR]
        if failed:
            operations.wake_parents(self.alias, failed)
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
        if signals.workflow_recovered.receivers or signals.workflow_finished.receivers:
            _recovered(reaped)
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
                    ran = self._run_one()
                    failures = 0
                    if ran is not False:  # ran one, or could not tell (the database failed)
                        continue
                    if self.burst:
                        # Nothing due: one more look after taking back dead owners' workflows.
                        if self._reap(wait=True) == 0 and self._run_one() is False:
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

    def _ring_at(self, when: datetime.datetime | None) -> None:
        """Wake the runners when a workflow suspended here is due, if that comes before the
        next poll (which finds it anyway): a short sleep then ends on time."""
        if when is None:
            return
        delay = (when - clock.now()).total_seconds()
        if delay < conf.POLL_SECONDS:
            timer = threading.Timer(max(0.0, delay), self.wakeup.ring)
            timer.daemon = True
            timer.start()

    def _give_up(self, why: str) -> None:
        """Stop the worker because its runners cannot go on; it exits with an error."""
        with self._lock:
            if self.summary.fatal is None:
                self.summary.fatal = why
        logger.critical("Worker %s is stopping: %s", process_owner(), why)
        self.stop()

    def _run_one(self) -> bool | None:
        """Claim one due workflow and run it; return False if none was due, None if the
        database could not say."""
        lease = Lease(self.alias, 0)
        sent = time.monotonic()
        try:
            claimed = self.store.claim_next(
                self.queues, owner_name(), lease.token, conf.LEASE_SECONDS
            )
        except StorageError as exc:
            heartbeat.leave(lease)  # the claim may have been made, and its reply lost
            logger.warning("Could not claim a workflow: %s", exc)
            self._storage_failed()
            self.stopping.wait(conf.POLL_SECONDS)
            return None
        self._storage_ok()
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
        except WorkflowSuspended as exc:
            self._count("suspended")
            logger.info("Workflow %s suspended: %s", label, exc.reason)
            self._ring_at(exc.wake_at)
        except StorageError as exc:
            # Its lease is given back by the heartbeat once the database answers.
            logger.warning("Workflow %s interrupted: %s", label, exc)
            self._storage_failed()
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


def _recovered(reaped: list[Reaped]) -> None:
    """Send the signals of workflows taken back from dead owners (their update is committed)."""
    for item in reaped:
        if signals.workflow_recovered.receivers:
            signals.send(
                signals.workflow_recovered,
                workflow_id=item.workflow_id,
                name=item.name,
                previous_owner=item.owner,
                status=item.status,
            )
        if item.status == WorkflowStatus.ERROR and signals.workflow_finished.receivers:
            signals.send(
                signals.workflow_finished,
                workflow_id=item.workflow_id,
                name=item.name,
                status=WorkflowStatus.ERROR,
                result=None,
                error=item.error,
                exception=None,
            )
