"""Durable workflows for Django on PostgreSQL.

A workflow is a function made of steps; each finished step's result is saved, so a workflow that
crashed resumes where it stopped. See the README for a tour.

The names below are imported on first use: Django must load this package before its models are
ready, and most of them need the models.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .decorators import StepFunction, WorkflowFunction, step, workflow
    from .enqueue import acreate_workflow, astart_workflow, create_workflow, start_workflow
    from .exceptions import (
        DuplicateWorkflowName,
        InputMismatch,
        LeaseLost,
        NestedAtomicStep,
        NonDeterministicWorkflow,
        NonRetryable,
        PayloadError,
        PgqrsError,
        SimulatedCrash,
        StepFailed,
        StepOutsideWorkflow,
        StorageError,
        UnknownWorkflow,
        WorkflowBusy,
        WorkflowCancelled,
        WorkflowFailed,
        WorkflowFinished,
        WorkflowInTransaction,
        WorkflowMismatch,
        WorkflowNotFound,
        WorkflowSuspended,
        WorkflowTimedOut,
        WorkflowTimeout,
        WorkflowUsageError,
    )
    from .handles import WorkflowHandle
    from .models import StepStatus, Workflow, WorkflowEvent, WorkflowStatus, WorkflowStep
    from .operations import cancel_workflow, fork_workflow
    from .primitives import send_event
    from .registry import get_workflow
    from .replay import current_workflow
    from .runtime import aresume, resume

__all__ = [
    "DuplicateWorkflowName",
    "InputMismatch",
    "LeaseLost",
    "NestedAtomicStep",
    "NonDeterministicWorkflow",
    "NonRetryable",
    "PayloadError",
    "PgqrsError",
    "SimulatedCrash",
    "StepFailed",
    "StepFunction",
    "StepOutsideWorkflow",
    "StepStatus",
    "StorageError",
    "UnknownWorkflow",
    "Workflow",
    "WorkflowBusy",
    "WorkflowCancelled",
    "WorkflowEvent",
    "WorkflowFailed",
    "WorkflowFinished",
    "WorkflowFunction",
    "WorkflowHandle",
    "WorkflowInTransaction",
    "WorkflowMismatch",
    "WorkflowNotFound",
    "WorkflowStatus",
    "WorkflowStep",
    "WorkflowSuspended",
    "WorkflowTimedOut",
    "WorkflowTimeout",
    "WorkflowUsageError",
    "acreate_workflow",
    "aresume",
    "astart_workflow",
    "cancel_workflow",
    "create_workflow",
    "current_workflow",
    "fork_workflow",
    "get_workflow",
    "resume",
    "send_event",
    "start_workflow",
    "step",
    "workflow",
]

_HOMES = {
    "decorators": ["StepFunction", "WorkflowFunction", "step", "workflow"],
    "exceptions": [
        "DuplicateWorkflowName",
        "InputMismatch",
        "LeaseLost",
        "NestedAtomicStep",
        "NonDeterministicWorkflow",
        "NonRetryable",
        "PayloadError",
        "PgqrsError",
        "SimulatedCrash",
        "StepFailed",
        "StepOutsideWorkflow",
        "StorageError",
        "UnknownWorkflow",
        "WorkflowBusy",
        "WorkflowCancelled",
        "WorkflowFailed",
        "WorkflowFinished",
        "WorkflowInTransaction",
        "WorkflowMismatch",
        "WorkflowNotFound",
        "WorkflowSuspended",
        "WorkflowTimedOut",
        "WorkflowTimeout",
        "WorkflowUsageError",
    ],
    "handles": ["WorkflowHandle"],
    "models": ["StepStatus", "Workflow", "WorkflowEvent", "WorkflowStatus", "WorkflowStep"],
    "operations": ["cancel_workflow", "fork_workflow"],
    "primitives": ["send_event"],
    "registry": ["get_workflow"],
    "replay": ["current_workflow"],
    "enqueue": ["acreate_workflow", "astart_workflow", "create_workflow", "start_workflow"],
    "runtime": ["aresume", "resume"],
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _HOME_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'django_pgqrs' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
