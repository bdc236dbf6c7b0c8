"""Runs the engine's statements (see ``statements``) on one database, in its dialect.

Each method is one write (one statement on PostgreSQL, one short transaction on SQLite). Losing
the database connection becomes ``StorageError``: the workflow is not failed, it keeps its last
checkpoint. A value the database refuses becomes ``PayloadError``.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import secrets
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from django.db import (
    DatabaseError,
    DataError,
    IntegrityError,
    ProgrammingError,
    connections,
    router,
    transaction,
)
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.utils import CursorWrapper
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from . import clock, statements
from .conf import conf
from .exceptions import PayloadError, StorageError
from .models import Workflow, WorkflowStatus
from .statements import CHANNEL

__all__ = ["CHANNEL", "Claimed", "Reaped", "SavedStep", "Store", "store_for", "workflows_alias"]

_NEVER = 2**31 - 1
# What PostgreSQL says when a prepared statement is missing from, or already in, the server
# session: a pooler in transaction mode hands each transaction to another one.
_NOT_PREPARED = frozenset({"26000", "42P05"})
# Undefined table, column, function: the tables are not migrated.
_SCHEMA = frozenset({"42P01", "42703", "42883"})
_warned_unprepared = False

logger = logging.getLogger("django_pgqrs.store")
T = TypeVar("T")

try:
    import psycopg

    class _PreparedCursor(psycopg.Cursor[Any]):
        """A psycopg cursor that prepares each statement it runs (once per connection)."""

        def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
            kwargs.setdefault("prepare", True)
            return super().execute(query, params, **kwargs)

except ImportError:  # SQLite only: psycopg is not needed.
    pass


@dataclass(frozen=True)
class SavedStep:
    """A step's checkpoint as a claim reads it; the output stays text until it is replayed."""

    position: int
    status: str
    output_text: str | None
    attempts: int
    error: dict[str, Any] | None
    args_digest: str | None


@dataclass(frozen=True)
class Claimed:
    """What a claim returns: the workflow's name, saved input and saved checkpoints."""

    workflow_id: int
    name: str
    input_text: str | None
    attempts: int
    recovery_attempts: int
    parent_id: int | None
    deadline_at: datetime.datetime | None
    # The due time a worker claimed it at (a claim by id: None), by the database's clock.
    due: datetime.datetime | None
    steps: dict[str, SavedStep]
    # The claim took the workflow over from an owner that was running it (lease expired, or
    # force): a recovery.
    took_over: bool = False


@dataclass(frozen=True)
class Reaped:
    """A workflow that recovery took back from an owner whose lease expired."""

    workflow_id: int
    name: str
    status: str
    owner: str | None
    # The error it was saved with, when recovery gave up on it (ERROR).
    error: dict[str, Any] | None = None


@dataclass(frozen=True)
class Renewal:
    """What a heartbeat's renewal found: the workflows whose leases it renewed, and those whose
    leases are no longer held (neither is a row locked by its writer: it is skipped)."""

    renewed: frozenset[int]
    lost: frozenset[int]


class Store:
    """The statements for one database connection alias, in that database's dialect."""

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self.vendor = connections[alias].vendor
        if self.vendor not in statements.DIALECT:
            raise NotImplementedError(
                f"django-pgqrs supports PostgreSQL and SQLite, not {self.vendor} "
                f"(database {alias!r})."
            )
        postgres = self.vendor == "postgresql"
        words = statements.DIALECT[self.vendor]
        insert = statements.INSERT.format(**words)
        self.sql_insert = insert
        self.sql_enqueue = (
            statements.NOTIFYING.format(statement=insert, channel=CHANNEL) if postgres else insert
        )
        claim = statements.CLAIM.format(**words)
        claim_next = statements.CLAIM_NEXT[self.vendor].format(**words)
        with_steps = statements.WITH_STEPS
        self.sql_claim = with_steps.format(claim=claim) if postgres else claim
        self.sql_claim_next = with_steps.format(claim=claim_next) if postgres else claim_next
        self.sql_checkpoint = statements.checkpoint(self.vendor, shift=False)
        self.sql_checkpoint_shifting = statements.checkpoint(self.vendor, shift=True)
        self.sql_end = statements.END.format(**words)
        self.sql_fail = statements.FAIL[self.vendor].format(**words)
        self.sql_release = statements.RELEASE.format(**words)
        self.sql_release_token = statements.RELEASE_TOKEN.format(**words)
        self.sql_touch = statements.TOUCH.format(**words)
        self.sql_reap = statements.REAP[self.vendor].format(**words)
        self.sql_any_expired = statements.ANY_EXPIRED.format(**words)
        self.sql_suspend = statements.SUSPEND.format(**words)
        self.sql_wake = statements.WAKE.format(**words)
        self.sql_wake_if_event = statements.WAKE_IF_EVENT.format(**words)
        self.sql_wake_if_children = statements.WAKE_IF_CHILDREN[self.vendor]
        self.sql_send = statements.SEND.format(**words)
        self.sql_send_insert = statements.SEND_INSERT.format(**words)
        self.sql_receive = statements.RECEIVE[self.vendor]
        self.sql_outcomes = statements.OUTCOMES[self.vendor]
        self.sql_fork = statements.FORK[self.vendor].format(**words)
        self.sql_fork_steps = statements.FORK_STEPS_SQLITE
        self.sql_reap_update = statements.REAP_SQLITE_UPDATE.format(**words)
        self.sql_renew = statements.RENEW[self.vendor].format(**words)
        self.sql_cancel = statements.CANCEL.format(**words)

    @property
    def connection(self) -> BaseDatabaseWrapper:
        return connections[self.alias]

    def _prepared_cursor(self) -> CursorWrapper:
        """A cursor of Django's PostgreSQL connection whose statements are prepared.

        Django's own cursors bind parameters on the client, so the server parses and plans every
        statement anew; these statements run on every step, and preparing them once per
        connection saves a fifth of each one's cost. The cursor is wrapped by Django, so query
        logging and ``connection.execute_wrapper`` see it, and kept with the connection.
        """
        connection = self.connection
        connection.close_if_health_check_failed()
        connection.ensure_connection()
        pg_connection = connection.connection
        logged = connection.queries_logged
        kept = getattr(connection, "_pgqrs_cursor", None)
        if kept is not None and kept[0] is pg_connection and kept[1] == logged:
            return kept[2]  # type: ignore[no-any-return]
        connection.validate_thread_sharing()
        if pg_connection.prepare_threshold is None:
            # Django turns preparing off (None), and psycopg then ignores prepare=True too. A
            # threshold no statement reaches keeps Django's own statements unprepared.
            pg_connection.prepare_threshold = _NEVER
        _unique_statement_names(pg_connection)
        raw: Any = _PreparedCursor(pg_connection)
        cursor = connection.make_debug_cursor(raw) if logged else connection.make_cursor(raw)
        connection._pgqrs_cursor = (pg_connection, logged, cursor)  # type: ignore[attr-defined]
        return cursor

    def _write(self, work: Callable[[CursorWrapper], T]) -> T:
        """Run ``work`` with a cursor: one write, mapped to the engine's errors.

        On SQLite the write runs in a transaction of its own, so that it starts with the write
        lock when the database is configured with ``"transaction_mode": "IMMEDIATE"``, and so
        that a write of several statements is atomic. On PostgreSQL its statements are prepared,
        unless the connection goes through a pooler that cannot keep prepared statements: then
        the connection falls back to unprepared statements, and the write is made again (outside
        a transaction; inside one, it is lost with it, and ``StorageError`` says so).
        """
        try:
            if self.vendor == "sqlite":
                with transaction.atomic(using=self.alias), self.connection.cursor() as cursor:
                    return work(cursor)
            if not self._prepares():
                with self.connection.cursor() as cursor:
                    return work(cursor)
            try:
                return work(self._prepared_cursor())
            except ProgrammingError as exc:
                if getattr(exc.__cause__, "sqlstate", None) not in _NOT_PREPARED:
                    raise
                self._stop_preparing(exc)
                if self.connection.in_atomic_block:
                    raise
            with self.connection.cursor() as cursor:
                return work(cursor)
        except DataError as exc:
            raise PayloadError(f"The database {self.alias!r} refused a value: {exc}") from exc
        except DatabaseError as exc:
            raise self._storage_error(exc) from exc

    def _write_together(self, work: Callable[[CursorWrapper], T]) -> T:
        """``_write`` in a transaction of its own, for statements that must commit together. A
        commit that fails is the write's failure too (``StorageError``): whether it happened,
        the next run reads."""
        try:
            with transaction.atomic(using=self.alias):
                return self._write(work)  # which maps its statements' errors
        except IntegrityError:
            raise  # a key checked at commit: the caller's to say what it means
        except DatabaseError as exc:  # the commit's
            raise self._storage_error(exc) from exc

    def _storage_error(self, exc: DatabaseError) -> Exception:
        """The error to raise for a failed write: the same one if the tables are missing (no
        waiting mends that), else ``StorageError`` (the workflow keeps its last checkpoint)."""
        if _schema_error(exc):
            return exc
        self.close_if_broken()
        return StorageError(self.alias, exc)

    def _prepares(self) -> bool:
        """Whether this thread's connection prepares the engine's statements."""
        if not conf.PREPARED_STATEMENTS:
            return False
        connection = self.connection
        refused = getattr(connection, "_pgqrs_unprepared", None)
        return refused is None or refused is not connection.connection

    def _stop_preparing(self, exc: Exception) -> None:
        global _warned_unprepared
        connection = self.connection
        connection._pgqrs_unprepared = connection.connection  # type: ignore[attr-defined]
        if not _warned_unprepared:
            _warned_unprepared = True
            logger.warning(
                "Database %r refused django-pgqrs's prepared statements (%s): a connection "
                "pooler in transaction mode (PgBouncer before 1.21) cannot keep them. Its "
                "connections run the engine's statements unprepared from now on; set "
                "PGQRS['PREPARED_STATEMENTS'] = False to say so up front.",
                self.alias,
                exc,
            )

    def close_if_broken(self) -> None:
        """Drop this thread's connection if it is unusable, so that the next write reconnects
        (Django would only drop it at the end of a request). Not inside a transaction: its owner
        must see it fail."""
        connection = self.connection
        if connection.connection is None or connection.in_atomic_block:
            return
        with contextlib.suppress(Exception):
            if not connection.is_usable():
                connection.close()

    def _params(
        self,
        lease: float,
        delay: float = 0.0,
        run_at: datetime.datetime | None = None,
        **params: Any,
    ) -> dict[str, Any]:
        """Add the clock parameters: the lease length and due time, on SQLite the times too."""
        params["lease"] = lease
        params["delay"] = delay
        params["run_at"] = run_at
        params["ahead"] = clock.ahead()
        if self.vendor == "sqlite":
            now = timezone.now()
            adapt = self.connection.ops.adapt_datetimefield_value
            params["now"] = adapt(now)
            params["until"] = adapt(now + datetime.timedelta(seconds=lease))
            params["run_at"] = adapt(run_at or now + datetime.timedelta(seconds=delay))
            params["due"] = adapt(now + datetime.timedelta(seconds=clock.ahead()))
        return params

    def _adapt(self, value: datetime.datetime | None) -> Any:
        return None if value is None else self.connection.ops.adapt_datetimefield_value(value)

    def _token(self, token: uuid.UUID | None) -> Any:
        # SQLite keeps Django's UUIDField as 32 hex digits.
        if token is None or self.vendor == "postgresql":
            return token
        return token.hex

    def _datetime(self, value: Any) -> datetime.datetime:
        # SQLite hands timestamps back as text from raw SQL; the ORM would convert them.
        if isinstance(value, str):
            parsed = parse_datetime(value)
            assert parsed is not None
            value = parsed
        if timezone.is_naive(value):
            return value.replace(tzinfo=datetime.UTC)  # type: ignore[no-any-return]
        return value  # type: ignore[no-any-return]

    def insert(
        self,
        *,
        name: str,
        input_text: str,
        lease: float,
        owner: str | None = None,
        token: uuid.UUID | None = None,
        delay: float = 0.0,
        run_at: datetime.datetime | None = None,
        queue: str = "default",
        priority: int = 0,
        idempotency_key: str | None = None,
        parent_id: int | None = None,
        deadline_at: datetime.datetime | None = None,
        notify: bool = False,
    ) -> tuple[int, datetime.datetime, datetime.datetime] | None:
        """Insert a workflow: RUNNING under the given lease if ``token`` is set, else PENDING.

        It is due at ``run_at``, or ``delay`` seconds from now by the database's clock. Return
        its id, creation time and due time; None if ``idempotency_key`` is taken. ``notify``
        wakes the workers of ``queue`` when the caller's transaction commits.
        """
        status = WorkflowStatus.PENDING if token is None else WorkflowStatus.RUNNING
        params = self._params(
            lease,
            delay,
            run_at,
            name=name,
            status=str(status),
            input=input_text,
            owner=owner,
            token=self._token(token),
            queue=queue,
            priority=priority,
            idempotency_key=idempotency_key,
            parent_id=parent_id,
            deadline_at=self._adapt(deadline_at),
        )
        sql = self.sql_enqueue if notify else self.sql_insert
        row = self._write(lambda cursor: _one(cursor, sql, params))
        if row is None:
            return None
        return row[0], self._datetime(row[1]), self._datetime(row[2])

    def claim(
        self,
        workflow_id: int,
        name: str,
        owner: str,
        token: uuid.UUID,
        lease: float,
        force: bool,
        previous: uuid.UUID | None = None,
    ) -> Claimed | None:
        """Take the lease on a workflow; None if it is missing, finished or owned by another.

        ``previous`` is the token of a lease this process left on it, which it may take back.
        """
        params = self._params(
            lease,
            id=workflow_id,
            name=name,
            owner=owner,
            token=self._token(token),
            force=force,
            previous=self._token(previous),
        )
        return self._claimed(self.sql_claim, params)

    def claim_next(
        self, queues: list[str], owner: str, token: uuid.UUID, lease: float
    ) -> Claimed | None:
        """Take the lease on the most urgent due workflow of ``queues``; None if none is due."""
        queue_param: Any = queues if self.vendor == "postgresql" else json.dumps(queues)
        params = self._params(lease, queues=queue_param, owner=owner, token=self._token(token))
        return self._claimed(self.sql_claim_next, params)

    def _claimed(self, sql: str, params: dict[str, Any]) -> Claimed | None:
        def work(cursor: CursorWrapper) -> tuple[Any, list[Any]] | None:
            row = _one(cursor, sql, params)
            if row is None:
                return None
            if self.vendor == "postgresql":
                return row, json.loads(row[9]) if row[9] else []  # the claim's columns first
            cursor.execute(statements.STEPS, {"id": row[0]})
            return row, [
                (r[0], r[1], r[2], r[3], r[4], json.loads(r[5]) if r[5] else None, r[6])
                for r in cursor.fetchall()
            ]

        found = self._write(work)
        if found is None:
            return None
        row, saved = found
        steps = {r[0]: SavedStep(r[1], r[2], r[3], r[4], r[5], r[6]) for r in saved}
        deadline = self._datetime(row[6]) if row[6] is not None else None
        due = self._datetime(row[7]) if row[7] is not None else None
        took_over = bool(row[8])
        return Claimed(
            row[0], row[1], row[2], row[3], row[4], row[5], deadline, due, steps, took_over
        )

    def checkpoint(
        self,
        *,
        workflow_id: int,
        token: uuid.UUID,
        lease: float,
        step_id: str,
        position: int,
        status: str,
        output: str | None,
        error: str | None,
        attempts: int,
        started_at: datetime.datetime,
        completed_at: datetime.datetime,
        args_digest: str | None,
        shift: bool = False,
    ) -> bool:
        """Save a step's checkpoint if the lease still holds; False if it was not written.

        ``shift`` moves the saved steps at ``position`` and after one position down, in the same
        write (a step runs for the first time before saved steps).
        """
        adapt = self.connection.ops.adapt_datetimefield_value
        params = self._params(
            lease,
            id=workflow_id,
            token=self._token(token),
            step_id=step_id,
            position=position,
            status=status,
            output=output,
            error=error,
            attempts=attempts,
            started_at=adapt(started_at),
            completed_at=adapt(completed_at),
            args_digest=args_digest,
        )
        sql = self.sql_checkpoint_shifting if shift else self.sql_checkpoint

        def work(cursor: CursorWrapper) -> bool:
            for number, statement in enumerate(sql[:-1]):
                cursor.execute(statement, params)
                if number == 0 and cursor.fetchone() is None:
                    return False  # SQLite: the lease is not this writer's
            return _one(cursor, sql[-1], params) is not None

        return self._write(work)

    def end(
        self,
        workflow_id: int,
        token: uuid.UUID,
        status: str,
        result: str | None = None,
        error: str | None = None,
        failed_step: str | None = None,
        wake_id: int | None = None,
    ) -> bool:
        """Finish a run with ``status`` and release the lease; False if the lease was lost.

        ``failed_step``: the step whose error the workflow failed with, marked on its checkpoint
        so that a resume runs it again. ``wake_id``: a workflow to wake (the parent of a child
        that ends), in the same transaction.
        """
        params = self._params(
            0,
            id=workflow_id,
            token=self._token(token),
            status=status,
            result=result,
            error=error,
            failed_step=failed_step,
            wake_id=wake_id,
        )

        def work(cursor: CursorWrapper) -> bool:
            if failed_step is not None and self.vendor == "sqlite":
                cursor.execute(self.sql_fail, params)  # the mark first: the end clears the token
            sql = self.sql_end
            if failed_step is not None and self.vendor == "postgresql":
                sql = self.sql_fail
            if _one(cursor, sql, params) is None:
                return False
            if wake_id is not None:
                woken = _one(cursor, self.sql_wake, params)
                if woken is not None and woken[0] == WorkflowStatus.SLEEPING:
                    self._notify(cursor, woken[1])
            return True

        if wake_id is None:
            return self._write(work)
        return self._write_together(work)

    def _wake(self, cursor: CursorWrapper, sql: str, params: dict[str, Any]) -> bool:
        """Run a wake-up statement; notify the workers of the woken workflow's queue."""
        row = _one(cursor, sql, params)
        if row is not None:
            self._notify(cursor, row[0])
        return row is not None

    def suspend(
        self,
        workflow_id: int,
        token: uuid.UUID,
        wake: datetime.datetime,
        event: str | None = None,
        children: list[int] | None = None,
    ) -> bool:
        """Suspend a run: SLEEPING, no lease, due at ``wake``; False if the lease was lost.

        Then wake it at once if the ``event`` it waits for came meanwhile, or the ``children``
        it waits for have all ended.
        """
        params = self._params(
            0,
            id=workflow_id,
            token=self._token(token),
            wake=self._adapt(wake),
            name=event,
            children=self._ids(children or []),
        )
        if self._write(lambda cursor: _one(cursor, self.sql_suspend, params)) is None:
            return False
        if event is not None:
            self._write(lambda cursor: self._wake(cursor, self.sql_wake_if_event, params))
        elif children is not None:
            self._write(lambda cursor: self._wake(cursor, self.sql_wake_if_children, params))
        return True

    def send_event(self, workflow_id: int, name: str, payload: str) -> str | None:
        """Save an event for a workflow, and wake it if it is suspended; return the workflow's
        status, None if it is unknown or finished. Joins the caller's transaction."""
        params = self._params(0, id=workflow_id, name=name, payload=payload)

        def work(cursor: CursorWrapper) -> str | None:
            row = _one(cursor, self.sql_send, params)
            if row is None:
                return None
            cursor.execute(self.sql_send_insert, params)
            cursor.fetchone()
            if row[0] == WorkflowStatus.SLEEPING:
                self._notify(cursor, row[1])
            return str(row[0])

        return self._write_together(work)

    def receive_event(self, workflow_id: int, name: str, step_id: str) -> tuple[bool, str | None]:
        """Mark the oldest event ``name`` not yet received as received by ``step_id``; return
        whether there was one, and its payload as stored. Run it in the transaction of the
        checkpoint that records it."""
        params = self._params(0, id=workflow_id, name=name, step_id=step_id)
        row = self._write(lambda cursor: _one(cursor, self.sql_receive, params))
        return (False, None) if row is None else (True, row[0])

    def outcomes(self, ids: list[int]) -> dict[int, tuple[str, str | None, str | None, int | None]]:
        """How these workflows stand: status, result and error as stored (JSON text), and
        their parent."""
        params = self._params(0, children=self._ids(ids))

        def work(cursor: CursorWrapper) -> list[Any]:
            cursor.execute(self.sql_outcomes, params)
            return list(cursor.fetchall())

        return {row[0]: (row[1], _text(row[2]), _text(row[3]), row[4]) for row in self._write(work)}

    def fork(
        self,
        workflow_id: int,
        position: int,
        delay: float = 0.0,
        deadline_at: datetime.datetime | None = None,
    ) -> tuple[int, str] | None:
        """Save a fork of a workflow, with its checkpoints before ``position``, due after
        ``delay``; return the fork's id and queue (workers hear of one due now when the
        transaction commits), or None if the workflow is gone (deleted meanwhile)."""
        params = self._params(
            0, delay, id=workflow_id, position=position, deadline_at=self._adapt(deadline_at)
        )

        def work(cursor: CursorWrapper) -> tuple[int, str] | None:
            row = _one(cursor, self.sql_fork, params)
            if row is None:
                return None
            fork, queue = row
            if self.vendor == "sqlite":
                cursor.execute(self.sql_fork_steps, {**params, "fork": fork})
            if delay <= 0:
                self._notify(cursor, queue)
            return int(fork), str(queue)

        try:
            return self._write_together(work)
        except IntegrityError:
            # Its forked_from key, checked at commit: the original was deleted meanwhile.
            return None

    def cancel(self, ids: list[int]) -> None:
        """Mark workflows CANCELLED, their leases cleared; in the caller's transaction, which
        has locked their rows and checked that they have not ended."""
        params = self._params(0, ids=self._ids(ids))

        def work(cursor: CursorWrapper) -> None:
            cursor.execute(self.sql_cancel, params)

        self._write(work)

    def _ids(self, ids: list[int]) -> Any:
        return ids if self.vendor == "postgresql" else json.dumps(ids)

    def release(
        self, workflow_id: int, token: uuid.UUID, delay: float = 0.0, error: str | None = None
    ) -> bool:
        """Give an unfinished workflow back (PENDING, no lease), due again after ``delay``."""
        params = self._params(0, delay, id=workflow_id, token=self._token(token), error=error)

        def work(cursor: CursorWrapper) -> bool:
            row = _one(cursor, self.sql_release, params)
            if row is not None and delay <= 0:
                self._notify(cursor, row[0])
            return row is not None

        return self._write(work)

    def release_token(self, token: uuid.UUID) -> bool:
        """Give back the workflow a lease of ``token`` holds, if any (its id is not known)."""
        params = self._params(0, token=self._token(token))

        def work(cursor: CursorWrapper) -> bool:
            row = _one(cursor, self.sql_release_token, params)
            if row is not None:
                self._notify(cursor, row[0])
            return row is not None

        return self._write(work)

    def any_expired(self) -> bool:
        """Whether any running workflow's lease has expired."""
        params = self._params(0)
        return self._write(lambda cursor: _one(cursor, self.sql_any_expired, params)) is not None

    def ping(self) -> None:
        """Raise ``StorageError`` unless the database answers."""
        self._write(lambda cursor: _one(cursor, "SELECT 1", {}))

    def touch(self, workflow_id: int, token: uuid.UUID, lease: float) -> bool:
        """Renew one lease if it is still this token's; False if it was lost."""
        params = self._params(lease, id=workflow_id, token=self._token(token))
        return self._write(lambda cursor: _one(cursor, self.sql_touch, params)) is not None

    def reap(self, max_recoveries: int) -> list[Reaped]:
        """Take back workflows whose owner's lease expired: PENDING again, or ERROR for good."""
        poison = json.dumps(
            {
                "type": "django_pgqrs.RecoveryLimitReached",
                "message": (
                    f"The process running this workflow stopped renewing its lease "
                    f"{max_recoveries + 1} times (killed, crashed or hung): it was taken over "
                    f"{max_recoveries} times, the PGQRS['MAX_RECOVERY_ATTEMPTS'] limit, and is "
                    f"not run again automatically. Find why it kills its worker (its last "
                    f"step, memory, time), then resume it with `manage.py pgqrs_resume <id>`."
                ),
                "traceback": "",
            }
        )
        params = self._params(0, max=max_recoveries, poison=poison)

        def work(cursor: CursorWrapper) -> list[Any]:
            cursor.execute(self.sql_reap, params)
            rows: list[Any] = cursor.fetchall()
            if self.vendor == "sqlite" and rows:
                owners = dict(rows)
                cursor.execute(self.sql_reap_update, {**params, "ids": json.dumps(list(owners))})
                rows = [(*row, owners[row[0]]) for row in cursor.fetchall()]
            for queue in {row[3] for row in rows if row[2] == WorkflowStatus.PENDING}:
                self._notify(cursor, queue)
            return rows

        given_up = json.loads(poison)
        return [
            Reaped(row[0], row[1], row[2], row[4], given_up if row[2] == "ERROR" else None)
            for row in self._write(work)
        ]

    def _notify(self, cursor: CursorWrapper, queue: str) -> None:
        if self.vendor == "postgresql":
            cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, queue])

    def notify(self, queues: Iterable[str]) -> None:
        """Wake the workers of ``queues`` (when the current transaction commits)."""
        if self.vendor == "postgresql":
            with self.connection.cursor() as cursor:
                for queue in sorted(set(queues)):
                    self._notify(cursor, queue)

    def renew(self, leases: list[tuple[int, uuid.UUID]], lease: float, timeout: float) -> Renewal:
        """Extend the given leases; say how many were renewed and which are no longer held.

        On PostgreSQL the renewal gives up after ``timeout`` seconds, so that one slow statement
        cannot keep every other lease of the process from being renewed.
        """
        if not leases:
            return Renewal(frozenset(), frozenset())
        if self.vendor == "postgresql":
            params = self._params(lease, ids=[i for i, _ in leases], tokens=[t for _, t in leases])
        else:
            pairs = json.dumps([f"{i}:{t.hex}" for i, t in leases])
            params = self._params(lease, pairs=pairs)
        try:
            with transaction.atomic(using=self.alias), self.connection.cursor() as cursor:
                if self.vendor == "postgresql":
                    milliseconds = str(max(1, int(timeout * 1000)))
                    cursor.execute(
                        "SELECT set_config('statement_timeout', %s, true), "
                        "set_config('lock_timeout', %s, true)",
                        [milliseconds, milliseconds],
                    )
                cursor.execute(self.sql_renew, params)
                rows = cursor.fetchall()
        except DatabaseError as exc:
            raise self._storage_error(exc) from exc
        renewed = frozenset(row[0] for row in rows if row[1])
        if self.vendor == "sqlite":
            # No row is skipped on SQLite: a lease not renewed is a lease lost.
            lost = frozenset(i for i, _ in leases if i not in renewed)
        else:
            lost = frozenset(row[0] for row in rows if not row[1])
        return Renewal(renewed, lost)


def _unique_statement_names(pg_connection: Any) -> None:
    """Name this connection's prepared statements apart from every other connection's.

    psycopg names them ``_pg3_0``, ``_pg3_1``, ... in every connection. Behind a pooler in
    transaction mode (PgBouncer before 1.21), a transaction may land on a server session where
    another client prepared its own ``_pg3_4``: executing ours would run theirs, with our
    parameters. Starting the numbering at a random point makes such a name never found there
    ("does not exist", which falls back to unprepared statements) rather than found wrong.
    """
    manager = getattr(pg_connection, "_prepared", None)
    if manager is not None and getattr(manager, "_prepared_idx", None) == 0:
        manager._prepared_idx = secrets.randbits(60)


def _schema_error(exc: Exception) -> bool:
    """Whether the error says the tables are not as migrations make them (missing), which
    waiting will not mend, rather than that the database is busy or unreachable."""
    if getattr(exc.__cause__, "sqlstate", None) in _SCHEMA:
        return True
    return str(exc).startswith(("no such table", "no such column"))  # SQLite's words


def _text(value: Any) -> str | None:
    """JSON as text: SQLite and ``::text`` give text; a driver may give the decoded value."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)


def _one(cursor: CursorWrapper, sql: str, params: dict[str, Any]) -> Any:
    cursor.execute(sql, params)
    return cursor.fetchone()


def in_test_case_only(alias: str) -> bool:
    """Whether every open atomic block on ``alias`` is a test case's own (Django's ``TestCase``,
    pytest-django's ``django_db``): a transaction that never commits, whose rows are the test's."""
    blocks = connections[alias].atomic_blocks
    return bool(blocks) and all(getattr(block, "_from_testcase", False) for block in blocks)


def workflows_alias() -> str:
    """Return the alias of the database that holds the workflow tables (see the routers)."""
    return router.db_for_write(Workflow) or "default"


_stores: dict[str, Store] = {}


def store_for(alias: str) -> Store:
    """Return the (cached) Store of a database alias."""
    store = _stores.get(alias)
    if store is None:
        store = _stores[alias] = Store(alias)
    return store
