"""Workflow functions by name, so a saved workflow can be resumed by any process.

Filled when Django starts: ``AppConfig.ready()`` imports the ``workflows`` module of every
installed app (as the admin does with ``admin.py``), and each ``@workflow`` registers itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .exceptions import DuplicateWorkflowName, UnknownWorkflow

if TYPE_CHECKING:
    from .decorators import WorkflowFunction

_workflows: dict[str, WorkflowFunction[..., Any]] = {}
# Names of the workflows of django.tasks tasks (``task:<module path>``, ``task@<backend
# alias>:<module path>``): resolved by importing the task, not registered.
TASK_PREFIXES = ("task:", "task@")
# Names registered after Django started: from a module no installed app's `workflows` module
# imports, so other processes (workers) do not know them.
_late: set[str] = set()


def register(definition: WorkflowFunction[..., Any]) -> None:
    """Register a workflow function under its name.

    Raise ``DuplicateWorkflowName`` if another function already holds the name. Registering the
    same function again (a module imported twice) replaces the entry.
    """
    existing = _workflows.get(definition.name)
    if existing is not None and _origin(existing) != _origin(definition):
        raise DuplicateWorkflowName(
            f"Two workflows are named {definition.name!r}: {_origin(existing)} and "
            f"{_origin(definition)}. Give one of them another name with @workflow(name=...)."
        )
    _workflows[definition.name] = definition
    from django.apps import apps

    if apps.ready:
        _late.add(definition.name)
    else:
        _late.discard(definition.name)


def unknown_elsewhere(name: str) -> bool:
    """Whether workflow ``name`` was registered after Django started (see ``_late``)."""
    return name in _late


def unregister(name: str) -> None:
    """Forget a workflow name (for tests that define workflows on the fly)."""
    _workflows.pop(name, None)
    _late.discard(name)


def get_workflow(name: str) -> WorkflowFunction[..., Any]:
    """Return the workflow function registered under ``name``; raise ``UnknownWorkflow``.

    Workflows of ``django.tasks`` tasks (``task:<module path>``) are not registered: the task's
    module is imported when one is first needed (see ``django_pgqrs.tasks``).
    """
    try:
        return _workflows[name]
    except KeyError:
        pass
    if name.startswith(TASK_PREFIXES):
        try:
            from .tasks import resolve
        except Exception as exc:  # Django < 6.0 (a row from a newer deploy), a broken setting
            raise UnknownWorkflow(name, f"django_pgqrs.tasks cannot be imported: {exc}") from exc
        return resolve(name)
    raise UnknownWorkflow(name)


def is_registered(name: str) -> bool:
    """Whether a workflow function is registered under ``name``."""
    return name in _workflows


def workflow_names() -> list[str]:
    """Return the registered workflow names, sorted."""
    return sorted(_workflows)


def _origin(definition: WorkflowFunction[..., Any]) -> str:
    func = definition.func
    return f"{func.__module__}.{func.__qualname__}"
