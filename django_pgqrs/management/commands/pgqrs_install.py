"""``manage.py pgqrs_install``: create or upgrade the workflow tables."""

from __future__ import annotations

from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser
from django.db import connections
from django.db.migrations.executor import MigrationExecutor

from django_pgqrs.store import workflows_alias

APP = "django_pgqrs"


class Command(BaseCommand):
    help = "Create or upgrade django-pgqrs's tables (pgqrs_workflows, pgqrs_workflow_steps)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--database",
            help="Database alias (default: the one the routers give django_pgqrs, or default).",
        )

    def handle(self, *args: Any, database: str | None, **options: Any) -> None:
        database = database or workflows_alias()
        executor = MigrationExecutor(connections[database])
        targets = [key for key in executor.loader.graph.leaf_nodes() if key[0] == APP]
        plan = executor.migration_plan(targets)
        if not plan:
            self.stdout.write(f"django-pgqrs tables are up to date on {database!r}; nothing to do.")
            return
        call_command("migrate", APP, database=database, verbosity=0)
        for migration, _ in plan:
            self.stdout.write(f"Applied {migration.app_label}.{migration.name}")
        self.stdout.write(self.style.SUCCESS(f"django-pgqrs tables installed on {database!r}."))
