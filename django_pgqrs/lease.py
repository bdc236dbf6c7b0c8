"""Leases: which process owns a running workflow, and the heartbeat that keeps ownership.

A process that runs a workflow holds a lease on its row: an owner name, a random token and an
expiry. Every checkpoint is written only while the token is still the row's (see ``store``), and
each checkpoint also extends the lease. For steps that run longer than a lease, one daemon thread
per process renews the leases of every workflow the process is running, each
``HEARTBEAT_SECONDS``. A process that dies stops renewing; once its leases expire, other
processes may take its workflows over.

The heartbeat must outlive ordinary faults, or a live process would lose its workflows to
another while it still runs them:

1. Its loop catches everything, logs it and goes on; after a failed renewal it tries again within
   a second, on a new connection, rather than a whole heartbeat later.
2. Its renewal has a time limit (a statement timeout), and a renewal that hangs past two
   heartbeats anyway (a connection that never answers) is abandoned: ``ensure_alive()``, called
   by runs and workers, starts a new thread, with a connection of its own.
3. It tells runs which of their leases are lost (cancelled, taken over), so that they stop at
   their next step instead of running it for nothing.
4. After ``os.fork()`` the child forgets the parent's leases and locks: it must not renew the
   leases of a parent that may since have died, nor wait on a lock some other thread held.

The owner name (``host:pid[:thread]``) is for people reading the table; two containers can share
one. Ownership is the token: a lease this process left behind (a run here lost its database
connection before it could give the workflow back) is recognised by the token it remembers.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field

from django.db import connections

from .conf import conf
from .exceptions import StorageError
from .store import store_for

logger = logging.getLogger("django_pgqrs.lease")

_owner: tuple[int, str] | None = None


def process_owner() -> str:
    """Name this process as a lease owner: ``host:pid``, recomputed after a fork."""
    global _owner
    pid = os.getpid()
    if _owner is None or _owner[0] != pid:
        _owner = (pid, f"{socket.gethostname()}:{pid}")
    return _owner[1]


def owner_name() -> str:
    """Name the calling thread as a lease owner: ``host:pid``, plus ``:thread id`` off the main
    thread, so that people can tell which thread runs a workflow.
    """
    if threading.current_thread() is threading.main_thread():
        return process_owner()
    return f"{process_owner()}:{threading.get_native_id()}"


@dataclass(eq=False)
class Lease:
    """One lease this process holds."""

    alias: str
    workflow_id: int
    token: uuid.UUID = field(default_factory=uuid.uuid4)
    # Until when (``time.monotonic()``) the lease is known to hold: a write that renewed it, sent
    # at t, makes it at least t + LEASE_SECONDS (the database counts from when it received it).
    confirmed_until: float = 0.0
    # Set by the heartbeat when the row no longer holds this token (cancelled, or taken over).
    lost: bool = False

    def confirm(self, sent_at: float, seconds: float) -> None:
        """Record that a write sent at ``sent_at`` renewed the lease for ``seconds``."""
        self.confirmed_until = max(self.confirmed_until, sent_at + seconds)

    def stale(self, seconds: float) -> bool:
        """Whether less than half of a lease of ``seconds`` is known to be left."""
        return time.monotonic() > self.confirmed_until - seconds / 2


class Heartbeat:
    """Renews the leases this process holds, from one supervised daemon thread."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._leases: set[Lease] = set()
        # Leases that runs here left in the database, by token: given back by the thread once the
        # database answers, unless a run here takes one back first. (A claim whose reply was
        # lost leaves a lease on a workflow it does not know: its id is 0.)
        self._leftovers: dict[uuid.UUID, Lease] = {}
        self._wake = threading.Event()
        self._watching = threading.Event()
        self._thread: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None
        self._generation = 0
        self._beat_started: float | None = None

    def hold(self, lease: Lease) -> None:
        """Keep ``lease`` renewed until ``drop`` is called."""
        with self._lock:
            self._leases.add(lease)
            self._ensure_threads()
        self._wake.set()

    def drop(self, lease: Lease) -> None:
        """Stop renewing ``lease``."""
        with self._lock:
            self._leases.discard(lease)

    def held(self) -> list[Lease]:
        with self._lock:
            return list(self._leases)

    def leave(self, lease: Lease) -> None:
        """Stop renewing ``lease``, and give its workflow back once the database answers.

        For a run that ended without giving its workflow back because the database went away,
        and for a claim that may have taken one before its reply was lost.
        """
        with self._lock:
            self._leases.discard(lease)
            self._leftovers[lease.token] = lease
            self._ensure_threads()
        self._wake.set()

    def take_back(self, workflow_id: int) -> Lease | None:
        """Return the lease a run here left on ``workflow_id``, if any, forgetting it."""
        with self._lock:
            for token, lease in self._leftovers.items():
                if lease.workflow_id == workflow_id:
                    return self._leftovers.pop(token)
        return None

    def leftovers(self) -> list[Lease]:
        with self._lock:
            return list(self._leftovers.values())

    def give_back_leftovers(self) -> None:
        """Give back, now, the leases runs here left (when the process is about to exit)."""
        for lease in self.leftovers():
            with contextlib.suppress(Exception):
                self._give_back(lease)

    def ensure_alive(self) -> None:
        """Restart the heartbeat thread if it died or hangs in a renewal."""
        with self._lock:
            if self._leases or self._leftovers:
                self._ensure_threads()

    def _ensure_threads(self) -> None:
        # Called with the lock held.
        self._watching.set()
        if self._watchdog is None or not self._watchdog.is_alive():
            self._watchdog = threading.Thread(
                target=self._watch, name="pgqrs-heartbeat-watchdog", daemon=True
            )
            self._watchdog.start()
        started = self._beat_started
        # A renewal gives up after half a heartbeat (a statement timeout); one still waiting
        # after a whole one waits on a connection that does not answer.
        hung = started is not None and time.monotonic() - started > conf.HEARTBEAT_SECONDS
        if self._thread is not None and self._thread.is_alive() and not hung:
            return
        if hung:
            logger.error(
                "The lease heartbeat has been waiting for the database for %.1fs; starting a "
                "new heartbeat thread with a new connection",
                time.monotonic() - started,  # type: ignore[operator]
            )
        elif self._thread is not None:
            logger.error("The lease heartbeat thread had stopped; starting it again")
        replacing = self._thread is not None
        self._generation += 1
        self._beat_started = None
        self._thread = threading.Thread(
            target=self._loop,
            args=(self._generation, replacing),
            name="pgqrs-heartbeat",
            daemon=True,
        )
        self._thread.start()

    def _watch(self) -> None:
        """The watchdog: no I/O, so it cannot hang; restarts a heartbeat that died or hangs,
        also while a run is inside a long step."""
        while not sys.is_finalizing():
            try:
                self._watching.clear()
                with self._lock:
                    busy = bool(self._leases or self._leftovers)
                if not busy:
                    self._watching.wait()
                    continue
                time.sleep(min(0.5, conf.HEARTBEAT_SECONDS / 4))
                self.ensure_alive()
            except BaseException:
                if sys.is_finalizing():
                    return
                logger.exception("The lease heartbeat's watchdog failed; it goes on")
                with contextlib.suppress(Exception):
                    time.sleep(0.5)

    def _loop(self, generation: int, at_once: bool) -> None:
        # A replacement renews at once: the thread it replaces may have let leases run low.
        failing = at_once
        while generation == self._generation and not sys.is_finalizing():
            try:
                # Clear before looking: a hold() from now on sets it again, and is not missed.
                self._wake.clear()
                with self._lock:
                    idle = not self._leases and not self._leftovers
                if idle:
                    # Hold no database connection while there is nothing to renew.
                    connections.close_all()
                    self._wake.wait()
                    continue
                retry = min(1.0, conf.HEARTBEAT_SECONDS)
                with self._lock:
                    waiting = bool(self._leftovers)
                if at_once:
                    at_once = False
                else:
                    time.sleep(retry if failing or waiting else conf.HEARTBEAT_SECONDS)
                if generation != self._generation:
                    return  # replaced while it slept or hung
                failing = not self._beat()
            except BaseException:
                if sys.is_finalizing():
                    return
                logger.exception("The lease heartbeat failed; it goes on")
                failing = True
                with contextlib.suppress(Exception):
                    time.sleep(min(1.0, conf.HEARTBEAT_SECONDS))

    def beat(self) -> int:
        """Renew every held lease now; return how many were renewed."""
        renewed = 0
        for alias, leases in self._by_alias().items():
            renewed += len(self._renew(alias, leases) or ())
        return renewed

    def _beat(self) -> bool:
        """Renew held leases and give back leftovers; return False if the database failed."""
        ok = True
        for alias, leases in self._by_alias().items():
            ok = self._renew(alias, leases) is not None and ok
        for lease in self.leftovers():
            try:
                self._give_back(lease)
            except Exception:
                _close(lease.alias)
                ok = False
        return ok

    def _give_back(self, lease: Lease) -> None:
        store = store_for(lease.alias)
        if lease.workflow_id:
            given = store.release(lease.workflow_id, lease.token)
        else:
            given = store.release_token(lease.token)
        with self._lock:
            self._leftovers.pop(lease.token, None)
        if given:
            logger.info("Gave back workflow %s, left behind by a failed run", lease.workflow_id)

    def _by_alias(self) -> dict[str, list[Lease]]:
        by_alias: dict[str, list[Lease]] = {}
        for lease in self.held():
            by_alias.setdefault(lease.alias, []).append(lease)
        return by_alias

    def _renew(self, alias: str, leases: list[Lease]) -> frozenset[int] | None:
        """Renew ``leases``; mark those lost. Return the renewed ids, None if it failed."""
        seconds = conf.LEASE_SECONDS
        sent = self._beat_started = time.monotonic()
        try:
            renewal = store_for(alias).renew(
                [(lease.workflow_id, lease.token) for lease in leases],
                seconds,
                timeout=conf.HEARTBEAT_SECONDS / 2,
            )
        except Exception as exc:
            level = logging.WARNING if isinstance(exc, StorageError) else logging.ERROR
            logger.log(
                level,
                "Could not renew %d lease(s) on %s (%s); trying again",
                len(leases),
                alias,
                exc,
                exc_info=not isinstance(exc, StorageError),
            )
            _close(alias)
            return None
        finally:
            self._beat_started = None
        for lease in leases:
            if lease.workflow_id in renewal.renewed:
                lease.confirm(sent, seconds)
            elif lease.workflow_id in renewal.lost:
                lease.lost = True
        return renewal.renewed


def _close(alias: str) -> None:
    """Drop this thread's connection, so that the next statement connects anew."""
    with contextlib.suppress(Exception):
        connections[alias].close()


heartbeat = Heartbeat()
# A forked child must neither renew its parent's leases nor wait on a lock held by a thread
# that does not exist in it.
os.register_at_fork(after_in_child=heartbeat._reset)
# A process that exits gives back what runs here left, if the database answers, rather than let
# it wait for its lease to run out.
atexit.register(heartbeat.give_back_leftovers)
