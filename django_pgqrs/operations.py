"""Operations on saved workflows, for code, commands and the admin: queue again, cancel, fork."""

from __future__ import annotations

from collections.abc import Iterable

from django.db import transaction
from django.utils import timezone

from . import registry, signals
from .conf import conf
from .enqueue import deadline_for
from .exceptions import WorkflowNotFound
from .handles import WorkflowHandle
from .models import UNFINISHED, Workflow, WorkflowStatus, WorkflowStep
from .store import store_for, workflows_alias


def requeue(workflow_ids: Iterable[int]) -> list[int]:
    """Queue failed (or pending) workflows for a worker to resume now; return their ids.

    A resumed workflow skips its finished steps and runs the failed one again. Others (running,
    finished, cancelled) are left as they are.
    """
    alias = workflows_alias()
    with transaction.atomic(using=alias):
        rows = list(
            Workflow.objects.using(alias)
            .select_for_update()
            .filter(pk__in=list(workflow_ids))
            .filter(status__in=[WorkflowStatus.ERROR, WorkflowStatus.PENDING])
            .values_list("pk", "queue")
        )
        ids = [pk for pk, _ in rows]
        now = timezone.now()
        Workflow.objects.using(alias).filter(pk__in=ids).update(
            status=WorkflowStatus.PENDING, run_at=now, updated_at=now
        )
        store_for(alias).notify({queue for _, queue in rows})
    return ids


def cancel(workflow_ids: Iterable[int]) -> list[int]:
    """Cancel workflows that have not finished, and their unfinished descendants; return the
    ids cancelled.

    A cancelled workflow never runs again (unless resumed with ``force``). A process running one
    stops at its next step, raising ``WorkflowCancelled``; a sleeping or waiting one stops at
    once. A parent waiting for a cancelled child is woken (its wait raises
    ``WorkflowCancelled``). An ERROR workflow may be cancelled too: it is not resumed then.
    """
    alias = workflows_alias()
    cancelled: list[int] = []
    # The workflows that had not ended (an ERROR one had: it is not sent as finished again).
    ended_now: dict[int, str] = {}
    with transaction.atomic(using=alias):
        layer = list(workflow_ids)
        while layer:
            rows = list(
                Workflow.objects.using(alias)
                .select_for_update()
                .filter(pk__in=layer)
                .exclude(pk__in=cancelled)
                .exclude(status__in=[WorkflowStatus.SUCCESS, WorkflowStatus.CANCELLED])
                .values_list("pk", "name", "status")
            )
            ids = [row[0] for row in rows]
            if ids:
                store_for(alias).cancel(ids)
            for pk, name, status in rows:
                if status != WorkflowStatus.ERROR:
                    ended_now[pk] = name
            cancelled += ids
            layer = list(
                Workflow.objects.using(alias)
                .filter(parent_id__in=ids, status__in=UNFINISHED)
                .values_list("pk", flat=True)
            )
        wake_parents(alias, cancelled)
    # Once the caller's transaction commits (if any; at once in a test case's): a run of one of
    # them in this process (a receiver or a step that cancels its own workflow, say) stops at
    # its next step, as one elsewhere does at its next renewal; then the signals.
    signals.after_commit(alias, lambda: _stop_runs_here(cancelled))
    if signals.workflow_finished.receivers:
        for workflow_id, name in ended_now.items():
            signals.send_on_commit(
                signals.workflow_finished,
                alias,
                workflow_id=workflow_id,
                name=name,
                status=WorkflowStatus.CANCELLED,
                result=None,
                error=None,
                exception=None,
            )
    return cancelled


def _stop_runs_here(cancelled: list[int]) -> None:
    from .runtime import _running

    for workflow_id in cancelled:
        run = _running.get(workflow_id)
        if run is not None:
            run.lease.lost = True


def cancel_children(workflow_id: int) -> list[int]:
    """Cancel the unfinished children (and their descendants) of a workflow that is over."""
    alias = workflows_alias()
    children = Workflow.objects.using(alias).filter(parent_id=workflow_id, status__in=UNFINISHED)
    return cancel(list(children.values_list("pk", flat=True)))


def cancel_workflow(workflow_id: int) -> bool:
    """Cancel one workflow and its unfinished children; False if it had already finished
    (succeeded or been cancelled). Raise ``WorkflowNotFound`` for an unknown id."""
    if not Workflow.objects.using(workflows_alias()).filter(pk=workflow_id).exists():
        raise WorkflowNotFound(workflow_id)
    return workflow_id in cancel([workflow_id])


def wake_parents(alias: str, children: list[int]) -> None:
    """Wake the suspended parents of these workflows: what they wait for has ended. Their rows
    are locked whatever their status, so that a parent suspending meanwhile sees the end."""
    parent_ids = set(
        Workflow.objects.using(alias)
        .filter(pk__in=children, parent__isnull=False)
        .values_list("parent_id", flat=True)
    )
    if not parent_ids:
        return
    with transaction.atomic(using=alias):
        parents = list(
            Workflow.objects.using(alias)
            .select_for_update()
            .filter(pk__in=parent_ids, status__in=UNFINISHED)
            .values_list("pk", "status", "queue")
        )
        sleeping = [(pk, queue) for pk, status, queue in parents if status == "SLEEPING"]
        if sleeping:
            Workflow.objects.using(alias).filter(pk__in=[pk for pk, _ in sleeping]).update(
                run_at=timezone.now()
            )
            store_for(alias).notify({queue for _, queue in sleeping})


def fork_workflow(
    workflow_id: int, from_step: str | None = None, *, run_here: bool = False
) -> WorkflowHandle:
    """Start a new workflow from ``workflow_id``'s checkpoints before step ``from_step``.

    The new workflow (``forked_from`` the original) has the same name, input and queue, keeps
    the original's checkpoints saved before that step, and runs the rest with the current code,
    on a worker: "we fixed the bug, run it again from where it failed". ``from_step`` is a
    checkpoint key (``charge``, ``fetch#2``); by default, the step the original failed on. The
    original is left as it was. ``run_here``: the caller runs the fork (``resume``), so
    workers leave it alone for one lease length, as after ``create_workflow``. Raise
    ``WorkflowNotFound``, or ``ValueError`` for a step it did not save.
    """
    alias = workflows_alias()
    row = Workflow.objects.using(alias).filter(pk=workflow_id).values("error", "name").first()
    if row is None:
        raise WorkflowNotFound(workflow_id)
    step = from_step or (row["error"] or {}).get("step")
    if not step:
        raise ValueError(
            f"Workflow {workflow_id} did not fail on a step: name the step to fork from."
        )
    steps = WorkflowStep.objects.using(alias).filter(workflow_id=workflow_id)
    position = steps.filter(step_id=step).values_list("position", flat=True).first()
    if position is None:
        saved = ", ".join(steps.order_by("position").values_list("step_id", flat=True))
        raise ValueError(
            f"Workflow {workflow_id} has no saved step {step!r} to fork from (saved: "
            f"{saved or 'none'})."
        )
    delay = conf.LEASE_SECONDS if run_here else 0.0
    name = row["name"]
    deadline = None
    if registry.is_registered(name):  # the fork runs with the current code: its timeout
        deadline = deadline_for(registry.get_workflow(name), None)
    made = store_for(alias).fork(workflow_id, position, delay, deadline)
    if made is None:  # deleted meanwhile (pruned, say)
        raise WorkflowNotFound(workflow_id)
    return WorkflowHandle(made[0], alias)
