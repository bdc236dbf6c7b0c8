"""``manage.py pgqrs_show <id>``: one workflow and its steps."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import F, TextField
from django.db.models.functions import Cast

from django_pgqrs.admin_display import duration
from django_pgqrs.management import cli
from django_pgqrs.models import Workflow, WorkflowStep
from django_pgqrs.store import workflows_alias

# Children listed by the text output; --json lists them all.
MOST_CHILDREN = 20
# Steps listed by the text output: the first and the last this many; --json lists them all.
EDGE_STEPS = 50
# Steps read at a time by --json, which writes each as it goes.
STEP_CHUNK = 100


class Command(BaseCommand):
    help = (
        "Show a workflow: status, input, result or error with its traceback, lease, times, "
        "parent, children and forks; the runs that ended (attempt, outcome, worker, error); "
        f"then its steps in call order with their status, attempts, duration and error (the "
        f"first {EDGE_STEPS} and the last {EDGE_STEPS} of a longer workflow)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("workflow_id", type=int, help="The workflow's id (workflow_id).")
        parser.add_argument(
            "--json",
            action="store_true",
            help="Print one JSON object: the workflow's columns (input, result and error as "
            "saved; times in ISO 8601, UTC), children, forks, and all its steps (with their "
            "output).",
        )

    def handle(self, *args: Any, workflow_id: int, json: bool, **options: Any) -> None:
        data = describe(workflow_id)
        if data is None:
            raise CommandError(f"Workflow {workflow_id} does not exist.")
        if json:
            # Step by step, as read: a workflow's outputs may be far larger than memory allows.
            for piece in json_pieces(data, steps(workflow_id, outputs=True)):
                self.stdout.write(piece, ending="")
            self.stdout.write("")
        else:
            self.stdout.write(self.text(data, *text_steps(workflow_id)))

    def text(
        self,
        data: dict[str, Any],
        count: int,
        first: list[dict[str, Any]],
        last: list[dict[str, Any]],
    ) -> str:
        """The text output of ``data``: ``count`` steps, of which ``first`` and ``last`` are
        listed (all of them in ``first`` when they are few)."""
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
        lines += ["", "Input:", _indent(_payload(data["input"]))]
        if data["error"]:
            error = data["error"]
            where = f" (step {error['step']})" if error.get("step") else ""
            lines += ["", f"Error{where}: {cli.error_line(error)}"]
            if error.get("traceback"):
                lines.append(_indent(str(error["traceback"]).rstrip()))
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
            lines += ["", "Result:", _indent(_payload(data["result"]))]
        lines += ["", f"Steps ({count}):"]
        if count:
            rows = [
                (
                    str(step["position"]),
                    step["step_id"],
                    step["status"],
                    str(step["attempts"]),
                    duration(step["duration_seconds"]),
                    cli.local(step["completed_at"]),
                    cli.clip(cli.error_line(step["error"]), 80),
                )
                for step in [*first, *last]
            ]
            headers = ("POS", "STEP", "STATUS", "ATTEMPTS", "DURATION", "COMPLETED", "ERROR")
            listed = cli.table_lines(headers, rows)
            if (left := count - len(rows)) > 0:
                gap = f"... {cli.plural(left, 'more step')} (--json lists them all)"
                listed.insert(1 + len(first), gap)
            lines += [f"  {line}" for line in listed]
        else:
            lines.append("  none yet")
        return "\n".join(lines)


_COLUMNS = (
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
)
_JSON_COLUMNS = ("error", "input", "result", "history")


def describe(workflow_id: int) -> dict[str, Any] | None:
    """The workflow and its relations as JSON-ready data (times left as datetimes for the text
    output), its steps apart (``steps``); None for an unknown id."""
    if not cli.storable_id(workflow_id):
        return None
    alias = workflows_alias()
    # Payloads as saved, not decoded: a value whose class is gone (PayloadError) still shows.
    # Every JSON column as text, read here: one edited by hand may not read (1e5000).
    row = (
        Workflow.objects.using(alias)
        .filter(pk=workflow_id)
        .annotate(**{f"{name}_text": Cast(F(name), TextField()) for name in _JSON_COLUMNS})
        .values(*_COLUMNS, *(f"{name}_text" for name in _JSON_COLUMNS))
        .first()
    )
    if row is None:
        return None
    data: dict[str, Any] = {name: row[name] for name in _COLUMNS}
    data["error"] = _error(_loads(row["error_text"]))
    data["input"] = _loads(row["input_text"])
    data["result"] = _loads(row["result_text"])
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
        for entry in Workflow(history=_loads(row["history_text"])).attempt_history
    ]
    related = Workflow.objects.using(alias).order_by("id")
    data["children"] = list(related.filter(parent_id=workflow_id).values("id", "name", "status"))
    data["forks"] = list(related.filter(forked_from_id=workflow_id).values_list("id", flat=True))
    return data


def steps(workflow_id: int, *, outputs: bool, reverse: bool = False) -> Any:
    """A queryset of the workflow's steps in call order (or the reverse), as dicts: their error
    as saved (text), and their output as saved or none."""
    fields = ["position", "step_id", "status", "attempts", "started_at", "completed_at"]
    query = WorkflowStep.objects.using(workflows_alias()).filter(workflow_id=workflow_id)
    query = query.annotate(error_text=Cast(F("error"), TextField()))
    fields.append("error_text")
    if outputs:
        query = query.annotate(output_text=Cast(F("output"), TextField()))
        fields.append("output_text")
    order = ("-position", "-id") if reverse else ("position", "id")
    return query.order_by(*order).values(*fields)


def text_steps(workflow_id: int) -> tuple[int, list[dict[str, Any]], list[dict[str, Any]]]:
    """How many steps the workflow has, the first ``EDGE_STEPS`` and the last ``EDGE_STEPS``
    (all in the first list when they are few); without their outputs, which the text does not
    show."""
    rows = [_step(row) for row in steps(workflow_id, outputs=False)[: 2 * EDGE_STEPS + 1]]
    if len(rows) <= 2 * EDGE_STEPS:
        return len(rows), rows, []
    count = steps(workflow_id, outputs=False).count()
    last = [_step(row) for row in steps(workflow_id, outputs=False, reverse=True)[:EDGE_STEPS]]
    return count, rows[:EDGE_STEPS], last[::-1]


def json_pieces(data: dict[str, Any], rows: Any) -> Iterator[str]:
    """``cli.dumps(data)`` with ``data["steps"]`` made of ``rows``, in pieces: one step at a
    time, read in chunks."""
    head = cli.dumps({**data, "steps": []})
    empty = '"steps": []\n}'
    assert head.endswith(empty)
    yield head[: -len(empty)] + '"steps": ['
    separator = "\n"
    for row in rows.iterator(chunk_size=STEP_CHUNK):
        step = _step(row)
        step["output"] = _loads(row["output_text"])
        # split("\n"), not splitlines(): a string may hold U+2028, which JSON leaves as is.
        yield separator + "\n".join(f"    {line}" for line in cli.dumps(step).split("\n"))
        separator = ",\n"
    yield "]\n}" if separator == "\n" else "\n  ]\n}"


def _step(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "position": row["position"],
        "step_id": row["step_id"],
        "status": row["status"],
        "attempts": row["attempts"],
        "started_at": row["started_at"],
        "completed_at": row["completed_at"],
        "duration_seconds": cli.duration(row["started_at"], row["completed_at"]),
        "error": _error(_loads(row["error_text"])),
    }


def _error(error: Any) -> dict[str, Any] | None:
    # The keys people read; the others are the engine's, to raise it again. An error that is
    # not an object (edited by hand) is its message, as saved: a string, or other JSON's text.
    if not error:
        return None
    if not isinstance(error, dict):
        message = error if isinstance(error, str) else json.dumps(error, ensure_ascii=False)
        return {"type": None, "message": message, "traceback": None, "step": None}
    return {key: error.get(key) for key in ("type", "message", "traceback", "step")}


class Raw(str):
    """A payload as saved that does not read as JSON here (a number past Python's float or
    int, nesting too deep): shown as its text."""


def _loads(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text, parse_float=_finite, parse_constant=_not_json)
    except (ValueError, RecursionError):
        return Raw(text)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e5000: json.dumps would write Infinity, which is not JSON
        raise ValueError(f"{text} is past a float")
    return value


def _not_json(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")


def _payload(value: Any) -> str:
    return value if isinstance(value, Raw) else cli.dumps(value)


def _or_dash(value: object) -> str:
    return "-" if value is None else str(value)


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" if line else "" for line in text.splitlines())
