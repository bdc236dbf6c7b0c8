"""How idle worker threads learn of due workflows: PostgreSQL notifications, and a wake-up.

A commit that makes a workflow due sends ``NOTIFY`` on ``CHANNEL`` with the workflow's queue. A
worker LISTENs on a connection of its own and rings its ``Wakeup`` when one of its queues is named;
idle runners wait on the wake-up (or their poll interval), so none of them holds a connection to
listen.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from typing import Any

from django.conf import settings
from django.db import connections

from .conf import conf
from .statements import CHANNEL

logger = logging.getLogger("django_pgqrs.worker")

# A connection to a server that accepts the TCP connection but never answers (stopped, or behind
# a broken network) must not hold up a worker for ever.
CONNECT_TIMEOUT = 10


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


class Listener:
    """A PostgreSQL connection that LISTENs for due workflows; reconnects after failures.

    Each new connection first checks that notifications reach it: one sent through the
    workflows' database must arrive. Through a pooler in transaction mode it does not (the LISTEN
    stays on a server connection the pooler hands to others); the worker then says so once and
    polls, until ``PGQRS['LISTEN_DATABASE']`` names a direct connection.
    """

    PROBE_SECONDS = 2.0

    def __init__(self, alias: str) -> None:
        self.alias = alias
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
            params = wrapper.get_connection_params()
            params.setdefault("connect_timeout", CONNECT_TIMEOUT)
            connection = wrapper.get_new_connection(params)
        else:
            import psycopg

            connection = psycopg.connect(target, connect_timeout=CONNECT_TIMEOUT)
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
