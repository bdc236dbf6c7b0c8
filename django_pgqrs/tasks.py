"""A ``django.tasks`` backend (Django 6.0+): each ``@task`` call runs as a durable workflow.

    TASKS = {"default": {"BACKEND": "django_pgqrs.tasks.PgqrsBackend"}}

``my_task.enqueue(...)`` saves a workflow named ``task:<module path of the function>``
(``task@<alias>:<module path>`` for a backend alias other than ``default``) in the caller's
transaction (as ``fn.start()`` does), and ``manage.py pgqrs_worker`` runs it. Inside the task,
``@step`` functions called with ``current_workflow()`` are checkpointed, so a task whose process
died resumes where it stopped; without steps a task simply runs again, as with any backend. A
task enqueued from a workflow's function (a task's own code) is enqueued once: its replay does
not enqueue it again. Priority, ``run_after`` and ``queue_name`` are the workflow's priority,
due time and queue. ``get_result()`` reads the workflow: PENDING is READY; RUNNING, and SLEEPING
(a task waiting durably, or between retries of a step), are RUNNING; SUCCESS is SUCCESSFUL;
ERROR is FAILED, and so is CANCELLED, with a ``WorkflowCancelled`` error. ``errors`` and
``worker_ids`` come from the workflow's history, one per attempt (a durable wait does not start
another).

Django's ``task_enqueued`` (once the enqueuing transaction commits), ``task_started`` and
``task_finished`` (once the run's start and end are saved) are sent.
"""

from __future__ import annotations

import functools
import hashlib
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
from django.tasks import (
    DEFAULT_TASK_BACKEND_ALIAS,
    TaskContext,
    TaskResult,
    TaskResultStatus,
    task_backends,
)
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.base import Task, TaskError
from django.tasks.exceptions import TaskResultDoesNotExist
from django.tasks.signals import task_enqueued, task_finished, task_started
from django.utils.json import normalize_json
from django.utils.module_loading import import_string

from . import enqueue, signals
from .async_support import refuse_in_event_loop
from .decorators import WorkflowFunction
from .exceptions import UnknownWorkflow
from .models import FINISHED, Workflow, WorkflowStatus
from .registry import TASK_PREFIXES
from .replay import running_here
from .store import store_for, workflows_alias

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
        """Save the task's call as a workflow for a worker; return its READY result.

        In a workflow's function (a task's own code, say) the enqueue is made once: a replay
        gets the task enqueued the first time. It is no child of that workflow: cancelling one
        does not cancel the other.
        """
        self.validate_task(task)
        refuse_in_event_loop("task.enqueue()", "task.aenqueue()")
        # As JSON has them (a tuple is a list), as Django's other backends give them back.
        call = normalize_json({"args": list(args), "kwargs": dict(kwargs)})
        assert isinstance(call, dict)
        definition = workflow_of(task, self.alias)
        store = store_for(workflows_alias())
        workflow_id, created = enqueue.insert_or_find(
            store,
            definition,
            tuple(call["args"]),
            call["kwargs"],
            idempotency_key=_replay_key(definition.name),
            queue=task.queue_name,
            priority=task.priority,
            run_at=task.run_after,
            deadline_at=None,
        )
        result = cast("TaskResult[P, R]", self.get_result(str(workflow_id)))
        if created:
            transaction.on_commit(
                lambda: task_enqueued.send(type(self), task_result=result), using=store.alias
            )
        return result

    def get_result(self, result_id: str) -> TaskResult[..., Any]:
        """The task's result as its workflow is now; raise ``TaskResultDoesNotExist`` (also
        for a task whose function was renamed or removed since)."""
        try:
            workflow_id = int(result_id)
        except (TypeError, ValueError):
            raise TaskResultDoesNotExist(result_id) from None
        row = (
            Workflow.objects.using(workflows_alias())
            .filter(pk=workflow_id, name__startswith=prefix(self.alias))
            .first()
        )
        if row is None:
            raise TaskResultDoesNotExist(result_id)
        try:
            return task_result(row)
        except ImportError as exc:
            raise TaskResultDoesNotExist(
                f"{result_id}: its task {split(row.name)[1]} cannot be imported ({exc})."
            ) from exc


def prefix(alias: str) -> str:
    """The start of the names of the workflows of tasks of backend ``alias``."""
    return PREFIX if alias == DEFAULT_TASK_BACKEND_ALIAS else f"task@{alias}:"


def split(name: str) -> tuple[str, str]:
    """The backend alias and the task's module path of a task's workflow ``name``."""
    if name.startswith(PREFIX):
        return DEFAULT_TASK_BACKEND_ALIAS, name.removeprefix(PREFIX)
    alias, _, module_path = name.removeprefix("task@").partition(":")
    return alias, module_path


def _replay_key(name: str) -> str | None:
    """In a workflow's function: an idempotency key for its Nth enqueue of task ``name``, the
    same in every replay; else None."""
    run = running_here()
    if run is None:
        return None
    counter = f"pgqrs.enqueue:{name}"
    count = run.per_name[counter] = run.per_name.get(counter, 0) + 1
    digest = hashlib.sha256(f"{counter}#{count}".encode()).hexdigest()[:24]
    return f"pgqrs.task:{run.workflow.id}:{digest}"


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


def workflow_of(task: Task[..., Any], alias: str) -> WorkflowFunction[..., Any]:
    """The workflow that runs ``task``'s function for backend ``alias``."""
    return _workflow(alias, task.module_path)


def resolve(name: str) -> WorkflowFunction[..., Any]:
    """The workflow of a task's workflow ``name``, for any process: the task's module is
    imported. Raise ``UnknownWorkflow`` if it is no task any more, or does not import."""
    alias, module_path = split(name)
    try:
        return _workflow(alias, module_path)
    except Exception as exc:  # whatever the module raises on import
        raise UnknownWorkflow(
            name,
            f"its task {module_path} cannot be imported ({type(exc).__name__}: {exc}). Was it "
            f"renamed or removed? Deploy it again to run what is saved, or cancel those "
            f"workflows.",
        ) from exc


def find_task(module_path: str) -> Task[..., Any]:
    """The ``Task`` at ``module_path``; raise ``ImportError`` if there is none, or if its module
    raises whatever else on import (a module broken since the task was enqueued)."""
    try:
        found = import_string(module_path)
    except ImportError:
        raise
    except Exception as exc:
        raise ImportError(f"{module_path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(found, Task):
        raise ImportError(f"{module_path} is not a task (a function decorated with @task).")
    return found


@functools.cache
def _workflow(alias: str, module_path: str) -> WorkflowFunction[..., Any]:
    task = find_task(module_path)
    parameters = list(inspect.signature(task.func).parameters.values())
    if task.takes_context:
        parameters = parameters[1:]
    # Positional only, and named so as to clash with no parameter of the task's.
    context = inspect.Parameter("_pgqrs_workflow_", inspect.Parameter.POSITIONAL_ONLY)

    def run_task(workflow: Workflow, /, *args: Any, **kwargs: Any) -> Any:
        current = find_task(module_path)
        if current.takes_context:
            result = task_result(ctx_row(workflow))
            args = (TaskContext(task_result=result), *args)
        return normalize_json(current.call(*args, **kwargs))

    run_task.__signature__ = inspect.Signature([context, *parameters])  # type: ignore[attr-defined]
    run_task.__qualname__ = run_task.__name__ = task.func.__name__
    run_task.__module__ = task.func.__module__
    return WorkflowFunction(run_task, prefix(alias) + module_path)


def ctx_row(ctx: Workflow) -> Workflow:
    """The running workflow's row as saved (its start times, its history)."""
    return Workflow.objects.using(ctx._state.db or workflows_alias()).get(pk=ctx.pk)


def task_result(row: Workflow) -> TaskResult[..., Any]:
    """The ``TaskResult`` of a task's workflow row; raise ``ImportError`` if its task is gone."""
    alias, module_path = split(row.name)
    task = find_task(module_path)
    # The deferral asked for, while it has not started (run_at moves with sleeps and retries).
    run_after = row.run_at if row.started_at is None and row.run_at > row.created_at else None
    task = task.using(
        priority=row.priority, queue_name=row.queue, run_after=run_after, backend=alias
    )
    finished = row.status in FINISHED
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
        backend=alias,
        errors=_errors(row),
        worker_ids=_workers(row),
    )
    if row.status == WorkflowStatus.SUCCESS:
        object.__setattr__(result, "_return_value", row.result)
    return result


def _workers(row: Workflow) -> list[str]:
    """The worker of each attempt, oldest first: an attempt is a run of the task from its
    start, or after a failure, a lost worker or a stop, to its end; a durable wait splits an
    attempt into runs (its last run's worker is named), and a run given back before the task
    could start (its function was not found) is none."""
    workers = []
    for entry in row.attempt_history:
        outcome = entry.get("outcome")
        if outcome == "SLEEPING" or (outcome == "PENDING" and entry.get("error")):
            continue
        workers.append(str(entry.get("worker") or ""))
    if row.status == WorkflowStatus.RUNNING and row.lease_owner:
        workers.append(row.lease_owner)
    return workers


def _errors(row: Workflow) -> list[TaskError]:
    """One error per failed run, oldest first; a cancellation last."""
    history = row.attempt_history
    errors = [
        _task_error(entry["error"])
        for entry in history
        if entry.get("outcome") == WorkflowStatus.ERROR and isinstance(entry.get("error"), dict)
    ]
    if row.status == WorkflowStatus.ERROR and row.error:
        last = history[-1] if history else {}
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


def _row(workflow_id: int) -> Workflow | None:
    return Workflow.objects.using(workflows_alias()).filter(pk=workflow_id).first()


def _send(signal: Any, row: Workflow | None) -> None:
    if row is None:
        return
    try:
        result = task_result(row)
    except ImportError:
        return
    signal.send(type(task_backends[result.backend]), task_result=result)


def _started(sender: Any, workflow: Workflow, name: str, **kwargs: Any) -> None:
    if name.startswith(TASK_PREFIXES):
        row = _row(workflow.pk)
        # Once per attempt: not again when it wakes from a durable wait.
        history = row.attempt_history if row is not None else []
        if not history or history[-1].get("outcome") != "SLEEPING":
            _send(task_started, row)


def _finished(sender: Any, workflow_id: int, name: str, **kwargs: Any) -> None:
    if name.startswith(TASK_PREFIXES):
        _send(task_finished, _row(workflow_id))


signals.workflow_started.connect(_started, dispatch_uid="django_pgqrs.tasks.started")
signals.workflow_finished.connect(_finished, dispatch_uid="django_pgqrs.tasks.finished")
