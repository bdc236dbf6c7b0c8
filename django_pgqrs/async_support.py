"""Async callers: the engine's entry points from async code, and the guard on the sync ones.

Workflow and step bodies stay plain functions; an async twin (``fn.arun``, ``fn.astart``,
``handle.aresult``, ...) runs its sync entry point in a thread through asgiref's
``sync_to_async`` (thread-sensitive, as Django runs its ORM from async code), so that the event
loop goes on while the workflow runs. A sync entry point called where an event loop is running
would block it: it raises ``SynchronousOnlyOperation`` naming its twin, as Django's ORM does.
"""

from __future__ import annotations

import asyncio
import os

from django.core.exceptions import SynchronousOnlyOperation


def refuse_in_event_loop(call: str, twin: str) -> None:
    """Raise ``SynchronousOnlyOperation`` if an event loop runs in this thread.

    ``DJANGO_ALLOW_ASYNC_UNSAFE`` lifts the guard, as it lifts Django's.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    if os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE"):
        return
    raise SynchronousOnlyOperation(
        f"{call} cannot be called from async code (an event loop runs in this thread, and it "
        f"would block it). Use `await {twin}` instead."
    )
