"""The admin's indexes: every filter and search has one, and checkpoints stay HOT updates."""

from __future__ import annotations

from django.db.models import Q

from django_pgqrs.models import Workflow

# What a checkpoint writes to its workflow's row: an index on any of them (or a partial index
# whose condition reads one) would turn every checkpoint into a non-HOT update.
CHECKPOINT_COLUMNS = {"updated_at", "lease_expires_at", "lease_token", "lease_owner", "history"}


def condition_fields(condition: Q | None) -> set[str]:
    if condition is None:
        return set()
    fields = set()
    for child in condition.children:
        if isinstance(child, Q):
            fields |= condition_fields(child)
        else:
            fields.add(child[0].split("__")[0])
    return fields


def test_no_index_reads_a_column_that_a_checkpoint_writes():
    meta = Workflow._meta
    for index in [*meta.indexes, *meta.constraints]:
        fields = {field.lstrip("-") for field in getattr(index, "fields", [])}
        read = fields | condition_fields(getattr(index, "condition", None))
        assert not read & CHECKPOINT_COLUMNS, index.name


def test_the_admins_filters_and_searches_have_indexes():
    leading = {index.fields[0] for index in Workflow._meta.indexes}
    assert {"created_at", "queue", "name", "status"} <= leading
    unique = {tuple(c.fields) for c in Workflow._meta.constraints}  # type: ignore[attr-defined]
    assert ("idempotency_key",) in unique
