"""Run one of the guide's demos: ``manage.py run_demo data_pipeline|crash_demo``."""

from __future__ import annotations

from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser
from django.core.management.color import no_style
from django.db import connection

import django_pgqrs
from demo import workflows
from django_pgqrs.models import Workflow, WorkflowEvent, WorkflowStep

URL = "https://api.example.com/data"


class Command(BaseCommand):
    help = "Run one of the durable workflow guide's demos and print what it prints."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("demo", choices=["data_pipeline", "crash_demo"])
        parser.add_argument(
            "--fresh",
            action="store_true",
            help="Delete every saved workflow first and restart ids at 1 (demo databases only).",
        )

    def handle(self, *args: Any, demo: str, fresh: bool, **options: Any) -> None:
        # Like the guide's admin.install(): create the tables if they are missing.
        call_command("migrate", verbosity=0)
        if fresh:
            tables = [m._meta.db_table for m in (Workflow, WorkflowStep, WorkflowEvent)]
            sql = connection.ops.sql_flush(no_style(), tables, reset_sequences=True)
            connection.ops.execute_sql_flush(sql)
        getattr(self, demo)()

    def data_pipeline(self) -> None:
        workflow_ctx = django_pgqrs.create_workflow("data_pipeline", URL)
        print(f"Created workflow ID: {workflow_ctx.id}")

        result = workflows.data_pipeline(workflow_ctx, URL)
        print(f"Final result: {result}")

    def crash_demo(self) -> None:
        wf_ctx = django_pgqrs.create_workflow("crash_demo", "test")
        print(f"Created workflow: {wf_ctx.id}")

        # RUN 1: will crash in step_two.
        print("\n=== RUN 1 (will crash) ===")
        try:
            workflows.crash_demo(wf_ctx, "test")
        except RuntimeError as e:
            print(f"Caught crash: {e}")

        # RUN 2: resume the same workflow.
        print("\n=== RUN 2 (resuming) ===")
        result = workflows.crash_demo(wf_ctx, "test")
        print(f"Final result: {result}")
