"""``manage.py pgqrs_list``: the newest workflows, filtered, as a table or as JSON."""

from __future__ import annotations

import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db.models.fields.json import KT

from django_pgqrs.management import cli
from django_pgqrs.models import Workflow, WorkflowStatus
from django_pgqrs.store import workflows_alias

HEADERS = ("ID", "NAME", "STATUS", "QUEUE", "ATTEMPTS", "CREATED", "UPDATED", "ERROR")


class Command(BaseCommand):
    help = (
        "List workflows, newest first: id, name, status, queue, attempts, times, and the error "
        "of failed ones. Filters combine (all must hold)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--status",
            nargs="+",
            type=cli.upper,
            choices=WorkflowStatus.values,
            metavar="STATUS",
            help=f"Only these statuses ({', '.join(WorkflowStatus.values)}).",
        )
        parser.add_argument("--name", help="Only workflows of this name.")
        parser.add_argument("--queue", help="Only workflows of this queue.")
        parser.add_argument(
            "--since",
            type=cli.moment,
            metavar="DURATION_OR_DATE",
            help="Only workflows created since then: a duration ago (30m, 2h, 7d) or an ISO 8601 "
            "date or time (2024-05-31, 2024-05-31T12:00:00+02:00; the current time zone unless "
            "given).",
        )
        parser.add_argument(
            "--limit",
            type=cli.positive_int,
            default=50,
            help="At most this many workflows (default: 50; up to 1000000).",
        )
        parser.add_argument(
            "--json",
            action="store_true",
            help="Print a JSON array of objects with the keys id, name, status, queue, "
            "priority, attempts, created_at, updated_at, parent_id and error (type and "
            "message, or null); times in ISO 8601, UTC.",
        )

    def handle(
        self,
        *args: Any,
        status: list[str] | None,
        name: str | None,
        queue: str | None,
        since: datetime.datetime | None,
        limit: int,
        json: bool,
        **options: Any,
    ) -> None:
        workflows = Workflow.objects.using(workflows_alias()).order_by("-id")
        if status:
            workflows = workflows.filter(status__in=status)
        if name is not None:
            workflows = workflows.filter(name=name)
        if queue is not None:
            workflows = workflows.filter(queue=queue)
        if since is not None:
            workflows = workflows.filter(created_at__gte=since)
        # The error's type and message only: its traceback may be long.
        found = list(
            workflows.annotate(
                error_type=KT("error__type"), error_message=KT("error__message")
            ).values(
                "id",
                "name",
                "status",
                "queue",
                "priority",
                "attempts",
                "created_at",
                "updated_at",
                "parent_id",
                "error_type",
                "error_message",
            )[: limit + 1]
        )
        more = len(found) > limit
        rows: list[dict[str, Any]] = []
        for row in found[:limit]:
            data: dict[str, Any] = dict(row)
            kind, message = data.pop("error_type"), data.pop("error_message")
            data["error"] = None if kind is None else {"type": kind, "message": message}
            rows.append(data)
        if json:
            self.stdout.write(cli.dumps(rows))
            return
        if not rows:
            self.stdout.write("No workflows match.")
            return
        self.stdout.write(
            cli.table(
                HEADERS,
                [
                    (
                        str(row["id"]),
                        cli.clip(row["name"], 40),
                        row["status"],
                        cli.clip(row["queue"], 20),
                        str(row["attempts"]),
                        cli.local(row["created_at"]),
                        cli.local(row["updated_at"]),
                        cli.clip(cli.error_line(row["error"]), 60),
                    )
                    for row in rows
                ],
            )
        )
        if more:
            self.stdout.write(f"(the newest {limit}; --limit N shows more)")
