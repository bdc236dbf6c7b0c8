"""Operations on saved workflows, for the admin and for code: queue again, cancel."""

from __future__ import annotations

from collections.abc import Iterable

from django.db import transaction
from django.utils import timezone

from .models import Workflow, WorkflowStatus
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
    """Cancel workflows that have not succeeded; return their ids.

    A cancelled workflow never runs again. A process running one stops at its next checkpoint
    (its lease is taken away), raising ``WorkflowCancelled``.
    """
    alias = workflows_alias()
    with transaction.atomic(using=alias):
        ids = list(
            Workflow.objects.using(alias)
            .select_for_update()
            .filter(pk__in=list(workflow_ids))
            .exclude(status__in=[WorkflowStatus.SUCCESS, WorkflowStatus.CANCELLED])
            .values_list("pk", flat=True)
        )
        Workflow.objects.using(alias).filter(pk__in=ids).update(
            status=WorkflowStatus.CANCELLED,
            updated_at=timezone.now(),
            lease_owner=None,
            lease_token=None,
            lease_expires_at=None,
        )
    return ids
