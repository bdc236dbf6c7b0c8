"""What the operators' commands share: argument types, times, tables and JSON."""

from __future__ import annotations

import argparse
import datetime
import json
import re
from collections.abc import Sequence
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from ..models import FINISHED

_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}

# The most ``positive_int`` takes: past it, a usage error rather than a database's overflow.
MOST = 1_000_000

# The ids a database can hold (a signed 64-bit integer); any other does not exist.
MIN_ID, MAX_ID = -(2**63), 2**63 - 1


def moment(text: str) -> datetime.datetime:
    """An argparse type: ``30m``, ``2h``, ``7d`` (that long ago), or an ISO 8601 date or time
    (in the current time zone unless it names one); an aware datetime, within the years 1 to
    9999 in UTC."""
    text = text.strip()
    match = _DURATION.match(text)
    if match:
        amount, unit = match.groups()
        try:
            return timezone.now() - datetime.timedelta(**{_UNITS[unit]: int(amount)})
        except (OverflowError, ValueError):  # ValueError: an int of more than 4,300 digits
            raise argparse.ArgumentTypeError(
                f"{clip(text, 40)!r} is too long ago (before the year 1)"
            ) from None
    try:
        value = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a duration (30m, 2h, 7d, 2w) nor an ISO 8601 date "
            f"(2024-05-31, 2024-05-31T12:00:00+00:00)"
        ) from None
    if timezone.is_naive(value):
        value = timezone.make_aware(value)
    try:
        value.astimezone(datetime.UTC)
    except OverflowError:
        # Past 9999-12-31 or before 0001-01-01 in UTC (9999-12-31T23:00:00-05:00): the same
        # cutoff for every time a database holds, and one that databases can take.
        far = datetime.datetime.max if value.year == datetime.MAXYEAR else datetime.datetime.min
        value = far.replace(tzinfo=datetime.UTC)
    return value


def positive_int(text: str) -> int:
    """An argparse type: an integer from 1 to ``MOST`` (1,000,000)."""
    try:
        value = int(text)
    except ValueError:
        if text.strip().isdecimal():  # more than 4,300 digits
            raise argparse.ArgumentTypeError(f"{clip(text, 40)} is more than {MOST}") from None
        raise argparse.ArgumentTypeError(f"{clip(text, 40)!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    if value > MOST:
        raise argparse.ArgumentTypeError(f"{clip(str(value), 40)} is more than {MOST}")
    return value


def upper(text: str) -> str:
    """An argparse type for statuses: ``error`` is ``ERROR``."""
    return text.upper()


def local(value: datetime.datetime | None) -> str:
    """A time for people: in the current time zone, to the second; ``-`` for none. A time
    that has no such time (past the year 9999 there, say) keeps its own offset."""
    if value is None:
        return "-"
    try:
        here = timezone.localtime(value)
    except OverflowError:
        return value.isoformat(sep=" ", timespec="seconds")
    # Not strftime("%Y"), which writes the year 1 as "1".
    return here.replace(tzinfo=None).isoformat(sep=" ", timespec="seconds")


def iso(value: datetime.datetime | None) -> str | None:
    """A time for programs: ISO 8601 in UTC, to the microsecond. A time that has none in UTC
    (9999-12-31T23:00:00-05:00) keeps its own offset."""
    if value is None:
        return None
    try:
        return value.astimezone(datetime.UTC).isoformat()
    except OverflowError:
        return value.isoformat()


def duration(
    started: datetime.datetime | None, completed: datetime.datetime | None
) -> float | None:
    """Seconds from ``started`` to ``completed``; None unless both are known."""
    if started is None or completed is None:
        return None
    return (completed - started).total_seconds()


def plural(count: int, word: str) -> str:
    """``1 step``, ``3 steps``."""
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def clip(text: str, width: int) -> str:
    """``text`` on one line, cut to ``width`` characters (the cut marked with ``...``)."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def error_line(error: dict[str, Any] | None) -> str:
    """``Type: message`` of a saved error (the message alone when it has no type); empty for
    none."""
    if not error:
        return ""
    kind, message = error.get("type"), error.get("message")
    if kind is None:
        return "" if message is None else str(message)
    return f"{kind}: {message}" if message else str(kind)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, two spaces apart, under a header; no trailing spaces."""
    return "\n".join(table_lines(headers, rows))


def table_lines(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """``table``: the header's line, then one per row."""
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [headers, *rows]
    ]


def dumps(value: Any) -> str:
    """JSON for programs: keys as given, non-ASCII kept, two-space indents, times by ``iso``."""
    return json.dumps(value, indent=2, ensure_ascii=False, default=_json_default)


def _json_default(value: object) -> Any:
    if isinstance(value, datetime.datetime):
        return iso(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def id_list(ids: Sequence[int], most: int | None = None) -> str:
    """``12, 14, 20``; past ``most`` ids, ``... and 30 more``."""
    shown = ids if most is None else ids[:most]
    text = ", ".join(str(pk) for pk in shown)
    if len(ids) > len(shown):
        text += f" ... and {len(ids) - len(shown)} more"
    return text


def storable_id(pk: int) -> bool:
    """Whether ``pk`` fits an id column (a signed 64-bit integer)."""
    return MIN_ID <= pk <= MAX_ID


def unique(ids: Sequence[int]) -> list[int]:
    """``ids`` without repeats, in their order."""
    return list(dict.fromkeys(ids))


def outcome(verb: str, asked: Sequence[int], done: Sequence[int], statuses: dict[int, str]) -> str:
    """One line of what an operation did: ``cancelled 12, 14; skipped 20: already SUCCESS``.

    ``done`` may hold more than ``asked`` (the children a cancel took along); ``statuses``:
    the status of each workflow asked for but not done.
    """
    done_set, asked_set = set(done), set(asked)
    parts = []
    if done_asked := [pk for pk in asked if pk in done_set]:
        parts.append(f"{verb} {id_list(done_asked)}")
    if along := sorted(pk for pk in done if pk not in asked_set):
        parts.append(f"{verb} with them (unfinished children): {id_list(along)}")
    reasons: dict[str, list[int]] = {}
    for pk in asked:
        if pk in done_set:
            continue
        status = statuses.get(pk)
        if status is None:
            reason = "deleted meanwhile"
        elif status in FINISHED:
            reason = f"already {status}"
        else:
            reason = f"still {status}"
        reasons.setdefault(reason, []).append(pk)
    parts += [f"skipped {id_list(ids)}: {reason}" for reason, ids in reasons.items()]
    return "; ".join(parts)


class OperationCommand(BaseCommand):
    """A command that applies an operation to workflows by id and says what it did to each."""

    verb: str  # what the operation did, for the report: "cancelled"

    def operate(self, ids: list[int]) -> list[int]:
        """Apply the operation; return the ids it was done to."""
        raise NotImplementedError

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "workflow_ids", nargs="+", type=int, metavar="ID", help="Workflow ids (workflow_id)."
        )

    def handle(self, *args: Any, workflow_ids: list[int], **options: Any) -> None:
        from django_pgqrs.models import Workflow
        from django_pgqrs.store import workflows_alias

        workflows = Workflow.objects.using(workflows_alias())
        ids = unique(workflow_ids)
        # An id no column can hold does not exist (SQLite cannot even compare one).
        found = set(
            workflows.filter(pk__in=[pk for pk in ids if storable_id(pk)]).values_list(
                "pk", flat=True
            )
        )
        asked = [pk for pk in ids if pk in found]
        if asked:
            done = self.operate(asked)
            left = set(asked) - set(done)
            statuses = dict(workflows.filter(pk__in=left).values_list("pk", "status"))
            self.stdout.write(outcome(self.verb, asked, done, statuses))
        missing = [pk for pk in ids if pk not in found]
        if len(missing) == 1:
            raise CommandError(f"Workflow {missing[0]} does not exist.")
        if missing:
            raise CommandError(f"Workflows {id_list(missing)} do not exist.")
