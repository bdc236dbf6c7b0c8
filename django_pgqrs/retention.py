"""Retention: delete old finished workflows, with their steps and events, in short batches.

A workflow is pruned when all of these hold:

- its status is one of those asked for (finished ones only: SUCCESS, ERROR, CANCELLED), and its
  ``updated_at`` (its end, for a finished workflow) is older than the cutoff;
- it has no parent, or its parent is pruned with it: a child goes with its parent, never before
  it, since a parent that is not over (or may be resumed) needs its children's outcomes;
- none of its children is unfinished (their end would look for it).

Each batch is one short transaction: it takes up to ``batch_size`` such workflows without a
parent (locking them, and passing over rows another transaction holds), adds their children
that qualify, locks every child of them and reads it as it is now (on PostgreSQL each statement
reads its own snapshot: a child requeued meanwhile would go unseen), leaves out for a later run
a tree in which one has an unfinished child, then deletes their steps and events, sets
``parent_id`` and ``forked_from_id`` to NULL where other workflows refer to them (Django's
``on_delete=SET_NULL``, by hand), and deletes them. Raw SQL: Django's collector would load
every row, and its steps, into memory first. Idempotency keys of pruned workflows are free
again, since their rows are gone.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from django.db import OperationalError, connections, transaction
from django.db.backends.utils import CursorWrapper
from django.db.transaction import TransactionManagementError
from django.utils import timezone

from .models import FINISHED, UNFINISHED, WorkflowStatus
from .store import in_test_case_only, workflows_alias

# ERROR workflows are kept unless asked for: they may still be resumed or forked.
DEFAULT_STATUSES = (WorkflowStatus.SUCCESS, WorkflowStatus.CANCELLED)

_WORKFLOWS = "pgqrs_workflows"
_STEPS = "pgqrs_workflow_steps"
_EVENTS = "pgqrs_workflow_events"


@dataclasses.dataclass
class PruneCounts:
    """Rows pruned (or, in a dry run, that would be)."""

    workflows: int = 0
    steps: int = 0
    events: int = 0

    def add(self, other: PruneCounts) -> None:
        self.workflows += other.workflows
        self.steps += other.steps
        self.events += other.events


Progress = Callable[[PruneCounts, PruneCounts], None]


def cutoff_of(older_than: datetime.timedelta | datetime.datetime) -> datetime.datetime:
    """The time before which workflows are old: ``older_than`` ago, or that moment itself."""
    if isinstance(older_than, datetime.timedelta):
        return timezone.now() - older_than
    if timezone.is_naive(older_than):
        raise ValueError(f"older_than must be an aware datetime, not {older_than!r}.")
    return older_than


def prune(
    older_than: datetime.timedelta | datetime.datetime,
    statuses: Iterable[str] = DEFAULT_STATUSES,
    batch_size: int = 10_000,
    dry_run: bool = False,
    *,
    progress: Progress | None = None,
    using: str | None = None,
) -> PruneCounts:
    """Delete finished workflows last updated before ``older_than`` (a ``timedelta`` ago, or an
    aware datetime), with their steps and events; return how many rows went.

    ``statuses``: which finished ones (default SUCCESS and CANCELLED). Works in batches of about
    ``batch_size`` workflows (a batch takes along the children of its workflows that qualify),
    each its own transaction, so it must not be called inside ``transaction.atomic()``.
    ``progress(batch, total)`` is called after each batch is committed. ``dry_run``: count the
    same batches, delete nothing.
    """
    wanted = sorted({str(status) for status in statuses})
    if not wanted or not set(wanted) <= set(FINISHED):
        raise ValueError(
            f"statuses must be finished ones ({', '.join(FINISHED)}), not {wanted or 'none'}."
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}.")
    alias = using or workflows_alias()
    _refuse_in_transaction(alias)
    sql = _Statements(connections[alias].vendor, dry_run)
    params: dict[str, Any] = {
        "statuses": sql.array(wanted),
        "cutoff": connections[alias].ops.adapt_datetimefield_value(cutoff_of(older_than)),
        "limit": batch_size,
    }
    total = PruneCounts()
    after = 0
    deadlocks = 0
    while True:
        try:
            with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
                roots = _column(cursor, sql.roots, {**params, "after": after})
                if not roots:
                    break
                trees = _descendants(cursor, sql, params, roots)
                if sql.lock_all_children:
                    trees = _without_unfinished_children(cursor, sql, trees)
                ids = [pk for tree in trees.values() for pk in tree]
                if not ids:
                    batch = PruneCounts()
                else:
                    batch = _count(cursor, sql, ids) if dry_run else _delete(cursor, sql, ids)
        except OperationalError as exc:
            # Two prunes at once may each hold a row the other's unlinking needs; the one
            # PostgreSQL picks rolls back, and takes its batch again.
            if getattr(exc.__cause__, "sqlstate", None) != "40P01" or deadlocks >= 5:
                raise
            deadlocks += 1
            continue
        after = roots[-1]
        total.add(batch)
        if progress is not None and batch.workflows:
            progress(batch, total)
    return total


def _refuse_in_transaction(alias: str) -> None:
    # A test case's own blocks are allowed: its rows are the test's.
    if connections[alias].in_atomic_block and not in_test_case_only(alias):
        raise TransactionManagementError(
            f"prune() was called inside a transaction on database {alias!r}: it would delete "
            f"every batch in that one transaction, holding its locks to the end. Call it "
            f"outside transaction.atomic(); each batch is a transaction of its own."
        )


def _descendants(
    cursor: CursorWrapper, sql: _Statements, params: dict[str, Any], roots: list[int]
) -> dict[int, list[int]]:
    """Each root with the children that qualify, and theirs, and so on down (the root first)."""
    trees = {root: [root] for root in roots}
    root_of = {root: root for root in roots}
    level = roots
    while level:
        cursor.execute(sql.children, {**params, "ids": sql.array(level)})
        level = []
        for child, parent in cursor.fetchall():
            root_of[int(child)] = root_of[int(parent)]
            trees[root_of[int(parent)]].append(int(child))
            level.append(int(child))
    return trees


def _without_unfinished_children(
    cursor: CursorWrapper, sql: _Statements, trees: dict[int, list[int]]
) -> dict[int, list[int]]:
    """The trees none of whose workflows has an unfinished child, read once every child of the
    batch is locked: a child requeued (or resumed) since the batch was chosen is seen as it is
    now, and one being changed is waited for. The others are left for a later pass."""
    ids = [pk for tree in trees.values() for pk in tree]
    cursor.execute(sql.lock_all_children, {"ids": sql.array(ids)})
    busy = {int(parent) for parent, status in cursor.fetchall() if status not in FINISHED}
    return {root: tree for root, tree in trees.items() if not busy.intersection(tree)}


def _count(cursor: CursorWrapper, sql: _Statements, ids: list[int]) -> PruneCounts:
    params = {"ids": sql.array(ids)}
    cursor.execute(sql.count_steps, params)
    steps = cursor.fetchone()[0]
    cursor.execute(sql.count_events, params)
    events = cursor.fetchone()[0]
    return PruneCounts(len(ids), int(steps), int(events))


def _delete(cursor: CursorWrapper, sql: _Statements, ids: list[int]) -> PruneCounts:
    params = {"ids": sql.array(ids)}
    cursor.execute(sql.delete_steps, params)
    steps = cursor.rowcount
    cursor.execute(sql.delete_events, params)
    events = cursor.rowcount
    # What on_delete=SET_NULL does in the ORM; the rows that go are left as they are.
    cursor.execute(sql.unlink_children, params)
    cursor.execute(sql.unlink_forks, params)
    cursor.execute(sql.delete_workflows, params)
    return PruneCounts(cursor.rowcount, steps, events)


def _column(cursor: CursorWrapper, statement: str, params: dict[str, Any]) -> list[int]:
    cursor.execute(statement, params)
    return [int(row[0]) for row in cursor.fetchall()]


class _Statements:
    """The SQL of a pruning pass, in the database's dialect."""

    def __init__(self, vendor: str, dry_run: bool) -> None:
        self.vendor = vendor
        postgres = vendor == "postgresql"
        # Row locks, where there are any: a workflow taken for this batch cannot be resumed or
        # forked meanwhile, and one that changed before the lock is checked again. A parent that
        # another transaction holds is passed over (the next run takes it); its children are
        # waited for. SQLite's write transaction holds the whole database anyway.
        lock_roots = " FOR UPDATE OF w SKIP LOCKED" if postgres and not dry_run else ""
        lock_children = " FOR UPDATE OF w" if postgres and not dry_run else ""
        unfinished = ", ".join(f"'{status}'" for status in UNFINISHED)
        # OFFSET 0 keeps PostgreSQL from making the NOT EXISTS a join, which would read every
        # child in the table for each batch: one index probe per candidate is far cheaper.
        offset = " OFFSET 0" if postgres else ""
        qualifies = f"""
            w.status {self._in("statuses", "text")}
            AND w.updated_at < %(cutoff)s
            AND NOT EXISTS (
                SELECT 1 FROM {_WORKFLOWS} c
                WHERE c.parent_id = w.workflow_id AND c.status IN ({unfinished}){offset}
            )"""
        self.roots = f"""
            SELECT w.workflow_id FROM {_WORKFLOWS} w
            WHERE w.workflow_id > %(after)s AND w.parent_id IS NULL AND {qualifies}
            ORDER BY w.workflow_id
            LIMIT %(limit)s{lock_roots}"""
        self.children = f"""
            SELECT w.workflow_id, w.parent_id FROM {_WORKFLOWS} w
            WHERE w.parent_id {self._in("ids", "bigint")} AND {qualifies}
            ORDER BY w.workflow_id{lock_children}"""
        # Every child of the batch, as it is now (PostgreSQL): the statements above each read
        # a snapshot of their own start, so a child may have changed since its parent was
        # chosen. Locking waits for a change under way; what it reads is the row committed.
        self.lock_all_children = (
            f"""
            SELECT w.parent_id, w.status FROM {_WORKFLOWS} w
            WHERE w.parent_id {self._in("ids", "bigint")}
            ORDER BY w.workflow_id FOR SHARE OF w"""
            if postgres and not dry_run
            else ""
        )
        ids = self._in("ids", "bigint")
        self.count_steps = f"SELECT count(*) FROM {_STEPS} WHERE workflow_id {ids}"
        self.count_events = f"SELECT count(*) FROM {_EVENTS} WHERE workflow_id {ids}"
        self.delete_steps = f"DELETE FROM {_STEPS} WHERE workflow_id {ids}"
        self.delete_events = f"DELETE FROM {_EVENTS} WHERE workflow_id {ids}"
        self.unlink_children = f"""
            UPDATE {_WORKFLOWS} SET parent_id = NULL
            WHERE parent_id {ids} AND NOT (workflow_id {ids})"""
        self.unlink_forks = f"""
            UPDATE {_WORKFLOWS} SET forked_from_id = NULL
            WHERE forked_from_id {ids} AND NOT (workflow_id {ids})"""
        self.delete_workflows = f"DELETE FROM {_WORKFLOWS} WHERE workflow_id {ids}"

    def _in(self, name: str, kind: str) -> str:
        if self.vendor == "postgresql":
            return f"= ANY(%({name})s::{kind}[])"
        return f"IN (SELECT value FROM json_each(%({name})s))"

    def array(self, values: Sequence[int | str]) -> Any:
        """A list parameter: an array for PostgreSQL, JSON text for SQLite's json_each."""
        return list(values) if self.vendor == "postgresql" else json.dumps(list(values))
