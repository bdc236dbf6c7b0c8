"""What the admin's Resume, Cancel, Fork and Delete do to a selection, workflow by workflow.

A selection may be "all 50,000 ERROR workflows": it is read in batches of ``BATCH`` ids (newest
first, by primary key), never loaded whole. Each batch is handed to ``operations`` (or deleted),
and every workflow acted on gets an admin log entry saying who did what. The outcome says which
workflows were acted on and why the others were skipped: "3 resumed: 12, 14, 19; 1 skipped: 20
already SUCCESS".
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.db import connections, transaction
from django.db.models import CharField, QuerySet, Value
from django.db.models.fields.json import KT

from . import operations
from .exceptions import PgqrsError
from .models import FINISHED, UNFINISHED, Workflow

BATCH = 1000
# The confirmation page counts the selection's statuses up to this many workflows.
SUMMARY_UP_TO = 100_000
SHOWN_IDS = 20


@dataclass(frozen=True)
class Operation:
    name: str
    title: str  # "Resume"
    done: str  # "resumed"
    acts_on: tuple[str, ...]  # the statuses it applies to; the others are skipped
    skipped_as: str  # why the others are skipped: "already {status}" -> "20 already SUCCESS"
    explanation: str


OPERATIONS = {
    "resume": Operation(
        "resume",
        "Resume",
        "resumed",
        ("ERROR", "PENDING"),
        "already {status}",
        "Failed (or pending) workflows go back to their queue, and a worker resumes each from its "
        "last checkpoint: finished steps are not run again, the failed step is.",
    ),
    "cancel": Operation(
        "cancel",
        "Cancel",
        "cancelled",
        ("PENDING", "RUNNING", "SLEEPING", "ERROR"),
        "already {status}",
        "Unfinished (and failed) workflows, with their unfinished children, become CANCELLED and "
        "never run again; a process running one stops at its next step.",
    ),
    "fork": Operation(
        "fork",
        "Fork",
        "forked",
        ("ERROR", "CANCELLED"),
        "{status}, not failed",
        "A new workflow is started from each failed workflow's checkpoints before the step it "
        "failed on, and a worker runs the rest with the current code. The originals stay as "
        "they are.",
    ),
    "delete": Operation(
        "delete",
        "Delete",
        "deleted",
        FINISHED,
        "still {status}",
        "Finished workflows are deleted with their steps and events. Unfinished ones (PENDING, "
        "RUNNING, SLEEPING) are kept: cancel them first.",
    ),
}


@dataclass
class Outcome:
    """What an operation did: the workflows acted on, and the others with the reason."""

    operation: Operation
    done: list[int] = field(default_factory=list)
    skipped: dict[str, list[int]] = field(default_factory=dict)
    # Cancel: the children cancelled with their parents. Fork: original id -> the fork's id.
    children: list[int] = field(default_factory=list)
    forks: dict[int, int] = field(default_factory=dict)

    def skip(self, pk: int, reason: str) -> None:
        self.skipped.setdefault(reason, []).append(pk)

    def skipped_ids(self) -> list[int]:
        return [pk for ids in self.skipped.values() for pk in ids]

    def message(self) -> str:
        """``3 resumed: 12, 14, 19; 1 skipped: 20 already SUCCESS``."""
        if self.forks:
            shown = [f"{pk} as {self.forks[pk]}" for pk in self.done[:SHOWN_IDS]]
            parts = [f"{len(self.done)} {self.operation.done}: {_more(shown, len(self.done))}"]
        else:
            parts = [f"{len(self.done)} {self.operation.done}" + _ids(self.done)]
        if self.children:
            parts[0] += f" (and {len(self.children)} of their children{_ids(self.children)})"
        skipped = sum(len(ids) for ids in self.skipped.values())
        if skipped:
            reasons = ", ".join(
                f"{_more([str(pk) for pk in ids[:SHOWN_IDS]], len(ids))} {reason}"
                for reason, ids in self.skipped.items()
            )
            parts.append(f"{skipped} skipped: {reasons}")
        return "; ".join(parts)


def _ids(ids: list[int]) -> str:
    return f": {_more([str(pk) for pk in ids[:SHOWN_IDS]], len(ids))}" if ids else ""


def _more(shown: list[str], total: int) -> str:
    text = ", ".join(shown)
    return f"{text} and {total - len(shown):,} more" if total > len(shown) else text


Row = tuple[int, str, str, str | None]


def batches(queryset: QuerySet[Workflow], failed_step: bool) -> Iterator[list[Row]]:
    """The selection as (id, name, status, failed step) rows, ``BATCH`` at a time, newest
    first, read by primary key ranges (not offsets): rows whose status an earlier batch
    changed are neither skipped nor read twice. The failed step is read only if asked for
    (reading it reads the whole error, traceback included)."""
    step = KT("error__step") if failed_step else Value(None, output_field=CharField())
    rows = (
        queryset.order_by("-pk")
        .annotate(failed_step=step)
        .values_list("pk", "name", "status", "failed_step")
    )
    last = None
    while True:
        batch: list[Row] = list((rows if last is None else rows.filter(pk__lt=last))[:BATCH])
        if not batch:
            return
        yield batch
        last = batch[-1][0]


def perform(name: str, queryset: QuerySet[Workflow], user_id: int) -> Outcome:
    """Apply operation ``name`` to every workflow of ``queryset``; log what was done."""
    operation = OPERATIONS[name]
    outcome = Outcome(operation)
    for batch in batches(queryset, failed_step=name == "fork"):
        acting = []
        for pk, _, status, step in batch:
            if status not in operation.acts_on:
                outcome.skip(pk, operation.skipped_as.format(status=status))
            elif name == "fork" and not step:
                outcome.skip(pk, "did not fail on a step")
            else:
                acting.append(pk)
        names = {pk: workflow_name for pk, workflow_name, _, _ in batch}
        statuses = {pk: status for pk, _, status, _ in batch}
        done, children = _act(name, acting, outcome, queryset.db)
        explained = set(outcome.skipped_ids())
        for pk in sorted(set(acting) - set(done) - explained, reverse=True):
            outcome.skip(pk, "changed meanwhile")
        outcome.done += done
        outcome.children += children
        _log(name, done, children, names, statuses, outcome, user_id, queryset.db)
    return outcome


def _act(name: str, ids: list[int], outcome: Outcome, alias: str) -> tuple[list[int], list[int]]:
    """Do it; return the ids done, and the children a cancel reached besides."""
    if not ids:
        return [], []
    if name == "resume":
        resumed = set(operations.requeue(ids))
        return [pk for pk in ids if pk in resumed], []
    if name == "cancel":
        cancelled = operations.cancel(ids)
        done = set(cancelled)
        wanted = set(ids)
        return [pk for pk in ids if pk in done], [pk for pk in cancelled if pk not in wanted]
    if name == "fork":
        forked = []
        for pk in ids:
            try:
                with transaction.atomic(using=alias):
                    still = (
                        Workflow.objects.using(alias)
                        .select_for_update()
                        .filter(pk=pk, status__in=outcome.operation.acts_on)
                    )
                    if not still.exists():
                        outcome.skip(pk, "changed meanwhile")
                        continue
                    outcome.forks[pk] = operations.fork_workflow(pk).id
            except (ValueError, PgqrsError) as exc:
                outcome.skip(pk, f"not forked ({exc})")
                continue
            forked.append(pk)
        return forked, []
    return _delete(ids, outcome, alias), []


def _delete(ids: list[int], outcome: Outcome, alias: str) -> list[int]:
    """Delete the finished workflows of ``ids``, locked first: one resumed meanwhile stays, and
    so does a child whose parent has not ended (the parent may still read its result)."""
    with transaction.atomic(using=alias):
        finished = list(
            Workflow.objects.using(alias)
            .select_for_update()
            .filter(pk__in=ids, status__in=FINISHED)
            .order_by("-pk")
            .values_list("pk", "parent_id")
        )
        parents = {parent for _, parent in finished if parent is not None}
        waiting = set(
            Workflow.objects.using(alias)
            .filter(pk__in=parents, status__in=UNFINISHED)
            .values_list("pk", flat=True)
        )
        deleted = []
        for pk, parent in finished:
            if parent in waiting:
                outcome.skip(pk, "kept while their parent runs (it may read their result)")
            else:
                deleted.append(pk)
        Workflow.objects.using(alias).filter(pk__in=deleted).only("pk").delete()
    return deleted


def _log(
    name: str,
    done: list[int],
    children: list[int],
    names: dict[int, str],
    statuses: dict[int, str],
    outcome: Outcome,
    user_id: int,
    alias: str,
) -> None:
    entries = []
    content_type = ContentType.objects.get_for_model(Workflow)

    def entry(pk: int, flag: int, message: str, workflow_name: str | None = None) -> None:
        label = workflow_name or names.get(pk) or "workflow"
        entries.append(
            LogEntry(
                user_id=user_id,
                content_type=content_type,
                object_id=str(pk),
                object_repr=f"{label} #{pk}"[:200],
                action_flag=flag,
                change_message=message,
            )
        )

    for pk in done:
        was = f"was {statuses[pk]}"
        if name == "delete":
            entry(pk, DELETION, f"Deleted ({was}).")
        elif name == "fork":
            entry(pk, CHANGE, f"Forked as workflow {outcome.forks[pk]} ({was}).")
            entry(outcome.forks[pk], ADDITION, f"Forked from workflow {pk}.", names[pk])
        else:
            entry(pk, CHANGE, f"{OPERATIONS[name].done.capitalize()} ({was}).")
    if children:
        child_names = dict(
            Workflow.objects.using(alias).filter(pk__in=children).values_list("pk", "name")
        )
        for pk in children:
            entry(pk, CHANGE, "Cancelled with its parent.", child_names.get(pk))
    LogEntry.objects.bulk_create(entries, batch_size=BATCH)


def summary(queryset: QuerySet[Workflow], operation: Operation) -> dict[str, Any]:
    """What the confirmation page says of a selection: counts by status (of its first
    ``SUMMARY_UP_TO`` workflows) and its first ids, without reading it whole."""
    counts = status_counts(queryset, SUMMARY_UP_TO + 1)
    total = sum(counts.values())
    ordered = sorted(counts, key=lambda status: (status not in operation.acts_on, status))
    statuses = [
        {
            "status": status,
            "count": f"{counts[status]:,}",
            "acted_on": status in operation.acts_on,
        }
        for status in ordered
    ]
    first_ids = list(queryset.order_by("-pk").values_list("pk", "name", "status")[:SHOWN_IDS])
    acted_on = sum(counts[status] for status in ordered if status in operation.acts_on)
    return {
        "total": min(total, SUMMARY_UP_TO),
        "total_text": f"{min(total, SUMMARY_UP_TO):,}",
        "more": total > SUMMARY_UP_TO,
        "acted_on": acted_on,
        "acted_on_text": f"{acted_on:,}",
        "statuses": statuses,
        "first": first_ids,
    }


def status_counts(queryset: QuerySet[Workflow], limit: int) -> dict[str, int]:
    """The statuses of the first ``limit`` workflows of ``queryset``, counted.

    Raw SQL around the queryset's own: the ORM cannot group a sliced queryset, and ``pk IN
    (sliced subquery)`` makes PostgreSQL join the whole table to it."""
    sql, params = queryset.order_by().values("status")[:limit].query.sql_with_params()
    with connections[queryset.db].cursor() as cursor:
        cursor.execute(
            f"SELECT selection.status, COUNT(*) FROM ({sql}) selection GROUP BY selection.status",
            params,
        )
        return {status: count for status, count in cursor.fetchall()}
