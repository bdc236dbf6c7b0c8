"""Leases: which process owns a running workflow, and the heartbeat that keeps ownership.

A process that runs a workflow holds a lease on its row: an owner name, a random token and an
expiry. Every checkpoint is written only while the token is still the row's (see ``store``), and
on PostgreSQL each checkpoint also extends the lease. For steps that run longer than a lease, one
daemon thread per process renews the leases of every workflow the process is running, each
``HEARTBEAT_SECONDS``. A process that dies stops renewing; once its leases expire, other
processes may take its workflows over.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

from django.db import DatabaseError, connections

from .conf import conf
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
    thread, so that two threads of one process never take each other's workflow for their own.
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


class Heartbeat:
    """Renews the leases this process holds, from one daemon thread."""

    def __init__(self) -> None:
        self._leases: set[Lease] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def hold(self, lease: Lease) -> None:
        """Keep ``lease`` renewed until ``drop`` is called."""
        with self._lock:
            self._leases.add(lease)
            if self._thread is None or self._pid != os.getpid():
                self._pid = os.getpid()
                self._thread = threading.Thread(
                    target=self._loop, name="pgqrs-heartbeat", daemon=True
                )
                self._thread.start()
        self._wake.set()

    def drop(self, lease: Lease) -> None:
        """Stop renewing ``lease``."""
        with self._lock:
            self._leases.discard(lease)

    def held(self) -> list[Lease]:
        with self._lock:
            return list(self._leases)

    def _loop(self) -> None:
        while True:
            # Clear before looking: a hold() from now on sets it again, and is not missed.
            self._wake.clear()
            if not self.held():
                # Idle: hold no database connection while there is nothing to renew.
                connections.close_all()
                self._wake.wait()
                continue
            time.sleep(conf.HEARTBEAT_SECONDS)
            self.beat()

    def beat(self) -> int:
        """Renew every held lease now; return how many rows were renewed."""
        by_alias: dict[str, list[tuple[int, uuid.UUID]]] = {}
        for lease in self.held():
            by_alias.setdefault(lease.alias, []).append((lease.workflow_id, lease.token))
        renewed = 0
        for alias, pairs in by_alias.items():
            try:
                renewed += store_for(alias).renew(pairs, conf.LEASE_SECONDS)
            except DatabaseError:
                logger.warning(
                    "Could not renew %d lease(s) on %s", len(pairs), alias, exc_info=True
                )
                connections[alias].close()
        return renewed


heartbeat = Heartbeat()
