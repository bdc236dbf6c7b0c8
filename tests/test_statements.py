"""The speed budget, as statements sent to the database: one per step, none to read.

On PostgreSQL every statement is counted. On SQLite each write runs in a transaction of its own,
so the writes are counted there. The tests commit for real (inside a test case's transaction,
step bodies run in savepoints, which production does not pay for).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.db import connection

from django_pgqrs import create_workflow
from tests import workflows

pytestmark = pytest.mark.django_db(transaction=True)

TRANSACTION_CONTROL = {"BEGIN", "SAVEPOINT", "RELEASE", "ROLLBACK", "COMMIT"}


class Statements(list[str]):
    """The SQL of every statement sent through Django's connection, in order."""

    def _first_words(self) -> list[tuple[str, str]]:
        return [(sql.split(None, 1)[0].upper(), sql) for sql in self]

    @property
    def reads(self) -> list[str]:
        return [sql for word, sql in self._first_words() if word == "SELECT"]

    @property
    def writes(self) -> list[str]:
        """One per write: its BEGIN on SQLite, where a write may take two statements (in one
        transaction); the statement itself on PostgreSQL."""
        if connection.vendor == "sqlite":
            return [sql for word, sql in self._first_words() if word == "BEGIN"]
        return [
            sql
            for word, sql in self._first_words()
            if word != "SELECT" and word not in TRANSACTION_CONTROL
        ]


@contextmanager
def counting() -> Iterator[Statements]:
    statements = Statements()

    def record(execute: Callable[..., Any], sql: str, *args: Any) -> Any:
        statements.append(sql.strip())
        return execute(sql, *args)

    with connection.execute_wrapper(record):
        yield statements


def fail_then_count_the_resume(replayed: int) -> Statements:
    """Run ``many_then_flaky`` until its last step fails, then count the statements of a resume."""
    workflows.runs.clear()
    workflows.failures.append(ValueError("first run fails"))
    ctx = create_workflow("many_then_flaky", replayed)
    with pytest.raises(ValueError):
        workflows.many_then_flaky(ctx, replayed)
    with counting() as statements:
        assert workflows.many_then_flaky(ctx, replayed) == replayed
    assert workflows.runs == {"add_one": replayed, "flaky": 2}
    return statements


# --- PostgreSQL: every statement ----------------------------------------------------------------


def test_a_three_step_run_sends_five_statements_none_a_select(postgres_only):
    with counting() as statements:
        assert workflows.add_three.run(1) == 4
    assert len(statements) == 5
    assert statements.reads == []


def test_create_workflow_then_call_sends_six_statements(postgres_only):
    with counting() as statements:
        ctx = create_workflow("add_three", 1)
        assert workflows.add_three(ctx, 1) == 4
    assert len(statements) == 6


def test_each_extra_step_sends_exactly_one_more_statement(postgres_only):
    totals = []
    for count in range(1, 6):
        with counting() as statements:
            assert workflows.loop.run(count) == list(range(1, count + 1))
        totals.append(len(statements))
    assert totals == [3, 4, 5, 6, 7]


def test_a_replayed_step_sends_no_statement_of_its_own(postgres_only):
    """Claim, the rerun step's checkpoint, end: the same three however many steps are replayed."""
    assert len(fail_then_count_the_resume(1)) == 3
    assert len(fail_then_count_the_resume(6)) == 3


# --- Both databases: writes ---------------------------------------------------------------------


def test_a_three_step_run_writes_five_times_and_reads_nothing():
    with counting() as statements:
        assert workflows.add_three.run(1) == 4
    assert len(statements.writes) == 5
    assert statements.reads == []


def test_create_workflow_then_call_writes_six_times():
    with counting() as statements:
        ctx = create_workflow("add_three", 1)
        assert workflows.add_three(ctx, 1) == 4
    assert len(statements.writes) == 6


def test_creating_a_workflow_writes_once():
    with counting() as statements:
        create_workflow("add_three", 1)
    assert len(statements.writes) == 1
    assert statements.reads == []


def test_each_extra_step_writes_exactly_once_more():
    totals = []
    for count in range(1, 6):
        with counting() as statements:
            workflows.loop.run(count)
        totals.append(len(statements.writes))
        assert statements.reads == []
    assert totals == [3, 4, 5, 6, 7]


def test_a_replayed_step_writes_nothing():
    one, six = fail_then_count_the_resume(1), fail_then_count_the_resume(6)
    assert len(one.writes) == len(six.writes) == 3
    assert len(one.reads) == len(six.reads) <= 1  # SQLite reads the checkpoints once
