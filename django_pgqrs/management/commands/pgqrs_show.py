"""``manage.py pgqrs_show <id>``: one workflow and its steps."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import F, TextField
from django.db.models.functions import Cast

from django_pgqrs.management import cli
from django_pgqrs.models import Workflow, WorkflowStep
from django_pgqrs.store import workflows_alias

# Children listed by the text output; --json lists them all.
MOST_CHILDREN = 20


class Command(BaseCommand):
    help = (
        "Show a workflow: status, input, result or error with its traceback, lease, times, "
        "parent, children and forks; the runs that ended (attempt, outcome, worker, error); "
        "then its steps in call order with their status, "
        "attempts, duration and error."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("workflow_id", type=int, help="The workflow's id (workflow_id).")
        parser.add_argument(
            "--json",
            action="store_true",
            help="Print one JSON object: the workflow's columns (input, result and error as "
            "saved; times in ISO 8601, UTC), children, forks, and steps (with their output).",
        )

    def handle(self, *args: Any, workflow_id: int, json: bool, **options: Any) -> None:
        data = describe(workflow_id)
        if data is None:
            raise CommandError(f"Workflow {workflow_id} does not exist.")
        if json:
            self.stdout.write(cli.dumps(data))
        else:
            self.stdout.write(self.text(data))

    def text(self, data: dict[str, Any]) -> str:
        lease = "-"
        if data["lease_owner"]:
            lease = f"{data['lease_owner']} until {cli.local(data['lease_expires_at'])}"
        children = ", ".join(
            f"{child['id']} ({child['status']})" for child in data["children"][:MOST_CHILDREN]
        )
        if len(data["children"]) > MOST_CHILDREN:
            children += f" ... and {len(data['children']) - MOST_CHILDREN} more"
        fields = [
            ("status", data["status"]),
            ("queue", f"{data['queue']} (priority {data['priority']})"),
            ("attempts", f"{data['attempts']} ({data['recovery_attempts']} after a lost owner)"),
            ("created", cli.local(data["created_at"])),
            ("started", cli.local(data["started_at"])),
            ("updated", cli.local(data["updated_at"])),
            ("run at", cli.local(data["run_at"])),
            ("deadline", cli.local(data["deadline_at"])),
            ("lease", lease),
            ("idempotency key", data["idempotency_key"] or "-"),
            ("parent", _or_dash(data["parent_id"])),
            ("children", children or "-"),
            ("forked from", _or_dash(data["forked_from_id"])),
            ("forks", cli.id_list(data["forks"]) or "-"),
        ]
        width = max(len(label) for label, _ in fields)
        lines = [f"Workflow {data['id']}: {data['name']}"]
        lines += [f"  {label.ljust(width)}  {value}" for label, value in fields]
        lines += ["", "Input:", _indent(cli.dumps(data["input"]))]
        if data["error"]:
            error = data["error"]
            where = f" (step {error['step']})" if error.get("step") else ""
            lines += ["", f"Error{where}: {cli.error_line(error)}"]
            if error.get("traceback"):
                lines.append(_indent(error["traceback"].rstrip()))
        if data["runs"]:
            runs = [
                (
                    str(run["attempt"]),
                    str(run["outcome"]),
                    str(run["worker"] or "-"),
                    cli.local(run["ended_at"]),
                    cli.clip(cli.error_line(run["error"]), 80),
                )
                for run in data["runs"]
            ]
            lines += ["", f"Runs ({len(runs)}):"]
            columns = ("ATTEMPT", "OUTCOME", "WORKER", "ENDED", "ERROR")
            lines.append(_indent(cli.table(columns, runs)))
        if data["status"] == "SUCCESS" or data["result"] is not None:
            lines += ["", "Result:", _indent(cli.dumps(data["result"]))]
        lines += ["", f"Steps ({len(data['steps'])}):"]
        if data["steps"]:
            rows = [
                (
                    str(step["position"]),
                    step["step_id"],
                    step["status"],
                    str(step["attempts"]),
                    cli.human_duration(step["duration_seconds"]),
                    cli.local(step["completed_at"]),
                    cli.clip(cli.error_line(step["error"]), 80),
                )
                for step in data["steps"]
            ]
            headers = ("POS", "STEP", "STATUS", "ATTEMPTS", "DURATION", "COMPLETED", "ERROR")
            lines.append(_indent(cli.table(headers, rows)))
        else:
            lines.append("  none yet")
        return "\n".join(lines)


def describe(workflow_id: int) -> dict[str, Any] | None:
    """The workflow, its relations and its steps as JSON-ready data (times left as datetimes
    for the text output); None for an unknown id."""
    alias = workflows_alias()
    # Payloads as saved, not decoded: a value whose class is gone (PayloadError) still shows.
    row = (
        Workflow.objects.using(alias)
        .filter(pk=workflow_id)
        .annotate(
            input_text=Cast(F("input"), TextField()), result_text=Cast(F("result"), TextField())
        )
        .values(
            "id",
            "name",
            "status",
            "queue",
            "priority",
            "attempts",
            "recovery_attempts",
            "created_at",
            "started_at",
            "updated_at",
            "run_at",
            "deadline_at",
            "lease_owner",
            "lease_expires_at",
            "idempotency_key",
            "parent_id",
            "forked_from_id",
            "input_text",
            "result_text",
            "error",
            "history",
        )
        .first()
    )
    if row is None:
        return None
    data: dict[str, Any] = dict(row)
    data["input"] = _loads(data.pop("input_text"))
    data["result"] = _loads(data.pop("result_text"))
    data["error"] = _error(row["error"])
    # The runs that ended, oldest first; a failure's error without its traceback (see "error").
    data["runs"] = [
        {
            "attempt": entry.get("attempt"),
            "outcome": entry.get("outcome"),
            "worker": entry.get("worker"),
            "ended_at": entry.get("ended_at"),
            "error": {
                key: value
                for key, value in (_error(entry.get("error")) or {}).items()
                if key != "traceback"
            }
            or None,
        }
        for entry in Workflow(history=data.pop("history")).attempt_history
    ]
    related = Workflow.objects.using(alias).order_by("id")
    data["children"] = list(related.filter(parent_id=workflow_id).values("id", "name", "status"))
    data["forks"] = list(related.filter(forked_from_id=workflow_id).values_list("id", flat=True))
    steps = (
        WorkflowStep.objects.using(alias)
        .filter(workflow_id=workflow_id)
        .order_by("position", "id")
        .annotate(output_text=Cast(F("output"), TextField()))
        .values(
            "position",
            "step_id",
            "status",
            "attempts",
            "started_at",
            "completed_at",
            "error",
            "output_text",
        )
    )
    data["steps"] = [
        {
            "position": step["position"],
            "step_id": step["step_id"],
            "status": step["status"],
            "attempts": step["attempts"],
            "started_at": step["started_at"],
            "completed_at": step["completed_at"],
            "duration_seconds": cli.duration(step["started_at"], step["completed_at"]),
            "error": _error(step["error"]),
            "output": _loads(step["output_text"]),
        }
        for step in steps
    ]
    return data


def _error(error: dict[str, Any] | None) -> dict[str, Any] | None:
    # The keys people read; the others are the engine's, to raise it again.
    if not error:
        return None
    return {key: error.get(key) for key in ("type", "message", "traceback", "step")}


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _or_dash(value: object) -> str:
    return "-" if value is None else str(value)


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" if line else "" for line in text.splitlines())
