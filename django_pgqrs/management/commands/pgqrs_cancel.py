"""``manage.py pgqrs_cancel <id>...``: cancel workflows that have not finished."""

from __future__ import annotations

from django_pgqrs import operations
from django_pgqrs.management.cli import OperationCommand


class Command(OperationCommand):
    help = (
        "Cancel workflows that have not succeeded (pending, running, sleeping or failed), with "
        "their unfinished children: they never run again, and a process running one stops at "
        "its next step. Says what was cancelled and what was skipped; exits with status 1 if "
        "an id does not exist (after cancelling the others)."
    )
    verb = "cancelled"

    def operate(self, ids: list[int]) -> list[int]:
        return operations.cancel(ids)
