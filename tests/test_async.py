"""Async callers: ASGI views and coroutines start, run and wait for workflows."""

from __future__ import annotations

import asyncio
import datetime
import re
import time

import pytest
from asgiref.sync import async_to_sync
from django.core.exceptions import SynchronousOnlyOperation
from django.test import AsyncClient

from django_pgqrs import (
    Workflow,
    WorkflowFailed,
    WorkflowHandle,
    WorkflowTimeout,
    acreate_workflow,
    aresume,
    astart_workflow,
    create_workflow,
)
from django_pgqrs.worker import Worker
from tests import fault_workflows, workflows
from tests.workflows import runs

pytestmark = pytest.mark.django_db(transaction=True)


def test_an_asgi_view_runs_a_workflow_with_arun():
    response = async_to_sync(AsyncClient().get)("/async/run/", {"n": 4})
    assert response.status_code == 200
    assert response.json() == {"result": 7}
    assert Workflow.objects.get().status == "SUCCESS"


def test_an_asgi_view_starts_a_workflow_and_another_waits_for_its_result():
    client = AsyncClient()
    started = async_to_sync(client.get)("/async/start/", {"n": 1}).json()
    assert started["status"] == "PENDING"
    Worker(burst=True).run()
    response = async_to_sync(client.get)(f"/async/result/{started['id']}/", {"timeout": 5})
    assert response.json() == {"result": 4}


def test_a_sync_entry_point_in_an_asgi_view_names_its_async_twin():
    with pytest.raises(
        SynchronousOnlyOperation, match=r"add_three\.run\(\).*await add_three\.arun"
    ):
        async_to_sync(AsyncClient().get)("/async/sync-call/")
    assert not Workflow.objects.exists()


@pytest.mark.parametrize(
    ("call", "twin"),
    [
        (lambda: workflows.add_three.run(1), "add_three.arun()"),
        (lambda: workflows.add_three.start(1), "astart"),
        (lambda: create_workflow("add_three", 1), "acreate_workflow()"),
        (lambda: WorkflowHandle(1).status(), "handle.astatus()"),
        (lambda: WorkflowHandle(1).result(), "handle.aresult()"),
    ],
)
def test_each_sync_entry_point_refuses_a_running_event_loop(call, twin):
    async def misuse() -> None:
        call()

    with pytest.raises(SynchronousOnlyOperation, match=re.escape(f"await {twin}")):
        asyncio.run(misuse())


def test_a_running_workflow_does_not_block_the_event_loop():
    ticks = []

    async def tick() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    async def main() -> list[object]:
        ticker = asyncio.ensure_future(tick())
        try:
            return [await fault_workflows.long_atomic.arun(0.5)]
        finally:
            ticker.cancel()

    started = time.monotonic()
    (result,) = async_to_sync(main)()
    assert result[1] == "done"
    assert len([t for t in ticks if t - started < 0.5]) > 10


def test_the_async_twins_create_start_wait_and_resume():
    async def main() -> tuple[object, ...]:
        ctx = await acreate_workflow("add_three", 1)
        handle = await astart_workflow("add_three", 2)
        failing = await workflows.failing.astart("no")
        return ctx, handle, failing

    ctx, handle, failing = async_to_sync(main)()
    Worker(burst=True).run()

    async def wait() -> tuple[object, ...]:
        with pytest.raises(WorkflowFailed, match="RuntimeError: no"):
            await failing.aresult(timeout=1)
        with pytest.raises(WorkflowTimeout):
            later = datetime.timedelta(hours=1)
            await (await workflows.add_three.using(run_at=later).astart(3)).aresult(timeout=0.1)
        return (
            await handle.aresult(timeout=1),
            await aresume(ctx.id),
            await workflows.add_three.acall(ctx, 1),
        )

    assert async_to_sync(wait)() == (5, 4, 4)
    assert runs["add_one"] == 6
