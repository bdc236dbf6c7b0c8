"""Signals sent as workflows run: wire metrics, error reporting and alerts to them.

Every signal is sent with ``sender=Workflow`` (the model class, as Django's model signals are)
and keyword arguments only, once the write it describes is committed (inside a test case's
transaction, right after the write). A receiver that raises is logged by Django (logger
``django.dispatch``, with its traceback) and never breaks the workflow, the worker or the
caller. With no receiver connected, a signal costs a step or a run one truth test.

``workflow_started``
    A process started a run of a workflow (its first, or a resume, a wake-up after a sleep or a
    wait, a retry by a worker). Arguments: ``workflow`` (the ``Workflow``; its ``input`` is
    loaded), ``name``, ``attempt`` (1 for the first run).

``workflow_finished``
    A workflow ended: ``status`` is ``SUCCESS``, ``ERROR`` or ``CANCELLED``. Arguments:
    ``workflow_id``, ``name``, ``status``, ``result`` (the return value, on SUCCESS), ``error``
    (on ERROR: a dict with ``type``, ``message``, ``traceback`` and ``step``, the step it failed
    on), ``exception`` (the exception itself when the failure happened in this process, else
    None). Sent by the process that ran it, by the worker that marked it ERROR after it killed
    its workers too often, or by the process that cancelled it.

``step_finished``
    A step's checkpoint was saved: ``status`` ``SUCCESS`` or ``ERROR`` (after its retries).
    Arguments: ``workflow`` (the ``Workflow``), ``step_id`` (``name``, or ``name#N`` for its Nth
    call), ``status``, ``attempts`` (how many times its body ran to an end, over all runs: a
    run killed inside the body leaves no count), ``duration``
    (seconds, of its last attempt), ``error`` (a dict, on ERROR). Replayed steps send nothing.

``workflow_recovered``
    A workflow whose owner stopped renewing its lease (killed, crashed, hung, lost its network)
    was taken over. Arguments: ``workflow_id``, ``name``, ``previous_owner`` (the process that
    held it), ``status`` (``PENDING``: a worker's recovery gave it back to run again;
    ``ERROR``: it reached ``MAX_RECOVERY_ATTEMPTS``; ``RUNNING``: ``resume()`` took it over to run
    it in its own process).
"""

from __future__ import annotations

from typing import Any

from django.db import connections, transaction
from django.dispatch import Signal

__all__ = ["step_finished", "workflow_finished", "workflow_recovered", "workflow_started"]

workflow_started = Signal()
workflow_finished = Signal()
step_finished = Signal()
workflow_recovered = Signal()


def send(signal: Signal, **kwargs: Any) -> None:
    """Send ``signal`` now. Django logs what a receiver raises (logger ``django.dispatch``) and
    goes on with the next. Callers test ``signal.receivers`` first, so that building the
    arguments costs nothing unless someone listens.

    Receivers run outside the workflow's run: a workflow they start is a workflow of its own,
    not a child of the one that sent the signal (a replay, which sends no signal, would not
    find it). Inside a test case's transaction they run in a savepoint, rolled back if one of
    them raised, so that a failed query of theirs does not break the run's transaction.
    """
    from .models import Workflow
    from .replay import current
    from .store import workflows_alias

    outside = current.set(None)
    try:
        alias = workflows_alias()
        if not connections[alias].in_atomic_block:
            signal.send_robust(sender=Workflow, **kwargs)
            return
        try:
            with transaction.atomic(using=alias):
                responses = signal.send_robust(sender=Workflow, **kwargs)
                if any(isinstance(response, Exception) for _, response in responses):
                    raise _ReceiverFailed
        except _ReceiverFailed:
            pass
    finally:
        current.reset(outside)


class _ReceiverFailed(Exception):
    """Internal: roll back the savepoint of receivers of which one raised."""


def send_on_commit(signal: Signal, using: str, **kwargs: Any) -> None:
    """Send ``signal`` once the current transaction on ``using`` commits (at once outside one,
    and inside a test case's, as the engine's own signals are)."""
    after_commit(using, lambda: send(signal, **kwargs))


def after_commit(using: str, callback: Any) -> None:
    """Call ``callback`` once the current transaction on ``using`` commits: at once outside one,
    and inside a test case's own blocks (which never commit; their rows are the test's)."""
    from .store import in_test_case_only

    if in_test_case_only(using):
        callback()
    else:
        transaction.on_commit(callback, using=using)
