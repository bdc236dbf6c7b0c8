"""A workflow's input: the arguments of the call that created it, stored and compared.

The input is stored as ``{"args": [...], "kwargs": {...}}``. A workflow always runs with its saved
input, decoded, so that its first run and its resumptions receive equal values of the same types;
a call with other arguments than the saved ones is refused rather than given a stale result.
"""

from __future__ import annotations

import dataclasses
import decimal
import inspect
from typing import TYPE_CHECKING, Any

from . import codec
from .conf import conf
from .exceptions import InputMismatch
from .models import Workflow

if TYPE_CHECKING:
    from .decorators import WorkflowFunction


def encode_input(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """Encode a call's arguments as a workflow's input: ``{"args": [...], "kwargs": {...}}``."""
    return codec.dump(
        {"args": list(args), "kwargs": kwargs},
        f"input of workflow {name!r}",
        conf.MAX_PAYLOAD_BYTES,
    )


def saved_call(workflow: Workflow) -> tuple[list[Any], dict[str, Any]]:
    """Return the positional and keyword arguments a workflow was saved with (decoded)."""
    saved = workflow.input if isinstance(workflow.input, dict) else {}
    return list(saved.get("args") or []), dict(saved.get("kwargs") or {})


def arguments(
    definition: WorkflowFunction[..., Any], args: Any, kwargs: dict[str, Any]
) -> dict[str, Any]:
    """Bind arguments to the workflow function's parameters (after its context), with defaults.

    Raise ``TypeError``, naming the workflow, if they do not fit its signature.
    """
    try:
        bound = definition.signature.bind(None, *args, **kwargs)
    except TypeError as exc:
        raise TypeError(f"Workflow {definition.name!r}: {exc}") from None
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    arguments.pop(next(iter(definition.signature.parameters)))
    return arguments


def check_input(
    definition: WorkflowFunction[..., Any],
    workflow: Workflow,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> tuple[list[Any], dict[str, Any]]:
    """Compare a call's arguments with the saved input; return the saved (decoded) arguments."""
    saved_args, saved_kwargs = saved_call(workflow)
    called = codec.loads(encode_input(definition.name, args, kwargs))
    try:
        saved = arguments(definition, saved_args, saved_kwargs)
    except TypeError as exc:
        raise InputMismatch(
            f"Workflow {workflow.id} was saved with input {workflow.input!r}, which no longer fits "
            f"its signature: {exc}."
        ) from None
    if not same(arguments(definition, called["args"], called["kwargs"]), saved):
        raise InputMismatch(
            f"Workflow {workflow.id} ({definition.name}) was created with arguments {saved!r}, "
            f"but was called with {arguments(definition, args, kwargs)!r}. Call it with the "
            f"arguments it was created with, or create a new workflow for new arguments."
        )
    return saved_args, saved_kwargs


def same(a: Any, b: Any) -> bool:
    """Equal, counting NaN equal to NaN (a value compared with itself after a round trip)."""
    if type(a) is not type(b):
        return bool(a == b)
    if isinstance(a, float | decimal.Decimal) and a != a:
        return bool(b != b)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[key], b[key]) for key in a)
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        return all(same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    return bool(a == b)


def signature_of(func: Any) -> inspect.Signature:
    """Return the signature of a workflow or step function, which must take a context first."""
    signature = inspect.signature(func)
    if not signature.parameters:
        raise TypeError(
            f"{func.__qualname__} must take the workflow context as its first parameter."
        )
    return signature
