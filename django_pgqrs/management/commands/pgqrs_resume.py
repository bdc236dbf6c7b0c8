"""``manage.py pgqrs_resume <id>``: finish a saved workflow in this process."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_pgqrs.exceptions import PgqrsError
from django_pgqrs.models import Workflow, WorkflowStatus
from django_pgqrs.runtime import resume


class Command(BaseCommand):
    help = (
        "Resume a workflow from its last checkpoint and run it to the end in this process: "
        "finished steps are skipped, the failed or unfinished step runs again."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("workflow_id", type=int, help="The workflow's id (workflow_id).")
        parser.add_argument(
            "--force",
            action="store_true",
            help="Take the workflow over even if another process holds a live lease on it. "
            "Use only when that process is known to be dead or stuck.",
        )

    def handle(self, *args: Any, workflow_id: int, force: bool, **options: Any) -> None:
        workflow = Workflow.objects.filter(pk=workflow_id).first()
        if workflow is None:
            raise CommandError(f"Workflow {workflow_id} does not exist.")
        label = f"Workflow {workflow_id} ({workflow.name})"
        if workflow.status == WorkflowStatus.SUCCESS:
            self.stdout.write(f"{label} already succeeded; nothing to run.")
            self.stdout.write(f"Result: {workflow.result!r}")
            return
        try:
            result = resume(workflow_id, force=force)
        except PgqrsError as exc:
            raise CommandError(str(exc)) from exc
        except Exception as exc:
            raise CommandError(
                f"{label} failed: {type(exc).__name__}: {exc}. It is saved as ERROR with its "
                f"traceback; fix the cause, then run `pgqrs_resume {workflow_id}` again."
            ) from exc
        self.stdout.write(self.style.SUCCESS(f"{label} succeeded."))
        self.stdout.write(f"Result: {result!r}")
