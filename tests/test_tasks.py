"""django.tasks (Django 6.0+) on PgqrsBackend: each task call a durable workflow.

Follows what Django's own backends are tested for (enqueue, results, errors, context, signals,
validation, transactions), where it applies to a backend that runs tasks in workers.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

import django
import pytest
from asgiref.sync import async_to_sync
from django.db import transaction
from django.utils import timezone

from django_pgqrs import SimulatedCrash, Workflow, cancel_workflow, resume
from django_pgqrs.testing import crash_at, drain
from django_pgqrs.worker import Worker
from tests import workflows

pytestmark = [
    pytest.mark.skipif(django.VERSION < (6, 0), reason="django.tasks needs Django 6.0"),
    pytest.mark.django_db(transaction=True),
]

if django.VERSION >= (6, 0):
    from django.tasks import (
        TaskResultStatus,
        default_task_backend,
        task_backends,
    )
    from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist, TaskResultMismatch
    from django.tasks.signals import task_enqueued, task_finished, task_started

    from django_pgqrs.tasks import PgqrsBackend
    from tests import task_functions as tasks


def run_workers() -> None:
    Worker(queues=["default", "emails", "bulk"], burst=True).run()


@pytest.fixture
def received():
    got: list[tuple[str, Any]] = []

    def make(name):
        def receiver(sender, task_result, **kwargs):
            got.append((name, task_result.status, task_result.id))

        return receiver

    receivers = {
        task_enqueued: make("enqueued"),
        task_started: make("started"),
        task_finished: make("finished"),
    }
    for signal, receiver in receivers.items():
        signal.connect(receiver)
    yield got
    for signal, receiver in receivers.items():
        signal.disconnect(receiver)


def test_the_backend_is_configured_and_supports_everything():
    backend = task_backends["default"]
    assert isinstance(backend, PgqrsBackend)
    assert (
        backend.supports_defer,
        backend.supports_async_task,
        backend.supports_get_result,
        backend.supports_priority,
    ) == (True, True, True, True)


def test_enqueue_saves_a_ready_task_as_a_workflow():
    result = tasks.add.enqueue(2, b=3)
    assert result.status == TaskResultStatus.READY
    assert result.is_finished is False
    assert (result.started_at, result.finished_at, result.last_attempted_at) == (None, None, None)
    assert result.enqueued_at is not None
    assert (result.args, result.kwargs) == ([2], {"b": 3})
    assert result.task.func is tasks.add.func
    assert result.attempts == 0
    with pytest.raises(ValueError, match="Task has not finished yet"):
        result.return_value  # noqa: B018
    saved = Workflow.objects.get(pk=int(result.id))
    assert (saved.name, saved.status) == ("task:tests.task_functions.add", "PENDING")


def test_a_worker_runs_it_and_the_result_says_so():
    result = tasks.add.enqueue(2, 3)
    run_workers()
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.is_finished is True
    assert result.return_value == 5
    assert result.enqueued_at <= result.started_at <= result.finished_at
    assert result.last_attempted_at == result.started_at
    assert result.attempts == 1
    assert len(result.worker_ids) == 1
    assert result.errors == []
    again = tasks.add.get_result(result.id)
    assert (again.status, again.return_value) == (TaskResultStatus.SUCCESSFUL, 5)


def test_async_tasks_run_too():
    result = tasks.add_async.enqueue(1, 1)
    run_workers()
    assert tasks.add_async.get_result(result.id).return_value == 2


def test_aenqueue_and_aget_result():
    async def enqueue_and_read() -> None:
        result = await tasks.add.aenqueue(20, 22)
        assert result.status == TaskResultStatus.READY
        fetched = await default_task_backend.aget_result(result.id)
        assert (fetched.id, fetched.args) == (result.id, [20, 22])
        await result.arefresh()
        assert result.status == TaskResultStatus.READY

    async_to_sync(enqueue_and_read)()


def test_arguments_come_back_as_json_has_them():
    result = tasks.echo.enqueue((1, 2), when={"a": (3,)})
    assert (result.args, result.kwargs) == ([[1, 2]], {"when": {"a": [3]}})
    run_workers()
    assert tasks.echo.get_result(result.id).return_value == [[[1, 2]], {"when": {"a": [3]}}]


def test_arguments_json_cannot_hold_are_refused_and_nothing_is_saved():
    with pytest.raises(TypeError):
        tasks.echo.enqueue(object())
    assert Workflow.objects.count() == 0


@pytest.mark.parametrize(
    ("task_name", "exception", "message"),
    [
        ("fail", ValueError, "This task failed due to ValueError"),
        ("exit_task", SystemExit, "This task failed due to SystemExit"),
    ],
)
def test_a_failing_task_is_failed_with_its_error(task_name, exception, message, caplog):
    task = getattr(tasks, task_name)
    args = [message] if task_name == "fail" else []
    result = task.enqueue(*args)
    with caplog.at_level(logging.ERROR, logger="django.tasks"):
        run_workers()
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    with pytest.raises(ValueError, match="Task failed"):
        result.return_value  # noqa: B018
    assert result.is_finished is True
    assert result.started_at <= result.finished_at
    (error,) = result.errors
    assert error.exception_class is exception
    assert error.traceback.endswith(f"{exception.__name__}: {message}\n"), error.traceback
    assert any(message in r.getMessage() or message in (r.exc_text or "") for r in caplog.records)


def test_a_result_json_cannot_hold_fails_the_task():
    result = tasks.unstorable_result.enqueue()
    run_workers()
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    assert result.errors[0].exception_class is TypeError
    assert "Unsupported type" in result.errors[0].traceback


def test_each_failed_run_keeps_its_error_and_its_worker():
    result = tasks.fail.enqueue("first")
    run_workers()
    with pytest.raises(ValueError):
        resume(int(result.id))
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    assert len(result.errors) == 2
    assert [e.exception_class for e in result.errors] == [ValueError, ValueError]
    assert result.attempts == 2


def test_a_task_taking_context_gets_its_result_and_attempt():
    result = tasks.my_id.enqueue(1)
    run_workers()
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL, result.errors
    assert result.return_value == result.id


def test_priority_queue_and_run_after_are_the_workflows():
    later = timezone.now() + datetime.timedelta(hours=1)
    deferred = tasks.add.using(run_after=later, priority=-5).enqueue(1, 2)
    email = tasks.send_email.enqueue("ana@example.com")
    saved = Workflow.objects.get(pk=int(deferred.id))
    assert (saved.priority, saved.queue, saved.run_at) == (-5, "default", later)
    assert deferred.task.run_after == later
    assert (email.task.priority, email.task.queue_name) == (10, "emails")
    assert Workflow.objects.get(pk=int(email.id)).queue == "emails"
    Worker(queues=["default"], burst=True).run()
    assert tasks.add.get_result(deferred.id).status == TaskResultStatus.READY  # not due
    assert tasks.send_email.get_result(email.id).status == TaskResultStatus.READY  # other queue
    Worker(queues=["emails"], burst=True).run()
    assert tasks.send_email.get_result(email.id).return_value == "sent to ana@example.com"


def test_higher_priority_runs_first():
    low = tasks.add.using(priority=-10).enqueue(0, 0)
    high = tasks.add.using(priority=100).enqueue(1, 1)
    run_workers()
    assert tasks.add.get_result(high.id).started_at < tasks.add.get_result(low.id).started_at


def test_validation_refuses_bad_queues_and_priorities():
    with pytest.raises(InvalidTask, match="Queue 'nowhere' is not valid for backend"):
        tasks.add.using(queue_name="nowhere").enqueue(1, 2)
    with pytest.raises(InvalidTask, match="priority"):
        tasks.add.using(priority=101)
    with pytest.raises(InvalidTask, match="run_after must be an aware datetime"):
        tasks.add.using(run_after=datetime.datetime(2030, 1, 1))
    assert Workflow.objects.count() == 0


def test_validation_on_aenqueue():
    with pytest.raises(InvalidTask, match="Queue 'nowhere' is not valid for backend"):
        async_to_sync(tasks.add.using(queue_name="nowhere").aenqueue)(1, 2)


def test_a_cancelled_task_is_failed_with_a_cancellation_error():
    result = tasks.add.enqueue(1, 2)
    cancel_workflow(int(result.id))
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    assert result.errors[-1].exception_class_path == "django_pgqrs.exceptions.WorkflowCancelled"
    from django_pgqrs import WorkflowCancelled

    assert result.errors[-1].exception_class is WorkflowCancelled


def test_unknown_results_do_not_exist():
    for missing in ["123456", "not-a-number", ""]:
        with pytest.raises(TaskResultDoesNotExist):
            default_task_backend.get_result(missing)
    # A workflow that is no task is no task result either.
    handle = workflows.add_three.start(1)
    with pytest.raises(TaskResultDoesNotExist):
        default_task_backend.get_result(str(handle.id))


def test_a_result_of_another_task_is_a_mismatch():
    result = tasks.add.enqueue(1, 2)
    with pytest.raises(TaskResultMismatch):
        tasks.fail.get_result(result.id)


def test_enqueue_joins_the_callers_transaction():
    with pytest.raises(ZeroDivisionError), transaction.atomic():
        result = tasks.add.enqueue(1, 2)
        assert Workflow.objects.filter(pk=int(result.id)).exists()
        1 / 0  # noqa: B018
    assert not Workflow.objects.exists()
    with pytest.raises(TaskResultDoesNotExist):
        default_task_backend.get_result(result.id)


def test_signals_are_sent_after_the_commit(received):
    with transaction.atomic():
        result = tasks.add.enqueue(1, 2)
        assert received == []  # not enqueued until the commit
    assert received == [("enqueued", TaskResultStatus.READY, result.id)]
    run_workers()
    assert received[1:] == [
        ("started", TaskResultStatus.RUNNING, result.id),
        ("finished", TaskResultStatus.SUCCESSFUL, result.id),
    ]


def test_a_failure_is_signalled_and_logged_with_its_traceback(received, caplog):
    result = tasks.fail.enqueue("boom")
    with caplog.at_level(logging.DEBUG, logger="django.tasks"):
        run_workers()
    assert received[-1] == ("finished", TaskResultStatus.FAILED, result.id)
    logged = [r for r in caplog.records if r.name == "django.tasks"]
    assert [
        f"state={s}" in r.getMessage() for r, s in zip(logged, ["RUNNING", "FAILED"], strict=True)
    ] == [
        True,
        True,
    ]
    assert logged[-1].levelno == logging.ERROR
    assert "ValueError: boom" in (logged[-1].exc_text or "")


def test_steps_of_a_task_are_checkpointed_so_a_crashed_task_resumes():
    result = tasks.checkout.enqueue("order-7")
    with crash_at("charge"), pytest.raises(SimulatedCrash):
        drain()
    assert workflows.runs == {"reserve": 1}
    assert not tasks.checkout.get_result(result.id).is_finished
    drain()  # as the next worker would
    result.refresh()
    assert result.return_value == ["reserved order-7", "charged order-7"]
    assert workflows.runs == {"reserve": 1, "charge": 1}  # reserve was not run again


def test_a_task_whose_worker_was_killed_resumes_without_rerunning_its_finished_steps(processes):
    short_lease = {"PGQRS_TEST_LEASE_SECONDS": "1", "PGQRS_TEST_HEARTBEAT_SECONDS": "0.3"}
    result = tasks.checkout.enqueue("order-9")
    processes.hold.touch()
    worker = processes.start(
        "pgqrs_worker", "--burst", PGQRS_TEST_HOLD=str(processes.hold), **short_lease
    )
    processes.wait_for_line(worker, f"waiting in charge of workflow {result.id}")
    worker.kill()
    worker.wait(timeout=10)
    processes.hold.unlink()
    result.refresh()
    assert result.status == TaskResultStatus.RUNNING  # as its dead worker left it
    from tests.test_crash import wait_for_lease_to_expire

    wait_for_lease_to_expire(int(result.id))  # else the next worker finds nothing to take back
    finished = processes.run("pgqrs_worker", "--burst", **short_lease)
    assert finished.returncode == 0, finished.stderr
    result.refresh()
    assert result.return_value == ["reserved order-9", "charged order-9"]
    assert processes.traced() == ["reserve", "charge", "charge"]
    assert result.attempts == 2  # two workers ran it
    assert len(set(result.worker_ids)) == 2


def test_a_worker_says_which_task_queues_it_does_not_run(processes):
    none = processes.run("pgqrs_worker", "--burst", "--queues", "reports")
    assert none.returncode == 0, none.stderr
    assert "Tasks of TASKS['default'] go to queues 'default', 'emails'; this worker runs none" in (
        none.stderr
    )
    assert "Tasks of TASKS['bulk'] go to queues 'bulk'; this worker runs none" in none.stderr
    some = processes.run("pgqrs_worker", "--burst", "--queues", "default,bulk")
    assert "in queues 'emails' are left to other workers" in some.stderr
    assert "WARNING" not in some.stderr
    every = processes.run("pgqrs_worker", "--burst", "--queues", "default,emails,bulk")
    assert "Tasks of" not in every.stderr


def test_verbosity_zero_quiets_djangos_lines_about_the_tasks_it_runs(processes):
    every_queue = ("--queues", "default,emails,bulk")
    first = tasks.add.enqueue(1, 2)
    loud = processes.run("pgqrs_worker", "--burst", *every_queue, PGQRS_TEST_LOGGING="1")
    assert loud.returncode == 0, loud.stderr
    assert f"LOGGED INFO Task id={first.id} path=tests.task_functions.add state=SUCCESSFUL" in (
        loud.stderr
    )
    second = tasks.add.enqueue(3, 4)
    quiet = processes.run(
        "pgqrs_worker", "--burst", "-v", "0", *every_queue, PGQRS_TEST_LOGGING="1"
    )
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""
    assert tasks.add.get_result(second.id).return_value == 7


def test_a_cancellation_is_signalled_as_a_failed_task(received):
    result = tasks.add.enqueue(1, 2)
    cancel_workflow(int(result.id))
    assert received[-1] == ("finished", TaskResultStatus.FAILED, result.id)


def test_every_process_of_a_project_using_the_backend_hears_its_signals(processes):
    # Not only the processes that enqueued or ran a task: the backend's receivers are
    # connected when Django starts.
    shown = processes.run("shell", "-c", "import sys; print('django_pgqrs.tasks' in sys.modules)")
    assert shown.stdout.strip().splitlines()[-1] == "True", shown.stderr


def test_a_task_enqueued_by_a_task_is_enqueued_once_and_is_no_child(received):
    from django_pgqrs.testing import advance, reset_clock

    outer = tasks.schedule_then_nap.enqueue(5)
    try:
        run_workers()  # runs until its durable wait
        advance(3600)
        run_workers()  # its replay enqueues nothing more
    finally:
        reset_clock()
    outer.refresh()
    inner_id = outer.return_value
    (inner,) = Workflow.objects.filter(name="task:tests.task_functions.follow_up")
    assert (inner.pk, inner.parent_id, inner.status) == (inner_id, None, "PENDING")
    assert tasks.follow_up.get_result(str(inner_id)).task.run_after is not None
    assert [r for r in received if r[0] == "enqueued" and r[2] == str(inner_id)] == [
        ("enqueued", TaskResultStatus.READY, str(inner_id))
    ]
    # One attempt of the outer task, though it ran twice around its wait.
    assert [r[0] for r in received if r[2] == outer.id] == ["enqueued", "started", "finished"]
    assert outer.attempts == 1


def test_a_durable_wait_in_a_task_is_not_another_attempt():
    from django_pgqrs.testing import advance, reset_clock

    result = tasks.nap_then_count.enqueue()
    try:
        run_workers()
        advance(3600)
        run_workers()
    finally:
        reset_clock()
    result.refresh()
    assert (result.return_value, result.attempts) == (1, 1)


def test_a_task_may_take_an_argument_named_ctx():
    result = tasks.takes_ctx.enqueue(ctx="mine")
    run_workers()
    assert tasks.takes_ctx.get_result(result.id).return_value == "mine"


def test_a_second_alias_of_the_backend_keeps_its_tasks_and_its_queues(received):
    result = tasks.my_id.using(backend="bulk", queue_name="bulk").enqueue(1)
    assert result.backend == "bulk"
    saved = Workflow.objects.get(pk=int(result.id))
    assert saved.name == "task@bulk:tests.task_functions.my_id"
    with pytest.raises(TaskResultDoesNotExist):
        default_task_backend.get_result(result.id)  # not one of the default backend's
    run_workers()
    done = task_backends["bulk"].get_result(result.id)
    assert (done.status, done.return_value, done.backend) == (
        TaskResultStatus.SUCCESSFUL,
        result.id,
        "bulk",
    )
    assert [r[0] for r in received if r[2] == result.id] == ["enqueued", "started", "finished"]


def test_a_task_whose_function_is_gone_is_given_back_with_the_reason():
    missing = Workflow.objects.create(
        name="task:tests.task_functions.renamed_since", input={"args": [], "kwargs": {}}
    )
    broken = Workflow.objects.create(
        name="task:tests.broken_task_module.job", input={"args": [], "kwargs": {}}
    )
    run_workers()
    for row, reason in [
        (missing, "ImportError"),
        (broken, "RuntimeError: this module is broken"),
    ]:
        row.refresh_from_db()
        assert (row.status, row.lease_owner) == ("PENDING", None)  # given back, not stuck RUNNING
        assert reason in row.error["message"]
        assert "renamed or removed" in row.error["message"]
    with pytest.raises(TaskResultDoesNotExist, match="cannot be imported"):
        default_task_backend.get_result(str(missing.pk))
    # A module that raises something else on import has no result either (it raised that).
    with pytest.raises(TaskResultDoesNotExist, match="RuntimeError: this module is broken"):
        default_task_backend.get_result(str(broken.pk))
