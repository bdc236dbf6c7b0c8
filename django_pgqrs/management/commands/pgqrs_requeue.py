"""``manage.py pgqrs_requeue <id>...``: queue failed workflows for a worker to resume."""

from __future__ import annotations

from django_pgqrs import operations
from django_pgqrs.management.cli import OperationCommand


class Command(OperationCommand):
    help = (
        "Queue failed (or pending) workflows for a worker to resume now, from their last "
        "checkpoint: finished steps are skipped, the failed step runs again. Running, "
        "sleeping, succeeded and cancelled workflows are skipped. Exits with status 1 if an "
        "id does not exist (after queuing the others)."
    )
    verb = "requeued"

    def operate(self, ids: list[int]) -> list[int]:
        return operations.requeue(ids)
