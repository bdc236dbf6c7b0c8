"""``manage.py pgqrs_prune --older-than 30d``: delete old finished workflows."""

from __future__ import annotations

import datetime
import itertools
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from django_pgqrs import retention
from django_pgqrs.management import cli
from django_pgqrs.models import FINISHED


class Command(BaseCommand):
    help = (
        "Delete finished workflows last updated before a cutoff, with their steps and events, "
        "in batches (each its own short transaction), printing a line per batch. Never "
        "deletes an unfinished workflow, a child before its parent, nor a workflow with "
        "unfinished children. Their idempotency keys are free again."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than",
            required=True,
            type=cli.moment,
            metavar="DURATION_OR_DATE",
            help="Workflows last updated before then: a duration ago (30m, 2h, 7d, 30d) or an "
            "ISO 8601 date or time (the current time zone unless given).",
        )
        parser.add_argument(
            "--status",
            nargs="+",
            type=cli.upper,
            choices=[status.value for status in FINISHED],
            default=[status.value for status in retention.DEFAULT_STATUSES],
            metavar="STATUS",
            help="Which finished workflows: SUCCESS, ERROR, CANCELLED (default: SUCCESS "
            "CANCELLED; failed ones are kept unless named, as they may still be resumed).",
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Count what would be deleted, in the same batches; delete nothing.",
        )
        parser.add_argument(
            "--batch-size",
            type=cli.positive_int,
            default=10_000,
            help="Workflows per batch and transaction (default: 10000; up to 1000000; a batch "
            "also takes the children of its workflows).",
        )

    def handle(
        self,
        *args: Any,
        older_than: datetime.datetime,
        status: list[str],
        dry_run: bool,
        batch_size: int,
        verbosity: int,
        **options: Any,
    ) -> None:
        verb = "would delete" if dry_run else "deleted"
        batches = itertools.count(1)

        def progress(batch: retention.PruneCounts, total: retention.PruneCounts) -> None:
            self.stdout.write(
                f"batch {next(batches)}: {verb} {cli.plural(batch.workflows, 'workflow')} "
                f"({_children(batch)}); {total.workflows} in all"
            )

        total = retention.prune(
            older_than, status, batch_size, dry_run, progress=progress if verbosity else None
        )
        when = f"last updated before {cli.local(older_than)} ({', '.join(status)})"
        if not total.workflows:
            self.stdout.write(f"No workflows {when} to prune.")
            return
        done = "Would prune" if dry_run else "Pruned"
        self.stdout.write(
            self.style.SUCCESS(
                f"{done} {cli.plural(total.workflows, 'workflow')} {when}: {_children(total)}."
            )
        )


def _children(counts: retention.PruneCounts) -> str:
    steps = cli.plural(counts.steps, "step")
    return f"{steps}, {cli.plural(counts.events, 'event')}" if counts.events else steps
