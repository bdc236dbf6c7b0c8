"""Checked by mypy in tests/test_typing.py: a line ``# E: message`` says that the next line is
an error with that message; a line ``# R: type`` says what the next line's ``reveal_type``
reveals."""

from __future__ import annotations

import datetime
from typing import reveal_type

from django_pgqrs import Workflow, WorkflowHandle, workflow


@workflow
def fulfil(ctx: Workflow, order_id: str, quantity: int = 1) -> dict[str, int]:
    return {order_id: quantity}


handle = fulfil.start("order-1")
# R: django_pgqrs.handles.WorkflowHandle[dict[str, int]]
reveal_type(handle)
# R: dict[str, int]
reveal_type(handle.result())
fulfil.start("order-1", quantity=2)
fulfil.using(queue="email", run_at=datetime.timedelta(hours=1)).start("order-2")
# R: dict[str, int]
reveal_type(fulfil.run("order-3"))

# E: Argument 1 to "start" of "WorkflowFunction" has incompatible type "int"; expected "str"
fulfil.start(42)
# E: Argument "quantity" to "start" of "WorkflowFunction" has incompatible type "str"; expected "int"
fulfil.start("order-1", quantity="2")
# E: Missing positional argument "order_id" in call to "start" of "WorkflowFunction"
fulfil.start()
# E: Unexpected keyword argument "queue" for "start" of "WorkflowFunction"
fulfil.start("order-1", queue="email")
# E: Argument 1 to "start" of "WorkflowStart" has incompatible type "int"; expected "str"
fulfil.using(queue="email").start(42)
# E: Argument "queue" to "using" of "WorkflowFunction" has incompatible type "int"; expected "str"
fulfil.using(queue=1)
# E: "dict[str, int]" has no attribute "upper"
handle.result().upper()


async def later() -> None:
    started = await fulfil.astart("order-4")
    # R: dict[str, int]
    reveal_type(await started.aresult())
    # E: Argument 1 to "astart" of "WorkflowFunction" has incompatible type "int"; expected "str"
    await fulfil.astart(1)


any_handle = WorkflowHandle(7)
# R: Any
reveal_type(any_handle.result())
