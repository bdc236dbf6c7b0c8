"""A ``django.tasks`` backend (Django 6.0+): each ``@task`` call runs as a durable workflow.

    TASKS = {"default": {"BACKEND": "django_pgqrs.tasks.PgqrsBackend"}}

``my_task.enqueue(...)`` saves a workflow named ``task:<module path of the function>`` in the
caller's transaction (as ``fn.start()`` does), and ``manage.py pgqrs_worker`` runs it. Inside the
task, ``@step`` functions called with ``current_workflow()`` are checkpointed, so a task whose
process died resumes where it stopped; without steps a task simply runs again, as with any
backend. Priority, ``run_after`` and ``queue_name`` are the workflow's priority, due time and
queue. ``get_result()`` reads the workflow: PENDING is READY; RUNNING, and SLEEPING (a task
waiting durably, or between retries of a step), are RUNNING; SUCCESS is SUCCESSFUL; ERROR is
FAILED, and so is CANCELLED, with a ``WorkflowCancelled`` error. ``errors`` and ``worker_ids``
come from the workflow's history, one entry per run.

Django's ``task_enqueued`` (once the enqueuing transaction commits), ``task_started`` and
``task_finished`` (once the run's start and end are saved) are sent.
"""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Any, ParamSpec, TypeVar, cast

import django
from django.core.exceptions import ImproperlyConfigured

if django.VERSION < (6, 0):
    raise ImproperlyConfigured(
        f"django_pgqrs.tasks is a backend for django.tasks, which Django 6.0 introduced; this "
        f"is Django {django.get_version()}. Use @workflow with fn.start() instead, or upgrade."
    )

from django.db import transaction
from django.tasks import TaskContext, TaskResult, TaskResultStatus, task_backends
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.base import Task, TaskError
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
from django.tasks.signals import task_enqueued, task_finished, task_started
from django.utils.json import normalize_json
from django.utils.module_loading import import_string

from . import enqueue, signals
from .decorators import WorkflowFunction
from .exceptions import UnknownWorkflow
from .models import Workflow, WorkflowStatus
from .store import workflows_alias

__all__ = ["PREFIX", "PgqrsBackend"]

logger = logging.getLogger("django_pgqrs.worker")

P = ParamSpec("P")
R = TypeVar("R")

# Workflows of tasks are named PREFIX + the task function's module path.
PREFIX = "task:"

_STATUS = {
    WorkflowStatus.PENDING: TaskResultStatus.READY,
    WorkflowStatus.RUNNING: TaskResultStatus.RUNNING,
    WorkflowStatus.SLEEPING: TaskResultStatus.RUNNING,
    WorkflowStatus.SUCCESS: TaskResultStatus.SUCCESSFUL,
    WorkflowStatus.ERROR: TaskResultStatus.FAILED,
    WorkflowStatus.CANCELLED: TaskResultStatus.FAILED,
}


class PgqrsBackend(BaseTaskBackend):
    """Runs tasks as durable workflows of django-pgqrs (see the module's documentation)."""

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def enqueue(
        self, task: Task[P, R], args: list[Any], kwargs: dict[str, Any]
    ) -> TaskResult[P, R]:
        """Save the task's call as a workflow for a worker; return its READY result."""
        self.validate_task(task)
        # As JSON has them (a tuple is a list), as Django's other backends give them back.
        call = normalize_json({"args": list(args), "kwargs": dict(kwargs)})
        assert isinstance(call, dict)
        definition = workflow_of(task)
        handle = enqueue.start(
            definition.name,
            tuple(call["args"]),
            call["kwargs"],
            queue=task.queue_name,
            priority=task.priority,
            run_at=task.run_after,
        )
        result = cast("TaskResult[P, R]", self.get_result(str(handle.id)))
        transaction.on_commit(
            lambda: task_enqueued.send(type(self), task_result=result), using=handle.using
        )
        return result

    def get_result(self, result_id: str) -> TaskResult[..., Any]:
        """The task's result as its workflow is now; raise ``TaskResultDoesNotExist``."""
        try:
            workflow_id = int(result_id)
        except (TypeError, ValueError):
            raise TaskResultDoesNotExist(result_id) from None
        row = (
            Workflow.objects.using(workflows_alias())
            .filter(pk=workflow_id, name__startswith=PREFIX)
            .first()
        )
        if row is None:
            raise TaskResultDoesNotExist(result_id)
        return task_result(row, self.alias)


def backend_queues() -> dict[str, set[str]]:
    """The queues of each ``PgqrsBackend`` in ``TASKS``, by alias (empty: any queue)."""
    queues = {}
    for alias in task_backends.settings:
        backend = task_backends[alias]
        if isinstance(backend, PgqrsBackend):
            queues[alias] = set(backend.queues)
    return queues


def check_worker_queues(worker_queues: list[str]) -> None:
    """Say, at a worker's start, which queues of the task backends it does not run."""
    for alias, queues in backend_queues().items():
        missing = sorted(queues - set(worker_queues))
        if not missing:
            continue
        names = ", ".join(repr(queue) for queue in missing)
        if len(missing) == len(queues):
            logger.warning(
                "Tasks of TASKS[%r] go to queues %s; this worker runs none of them (it runs %s). "
                "Start a worker with --queues %s for them.",
                alias,
                names,
                ", ".join(worker_queues),
                ",".join(sorted(queues)),
            )
        else:
            logger.info("Tasks of TASKS[%r] in queues %s are left to other workers.", alias, names)


def workflow_of(task: Task[..., Any]) -> WorkflowFunction[..., Any]:
    """The workflow that runs ``task``'s function."""
    return _workflow(task.module_path)


def resolve(name: str) -> WorkflowFunction[..., Any]:
    """The workflow of a task's workflow ``name`` (``task:<module path>``), for any process:
    the task's module is imported. Raise ``UnknownWorkflow`` if it is no task any more."""
    try:
        return _workflow(name.removeprefix(PREFIX))
    except (ImportError, AttributeError, InvalidTask, ImproperlyConfigured) as exc:
        raise UnknownWorkflow(name) from exc


def find_task(module_path: str) -> Task[..., Any]:
    """The ``Task`` at ``module_path``; raise ``ImportError`` if there is none."""
    found = import_string(module_path)
    if not isinstance(found, Task):
        raise ImportError(f"{module_path} is not a task (a function decorated with @task).")
    return found


@functools.cache
def _workflow(module_path: str) -> WorkflowFunction[..., Any]:
    task = find_task(module_path)
    parameters = list(inspect.signature(task.func).parameters.values())
    if task.takes_context:
        parameters = parameters[1:]
    context = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_ONLY)

    def run_task(ctx: Workflow, *args: Any, **kwargs: Any) -> Any:
        current = find_task(module_path)
        if current.takes_context:
            backend = current.get_backend()
            result = task_result(ctx_row(ctx), backend.alias)
            args = (TaskContext(task_result=result), *args)
        return normalize_json(current.call(*args, **kwargs))

    run_task.__signature__ = inspect.Signature([context, *parameters])  # type: ignore[attr-defined]
    run_task.__qualname__ = run_task.__name__ = task.func.__name__
    run_task.__module__ = task.func.__module__
    return WorkflowFunction(run_task, PREFIX + module_path)


def ctx_row(ctx: Workflow) -> Workflow:
    """The running workflow's row as saved (its start times, its history)."""
    return Workflow.objects.using(ctx._state.db or workflows_alias()).get(pk=ctx.pk)


def task_result(row: Workflow, backend: str) -> TaskResult[..., Any]:
    """The ``TaskResult`` of a task's workflow row."""
    task = find_task(row.name.removeprefix(PREFIX))
    run_after = row.run_at if row.run_at > row.created_at else None
    task = task.using(
        priority=row.priority, queue_name=row.queue, run_after=run_after, backend=backend
    )
    finished = row.status in (
        WorkflowStatus.SUCCESS,
        WorkflowStatus.ERROR,
        WorkflowStatus.CANCELLED,
    )
    saved = row.input if isinstance(row.input, dict) else {}
    result: TaskResult[..., Any] = TaskResult(
        task=task,
        id=str(row.pk),
        status=_STATUS[WorkflowStatus(row.status)],
        enqueued_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.updated_at if finished else None,
        last_attempted_at=row.attempted_at,
        args=list(saved.get("args") or []),
        kwargs=dict(saved.get("kwargs") or {}),
        backend=backend,
        errors=_errors(row),
        worker_ids=row.worker_ids,
    )
    if row.status == WorkflowStatus.SUCCESS:
        object.__setattr__(result, "_return_value", row.result)
    return result


def _errors(row: Workflow) -> list[TaskError]:
    """One error per failed run, oldest first; a cancellation last."""
    errors = [
        _task_error(entry["error"])
        for entry in row.history or []
        if entry.get("outcome") == WorkflowStatus.ERROR and isinstance(entry.get("error"), dict)
    ]
    if row.status == WorkflowStatus.ERROR and row.error:
        last = (row.history or [{}])[-1]
        if last.get("error") != row.error:  # failed by the recovery limit, not by a run
            errors.append(_task_error(row.error))
    if row.status == WorkflowStatus.CANCELLED:
        errors.append(
            TaskError(
                exception_class_path="django_pgqrs.exceptions.WorkflowCancelled",
                traceback=f"django_pgqrs.exceptions.WorkflowCancelled: Workflow {row.pk} was "
                f"cancelled.\n",
            )
        )
    return errors


def _task_error(error: dict[str, Any]) -> TaskError:
    kind = str(error.get("type") or "Exception")
    path = kind if "." in kind else f"builtins.{kind}"
    trace = str(error.get("traceback") or f"{kind}: {error.get('message', '')}\n")
    return TaskError(exception_class_path=path, traceback=trace)


# --- Django's task signals, sent from the workflows' ----------------------------------------


def _result_of(workflow_id: int) -> TaskResult[..., Any] | None:
    row = Workflow.objects.using(workflows_alias()).filter(pk=workflow_id).first()
    if row is None:
        return None
    try:
        task = find_task(row.name.removeprefix(PREFIX))
    except ImportError:
        return None
    backend = task_backends[task.backend]
    return task_result(row, backend.alias)


def _started(sender: Any, workflow: Workflow, name: str, **kwargs: Any) -> None:
    if name.startswith(PREFIX):
        result = _result_of(workflow.pk)
        if result is not None:
            task_started.send(type(result.task.get_backend()), task_result=result)


def _finished(sender: Any, workflow_id: int, name: str, **kwargs: Any) -> None:
    if name.startswith(PREFIX):
        result = _result_of(workflow_id)
        if result is not None:
            task_finished.send(type(result.task.get_backend()), task_result=result)


signals.workflow_started.connect(_started, dispatch_uid="django_pgqrs.tasks.started")
signals.workflow_finished.connect(_finished, dispatch_uid="django_pgqrs.tasks.finished")
