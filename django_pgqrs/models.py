"""Workflows and their step checkpoints.

The table and column names are part of the public contract (the guide's monitoring SQL runs on
them verbatim), so they are spelled out rather than left to Django's defaults.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any

from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from .codec import PayloadDecoder, PayloadEncoder

if TYPE_CHECKING:
    from .handles import WorkflowHandle
    from .replay import Run


class WorkflowStatus(models.TextChoices):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SLEEPING = "SLEEPING"
    SUCCESS = "SUCCESS"
    ERROR = "ERROR"
    CANCELLED = "CANCELLED"


# A finished workflow runs no more (unless resumed or forked); an unfinished one has a run to come.
FINISHED = (WorkflowStatus.SUCCESS, WorkflowStatus.ERROR, WorkflowStatus.CANCELLED)
UNFINISHED = (WorkflowStatus.PENDING, WorkflowStatus.RUNNING, WorkflowStatus.SLEEPING)


class StepStatus(models.TextChoices):
    SUCCESS = "SUCCESS"
    ERROR = "ERROR"


def _payload(**kwargs: Any) -> models.JSONField[Any]:
    return models.JSONField(encoder=PayloadEncoder, decoder=PayloadDecoder, **kwargs)


class WorkflowQuerySet(models.QuerySet["Workflow"]):
    def unfinished(self) -> WorkflowQuerySet:
        """Workflows that have not reached SUCCESS, ERROR or CANCELLED."""
        return self.filter(status__in=UNFINISHED)

    def owned(self) -> WorkflowQuerySet:
        """Running workflows whose owner's lease has not expired (as of this process's clock)."""
        return self.filter(status=WorkflowStatus.RUNNING, lease_expires_at__gt=timezone.now())


class Workflow(models.Model):
    """One execution of a ``@workflow`` function; also the context (``ctx``) its steps receive.

    ``input`` holds the call's arguments as ``{"args": [...], "kwargs": {...}}``; ``result`` the
    workflow's return value; ``error`` the type, message and traceback of its last failure.
    """

    id = models.BigAutoField(primary_key=True, db_column="workflow_id")
    name = models.CharField(max_length=255)
    status = models.CharField(
        max_length=16, choices=WorkflowStatus.choices, default=WorkflowStatus.PENDING
    )
    input = _payload(null=True, blank=True)
    result = _payload(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # Ownership: the process running the workflow holds a lease it must renew.
    lease_owner = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001 - no owner
    lease_token = models.UUIDField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(
        default=0, help_text="How many times a process has started or resumed this workflow."
    )
    recovery_attempts = models.PositiveIntegerField(
        default=0, help_text="How many times it was taken over after its owner's lease expired."
    )
    # Scheduling, for workers.
    queue = models.CharField(max_length=64, default="default")
    priority = models.IntegerField(default=0)
    run_at = models.DateTimeField(default=timezone.now, help_text="Not started before this time.")
    # NULL, not "", where unset: the unique constraint applies only where a key is set.
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001
    parent = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="children",
        db_index=False,  # indexed below, only where set
    )
    # Past this, the workflow ends as ERROR at its next step, sleep or wait (see timeouts).
    deadline_at = models.DateTimeField(null=True, blank=True)
    # The workflow this one was forked from (fork_workflow): it kept that one's checkpoints
    # before a step, and ran the rest.
    forked_from = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="forks",
        db_index=False,
    )

    # When a process first started running it, and when the latest run started.
    started_at = models.DateTimeField(null=True, blank=True, editable=False)
    attempted_at = models.DateTimeField(null=True, blank=True, editable=False)
    # One entry per run that ended: {"attempt", "worker", "ended_at", "outcome", "error"?}, the
    # newest last (at most statements.HISTORY_LIMIT). ``error`` above is only the last failure.
    history = models.JSONField(null=True, blank=True, editable=False)

    objects = WorkflowQuerySet.as_manager()

    # The engine's state while this process runs the workflow (see replay.Run); not a column.
    _run: Run | None = None

    class Meta:
        db_table = "pgqrs_workflows"
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["name", "created_at"], name="pgqrs_wf_name_idx"),
            # Running and failed workflows, for the recovery query, the admin and monitoring.
            # Partial, and on columns a checkpoint does not change: checkpoints stay HOT updates
            # and finished workflows (most rows) cost this index nothing.
            models.Index(
                fields=["status", "id"],
                name="pgqrs_wf_active_idx",
                condition=Q(status__in=["RUNNING", "SLEEPING", "ERROR"]),
            ),
            # The worker's claim query: due workflows by queue, priority, age.
            models.Index(
                fields=["queue", "-priority", "run_at", "id"],
                name="pgqrs_wf_ready_idx",
                condition=Q(status__in=["PENDING", "SLEEPING"]),
            ),
            models.Index(
                fields=["parent"], name="pgqrs_wf_parent_idx", condition=Q(parent__isnull=False)
            ),
            # Deleting a workflow sets forked_from of its forks to NULL: without this index each
            # deletion would scan the whole table for them.
            models.Index(
                fields=["forked_from"],
                name="pgqrs_wf_forked_from_idx",
                condition=Q(forked_from__isnull=False),
            ),
            # The admin's filters and overview, at a million rows. None is on a column a
            # checkpoint writes (updated_at, the lease, history): checkpoints stay HOT updates.
            # The list's time range ("created in the last day").
            models.Index(fields=["created_at"], name="pgqrs_wf_created_idx"),
            # The queue filter, newest first, and the list of queues (one probe per queue).
            models.Index(fields=["queue", "id"], name="pgqrs_wf_queue_idx"),
            # The statuses the active index leaves out, but SUCCESS (most rows, found at once by
            # reading the newest first): their filter and exact count.
            models.Index(
                fields=["status", "id"],
                name="pgqrs_wf_status_idx",
                condition=Q(status__in=["PENDING", "CANCELLED"]),
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["idempotency_key"],
                name="pgqrs_wf_idempotency_key_uniq",
                condition=Q(idempotency_key__isnull=False),
            ),
        ]
        # The admin's Resume, Cancel and Fork; viewing needs only the view permission.
        permissions = [("operate_workflow", "Can resume, cancel and fork workflows")]

    def __str__(self) -> str:
        return f"{self.name} #{self.id} ({self.status})"

    # --- Durable primitives: call them from the workflow function (see ``primitives``) ---------

    def sleep(self, seconds: float | datetime.timedelta) -> None:
        """Sleep durably: a replay never sleeps twice; a long sleep frees the worker."""
        from .primitives import sleep

        sleep(self, seconds)

    def sleep_until(self, when: datetime.datetime) -> None:
        """Sleep durably until ``when``, an aware datetime."""
        from .primitives import sleep_until

        sleep_until(self, when)

    def wait_for_event(self, name: str, timeout: float | None = None) -> Any:
        """Wait durably for event ``name`` (``send_event``); return its payload, or None after
        ``timeout`` seconds."""
        from .primitives import wait_for_event

        return wait_for_event(self, name, timeout)

    def start_child(self, workflow: Any, *args: Any, **kwargs: Any) -> WorkflowHandle:
        """Start a child workflow (a workflow function or its name), once; also
        ``fn.start(...)`` in a workflow. ``handle.result()`` on it then waits durably."""
        from .primitives import start_child

        return start_child(self, workflow, *args, **kwargs)

    def wait_all(self, handles: Any, return_exceptions: bool = False) -> list[Any]:
        """Wait durably for every workflow of ``handles``; return their results in order."""
        from .primitives import wait_all

        return wait_all(self, handles, return_exceptions)

    @property
    def attempt_history(self) -> list[dict[str, Any]]:
        """The runs of this workflow that ended, oldest first, each a dict with ``attempt``
        (its number), ``worker`` (the process that ran it), ``ended_at`` (an aware datetime),
        ``outcome`` (``SUCCESS``, ``ERROR``, ``CANCELLED``, ``SLEEPING`` when it suspended,
        ``PENDING`` when it was given back, ``LOST`` when its owner stopped renewing its lease,
        with ``taken_over_by`` when a ``resume()`` took it over) and, for a failure, ``error``:
        the failure as the ``error`` column held it then."""
        entries = []
        for entry in self.history if isinstance(self.history, list) else []:
            if not isinstance(entry, dict):
                continue  # not the engine's: edited by hand, say
            entry = dict(entry)
            ended = entry.get("ended_at")
            if not isinstance(ended, str | datetime.datetime):
                entry["ended_at"] = None
            if isinstance(ended, str):
                try:
                    parsed = parse_datetime(ended.replace(" ", "T", 1))
                except ValueError:
                    parsed = None
                if parsed is not None and timezone.is_naive(parsed):
                    parsed = timezone.make_aware(parsed, datetime.UTC)
                entry["ended_at"] = parsed
            entries.append(entry)
        return entries

    @property
    def worker_ids(self) -> list[str]:
        """The workers that ran this workflow, one per run, oldest first; the current owner last
        while it runs."""
        workers = [entry["worker"] for entry in self.attempt_history if entry.get("worker")]
        if self.status == WorkflowStatus.RUNNING and self.lease_owner:
            workers.append(self.lease_owner)
        return workers

    @classmethod
    def saved(cls, using: str, **fields: Any) -> Workflow:
        """Return an instance of a row the engine has just written, without reading it back."""
        workflow = cls(**fields)
        workflow._state.adding = False
        workflow._state.db = using
        return workflow


class WorkflowEvent(models.Model):
    """An event sent to a workflow (``send_event``), kept until the workflow receives it.

    ``ctx.wait_for_event(name)`` receives the oldest event of that name not yet received, and
    marks it with the step that received it: each event is received once.
    """

    workflow = models.ForeignKey(
        Workflow, on_delete=models.CASCADE, related_name="events", db_column="workflow_id"
    )
    name = models.CharField(max_length=255)
    payload = _payload(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    received_at = models.DateTimeField(null=True, blank=True)
    # The checkpoint key of the wait that received it.
    received_by = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001

    class Meta:
        db_table = "pgqrs_workflow_events"
        ordering = ["workflow", "id"]
        indexes = [
            # A wait looks for the oldest event of its name not yet received.
            models.Index(
                fields=["workflow", "name", "id"],
                name="pgqrs_event_pending_idx",
                condition=Q(received_at__isnull=True),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} -> workflow {self.workflow_id}"


class WorkflowStep(models.Model):
    """The checkpoint of one step call: its saved output, or its last error.

    ``step_id`` is the step's name; the Nth call of the same step in one workflow is saved as
    ``name#N``. Keys are names, not positions, so adding a step to a workflow's code does not
    shift the saved checkpoints of workflows already under way.
    """

    workflow = models.ForeignKey(
        Workflow,
        on_delete=models.CASCADE,
        related_name="steps",
        db_column="workflow_id",
        # The unique (workflow, step_id) index serves lookups by workflow; a second one would
        # only slow every checkpoint down.
        db_index=False,
    )
    step_id = models.CharField(max_length=255)
    position = models.PositiveIntegerField(help_text="Call order within the workflow.")
    status = models.CharField(max_length=16, choices=StepStatus.choices)
    output = _payload(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=1)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    # A digest of the call's arguments: a replay calling the step with others is refused.
    args_digest = models.CharField(max_length=32, null=True, blank=True)  # noqa: DJ001 - unset

    class Meta:
        db_table = "pgqrs_workflow_steps"
        ordering = ["workflow", "position"]
        constraints = [
            models.UniqueConstraint(
                fields=["workflow", "step_id"], name="pgqrs_step_workflow_step_id_uniq"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.step_id} ({self.status})"
