"""The engine's statements on the workflow tables: create, claim, checkpoint, finish, recover.

These run on every workflow and step, so they are raw SQL, one statement each, for three reasons:

1. One round trip: the ORM cannot ``UPDATE ... RETURNING`` nor ``INSERT ... SELECT ... ON
   CONFLICT``, so it would need a transaction of two or three statements where one suffices.
2. Fencing: a checkpoint is written only while the writer's lease token is still the row's, in the
   same statement that writes it, so a process that lost its lease cannot write.
3. Cost: compiling an ORM query takes longer than the database takes to run these.

PostgreSQL reads the clock (``now()``) so that leases of processes on many machines agree; SQLite
(one machine) gets the time as a parameter. Everything else is the same text for both.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from django.db import InterfaceError, OperationalError, connections, router, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.utils import CursorWrapper
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from .codec import loads
from .conf import conf
from .exceptions import StorageError
from .models import Workflow, WorkflowStatus

# Workers LISTEN on this channel; a commit that makes a workflow due NOTIFYs it with the queue.
CHANNEL = "django_pgqrs"

# What differs between the two dialects: the clock, and the casts PostgreSQL needs to know the
# type of a parameter that may be NULL (statements are prepared, so parameters are typed).
_DIALECT = {
    "postgresql": {
        "now": "now()",
        "until": "now() + %(lease)s::float8 * interval '1 second'",
        "run_at": "now() + %(delay)s::float8 * interval '1 second'",
        "json": "::jsonb",
        "uuid": "::uuid",
        "text": "::text",
        "bool": "::boolean",
    },
    "sqlite": {
        "now": "%(now)s",
        "until": "%(until)s",
        "run_at": "%(run_at)s",
        "json": "",
        "uuid": "",
        "text": "",
        "bool": "",
    },
}

# A workflow is inserted RUNNING under the caller's lease (run it now, here) or PENDING (for
# a worker, or for the caller to run later). A repeated idempotency key inserts nothing.
_INSERT = """
INSERT INTO pgqrs_workflows
    (name, status, input, created_at, updated_at, lease_owner, lease_token, lease_expires_at,
     attempts, recovery_attempts, queue, priority, run_at, idempotency_key, parent_id)
VALUES
    (%(name)s, %(status)s, %(input)s{json}, {now}, {now}, %(owner)s{text}, %(token)s{uuid},
     CASE WHEN %(token)s{uuid} IS NULL THEN NULL ELSE {until} END,
     CASE WHEN %(token)s{uuid} IS NULL THEN 0 ELSE 1 END, 0, %(queue)s, %(priority)s, {run_at},
     %(idempotency_key)s{text}, %(parent_id)s)
ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING workflow_id, created_at, run_at
"""

# NOTIFY is transactional: workers hear of the workflow when (if) the caller's transaction
# commits, never before its row is visible.
_NOTIFYING = """
WITH inserted AS ({statement})
SELECT inserted.*, pg_notify('{channel}', %(queue)s) FROM inserted
"""

# Take the workflow if nobody holds a live lease on it, or if this very thread holds it (a run
# here ended without giving it back: the database went away). A workflow whose lease expired
# while RUNNING is a recovery: its owner died (or hung) and this process takes it over.
_CLAIM = """
UPDATE pgqrs_workflows SET
    status = 'RUNNING', lease_owner = %(owner)s{text}, lease_token = %(token)s{uuid},
    lease_expires_at = {until}, updated_at = {now}, attempts = attempts + 1,
    recovery_attempts = recovery_attempts
        + CASE WHEN status IN ('RUNNING', 'SLEEPING') AND lease_owner <> %(owner)s{text}
               AND NOT %(force)s{bool} THEN 1 ELSE 0 END
WHERE workflow_id = %(id)s AND name = %(name)s AND (
    status IN ('PENDING', 'ERROR')
    OR (status IN ('RUNNING', 'SLEEPING') AND (
        lease_expires_at IS NULL OR lease_expires_at < {now}
        OR lease_owner = %(owner)s{text} OR %(force)s{bool})))
RETURNING workflow_id, name, input, attempts, recovery_attempts
"""

# A worker takes the most urgent due workflow of its queues. SKIP LOCKED: workers never wait for
# each other, and never take the same row.
_CLAIM_NEXT = {
    "postgresql": """
WITH next AS (
    SELECT workflow_id FROM pgqrs_workflows
    WHERE status IN ('PENDING', 'SLEEPING') AND queue = ANY(%(queues)s::text[])
        AND run_at <= now()
    ORDER BY priority DESC, run_at, workflow_id
    LIMIT 1
    FOR UPDATE SKIP LOCKED)
UPDATE pgqrs_workflows w SET
    status = 'RUNNING', lease_owner = %(owner)s::text, lease_token = %(token)s::uuid,
    lease_expires_at = {until}, updated_at = now(), attempts = w.attempts + 1
FROM next WHERE w.workflow_id = next.workflow_id
RETURNING w.workflow_id, w.name, w.input, w.attempts, w.recovery_attempts
""",
    "sqlite": """
UPDATE pgqrs_workflows SET
    status = 'RUNNING', lease_owner = %(owner)s, lease_token = %(token)s,
    lease_expires_at = {until}, updated_at = {now}, attempts = attempts + 1
WHERE workflow_id = (
    SELECT workflow_id FROM pgqrs_workflows
    WHERE status IN ('PENDING', 'SLEEPING') AND queue IN (SELECT value FROM json_each(%(queues)s))
        AND run_at <= {now}
    ORDER BY priority DESC, run_at, workflow_id
    LIMIT 1)
RETURNING workflow_id, name, input, attempts, recovery_attempts
""",
}

# PostgreSQL returns the saved checkpoints with the claim, so no step needs a SELECT.
_WITH_STEPS = """
WITH claimed AS ({claim})
SELECT claimed.workflow_id, claimed.name, claimed.input::text, claimed.attempts,
    claimed.recovery_attempts,
    (SELECT json_agg(json_build_array(s.step_id, s.position, s.status, s.output, s.attempts)
                     ORDER BY s.position)::text
     FROM pgqrs_workflow_steps s WHERE s.workflow_id = claimed.workflow_id)
FROM claimed
"""

_STEPS = """
SELECT step_id, position, status, output, attempts FROM pgqrs_workflow_steps
WHERE workflow_id = %(id)s ORDER BY position
"""

# A checkpoint is written only while the lease token matches (the fence). On PostgreSQL the same
# statement renews the lease and moves updated_at, so progress is visible and a steadily advancing
# workflow needs no heartbeat; the row lock it takes orders it against a concurrent takeover. A
# SUCCESS checkpoint is never overwritten: the first writer wins.
_CHECKPOINT = {
    "postgresql": """
WITH lease AS (
    UPDATE pgqrs_workflows SET updated_at = now(), lease_expires_at = {until}
    WHERE workflow_id = %(id)s AND lease_token = %(token)s::uuid
    RETURNING workflow_id)
INSERT INTO pgqrs_workflow_steps
    (workflow_id, step_id, position, status, output, error, attempts, started_at, completed_at)
SELECT workflow_id, %(step_id)s::text, %(position)s::int, %(status)s::text, %(output)s::jsonb,
    %(error)s::jsonb, %(attempts)s::int, %(started_at)s::timestamptz, %(completed_at)s::timestamptz
FROM lease
ON CONFLICT (workflow_id, step_id) DO UPDATE SET
    position = EXCLUDED.position, status = EXCLUDED.status, output = EXCLUDED.output,
    error = EXCLUDED.error, attempts = EXCLUDED.attempts, started_at = EXCLUDED.started_at,
    completed_at = EXCLUDED.completed_at
WHERE pgqrs_workflow_steps.status <> 'SUCCESS'
RETURNING 1
""",
    "sqlite": """
INSERT INTO pgqrs_workflow_steps
    (workflow_id, step_id, position, status, output, error, attempts, started_at, completed_at)
SELECT workflow_id, %(step_id)s, %(position)s, %(status)s, %(output)s, %(error)s,
    %(attempts)s, %(started_at)s, %(completed_at)s
FROM pgqrs_workflows WHERE workflow_id = %(id)s AND lease_token = %(token)s
ON CONFLICT (workflow_id, step_id) DO UPDATE SET
    position = excluded.position, status = excluded.status, output = excluded.output,
    error = excluded.error, attempts = excluded.attempts, started_at = excluded.started_at,
    completed_at = excluded.completed_at
WHERE pgqrs_workflow_steps.status <> 'SUCCESS'
RETURNING 1
""",
}

# Ending a run: set the final status and give the lease up, fenced by the token.
_END = """
UPDATE pgqrs_workflows SET
    status = %(status)s, result = %(result)s{json}, error = %(error)s{json}, updated_at = {now},
    lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
WHERE workflow_id = %(id)s AND lease_token = %(token)s{uuid}
RETURNING queue
"""

# Giving the workflow back unfinished (the process is stopping, or cannot run it): anyone may
# take it once it is due again.
_RELEASE = """
UPDATE pgqrs_workflows SET
    status = 'PENDING', updated_at = {now}, run_at = {run_at},
    error = COALESCE(%(error)s{json}, error),
    lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
WHERE workflow_id = %(id)s AND lease_token = %(token)s{uuid}
RETURNING queue
"""

# Recovery: workflows whose owner stopped renewing its lease go back to PENDING for any worker,
# or to ERROR once they have been taken over MAX_RECOVERY_ATTEMPTS times (a workflow that kills
# every process that runs it must not take the whole fleet down, one worker after another).
_REAP = """
UPDATE pgqrs_workflows SET
    status = CASE WHEN recovery_attempts >= %(max)s THEN 'ERROR' ELSE 'PENDING' END,
    error = CASE WHEN recovery_attempts >= %(max)s THEN %(poison)s{json} ELSE error END,
    recovery_attempts = CASE WHEN recovery_attempts >= %(max)s
                             THEN recovery_attempts ELSE recovery_attempts + 1 END,
    run_at = {now}, updated_at = {now},
    lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
WHERE workflow_id IN (
    SELECT workflow_id FROM pgqrs_workflows
    WHERE status IN ('RUNNING', 'SLEEPING') AND lease_expires_at < {now}
    ORDER BY workflow_id LIMIT 100 {skip_locked})
RETURNING workflow_id, name, status, queue, lease_owner
"""

_RENEW = {
    # SKIP LOCKED: a row locked by its owner's open transaction is being written right now; the
    # renewal must not wait behind it (it would hold up every other lease this process holds).
    "postgresql": """
UPDATE pgqrs_workflows SET lease_expires_at = {until}
WHERE workflow_id IN (
    SELECT workflow_id FROM pgqrs_workflows
    WHERE (workflow_id, lease_token) IN
        (SELECT * FROM unnest(%(ids)s::bigint[], %(tokens)s::uuid[]))
    FOR UPDATE SKIP LOCKED)
""",
    "sqlite": """
UPDATE pgqrs_workflows SET lease_expires_at = {until}
WHERE workflow_id || ':' || lease_token IN (SELECT value FROM json_each(%(pairs)s))
""",
}

_NEVER = 2**31 - 1

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
class Claimed:
    """What a claim returns: the workflow's name, saved input and saved checkpoints."""

    workflow_id: int
    name: str
    input_text: str | None
    attempts: int
    recovery_attempts: int
    # step_id -> (position, status, decoded output, attempts)
    steps: dict[str, tuple[int, str, Any, int]]


@dataclass(frozen=True)
class Reaped:
    """A workflow that recovery took back from an owner whose lease expired."""

    workflow_id: int
    name: str
    status: str
    owner: str | None


class Store:
    """The statements for one database connection alias, in that database's dialect."""

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self.vendor = connections[alias].vendor
        if self.vendor not in _DIALECT:
            raise NotImplementedError(
                f"django-pgqrs supports PostgreSQL and SQLite, not {self.vendor} "
                f"(database {alias!r})."
            )
        postgres = self.vendor == "postgresql"
        words = _DIALECT[self.vendor]
        insert = _INSERT.format(**words)
        self.sql_insert = insert
        self.sql_enqueue = (
            _NOTIFYING.format(statement=insert, channel=CHANNEL) if postgres else insert
        )
        claim = _CLAIM.format(**words)
        claim_next = _CLAIM_NEXT[self.vendor].format(**words)
        self.sql_claim = _WITH_STEPS.format(claim=claim) if postgres else claim
        self.sql_claim_next = _WITH_STEPS.format(claim=claim_next) if postgres else claim_next
        self.sql_checkpoint = _CHECKPOINT[self.vendor].format(**words)
        self.sql_end = _END.format(**words)
        self.sql_release = _RELEASE.format(**words)
        self.sql_reap = _REAP.format(**words, skip_locked="FOR UPDATE SKIP LOCKED" * postgres)
        self.sql_renew = _RENEW[self.vendor].format(**words)

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
        raw: Any = _PreparedCursor(pg_connection)
        cursor = connection.make_debug_cursor(raw) if logged else connection.make_cursor(raw)
        connection._pgqrs_cursor = (pg_connection, logged, cursor)  # type: ignore[attr-defined]
        return cursor

    @contextlib.contextmanager
    def _executing(self) -> Iterator[CursorWrapper]:
        """A cursor for one write; connection failures become ``StorageError``.

        On SQLite the write runs in a transaction of its own, so that it starts with the write
        lock when the database is configured with ``"transaction_mode": "IMMEDIATE"``.
        """
        try:
            if self.vendor == "postgresql" and conf.PREPARED_STATEMENTS:
                yield self._prepared_cursor()
            elif self.vendor == "sqlite":
                with transaction.atomic(using=self.alias), self.connection.cursor() as cursor:
                    yield cursor
            else:
                with self.connection.cursor() as cursor:
                    yield cursor
        except (OperationalError, InterfaceError) as exc:
            raise StorageError(self.alias, exc) from exc

    def _params(self, lease: float, **params: Any) -> dict[str, Any]:
        """Add the clock parameters: the lease length, and on SQLite the times themselves."""
        params["lease"] = lease
        if self.vendor == "sqlite":
            now = timezone.now()
            adapt = self.connection.ops.adapt_datetimefield_value
            params["now"] = adapt(now)
            params["until"] = adapt(now + datetime.timedelta(seconds=lease))
            params["run_at"] = adapt(now + datetime.timedelta(seconds=params.get("delay") or 0))
        return params

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
            return parsed.replace(tzinfo=datetime.UTC) if timezone.is_naive(parsed) else parsed
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
        queue: str = "default",
        priority: int = 0,
        idempotency_key: str | None = None,
        parent_id: int | None = None,
        notify: bool = False,
    ) -> tuple[int, datetime.datetime, datetime.datetime] | None:
        """Insert a workflow: RUNNING under the given lease if ``token`` is set, else PENDING.

        Return its id, creation time and due time; None if ``idempotency_key`` is taken.
        ``notify`` wakes the workers of ``queue`` when the caller's transaction commits.
        """
        status = WorkflowStatus.PENDING if token is None else WorkflowStatus.RUNNING
        params = self._params(
            lease,
            name=name,
            status=str(status),
            input=input_text,
            owner=owner,
            token=self._token(token),
            delay=delay,
            queue=queue,
            priority=priority,
            idempotency_key=idempotency_key,
            parent_id=parent_id,
        )
        with self._executing() as cursor:
            cursor.execute(self.sql_enqueue if notify else self.sql_insert, params)
            row = cursor.fetchone()
        if row is None:
            return None
        return row[0], self._datetime(row[1]), self._datetime(row[2])

    def claim(
        self, workflow_id: int, name: str, owner: str, token: uuid.UUID, lease: float, force: bool
    ) -> Claimed | None:
        """Take the lease on a workflow; None if it is missing, finished or owned by another."""
        params = self._params(
            lease, id=workflow_id, name=name, owner=owner, token=self._token(token), force=force
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
        with self._executing() as cursor:
            cursor.execute(sql, params)
            row = cursor.fetchone()
            if row is None:
                return None
            if self.vendor == "postgresql":
                steps = {r[0]: (r[1], r[2], r[3], r[4]) for r in loads(row[5]) or ()}
            else:
                cursor.execute(_STEPS, {"id": row[0]})
                steps = {r[0]: (r[1], r[2], loads(r[3]), r[4]) for r in cursor.fetchall()}
        return Claimed(row[0], row[1], row[2], row[3], row[4], steps)

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
    ) -> bool:
        """Save a step's checkpoint if the lease still holds; False if it was not written."""
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
        )
        with self._executing() as cursor:
            cursor.execute(self.sql_checkpoint, params)
            return cursor.fetchone() is not None

    def end(
        self,
        workflow_id: int,
        token: uuid.UUID,
        status: str,
        result: str | None = None,
        error: str | None = None,
    ) -> bool:
        """Finish a run with ``status`` and release the lease; False if the lease was lost."""
        params = self._params(
            0, id=workflow_id, token=self._token(token), status=status, result=result, error=error
        )
        with self._executing() as cursor:
            cursor.execute(self.sql_end, params)
            return cursor.fetchone() is not None

    def release(
        self, workflow_id: int, token: uuid.UUID, delay: float = 0.0, error: str | None = None
    ) -> bool:
        """Give an unfinished workflow back (PENDING, no lease), due again after ``delay``."""
        params = self._params(0, id=workflow_id, token=self._token(token), delay=delay, error=error)
        with self._executing() as cursor:
            cursor.execute(self.sql_release, params)
            row = cursor.fetchone()
            if row is not None and delay <= 0:
                self._notify(cursor, row[0])
        return row is not None

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
        with self._executing() as cursor:
            cursor.execute(self.sql_reap, params)
            rows = cursor.fetchall()
            for queue in {row[3] for row in rows if row[2] == WorkflowStatus.PENDING}:
                self._notify(cursor, queue)
        return [Reaped(row[0], row[1], row[2], row[4]) for row in rows]

    def _notify(self, cursor: CursorWrapper, queue: str) -> None:
        if self.vendor == "postgresql":
            cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, queue])

    def notify(self, queues: Iterable[str]) -> None:
        """Wake the workers of ``queues`` (when the current transaction commits)."""
        if self.vendor == "postgresql":
            with self.connection.cursor() as cursor:
                for queue in sorted(set(queues)):
                    self._notify(cursor, queue)

    def renew(self, leases: list[tuple[int, uuid.UUID]], lease: float) -> int:
        """Extend the given leases; return how many were renewed."""
        if not leases:
            return 0
        if self.vendor == "postgresql":
            params = self._params(lease, ids=[i for i, _ in leases], tokens=[t for _, t in leases])
        else:
            pairs = json.dumps([f"{i}:{t.hex}" for i, t in leases])
            params = self._params(lease, pairs=pairs)
        with self._executing() as cursor:
            cursor.execute(self.sql_renew, params)
            return int(cursor.rowcount)


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
