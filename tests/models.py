"""Models of the test app (no migrations: ``migrate --run-syncdb`` and the test runner make them)."""

from __future__ import annotations

from django.db import models


class ChaosEffect(models.Model):
    """A row written by an atomic step of the chaos workflows.

    Deliberately without a unique constraint: a step whose writes committed twice leaves two
    rows, where a constraint would hide the double run behind an IntegrityError.
    """

    workflow_id = models.BigIntegerField()
    step_key = models.CharField(max_length=100)
    pid = models.IntegerField()  # the process that wrote it, to tell double runs apart
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.workflow_id}/{self.step_key}"
