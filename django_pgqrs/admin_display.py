"""How the admin shows a workflow's parts: stored values as themselves, statuses, times.

Stored values are shown decoded, the way the workflow sees them (a Decimal as 2.99, a datetime
in ISO 8601), laid out like JSON. Everything returned here is HTML with the values escaped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import decimal
import enum
import json
import math
import uuid
from typing import Any

from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

from . import codec
from .exceptions import PayloadError

# A list or dict whose one-line form is at most this long is shown on one line.
SHORT = 60


def status_badge(status: str, note: str = "") -> SafeString:
    """The status as a coloured badge that says its name (readable without the colour)."""
    return format_html(
        '<span class="pgqrs-status pgqrs-status-{}">{}{}</span>',
        status.lower(),
        status,
        f" ({note})" if note else "",
    )


def when(value: datetime.datetime | None, now: datetime.datetime | None = None) -> SafeString:
    """``3 min ago`` (or ``in 5 min``), with the exact time as its title."""
    if value is None:
        return format_html("{}", "-")
    return format_html(
        '<time datetime="{}" title="{}">{}</time>', value.isoformat(), exact(value), ago(value, now)
    )


def moment(value: datetime.datetime | None) -> SafeString:
    """The exact time, to the second, then how long ago it was."""
    if value is None:
        return format_html("{}", "-")
    return format_html('{} <span class="pgqrs-note">({})</span>', exact(value), ago(value))


def exact(value: datetime.datetime) -> str:
    return timezone.localtime(value).strftime("%Y-%m-%d %H:%M:%S %Z")


def ago(value: datetime.datetime, now: datetime.datetime | None = None) -> str:
    seconds = ((now or timezone.now()) - value).total_seconds()
    if abs(seconds) < 5:
        return "just now"
    text = duration(abs(seconds), precise=False)
    return f"{text} ago" if seconds > 0 else f"in {text}"


def duration(seconds: float | None, precise: bool = True) -> str:
    """``850 ms``, ``12.3 s``, ``4 min 5 s``, ``2 h 3 min``, ``3 d 4 h``."""
    if seconds is None:
        return "-"
    if seconds < 1 and precise:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s" if precise and seconds < 10 else f"{seconds:.0f} s"
    units = [("d", 86400), ("h", 3600), ("min", 60), ("s", 1)]
    whole = int(seconds)
    for index, (name, size) in enumerate(units):
        if whole >= size:
            small_name, small_size = units[index + 1]
            rest = (whole % size) // small_size
            return (
                f"{whole // size} {name} {rest} {small_name}" if rest else f"{whole // size} {name}"
            )
    return f"{seconds:.0f} s"  # pragma: no cover - the loop returns for 60 s and more


# --- Stored values --------------------------------------------------------------------------


def stored_value(text: str | None, length: int, limit: int, full_url: str = "") -> SafeString:
    """A stored JSON value (its text, cut at ``limit + 1`` characters, of ``length`` in all) as
    the workflow sees it, or, when it is longer than ``limit``, its first characters."""
    if text is None:
        return format_html("{}", "-")
    if length > limit:
        link = format_html(' <a href="{}">Show all of it</a>', full_url) if full_url else ""
        return format_html(
            '<pre class="pgqrs-json">{}…</pre><p class="help">The first {} characters of {} '
            "(stored JSON, not decoded).{}</p>",
            text[:limit],
            f"{limit:,}",
            f"{length:,}",
            link,
        )
    try:
        value = codec.loads(text)
        shown = show(value)
    except (PayloadError, RecursionError) as exc:
        return format_html(
            '<pre class="pgqrs-json">{}</pre><p class="help">Stored JSON that no longer '
            "decodes: {}</p>",
            text,
            exc,
        )
    return format_html('<pre class="pgqrs-json">{}</pre>', shown)


def value_preview(text: str | None, length: int, limit: int, full_url: str) -> SafeString:
    """A step's output folded: a one-line summary that opens to the whole value (or its first
    ``limit`` characters, with a link to the rest)."""
    if text is None:
        return format_html("{}", "-")
    line, whole = text, length
    if length <= limit:
        with contextlib.suppress(PayloadError, RecursionError):
            line = show(codec.loads(text), indent=None)
            whole = len(line)
    summary, more = line[:80], "…" if whole > 80 else ""
    return format_html(
        '<details class="pgqrs-preview"><summary><code>{}{}</code></summary>{}</details>',
        summary,
        more,
        stored_value(text, length, limit, full_url),
    )


def show(value: Any, indent: int | None = 2) -> str:
    """``value`` laid out like JSON (``indent=None``: on one line), the codec's types shown as
    themselves: a Decimal as a number, a datetime in ISO 8601, a UUID bare. Not escaped."""
    return "".join(_show(value, indent, 0))


def _show(value: Any, indent: int | None, depth: int) -> list[str]:
    if indent is not None and isinstance(value, dict | list | tuple | set | frozenset):
        inline = show(value, None)
        if len(inline) <= SHORT:  # [1, 2, 3] on one line
            return [inline]
    if isinstance(value, dict):
        pairs = [([f"{_key(key)}: "], item) for key, item in value.items()]
        return _container("{", "}", pairs, indent, depth)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = [(f.name, getattr(value, f.name)) for f in dataclasses.fields(value)]
        inner = _container(
            "{", "}", [([f"{json.dumps(k)}: "], item) for k, item in fields], indent, depth
        )
        return [type(value).__qualname__, " ", *inner]
    if isinstance(value, list | tuple | set | frozenset):
        members = sorted(value, key=repr) if isinstance(value, set | frozenset) else value
        return _container("[", "]", [([], item) for item in members], indent, depth)
    return [_scalar(value)]


def _container(
    start: str, end: str, items: list[tuple[list[str], Any]], indent: int | None, depth: int
) -> list[str]:
    if not items:
        return [start, end]
    if indent is None:
        parts = [start]
        for index, (prefix, item) in enumerate(items):
            parts += [", "] if index else []
            parts += [*prefix, *_show(item, None, depth + 1)]
        return [*parts, end]
    inner = " " * indent * (depth + 1)
    parts = [start]
    for index, (prefix, item) in enumerate(items):
        parts += [",\n" if index else "\n", inner, *prefix, *_show(item, indent, depth + 1)]
    return [*parts, "\n", " " * indent * depth, end]


def _key(key: Any) -> str:
    return json.dumps(key, ensure_ascii=False) if isinstance(key, str) else show(key, None)


def _scalar(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, enum.Enum):
        return f"{type(value).__qualname__}.{value.name}"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return f"timedelta({value})"
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes):
        shown = repr(value[:64])
        return f"{shown}… ({len(value):,} bytes)" if len(value) > 64 else shown
    return repr(value)


def whole_value(text: str | None) -> SafeString:
    """A stored JSON value, whole."""
    return stored_value(text, len(text or ""), len(text or ""))


def error_html(error: dict[str, Any] | None) -> SafeString:
    """An ``error`` column: its type, message and step, the traceback folded, and what else
    it holds (the exception's class and arguments) as JSON."""
    if not error:
        return format_html("{}", "-")
    if not isinstance(error, dict):  # not the engine's: edited by hand, say
        return format_html('<div class="pgqrs-error-block">{}</div>', error)
    step = error.get("step")
    rest = {k: v for k, v in error.items() if k not in ("type", "message", "traceback", "step")}
    return format_html(
        '<div class="pgqrs-error-block"><strong>{}</strong>: {}{}'
        '<details><summary>Traceback</summary><pre class="pgqrs-traceback">{}</pre></details>'
        "{}</div>",
        error.get("type", "?"),
        error.get("message", ""),
        format_html(' <span class="help">(in step <code>{}</code>)</span>', step) if step else "",
        error.get("traceback", ""),
        format_html(
            '<details><summary>All of it</summary><pre class="pgqrs-json">{}</pre></details>',
            show(rest),
        )
        if rest
        else "",
    )
