"""``manage.py pgqrs_resume <id>``: finish a saved workflow in this process."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_pgqrs.exceptions import PgqrsError, WorkflowSuspended
from django_pgqrs.models import Workflow, WorkflowStatus
from django_pgqrs.operations import fork_workflow
from django_pgqrs.runtime import resume
from django_pgqrs.store import workflows_alias


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
            help="Take the workflow over even if another process holds a live lease on it "
            "(use only when that process is known to be dead or stuck), or if it was cancelled.",
        )
        parser.add_argument(
            "--from-step",
            metavar="STEP",
            help="Fork the workflow instead: a new one that keeps its checkpoints before STEP "
            "(a checkpoint key: charge, fetch#2) and runs the rest here, with the current code. "
            "The workflow itself is left as it is.",
        )

    def handle(
        self, *args: Any, workflow_id: int, force: bool, from_step: str | None, **options: Any
    ) -> None:
        workflow = (
            Workflow.objects.using(workflows_alias()).defer("input").filter(pk=workflow_id).first()
        )
        if workflow is None:
            raise CommandError(f"Workflow {workflow_id} does not exist.")
        if from_step is not None:
            try:
                fork = fork_workflow(workflow_id, from_step, run_here=True)
            except (ValueError, PgqrsError) as exc:
                raise CommandError(str(exc)) from exc
            self.stdout.write(
                f"Forked workflow {workflow_id} ({workflow.name}) at step {from_step!r}: "
                f"workflow {fork.id}."
            )
            workflow_id = fork.id
        label = f"Workflow {workflow_id} ({workflow.name})"
        if workflow.status == WorkflowStatus.SUCCESS and from_step is None:
            self.stdout.write(f"{label} already succeeded; nothing to run.")
            self.stdout.write(f"Result: {workflow.result!r}")
            return
        try:
            result = resume(workflow_id, force=force)
        except WorkflowSuspended as exc:
            self.stdout.write(str(exc))
            return
        except PgqrsError as exc:
            raise CommandError(str(exc)) from exc
        except Exception as exc:
            raise CommandError(
                f"{label} failed: {type(exc).__name__}: {exc}. It is saved as ERROR with its "
                f"traceback; fix the cause, then run `pgqrs_resume {workflow_id}` again."
            ) from exc
        self.stdout.write(self.style.SUCCESS(f"{label} succeeded."))
        self.stdout.write(f"Result: {result!r}")
