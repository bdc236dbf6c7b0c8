"""``manage.py pgqrs_worker``: run due workflows until stopped."""

from __future__ import annotations

import logging
import sys
from typing import Any

import django
from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_pgqrs.exceptions import WorkflowInTransaction
from django_pgqrs.management import cli
from django_pgqrs.worker import Worker


class Command(BaseCommand):
    help = (
        "Run due workflows of the given queues until SIGTERM/SIGINT (or, with --burst, until "
        "none is due), and finish workflows whose process died."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--queues",
            default="default",
            help="Comma-separated queue names to take workflows from (default: default).",
        )
        parser.add_argument(
            "--concurrency",
            type=cli.positive_int,
            default=1,
            help="How many workflows to run at once, each in its own thread (default: 1).",
        )
        parser.add_argument(
            "--burst", action="store_true", help="Exit once no workflow is due (for tests, cron)."
        )
        parser.add_argument(
            "--grace-seconds",
            type=float,
            default=30.0,
            help="On SIGTERM/SIGINT, how long running workflows may take to finish before "
            "their leases are given back to other workers (default: 30).",
        )
        parser.add_argument("--database", default=None, help="Database alias of the workflows.")

    def handle(
        self,
        *args: Any,
        queues: str,
        concurrency: int,
        burst: bool,
        grace_seconds: float,
        database: str | None,
        verbosity: int,
        **options: Any,
    ) -> None:
        names = [name.strip() for name in queues.split(",") if name.strip()]
        if not names:
            raise CommandError("--queues needs at least one queue name.")
        self._log_to_stderr(verbosity)
        if django.VERSION >= (6, 0):
            from django_pgqrs.tasks import check_worker_queues

            check_worker_queues(names)
        try:
            summary = Worker(names, concurrency, burst, grace_seconds, database).run()
        except WorkflowInTransaction as exc:
            raise CommandError(str(exc)) from exc
        if summary.fatal:
            raise CommandError(f"The worker stopped: {summary.fatal}")

    def _log_to_stderr(self, verbosity: int) -> None:
        # The worker reports through logging; without a configured handler, show its lines.
        log = logging.getLogger("django_pgqrs")
        if verbosity == 0:
            # Quiet, whatever LOGGING says: problems only; Django's own lines about the tasks
            # the worker runs ("Task id=... state=RUNNING") too.
            for quieted in (log, logging.getLogger("django.tasks")):
                quieted.setLevel(max(quieted.getEffectiveLevel(), logging.WARNING))
            return
        if log.hasHandlers():
            return
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.DEBUG if verbosity > 1 else logging.INFO)
