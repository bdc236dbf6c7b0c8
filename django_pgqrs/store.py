"""The engine's statements on the workflow tables: create, claim, checkpoint, finish.

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

import datetime
import json
import uuid
from dataclasses import dataclass
from typing import Any

from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.utils import CursorWrapper
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from .codec import loads
from .conf import conf
from .models import WorkflowStatus

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

_INSERT = """
INSERT INTO pgqrs_workflows
    (name, status, input, created_at, updated_at, lease_owner, lease_token, lease_expires_at,
     attempts, recovery_attempts, queue, priority, run_at, idempotency_key, parent_id)
VALUES
    (%(name)s, %(status)s, %(input)s{json}, {now}, {now}, %(owner)s{text}, %(token)s{uuid},
     CASE WHEN %(token)s{uuid} IS NULL THEN NULL ELSE {until} END,
     CASE WHEN %(token)s{uuid} IS NULL THEN 0 ELSE 1 END, 0, %(queue)s, %(priority)s, {run_at},
     %(idempotency_key)s{text}, %(parent_id)s)
RETURNING workflow_id, created_at, run_at
"""

# Take the workflow if nobody holds a live lease on it. A workflow whose lease expired while
# RUNNING is a recovery: its owner died (or hung) and this process takes it over.
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
RETURNING workflow_id, input, attempts, recovery_attempts
"""

# PostgreSQL returns the saved checkpoints with the claim, so no step needs a SELECT.
_CLAIM_WITH_STEPS = """
WITH claimed AS ({claim})
SELECT claimed.workflow_id, claimed.input::text, claimed.attempts, claimed.recovery_attempts,
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
"""

# Giving the workflow back unfinished (the process is stopping): anyone may take it at once.
_RELEASE = """
UPDATE pgqrs_workflows SET
    status = 'PENDING', updated_at = {now}, run_at = {now},
    lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
WHERE workflow_id = %(id)s AND lease_token = %(token)s{uuid}
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
    """What a successful claim returns: the saved input and the saved checkpoints."""

    workflow_id: int
    input_text: str | None
    attempts: int
    recovery_attempts: int
    # step_id -> (position, status, decoded output, attempts)
    steps: dict[str, tuple[int, str, Any, int]]


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
        clock = _DIALECT[self.vendor]
        self.sql_insert = _INSERT.format(**clock)
        claim = _CLAIM.format(**clock)
        self.sql_claim = (
            _CLAIM_WITH_STEPS.format(claim=claim) if self.vendor == "postgresql" else claim
        )
        self.sql_checkpoint = _CHECKPOINT[self.vendor].format(**clock)
        self.sql_end = _END.format(**clock)
        self.sql_release = _RELEASE.format(**clock)
        self.sql_renew = _RENEW[self.vendor].format(**clock)

    @property
    def connection(self) -> BaseDatabaseWrapper:
        return connections[self.alias]

    def cursor(self) -> CursorWrapper:
        """A cursor of Django's connection; on PostgreSQL one whose statements are prepared.

        Django's own cursors bind parameters on the client, so the server parses and plans every
        statement anew; these statements run on every step, and preparing them once per
        connection saves a fifth of each one's cost. The cursor is still wrapped by Django, so
        query logging and ``connection.execute_wrapper`` see it.
        """
        connection = self.connection
        if self.vendor != "postgresql" or not conf.PREPARED_STATEMENTS:
            return connection.cursor()
        connection.close_if_health_check_failed()
        connection.ensure_connection()
        connection.validate_thread_sharing()
        raw: Any = _PreparedCursor(connection.connection)
        if connection.queries_logged:
            return connection.make_debug_cursor(raw)
        return connection.make_cursor(raw)

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

    def token_param(self, token: uuid.UUID | None) -> Any:
        # SQLite keeps Django's UUIDField as 32 hex digits.
        if token is None or self.vendor == "postgresql":
            return token
        return token.hex

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
    ) -> tuple[int, datetime.datetime, datetime.datetime]:
        """Insert a workflow, RUNNING under the given lease if ``token`` is set, else PENDING."""
        status = WorkflowStatus.PENDING if token is None else WorkflowStatus.RUNNING
        params = self._params(
            lease,
            name=name,
            status=str(status),
            input=input_text,
            owner=owner,
            token=self.token_param(token),
            delay=delay,
            queue=queue,
            priority=priority,
            idempotency_key=idempotency_key,
            parent_id=parent_id,
        )
        with self.cursor() as cursor:
            cursor.execute(self.sql_insert, params)
            workflow_id, created_at, run_at = cursor.fetchone()
        return workflow_id, self._datetime(created_at), self._datetime(run_at)

    def _datetime(self, value: Any) -> datetime.datetime:
        # SQLite hands timestamps back as text from raw SQL; the ORM would convert them.
        if isinstance(value, str):
            parsed = parse_datetime(value)
            assert parsed is not None
            return parsed.replace(tzinfo=datetime.UTC) if timezone.is_naive(parsed) else parsed
        return value  # type: ignore[no-any-return]

    def claim(
        self, workflow_id: int, name: str, owner: str, token: uuid.UUID, lease: float, force: bool
    ) -> Claimed | None:
        """Take the lease on a workflow; None if it is missing, finished or owned by another."""
        params = self._params(
            lease,
            id=workflow_id,
            name=name,
            owner=owner,
            token=self.token_param(token),
            force=force,
        )
        with self.cursor() as cursor:
            cursor.execute(self.sql_claim, params)
            row = cursor.fetchone()
            if row is None:
                return None
            if self.vendor == "postgresql":
                steps = {r[0]: (r[1], r[2], r[3], r[4]) for r in loads(row[4]) or ()}
            else:
                cursor.execute(_STEPS, {"id": workflow_id})
                steps = {r[0]: (r[1], r[2], loads(r[3]), r[4]) for r in cursor.fetchall()}
        return Claimed(row[0], row[1], row[2], row[3], steps)

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
            token=self.token_param(token),
            step_id=step_id,
            position=position,
            status=status,
            output=output,
            error=error,
            attempts=attempts,
            started_at=adapt(started_at),
            completed_at=adapt(completed_at),
        )
        with self.cursor() as cursor:
            cursor.execute(self.sql_checkpoint, params)
            return bool(cursor.fetchone() is not None)

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
            0,
            id=workflow_id,
            token=self.token_param(token),
            status=status,
            result=result,
            error=error,
        )
        with self.cursor() as cursor:
            cursor.execute(self.sql_end, params)
            return bool(cursor.rowcount == 1)

    def release(self, workflow_id: int, token: uuid.UUID) -> bool:
        """Give an unfinished workflow back (PENDING, no lease) so another process takes it."""
        params = self._params(0, id=workflow_id, token=self.token_param(token))
        with self.cursor() as cursor:
            cursor.execute(self.sql_release, params)
            return bool(cursor.rowcount == 1)

    def renew(self, leases: list[tuple[int, uuid.UUID]], lease: float) -> int:
        """Extend the given leases; return how many were renewed."""
        if not leases:
            return 0
        if self.vendor == "postgresql":
            params = self._params(lease, ids=[i for i, _ in leases], tokens=[t for _, t in leases])
        else:
            pairs = json.dumps([f"{i}:{t.hex}" for i, t in leases])
            params = self._params(lease, pairs=pairs)
        with self.cursor() as cursor:
            cursor.execute(self.sql_renew, params)
            return int(cursor.rowcount)


_stores: dict[str, Store] = {}


def store_for(alias: str) -> Store:
    """Return the (cached) Store of a database alias."""
    store = _stores.get(alias)
    if store is None:
        store = _stores[alias] = Store(alias)
    return store
