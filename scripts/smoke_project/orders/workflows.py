"""A two-step workflow, found by django_pgqrs's autodiscovery of `workflows` modules."""

from django_pgqrs import Workflow, step, workflow


@step
def add(ctx: Workflow, a: int, b: int) -> int:
    return a + b


@step
def describe(ctx: Workflow, total: int) -> str:
    return f"total={total}"


@workflow
def checkout(ctx: Workflow, a: int, b: int) -> str:
    return describe(ctx, add(ctx, a, b))
