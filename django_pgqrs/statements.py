"""The engine's SQL: create, claim, checkpoint, finish, renew and recover workflows.

These run on every workflow and step, so they are raw SQL, one statement each where the database
allows, for three reasons:

1. One round trip: the ORM cannot ``UPDATE ... RETURNING`` nor ``INSERT ... SELECT ... ON
   CONFLICT``, so it would need a transaction of two or three statements where one suffices.
2. Fencing: a checkpoint is written only while the writer's lease token is still the row's, in the
   same statement that writes it, so a process that lost its lease cannot write.
3. Cost: compiling an ORM query takes longer than the database takes to run these.

Time: PostgreSQL reads its own clock so that the leases of processes on many machines agree. It
reads ``statement_timestamp()``, never ``now()``: inside a transaction (an atomic step, a caller's
``transaction.atomic()``) ``now()`` is the transaction's start, which would write a lease that has
already run out and an ``updated_at`` in the past. (``clock_timestamp()`` would do as well, but it
changes within a statement, so no index can be used with it.) SQLite, one machine, gets the time as
a parameter. A write that renews a lease never shortens it: ``GREATEST`` of the lease it has and
the one it would set.

SQLite cannot join an ``UPDATE`` to a ``WITH`` clause, so where PostgreSQL needs one statement,
SQLite gets a short list of statements run in one transaction (``Store`` runs each list as one).
"""

from __future__ import annotations

# Workers LISTEN on this channel; a commit that makes a workflow due NOTIFYs it with the queue.
CHANNEL = "django_pgqrs"

# What differs between the two dialects: the clock, and the casts PostgreSQL needs to know the
# type of a parameter that may be NULL (statements are prepared, so parameters are typed).
DIALECT = {
    "postgresql": {
        "now": "statement_timestamp()",
        "until": "statement_timestamp() + %(lease)s::float8 * interval '1 second'",
        "extend": (
            "GREATEST(lease_expires_at, statement_timestamp() + %(lease)s::float8 * interval "
            "'1 second')"
        ),
        "run_at": (
            "COALESCE(%(run_at)s::timestamptz, "
            "statement_timestamp() + %(delay)s::float8 * interval '1 second')"
        ),
        "due": "statement_timestamp() + %(ahead)s::float8 * interval '1 second'",
        "distinct": "IS DISTINCT FROM",
        "failed_mark": "jsonb_set(s.error, '{failed_workflow}', 'true'::jsonb)",
        "json": "::jsonb",
        "bigint": "::bigint",
        "timestamp": "::timestamptz",
        "uuid": "::uuid",
        "text": "::text",
        "bool": "::boolean",
    },
    "sqlite": {
        "now": "%(now)s",
        "until": "%(until)s",
        "extend": "max(coalesce(lease_expires_at, %(until)s), %(until)s)",
        "run_at": "%(run_at)s",
        "due": "%(due)s",
        "distinct": "IS NOT",
        "failed_mark": "json_set(s.error, '$.failed_workflow', json('true'))",
        "json": "",
        "bigint": "",
        "timestamp": "",
        "uuid": "",
        "text": "",
        "bool": "",
    },
}

# Each run that ends (finished, failed, suspended, given back, or taken back from a dead owner)
# leaves an entry in the workflow's history: its attempt number, the worker that ran it, when it
# ended, how, and its error, if any. The error column holds only the last failure; the history
# keeps earlier ones after a resume, and says which workers ran the workflow. At most
# HISTORY_LIMIT entries are kept, the newest.
HISTORY_LIMIT = 50


def _appended(vendor: str, outcome: str, error: str, extra: str = "") -> str:
    """The history with one more entry; ``outcome``, ``error`` and ``extra`` (more keys and
    values, each a pair of SQL expressions after a comma) are SQL. A history that is not a
    list (edited by hand, restored from elsewhere) starts again rather than fail the write."""
    t = "pgqrs_workflows"  # qualified: the reaper's UPDATE joins a list with an owner column
    if vendor == "postgresql":
        return f"""(CASE WHEN jsonb_typeof(history) IS DISTINCT FROM 'array' THEN '[]'::jsonb
                 WHEN jsonb_array_length(history) >= {HISTORY_LIMIT} THEN history - 0
                 ELSE history END)
        || jsonb_build_array(jsonb_build_object(
            'attempt', {t}.attempts, 'worker', {t}.lease_owner, 'ended_at', statement_timestamp(),
            'outcome', {outcome}{extra})
            || CASE WHEN {error} IS NULL THEN '{{}}'::jsonb
                    ELSE jsonb_build_object('error', {error}) END)"""
    entry = (
        f"json_object('attempt', {t}.attempts, 'worker', {t}.lease_owner, 'ended_at', %(now)s, "
        f"'outcome', {outcome}{extra})"
    )
    return f"""json_insert(
        CASE WHEN NOT json_valid(history) OR json_type(history) IS NOT 'array' THEN '[]'
             WHEN json_array_length(history) >= {HISTORY_LIMIT} THEN json_remove(history, '$[0]')
             ELSE history END,
        '$[#]',
        CASE WHEN {error} IS NULL THEN {entry}
             ELSE json_set({entry}, '$.error', json({error})) END)"""


for _vendor, _words in DIALECT.items():
    _json, _text = _words["json"], _words["text"]
    _words["log_end"] = "history = " + _appended(_vendor, f"%(status)s{_text}", f"%(error)s{_json}")
    _words["log_suspend"] = "history = " + _appended(_vendor, "'SLEEPING'", "NULL")
    _words["log_release"] = "history = " + _appended(_vendor, "'PENDING'", f"%(error)s{_json}")
    _words["log_reap"] = "history = " + _appended(_vendor, "'LOST'", "NULL")
    _words["log_cancel_running"] = (
        "history = CASE WHEN status = 'RUNNING' THEN "
        + _appended(_vendor, "'CANCELLED'", "NULL")
        + " ELSE history END"
    )
    _words["ids"] = (
        "= ANY(%(ids)s::bigint[])"
        if _vendor == "postgresql"
        else "IN (SELECT value FROM json_each(%(ids)s))"
    )
    # A claim that takes a RUNNING workflow over (its owner's lease expired, or ``force``) ends
    # that owner's run for it, and says so: ``took_over`` (see CLAIM).
    _words["lost_here"] = _appended(
        _vendor, "'LOST'", "NULL", f", 'taken_over_by', %(owner)s{_text}"
    )
    _words["took_over"] = (
        "COALESCE(history->-1->>'taken_over_by' IS NOT NULL "
        "AND (history->-1->>'attempt')::int = attempts - 1, false)"
        if _vendor == "postgresql"
        else "CASE WHEN json_valid(history) AND json_type(history) = 'array' THEN "
        "coalesce(json_extract(history, '$[#-1].taken_over_by') IS NOT NULL "
        "AND json_extract(history, '$[#-1].attempt') = attempts - 1, 0) ELSE 0 END"
    )


# A workflow is inserted RUNNING under the caller's lease (run it now, here) or PENDING (for
# a worker, or for the caller to run later). A repeated idempotency key inserts nothing.
INSERT = """
INSERT INTO pgqrs_workflows
    (name, status, input, created_at, updated_at, lease_owner, lease_token, lease_expires_at,
     attempts, recovery_attempts, queue, priority, run_at, idempotency_key, parent_id,
     deadline_at, started_at, attempted_at)
VALUES
    (%(name)s, %(status)s, %(input)s{json}, {now}, {now}, %(owner)s{text}, %(token)s{uuid},
     CASE WHEN %(token)s{uuid} IS NULL THEN NULL ELSE {until} END,
     CASE WHEN %(token)s{uuid} IS NULL THEN 0 ELSE 1 END, 0, %(queue)s, %(priority)s, {run_at},
     %(idempotency_key)s{text}, %(parent_id)s{bigint}, %(deadline_at)s{timestamp},
     CASE WHEN %(token)s{uuid} IS NULL THEN NULL ELSE {now} END,
     CASE WHEN %(token)s{uuid} IS NULL THEN NULL ELSE {now} END)
ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING workflow_id, created_at, run_at
"""

# NOTIFY is transactional: workers hear of the workflow when (if) the caller's transaction
# commits, never before its row is visible.
NOTIFYING = """
WITH inserted AS ({statement})
SELECT inserted.*, pg_notify('{channel}', %(queue)s) FROM inserted
"""

# Take the workflow if nobody holds a live lease on it, or if this process holds it under the
# token it remembers (a run here ended without giving it back: the database went away). Owner
# names are for people: two containers may share one. A workflow whose lease expired while
# RUNNING is a recovery: its owner died (or hung) and this process takes it over.
CLAIM = """
UPDATE pgqrs_workflows SET
    status = 'RUNNING', lease_owner = %(owner)s{text}, lease_token = %(token)s{uuid},
    lease_expires_at = {until}, updated_at = {now}, attempts = attempts + 1,
    started_at = COALESCE(started_at, {now}), attempted_at = {now},
    history = CASE WHEN status = 'RUNNING' AND lease_token {distinct} %(previous)s{uuid}
                   THEN {lost_here} ELSE history END,
    recovery_attempts = recovery_attempts
        + CASE WHEN status IN ('RUNNING', 'SLEEPING')
                    AND lease_token {distinct} %(previous)s{uuid} AND NOT %(force)s{bool}
               THEN 1 ELSE 0 END
WHERE workflow_id = %(id)s AND name = %(name)s AND (
    status IN ('PENDING', 'ERROR')
    OR (status = 'CANCELLED' AND %(force)s{bool})
    OR (status IN ('RUNNING', 'SLEEPING') AND (
        lease_expires_at IS NULL OR lease_expires_at < {now}
        OR lease_token = %(previous)s{uuid} OR %(force)s{bool})))
RETURNING workflow_id, name, input, attempts, recovery_attempts, parent_id, deadline_at,
    NULL AS run_at, {took_over} AS took_over
"""

# A worker takes the most urgent due workflow of its queues. SKIP LOCKED: workers never wait for
# each other, and never take the same row.
CLAIM_NEXT = {
    "postgresql": """
WITH next AS (
    SELECT workflow_id FROM pgqrs_workflows
    WHERE status IN ('PENDING', 'SLEEPING') AND queue = ANY(%(queues)s::text[])
        AND run_at <= {due}
    ORDER BY priority DESC, run_at, workflow_id
    LIMIT 1
    FOR UPDATE SKIP LOCKED)
UPDATE pgqrs_workflows w SET
    status = 'RUNNING', lease_owner = %(owner)s::text, lease_token = %(token)s::uuid,
    lease_expires_at = {until}, updated_at = statement_timestamp(), attempts = w.attempts + 1,
    started_at = COALESCE(w.started_at, statement_timestamp()),
    attempted_at = statement_timestamp()
FROM next WHERE w.workflow_id = next.workflow_id
RETURNING w.workflow_id, w.name, w.input, w.attempts, w.recovery_attempts, w.parent_id,
    w.deadline_at, w.run_at, false AS took_over
""",
    "sqlite": """
UPDATE pgqrs_workflows SET
    status = 'RUNNING', lease_owner = %(owner)s, lease_token = %(token)s,
    lease_expires_at = {until}, updated_at = {now}, attempts = attempts + 1,
    started_at = COALESCE(started_at, {now}), attempted_at = {now}
WHERE workflow_id = (
    SELECT workflow_id FROM pgqrs_workflows
    WHERE status IN ('PENDING', 'SLEEPING') AND queue IN (SELECT value FROM json_each(%(queues)s))
        AND run_at <= {due}
    ORDER BY priority DESC, run_at, workflow_id
    LIMIT 1)
RETURNING workflow_id, name, input, attempts, recovery_attempts, parent_id, deadline_at, run_at,
    0 AS took_over
""",
}

# PostgreSQL returns the saved checkpoints with the claim, so no step needs a SELECT. Outputs come
# as text, decoded only when a step is replayed: a value that no longer decodes fails that step's
# replay, not the claim.
WITH_STEPS = """
WITH claimed AS ({claim})
SELECT claimed.workflow_id, claimed.name, claimed.input::text, claimed.attempts,
    claimed.recovery_attempts, claimed.parent_id, claimed.deadline_at, claimed.run_at,
    claimed.took_over,
    (SELECT json_agg(json_build_array(s.step_id, s.position, s.status, s.output::text,
                                      s.attempts, s.error, s.args_digest)
                     ORDER BY s.position)::text
     FROM pgqrs_workflow_steps s WHERE s.workflow_id = claimed.workflow_id)
FROM claimed
"""

STEPS = """
SELECT step_id, position, status, output, attempts, error, args_digest
FROM pgqrs_workflow_steps WHERE workflow_id = %(id)s ORDER BY position
"""

# A checkpoint is written only while the lease token matches (the fence). The same statement
# renews the lease and moves updated_at, so progress is visible and a steadily advancing workflow
# needs no heartbeat; the row lock it takes orders it against a concurrent takeover. A SUCCESS
# checkpoint is never overwritten: the first writer wins.
_CHECKPOINT_INSERT = """
INSERT INTO pgqrs_workflow_steps
    (workflow_id, step_id, position, status, output, error, attempts, started_at, completed_at,
     args_digest)
{source}
ON CONFLICT (workflow_id, step_id) DO UPDATE SET
    position = excluded.position, status = excluded.status, output = excluded.output,
    error = excluded.error, attempts = excluded.attempts, started_at = excluded.started_at,
    completed_at = excluded.completed_at, args_digest = excluded.args_digest
WHERE pgqrs_workflow_steps.status <> 'SUCCESS'
RETURNING 1
"""

# A step run for the first time before saved steps that this run has not reached yet (a step
# added by a deploy) takes their place in the call order: they move one position down, in the
# same statement, so that positions stay the call order of the current code.
_SHIFT = """
UPDATE pgqrs_workflow_steps SET position = position + 1
WHERE workflow_id = {workflow} AND position >= %(position)s{int} AND step_id <> %(step_id)s{text}
"""

_PG_SOURCE = """SELECT workflow_id, %(step_id)s::text, %(position)s::int, %(status)s::text,
    %(output)s::jsonb, %(error)s::jsonb, %(attempts)s::int, %(started_at)s::timestamptz,
    %(completed_at)s::timestamptz, %(args_digest)s::text
FROM lease"""

_LEASE = """
UPDATE pgqrs_workflows SET updated_at = {now}, lease_expires_at = {extend}
WHERE workflow_id = %(id)s AND lease_token = %(token)s{uuid}
RETURNING workflow_id"""


def checkpoint(vendor: str, shift: bool) -> list[str]:
    """The statements of a checkpoint (one on PostgreSQL), moving later saved steps if ``shift``."""
    lease = _LEASE.format(**DIALECT[vendor])
    if vendor == "postgresql":
        ctes = [f"lease AS ({lease})"]
        if shift:
            moved = _SHIFT.format(
                workflow="(SELECT workflow_id FROM lease)", int="::int", text="::text"
            )
            ctes.append(f"shifted AS ({moved})")
        return ["WITH " + ",\n".join(ctes) + _CHECKPOINT_INSERT.format(source=_PG_SOURCE)]
    statements = [lease]
    if shift:
        statements.append(_SHIFT.format(workflow="%(id)s", int="", text=""))
    values = """VALUES (%(id)s, %(step_id)s, %(position)s, %(status)s, %(output)s, %(error)s,
    %(attempts)s, %(started_at)s, %(completed_at)s, %(args_digest)s)"""
    statements.append(_CHECKPOINT_INSERT.format(source=values))
    return statements


# Ending a run: set the final status and give the lease up, fenced by the token.
END = """
UPDATE pgqrs_workflows SET
    status = %(status)s{text}, result = %(result)s{json}, error = %(error)s{json},
    updated_at = {now},
    {log_end},
    lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
WHERE workflow_id = %(id)s AND lease_token = %(token)s{uuid}
RETURNING queue
"""

# Ending a run in ERROR also marks the checkpoint of the step the workflow failed on, if it failed
# on one: that step runs again on a resume, where any other saved step error (one the workflow
# went past) is raised again from its checkpoint. The mark stays with the step through later
# failures that are not a step's (a value that no longer decodes, say).
FAIL = {
    "postgresql": "WITH ended AS ("
    + END.replace("RETURNING queue", "RETURNING workflow_id, queue").strip()
    + """),
marked AS (
    UPDATE pgqrs_workflow_steps s SET error = {failed_mark}
    FROM ended WHERE s.workflow_id = ended.workflow_id AND s.step_id = %(failed_step)s::text
        AND s.status = 'ERROR')
SELECT queue FROM ended
""",
    "sqlite": """
UPDATE pgqrs_workflow_steps AS s SET error = {failed_mark}
WHERE s.workflow_id = %(id)s AND s.step_id = %(failed_step)s AND s.status = 'ERROR'
    AND EXISTS (SELECT 1 FROM pgqrs_workflows w
                WHERE w.workflow_id = %(id)s AND w.lease_token = %(token)s)
""",
}

# Giving the workflow back unfinished (the process is stopping, or cannot run it): anyone may
# take it once it is due again.
RELEASE = """
UPDATE pgqrs_workflows SET
    status = 'PENDING', updated_at = {now}, run_at = {run_at},
    error = COALESCE(%(error)s{json}, error),
    {log_release},
    lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
WHERE workflow_id = %(id)s AND lease_token = %(token)s{uuid}
RETURNING queue
"""

# Giving back a lease known only by its token: a claim whose reply was lost may have taken one.
RELEASE_TOKEN = """
UPDATE pgqrs_workflows SET
    status = 'PENDING', updated_at = {now}, run_at = {now},
    lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
WHERE status = 'RUNNING' AND lease_token = %(token)s{uuid}
RETURNING queue
"""

# Confirming one lease (before a step retries, or when the last confirmation is old): a fenced
# renewal that says whether the lease is still this process's.
TOUCH = """
UPDATE pgqrs_workflows SET lease_expires_at = {extend}
WHERE workflow_id = %(id)s AND lease_token = %(token)s{uuid}
RETURNING workflow_id
"""

# Cancellation of workflows that have not ended (operations.cancel locks them first): the run of
# a RUNNING one ends here, as far as the workflow is concerned, and its history says so.
CANCEL = """
UPDATE pgqrs_workflows SET
    {log_cancel_running},
    status = 'CANCELLED', updated_at = {now},
    lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
WHERE workflow_id {ids}
"""

# Recovery: workflows whose owner stopped renewing its lease go back to PENDING for any worker,
# or to ERROR once they have been taken over MAX_RECOVERY_ATTEMPTS times (a workflow that kills
# every process that runs it must not take the whole fleet down, one worker after another).
# The owner is read before the update clears it, for the log.
_REAP_SET = """
    status = CASE WHEN recovery_attempts >= %(max)s THEN 'ERROR' ELSE 'PENDING' END,
    error = CASE WHEN recovery_attempts >= %(max)s THEN %(poison)s{json} ELSE error END,
    recovery_attempts = CASE WHEN recovery_attempts >= %(max)s
                             THEN recovery_attempts ELSE recovery_attempts + 1 END,
    run_at = {now}, updated_at = {now},
    {log_reap},
    lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL"""

_EXPIRED = """
SELECT workflow_id, lease_owner FROM pgqrs_workflows
WHERE status IN ('RUNNING', 'SLEEPING') AND lease_expires_at < {now}
ORDER BY workflow_id LIMIT 100"""

# Is there anything for recovery to take back? (A burst worker waits out a hold only if so.)
ANY_EXPIRED = """
SELECT 1 FROM pgqrs_workflows
WHERE status IN ('RUNNING', 'SLEEPING') AND lease_expires_at < {now}
LIMIT 1
"""

REAP = {
    "postgresql": "WITH expired AS (" + _EXPIRED + " FOR UPDATE SKIP LOCKED)\n"
    "UPDATE pgqrs_workflows SET"
    + _REAP_SET
    + """
FROM expired WHERE pgqrs_workflows.workflow_id = expired.workflow_id
RETURNING pgqrs_workflows.workflow_id, name, status, queue, expired.lease_owner
""",
    "sqlite": _EXPIRED,
}

REAP_SQLITE_UPDATE = (
    "UPDATE pgqrs_workflows SET"
    + _REAP_SET
    + """
WHERE workflow_id {ids}
RETURNING workflow_id, name, status, queue
"""
)

# The heartbeat renews every lease this process holds, and learns which it has lost (their row
# no longer holds its token: cancelled, or taken over), so that their runs stop at their next
# step. SKIP LOCKED: a row locked by its owner's open transaction is being written right now; the
# renewal must not wait behind it (it would hold up every other lease this process holds).
RENEW = {
    "postgresql": """
WITH mine AS (
    SELECT * FROM unnest(%(ids)s::bigint[], %(tokens)s::uuid[]) AS m(workflow_id, token)),
renewed AS (
    UPDATE pgqrs_workflows SET lease_expires_at = {extend}
    WHERE workflow_id IN (
        SELECT w.workflow_id FROM pgqrs_workflows w JOIN mine USING (workflow_id)
        WHERE w.lease_token = mine.token
        FOR UPDATE OF w SKIP LOCKED)
    RETURNING workflow_id)
SELECT workflow_id, true FROM renewed
UNION ALL
SELECT mine.workflow_id, false FROM mine WHERE NOT EXISTS (
    SELECT 1 FROM pgqrs_workflows w
    WHERE w.workflow_id = mine.workflow_id AND w.lease_token = mine.token)
""",
    "sqlite": """
UPDATE pgqrs_workflows SET lease_expires_at = {extend}
WHERE workflow_id || ':' || lease_token IN (SELECT value FROM json_each(%(pairs)s))
RETURNING workflow_id, 1
""",
}


# --- Suspended workflows: sleeps, waits for events and for children ------------------------------

# A run that must wait (a sleep, an event, a child) gives its lease up and leaves the workflow
# SLEEPING, due at ``wake``: a worker takes it then, and its replay goes on from the wait.
SUSPEND = """
UPDATE pgqrs_workflows SET
    status = 'SLEEPING', run_at = %(wake)s{timestamp}, updated_at = {now},
    {log_suspend},
    lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
WHERE workflow_id = %(id)s AND lease_token = %(token)s{uuid}
RETURNING queue
"""

# What a suspended workflow waits for may have come while it was suspending: a sender that found
# it still RUNNING did not wake it. So, just after suspending, it wakes itself if what it waits
# for is there. (A sender locks the workflow's row until it commits; whichever commits second
# sees the other's write.)
WAKE_IF_EVENT = """
UPDATE pgqrs_workflows SET run_at = {now}
WHERE workflow_id = %(id)s AND status = 'SLEEPING' AND EXISTS (
    SELECT 1 FROM pgqrs_workflow_events e
    WHERE e.workflow_id = %(id)s AND e.name = %(name)s AND e.received_at IS NULL)
RETURNING queue
"""

WAKE_IF_CHILDREN = {
    "postgresql": """
UPDATE pgqrs_workflows SET run_at = statement_timestamp()
WHERE workflow_id = %(id)s AND status = 'SLEEPING' AND NOT EXISTS (
    SELECT 1 FROM pgqrs_workflows c
    WHERE c.workflow_id = ANY(%(children)s::bigint[])
        AND c.status NOT IN ('SUCCESS', 'ERROR', 'CANCELLED'))
RETURNING queue
""",
    "sqlite": """
UPDATE pgqrs_workflows SET run_at = %(now)s
WHERE workflow_id = %(id)s AND status = 'SLEEPING' AND NOT EXISTS (
    SELECT 1 FROM pgqrs_workflows c
    WHERE c.workflow_id IN (SELECT value FROM json_each(%(children)s))
        AND c.status NOT IN ('SUCCESS', 'ERROR', 'CANCELLED'))
RETURNING queue
""",
}

# A child that ends wakes its parent, if the parent is suspended (waiting for it, say), in the
# same transaction as its end. The parent's row is locked whatever its status, until the child's
# end commits: a parent suspending meanwhile waits for that, and then sees the child ended (see
# WAKE_IF_CHILDREN).
WAKE = """
UPDATE pgqrs_workflows SET run_at = CASE WHEN status = 'SLEEPING' THEN {now} ELSE run_at END
WHERE workflow_id = %(wake_id)s AND status NOT IN ('SUCCESS', 'ERROR', 'CANCELLED')
RETURNING status, queue
"""

# Sending an event: the workflow must not have succeeded nor been cancelled (one that failed may
# be resumed, and wait for it then); its row is locked until the sender commits
# (see WAKE_IF_EVENT), and a suspended one is made due now.
SEND = """
UPDATE pgqrs_workflows SET run_at = CASE WHEN status = 'SLEEPING' THEN {now} ELSE run_at END
WHERE workflow_id = %(id)s AND status NOT IN ('SUCCESS', 'CANCELLED')
RETURNING status, queue
"""

SEND_INSERT = """
INSERT INTO pgqrs_workflow_events (workflow_id, name, payload, created_at)
VALUES (%(id)s, %(name)s, %(payload)s{json}, {now})
RETURNING id
"""

# Receiving the oldest event of a name not yet received; the caller checkpoints it in the same
# transaction, so an event is received once, and a replay gets the same one.
RECEIVE = {
    "postgresql": """
UPDATE pgqrs_workflow_events e SET received_at = statement_timestamp(), received_by = %(step_id)s
WHERE e.id = (
    SELECT id FROM pgqrs_workflow_events
    WHERE workflow_id = %(id)s AND name = %(name)s AND received_at IS NULL
    ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING e.payload::text
""",
    "sqlite": """
UPDATE pgqrs_workflow_events SET received_at = %(now)s, received_by = %(step_id)s
WHERE id = (
    SELECT id FROM pgqrs_workflow_events
    WHERE workflow_id = %(id)s AND name = %(name)s AND received_at IS NULL
    ORDER BY id LIMIT 1)
RETURNING payload
""",
}

# How children ended: their status, result (as stored) and error.
OUTCOMES = {
    "postgresql": """
SELECT workflow_id, status, result::text, error::text, parent_id FROM pgqrs_workflows
WHERE workflow_id = ANY(%(children)s::bigint[])
""",
    "sqlite": """
SELECT workflow_id, status, result, error, parent_id FROM pgqrs_workflows
WHERE workflow_id IN (SELECT value FROM json_each(%(children)s))
""",
}


# Forking: a new PENDING workflow from another's name, input and queue, with that one's
# checkpoints before a position (step errors kept, but none marked as the one to run again).
_FORK_WORKFLOW = """
INSERT INTO pgqrs_workflows
    (name, status, input, created_at, updated_at, attempts, recovery_attempts, queue, priority,
     run_at, forked_from_id, deadline_at)
SELECT name, 'PENDING', input, {now}, {now}, 0, 0, queue, priority, {run_at}, workflow_id,
    %(deadline_at)s{timestamp}
FROM pgqrs_workflows WHERE workflow_id = %(id)s
RETURNING workflow_id, queue"""

_FORK_STEPS = """
INSERT INTO pgqrs_workflow_steps
    (workflow_id, step_id, position, status, output, error, attempts, started_at, completed_at,
     args_digest)
SELECT {fork}, s.step_id, s.position, s.status, s.output, {unmarked}, s.attempts,
    s.started_at, s.completed_at, s.args_digest
FROM pgqrs_workflow_steps s {source}
WHERE s.workflow_id = %(id)s AND s.position < %(position)s"""

FORK = {
    "postgresql": "WITH fork AS ("
    + _FORK_WORKFLOW
    + "),\nkept AS ("
    + _FORK_STEPS.format(
        fork="fork.workflow_id", unmarked="s.error - 'failed_workflow'", source=", fork"
    )
    + ")\nSELECT workflow_id, queue FROM fork",
    "sqlite": _FORK_WORKFLOW,
}
FORK_STEPS_SQLITE = _FORK_STEPS.format(
    fork="%(fork)s", unmarked="json_remove(s.error, '$.failed_workflow')", source=""
)
