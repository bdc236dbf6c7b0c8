"""``@workflow`` and ``@step``: thin, typed wrappers over the engine in ``runtime``."""

from __future__ import annotations

import datetime
import functools
import inspect
import random
from collections.abc import Callable
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload

from asgiref.sync import sync_to_async

from . import enqueue, registry, runtime, steps
from .async_support import refuse_in_event_loop
from .handles import WorkflowHandle
from .inputs import signature_of
from .models import Workflow

P = ParamSpec("P")
R = TypeVar("R")


def _check_sync(func: Callable[..., Any], kind: str) -> None:
    if inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func):
        raise TypeError(
            f"@{kind} {func.__qualname__} is async; django-pgqrs runs plain (sync) functions. "
            f"Define it with `def`; call async code from inside it with asgiref's async_to_sync."
        )


def _check_name(name: str, kind: str) -> None:
    # Checkpoint keys are names, "name#N" for repeated calls, and "pgqrs.*" for primitives.
    if not name or "#" in name or name.startswith("pgqrs."):
        raise ValueError(
            f"@{kind} name {name!r}: a name must not be empty, hold '#', nor start with 'pgqrs.' "
            f"(checkpoint keys use them)."
        )


class WorkflowFunction(Generic[P, R]):
    """A function decorated with ``@workflow``.

    ``fn(ctx, *args)`` runs or resumes the workflow ``ctx`` (from ``create_workflow``);
    ``fn.run(*args)`` creates a workflow and runs it in one call.
    """

    def __init__(
        self,
        func: Callable[Concatenate[Workflow, P], R],
        name: str,
        timeout: float | datetime.timedelta | None = None,
    ) -> None:
        _check_sync(func, "workflow")
        _check_name(name, "workflow")
        if timeout is not None:
            enqueue.timeout_seconds(timeout, f"@workflow {name}: timeout")
        functools.update_wrapper(self, func)
        self.func = func
        self.name = name
        self.timeout = timeout
        self.signature = signature_of(func)

    def __call__(self, ctx: Workflow, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the workflow ``ctx`` to its end, replaying the steps it already finished."""
        refuse_in_event_loop(f"{self.name}(ctx, ...)", f"{self.name}.acall(ctx, ...)")
        return runtime.run_workflow(self, ctx, args, kwargs)  # type: ignore[no-any-return]

    async def acall(self, ctx: Workflow, *args: P.args, **kwargs: P.kwargs) -> R:
        """``fn(ctx, ...)`` for async code: the workflow runs in a thread."""
        return await sync_to_async(self.__call__)(ctx, *args, **kwargs)

    def run(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Create a workflow of this function with these arguments and run it here."""
        refuse_in_event_loop(f"{self.name}.run()", f"{self.name}.arun()")
        return runtime.start_and_run(self, args, kwargs)  # type: ignore[no-any-return]

    async def arun(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """``fn.run(...)`` for async code (an ASGI view): the workflow runs in a thread."""
        return await sync_to_async(self.run)(*args, **kwargs)

    def create(self, *args: P.args, **kwargs: P.kwargs) -> Workflow:
        """Save a PENDING workflow of this function; call the function with it to run it."""
        return enqueue.create_workflow(self.name, *args, **kwargs)

    async def acreate(self, *args: P.args, **kwargs: P.kwargs) -> Workflow:
        """``fn.create(...)`` for async code."""
        return await enqueue.acreate_workflow(self.name, *args, **kwargs)

    def start(self, *args: P.args, **kwargs: P.kwargs) -> WorkflowHandle[R]:
        """Save a workflow for a worker to run; return a handle on it (see ``start_workflow``).

        Takes the workflow's arguments only, type-checked as ``run`` takes them; the options of
        the start (idempotency key, queue, priority, run_at, timeout) go to ``using``:
        ``fn.using(queue="email").start(...)``. Called in a workflow's function, it starts a
        child workflow, once (a replay returns the same handle).
        """
        self._refuse_options(kwargs)
        return enqueue.start(self.name, args, kwargs)

    async def astart(self, *args: P.args, **kwargs: P.kwargs) -> WorkflowHandle[R]:
        """``fn.start(...)`` for async code."""
        self._refuse_options(kwargs)
        return await sync_to_async(enqueue.start)(self.name, args, kwargs)

    def using(
        self,
        *,
        idempotency_key: str | None = None,
        queue: str = "default",
        priority: int = 0,
        run_at: datetime.datetime | datetime.timedelta | None = None,
        timeout: float | datetime.timedelta | None = None,
    ) -> WorkflowStart[P, R]:
        """The options of a start: ``fn.using(queue="email", priority=5).start(order_id)``.

        A repeated ``idempotency_key`` returns the handle of the workflow saved with it, saving
        nothing. Workers of ``queue`` run it; higher ``priority`` first. ``run_at`` (an aware
        datetime, or a delay as a timedelta) defers it. ``timeout`` (seconds, or a timedelta,
        from now) replaces the workflow's own.
        """
        return WorkflowStart(
            self,
            {
                "idempotency_key": idempotency_key,
                "queue": queue,
                "priority": priority,
                "run_at": run_at,
                "timeout": timeout,
            },
        )

    def _refuse_options(self, kwargs: dict[str, Any]) -> None:
        """An option passed to ``start`` (as before ``using`` existed) is named, not guessed:
        a workflow may have an argument of that name."""
        options = sorted(set(kwargs) & _OPTIONS - set(self.signature.parameters))
        if options:
            given = ", ".join(f"{name}=..." for name in options)
            raise TypeError(
                f"{self.name}.start() takes the workflow's arguments only; {given} is an "
                f"option of the start: {self.name}.using({given}).start(...)."
            )

    def __repr__(self) -> str:
        return f"<workflow {self.name}>"


_OPTIONS = frozenset({"idempotency_key", "queue", "priority", "run_at", "timeout"})


class WorkflowStart(Generic[P, R]):
    """A workflow function with the options of a start, from ``fn.using(...)``."""

    def __init__(self, definition: WorkflowFunction[P, R], options: dict[str, Any]) -> None:
        self.definition = definition
        self.options = options

    def start(self, *args: P.args, **kwargs: P.kwargs) -> WorkflowHandle[R]:
        """Save the workflow with these options; see ``WorkflowFunction.start``."""
        return enqueue.start(self.definition.name, args, kwargs, **self.options)

    async def astart(self, *args: P.args, **kwargs: P.kwargs) -> WorkflowHandle[R]:
        """``start(...)`` for async code."""
        return await sync_to_async(enqueue.start)(
            self.definition.name, args, kwargs, **self.options
        )

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.options.items() if v is not None)
        return f"<workflow {self.definition.name} using {options}>"


class StepFunction(Generic[P, R]):
    """A function decorated with ``@step``: ``fn(ctx, *args)`` runs once per workflow call."""

    def __init__(
        self,
        func: Callable[Concatenate[Workflow, P], R],
        name: str,
        retries: int,
        backoff: float,
        retry_on: tuple[type[BaseException], ...],
        atomic: bool,
        max_delay: float | None = None,
        jitter: float = 0.0,
    ) -> None:
        _check_sync(func, "step")
        _check_name(name, "step")
        if retries < 0 or backoff < 0:
            raise ValueError(f"@step {name}: retries and backoff must not be negative.")
        if max_delay is not None and max_delay < 0:
            raise ValueError(f"@step {name}: max_delay must not be negative.")
        if not 0 <= jitter <= 1:
            raise ValueError(f"@step {name}: jitter is a fraction of the delay, from 0 to 1.")
        functools.update_wrapper(self, func)
        self.signature = signature_of(func)
        self.context_name = next(iter(self.signature.parameters))
        self.func = func
        self.name = name
        self.retries = retries
        self.backoff = backoff
        self.retry_on = retry_on
        self.atomic = atomic
        self.max_delay = max_delay
        self.jitter = jitter

    def delay(self, tries: int) -> float:
        """Seconds to wait before the retry that follows try number ``tries`` (1 for the first
        try): ``backoff`` doubled each time, at most ``max_delay``, give or take ``jitter``."""
        delay = float(self.backoff * 2 ** (tries - 1))
        if self.max_delay is not None:
            delay = min(delay, self.max_delay)
        if self.jitter:
            delay *= 1 + self.jitter * (2 * random.random() - 1)
        return delay

    def __call__(self, ctx: Workflow, *args: P.args, **kwargs: P.kwargs) -> R:
        """Return the saved result of this call, or run the step and save its result."""
        return steps.call_step(self, ctx, args, kwargs)  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"<step {self.name}>"


@overload
def workflow(func: Callable[Concatenate[Workflow, P], R], /) -> WorkflowFunction[P, R]: ...


@overload
def workflow(
    *, name: str | None = None, timeout: float | datetime.timedelta | None = None
) -> Callable[[Callable[Concatenate[Workflow, P], R]], WorkflowFunction[P, R]]: ...


def workflow(
    func: Callable[Concatenate[Workflow, P], R] | None = None,
    /,
    *,
    name: str | None = None,
    timeout: float | datetime.timedelta | None = None,
) -> Any:
    """Make a function a durable workflow, registered under ``name`` (default: its name).

    The function takes the workflow context first; its other arguments and its result must be
    storable as JSON (see ``django_pgqrs.codec``). Use bare (``@workflow``) or with options.
    ``timeout`` (seconds, or a timedelta, counted from when a workflow is saved): past it, the
    workflow ends as ERROR (``WorkflowTimedOut``) at its next step, sleep or wait.
    """

    def decorate(func: Callable[Concatenate[Workflow, P], R]) -> WorkflowFunction[P, R]:
        definition = WorkflowFunction(func, name or func.__name__, timeout)
        registry.register(definition)
        return definition

    return decorate if func is None else decorate(func)


@overload
def step(func: Callable[Concatenate[Workflow, P], R], /) -> StepFunction[P, R]: ...


@overload
def step(
    *,
    name: str | None = None,
    retries: int = 0,
    backoff: float = 1.0,
    max_delay: float | None = None,
    jitter: float = 0.0,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    atomic: bool = False,
) -> Callable[[Callable[Concatenate[Workflow, P], R]], StepFunction[P, R]]: ...


def step(
    func: Callable[Concatenate[Workflow, P], R] | None = None,
    /,
    *,
    name: str | None = None,
    retries: int = 0,
    backoff: float = 1.0,
    max_delay: float | None = None,
    jitter: float = 0.0,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    atomic: bool = False,
) -> Any:
    """Make a function a step: its result is saved, and a resumed workflow gets it back.

    ``name``: the checkpoint key (default: the function's name). ``retries``: how many more times
    to run the body after it raises one of ``retry_on`` (never after ``NonRetryable``), waiting
    ``backoff`` seconds, then twice that, and so on, at most ``max_delay``, give or take
    ``jitter`` (a fraction of the wait). A wait longer than ``PGQRS['SUSPEND_AFTER_SECONDS']``
    suspends the workflow until the next attempt. ``atomic``: run the body and save its
    checkpoint in one database transaction, so its ORM writes happen exactly once.
    """

    def decorate(func: Callable[Concatenate[Workflow, P], R]) -> StepFunction[P, R]:
        return StepFunction(
            func, name or func.__name__, retries, backoff, retry_on, atomic, max_delay, jitter
        )

    return decorate if func is None else decorate(func)
