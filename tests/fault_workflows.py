"""Workflows for the tests of faults (imported by tests.workflows, so autodiscovered)."""

from __future__ import annotations

import asyncio
import enum
import os
import sys
import time
from typing import Any

from django.contrib.auth.models import Group

from django_pgqrs import Workflow, step, workflow
from tests.workflows import during_step, failures, flaky, hooks, trace


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


# --- A long atomic step -------------------------------------------------------------------------


@step(atomic=True)
def slow_atomic(ctx: Workflow, seconds: float) -> int:
    """Writes, then takes its time (a slow call), inside its transaction."""
    trace("slow_atomic")
    group = Group.objects.create(name=f"slow-{ctx.id}")  # the transaction starts here
    time.sleep(seconds)
    return group.pk


@workflow
def long_atomic(ctx: Workflow, seconds: float) -> list[Any]:
    return [slow_atomic(ctx, seconds), during_step(ctx)]


# --- A caught step failure ----------------------------------------------------------------------


class Declined(Exception):
    """A payment refused by the bank; ``code`` is the bank's reason."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@step
def charge_card(ctx: Workflow, amount: int) -> str:
    trace("charge_card")
    if failures:
        raise failures.pop(0)
    return f"ch_{amount}"


@step
def tell_customer_declined(ctx: Workflow, code: int) -> str:
    trace("tell_customer_declined")
    return f"told:{code}"


@step
def ship_order(ctx: Workflow, charge: str) -> str:
    trace("ship_order")
    return f"shipped:{charge}"


@workflow
def checkout(ctx: Workflow, amount: int) -> str:
    try:
        charge = charge_card(ctx, amount)
    except Declined as declined:
        told = tell_customer_declined(ctx, declined.code)
        flaky(ctx, told)  # a later step, which may fail
        return f"declined:{declined.code}"
    return ship_order(ctx, charge)


@workflow
def describe_decline(ctx: Workflow, amount: int) -> dict[str, Any]:
    try:
        charge_card(ctx, amount)
    except Declined as declined:
        flaky(ctx, None)
        return {
            "type": type(declined).__name__,
            "args": list(declined.args),
            "code": declined.code,
            "notes": getattr(declined, "__notes__", []),
        }
    return {}


@step
def cleanup(ctx: Workflow, amount: int) -> str:
    trace("cleanup")
    return f"cleaned:{amount}"


@workflow
def charge_then_clean_up(ctx: Workflow, amount: int) -> str:
    try:
        # After a deploy that fixed the unit, the failed call's arguments change.
        return charge_card(ctx, amount * 100 if "cents" in deployed else amount)
    finally:
        cleanup(ctx, amount)


@step
def raise_declined(ctx: Workflow) -> None:
    trace("raise_declined")
    raise Declined("no funds", code=51)


@workflow
def wrapped_failure(ctx: Workflow) -> None:
    try:
        raise_declined(ctx)
    except Declined as declined:
        raise RuntimeError("the order cannot be paid") from declined


@step(atomic=True, retries=2, backoff=0.01)
def atomic_echo_step(ctx: Workflow, value: Any) -> Any:
    trace("atomic_echo")
    return value


@workflow
def atomic_echo(ctx: Workflow, value: Any) -> Any:
    return atomic_echo_step(ctx, value)


# --- Exceptions that are not Exceptions ---------------------------------------------------------


@step
def exits(ctx: Workflow, how: str) -> str:
    trace("exits")
    if how == "exit":
        sys.exit(3)
    if how == "cancelled":
        raise asyncio.CancelledError()
    if how == "interrupt":  # as a library might; no Ctrl-C reaches a worker's runner thread
        raise KeyboardInterrupt("raised by the code")
    return how


@workflow
def exiting(ctx: Workflow, how: str) -> str:
    return exits(ctx, how)


# --- Values that no longer decode ---------------------------------------------------------------


@step
def pick(ctx: Workflow, name: str) -> Color:
    trace("pick")
    return Color[name]


@workflow
def colored(ctx: Workflow, name: str) -> str:
    color = pick(ctx, name)
    flaky(ctx, None)
    return color.value


@workflow
def color_input(ctx: Workflow, color: Color) -> str:
    return str(flaky(ctx, color.value))


# --- Deploys ------------------------------------------------------------------------------------

# Set by tests to run these workflows "after a deploy".
deployed: set[str] = set()


@step
def validate_address(ctx: Workflow, order: int) -> str:
    trace("validate_address")
    return f"valid:{order}"


@step
def charge(ctx: Workflow, order: int) -> str:
    trace("charge")
    return f"charged:{order}"


@step
def pack(ctx: Workflow, order: int) -> str:
    trace("pack")
    return f"packed:{order}"


@step(name="pack")
def pack_renamed(ctx: Workflow, order: int) -> str:
    """``pack`` renamed in the code; ``name=`` keeps its checkpoints' key."""
    trace("pack_renamed")
    return f"packed:{order}"


@workflow
def fulfil(ctx: Workflow, order: int) -> list[str]:
    done = []
    if "validate_address" in deployed:
        done.append(validate_address(ctx, order))
    done.append(charge(ctx, order))
    if "no_pack" not in deployed:
        done.append((pack_renamed if "renamed_pack" in deployed else pack)(ctx, order))
    done.append(flaky(ctx, f"shipped:{order}"))
    return done


@step
def fetch(ctx: Workflow, url: str) -> str:
    trace(f"fetch:{url}")
    return f"page of {url}"


@workflow
def fetch_all(ctx: Workflow, urls: list[str]) -> list[str]:
    if "extra_fetch" in deployed:
        urls = ["https://new.example", *urls]
    if "keyword_fetch" in deployed:
        pages = [fetch(ctx, url=url) for url in urls]
    else:
        pages = [fetch(ctx, url) for url in urls]
    flaky(ctx, None)
    return pages


# --- Retries and cancellation -------------------------------------------------------------------


@step(retries=4, backoff=0.2)
def always_failing(ctx: Workflow) -> None:
    trace("always_failing")
    if hooks:
        hooks.pop(0)(ctx)
    raise ConnectionError("the service is down")


@workflow
def retry_forever(ctx: Workflow) -> None:
    always_failing(ctx)


# --- Nested atomic steps ------------------------------------------------------------------------


@step(atomic=True)
def create_named_group(ctx: Workflow, name: str) -> int:
    trace("create_named_group")
    return Group.objects.create(name=name).pk


@step
def plain_outer(ctx: Workflow, name: str) -> int:
    return create_named_group(ctx, name)


@step(atomic=True)
def atomic_outer(ctx: Workflow, name: str) -> int:
    return create_named_group(ctx, name) + 0


@workflow
def nested_atomic(ctx: Workflow, name: str, outer: str) -> int:
    return (atomic_outer if outer == "atomic" else plain_outer)(ctx, name)


# --- Forks --------------------------------------------------------------------------------------


@step
def fork_and_call_a_step(ctx: Workflow) -> str:
    """Fork; the child calls a step with the parent's context, and exits with what it got."""
    pid = os.fork()
    if pid == 0:
        try:
            during_step(ctx)
        except Exception as exc:
            os._exit(0 if type(exc).__name__ == "StepOutsideWorkflow" else 1)
        os._exit(2)
    _, status = os.waitpid(pid, 0)
    return f"child exited {os.waitstatus_to_exitcode(status)}"


@workflow
def forking(ctx: Workflow) -> str:
    return fork_and_call_a_step(ctx)


# --- Outages ------------------------------------------------------------------------------------


def _query_while_held(ctx: Workflow, n: int) -> int:
    """Queries the database until the file named by PGQRS_TEST_HOLD is gone."""
    trace("query_while_held")
    hold = os.environ.get("PGQRS_TEST_HOLD")
    if hold and os.path.exists(hold):
        print(f"querying in workflow {ctx.id}", flush=True)
        while os.path.exists(hold):
            Group.objects.count()
            time.sleep(0.02)
    return n


query_while_held = step(name="query_while_held")(_query_while_held)
query_while_held_atomic = step(name="query_while_held", atomic=True)(_query_while_held)


@workflow
def talks_to_the_database(ctx: Workflow, n: int, atomic: bool) -> int:
    return (query_while_held_atomic if atomic else query_while_held)(ctx, n) + 1
