"""Step and workflow errors: how they are saved, and how a saved step error is raised again.

A step error is saved with its checkpoint (type, message, traceback). When a resumed workflow
reaches a step whose saved error it went past the first time (it caught it), the step does not
run again: the error is raised again, rebuilt from what was saved, so that the workflow takes the
same path as before. For that, the error also keeps the exception's class (by import path), its
arguments and its attributes, when the codec can store them.
"""

from __future__ import annotations

import contextlib
import json
import traceback
from typing import Any

from . import codec
from .exceptions import PayloadError, StepFailed

# Saved tracebacks keep their last characters: the frames nearest the error.
_TRACEBACK_CHARS = 20_000
# Arguments and attributes larger than this are not kept; the error is then rebuilt as StepFailed.
_DETAIL_BYTES = 20_000


def error_info(exc: BaseException, step_id: str | None = None) -> dict[str, Any]:
    """Describe an exception for an ``error`` column: type, message, traceback, and how to
    rebuild it."""
    kind = type(exc)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    try:
        message = str(exc)
        trace = "".join(traceback.format_exception(exc))[-_TRACEBACK_CHARS:]
    except Exception:  # an exception whose __str__ fails must still be saved
        message = f"<{name} whose str() failed>"
        trace = "".join(traceback.format_tb(exc.__traceback__))[-_TRACEBACK_CHARS:]
    info: dict[str, Any] = {
        "type": _text(name),
        "message": _text(message),
        "traceback": _text(trace),
    }
    if "<locals>" not in kind.__qualname__:
        info["class"] = _text(f"{kind.__module__}:{kind.__qualname__}")
        detail = _detail(exc)
        if detail is not None:
            info["detail"] = detail
    if step_id is not None:
        info["step"] = step_id
    return info


def error_text(
    exc: BaseException, step_id: str | None = None, extra: dict[str, Any] | None = None
) -> str:
    """``error_info`` (with ``extra`` keys) as JSON text, ready for the database."""
    return json.dumps({**error_info(exc, step_id), **(extra or {})}, ensure_ascii=False)


def rebuild(error: dict[str, Any], step_id: str) -> BaseException:
    """Return the exception a saved step error describes, to be raised again on a replay.

    The same class with the same arguments and attributes where that can be done; else
    ``StepFailed`` carrying the saved error.
    """
    exc = _rebuilt(error)
    if exc is None:
        exc = StepFailed(step_id, error)
    exc.add_note(
        f"(django-pgqrs) Step {step_id!r} raised this error when it ran, and the workflow went "
        f"on past it; on this replay it is raised again from its checkpoint rather than run. "
        f"The original traceback:\n{error.get('traceback', '')}"
    )
    return exc


def _rebuilt(error: dict[str, Any]) -> BaseException | None:
    path = error.get("class")
    if not isinstance(path, str):
        return None
    try:
        cls: type[BaseException] = codec.load_class(path, BaseException)
        detail = codec.loads(error["detail"]) if "detail" in error else {"args": []}
    except PayloadError:
        return None
    args = tuple(detail.get("args", ()))
    exc: BaseException
    try:
        exc = cls(*args)
    except Exception:
        # An __init__ whose parameters are not its args: build it without calling __init__.
        try:
            exc = cls.__new__(cls, *args)
            exc.args = args
        except Exception:
            return None
    with contextlib.suppress(TypeError, AttributeError):
        vars(exc).update(detail.get("attributes", {}))
    return exc


def _detail(exc: BaseException) -> str | None:
    """The exception's arguments and attributes as codec JSON, or None if they cannot be kept."""
    attributes = {
        key: value
        for key, value in vars(exc).items()
        if not key.startswith("__") and not key.startswith("_django_pgqrs")
    }
    detail: dict[str, Any] = {"args": list(exc.args)}
    if attributes:
        detail["attributes"] = attributes
    try:
        return codec.dump(detail, "error", _DETAIL_BYTES)
    except PayloadError:
        if not attributes:
            return None
        try:
            return codec.dump({"args": list(exc.args)}, "error", _DETAIL_BYTES)
        except PayloadError:
            return None


def _text(value: str) -> str:
    """Text that jsonb can hold: no NUL, no lone surrogates (both spelled as escapes)."""
    if not value.isascii():
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value.replace("\x00", "\\x00")
