"""Index operations that do not stop the workers while they build.

On PostgreSQL a plain ``CREATE INDEX`` holds a lock that blocks every write to the table until it
is built: seconds on a table of a million workflows, during which no workflow can start, claim or
checkpoint. These build it ``CONCURRENTLY`` there (the migration must be ``atomic = False``), and
as Django's ``AddIndex`` elsewhere. The migration state is ``AddIndex``'s, so ``makemigrations``
sees the model's indexes as they are.
"""

from __future__ import annotations

from typing import Any

from django.db import NotSupportedError
from django.db.migrations.operations import AddIndex


class AddIndexConcurrentlyOnPostgres(AddIndex):
    def database_forwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        if schema_editor.connection.vendor != "postgresql":
            super().database_forwards(app_label, schema_editor, from_state, to_state)
            return
        self._outside_a_transaction(schema_editor)
        model = to_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            schema_editor.add_index(model, self.index, concurrently=True)

    def database_backwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        if schema_editor.connection.vendor != "postgresql":
            super().database_backwards(app_label, schema_editor, from_state, to_state)
            return
        self._outside_a_transaction(schema_editor)
        model = from_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            schema_editor.remove_index(model, self.index, concurrently=True)

    def describe(self) -> str:
        return f"Create index {self.index.name} on {self.model_name} (concurrently on PostgreSQL)"

    def _outside_a_transaction(self, schema_editor: Any) -> None:
        if schema_editor.connection.in_atomic_block:
            raise NotSupportedError(
                f"Index {self.index.name} is built CONCURRENTLY on PostgreSQL, which cannot run "
                "inside a transaction: run this migration outside transaction.atomic()."
            )
