"""Background execution: start(), handles, and real pgqrs_worker processes."""

from __future__ import annotations

import contextlib
import datetime
import signal
import socket
import threading
import time
from collections import Counter

import pytest
from django.db import connection, transaction
from django.utils import timezone

from django_pgqrs import (
    Workflow,
    WorkflowFailed,
    WorkflowMismatch,
    WorkflowStep,
    WorkflowTimeout,
    create_workflow,
    operations,
    start_workflow,
)
from django_pgqrs.worker import Worker
from tests import fault_workflows, workflows
from tests.fault_workflows import exiting
from tests.test_values import COLOR, TAG, write_raw
from tests.worker_workflows import worker_failing, worker_poison, worker_three

pytestmark = pytest.mark.django_db(transaction=True)

# Short leases and polls, so that recovery happens within the test's patience.
FAST = {
    "PGQRS_TEST_LEASE_SECONDS": "1.5",
    "PGQRS_TEST_HEARTBEAT_SECONDS": "0.3",
    "PGQRS_TEST_POLL_SECONDS": "0.1",
}


def wait_until(condition, timeout: float = 20, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def worker_holding_in_step_two(processes, n: int, *args: str, **env: str):
    """Start worker_three(n) and a worker that runs it and waits inside its second step."""
    processes.hold.touch()
    handle = worker_three.start(n)
    worker = processes.start("pgqrs_worker", *args, PGQRS_TEST_HOLD=str(processes.hold), **env)
    processes.wait_for_line(worker, f"holding workflow {handle.id}")
    return handle, worker


def lease_expired(workflow_id: int) -> bool:
    row = Workflow.objects.get(pk=workflow_id)
    return row.lease_expires_at is not None and row.lease_expires_at < timezone.now()


def test_start_saves_a_pending_workflow_and_returns_a_handle():
    handle = worker_three.using(queue="reports", priority=5).start(1)
    saved = handle.workflow()
    assert handle.id == saved.id and handle.status() == "PENDING"
    assert (saved.name, saved.queue, saved.priority) == ("worker_three", "reports", 5)
    assert saved.input == {"args": [1], "kwargs": {}}
    assert saved.run_at <= timezone.now()
    assert start_workflow("worker_three", 2).status() == "PENDING"


def test_enqueueing_in_a_rolled_back_transaction_saves_nothing():
    with pytest.raises(RuntimeError), transaction.atomic():
        worker_three.start(1)
        raise RuntimeError("roll back")
    assert not Workflow.objects.exists()


def test_a_repeated_idempotency_key_returns_the_existing_workflow():
    first = worker_three.using(idempotency_key="order-1").start(1)
    again = worker_three.using(idempotency_key="order-1").start(2)
    assert again == first
    assert Workflow.objects.count() == 1
    with pytest.raises(WorkflowMismatch, match="order-1"):
        start_workflow("worker_failing", "x", idempotency_key="order-1")


def test_a_worker_runs_started_workflows_and_logs_each(processes):
    handles = [worker_three.start(n) for n in range(5)]
    done = processes.run("pgqrs_worker", "--burst")
    assert done.returncode == 0, done.stderr
    assert [handle.result(timeout=5) for handle in handles] == [1, 3, 5, 7, 9]
    for handle in handles:
        assert f"Workflow {handle.id} (worker_three) started, attempt 1" in done.stderr
        assert f"Workflow {handle.id} (worker_three) succeeded in" in done.stderr
    assert "stopped: 5 workflows run (5 succeeded, 0 failed)" in done.stderr


def test_result_raises_the_workflows_error_or_times_out(processes):
    failing = worker_failing.start("no such order")
    waiting = worker_three.using(run_at=datetime.timedelta(hours=1)).start(1)
    assert processes.run("pgqrs_worker", "--burst").returncode == 0
    with pytest.raises(WorkflowFailed, match="ValueError: no such order") as caught:
        failing.result(timeout=5)
    assert caught.value.error["step"] == "fail"
    with pytest.raises(WorkflowTimeout, match="PENDING"):
        waiting.result(timeout=0.2)


def test_workers_take_higher_priority_first_then_older():
    low = worker_three.using(priority=0).start(1)
    high = worker_three.using(priority=10).start(2)
    later = worker_three.using(priority=10).start(3)
    Worker(burst=True).run()
    started = list(
        Workflow.objects.order_by("steps__started_at").values_list("id", flat=True).distinct()
    )
    order = [pk for pk in dict.fromkeys(started)]
    assert order == [high.id, later.id, low.id]


def test_a_workflow_due_later_waits_for_its_time():
    handle = worker_three.using(run_at=timezone.now() + datetime.timedelta(hours=1)).start(1)
    Worker(burst=True).run()
    assert handle.status() == "PENDING"
    Workflow.objects.filter(pk=handle.id).update(run_at=timezone.now())
    Worker(burst=True).run()
    assert handle.result(timeout=1) == 3


def test_a_worker_runs_only_its_queues():
    email = worker_three.using(queue="email").start(1)
    other = worker_three.start(2)
    Worker(queues=["email"], burst=True).run()
    assert (email.status(), other.status()) == ("SUCCESS", "PENDING")


def test_an_idle_worker_wakes_on_notify_not_on_its_poll(processes, postgres_only):
    worker = processes.start("pgqrs_worker", PGQRS_TEST_POLL_SECONDS="30")
    processes.wait_for_stderr(worker, "started: queues default")
    time.sleep(0.5)  # let it go idle, listening
    handle = worker_three.start(4)
    assert handle.result(timeout=10) == 9  # far sooner than its 30 s poll
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0


def test_a_killed_worker_is_replaced_and_finished_steps_do_not_run_again(processes):
    handle, doomed = worker_holding_in_step_two(processes, 7, **FAST)
    heir = processes.start("pgqrs_worker", **FAST)
    processes.wait_for_stderr(heir, "started: queues default")
    doomed.kill()
    killed = time.monotonic()
    processes.hold.unlink()
    assert handle.result(timeout=20) == 15
    # Lease 1.5 s + poll 0.1 s, with room for a loaded machine.
    assert time.monotonic() - killed < 1.5 + 0.1 + 3
    assert Counter(processes.traced()) == {"first:7": 1, "second:7": 2, "third:14": 1}
    saved = Workflow.objects.get(pk=handle.id)
    assert (saved.attempts, saved.recovery_attempts) == (2, 1)
    heir.send_signal(signal.SIGTERM)
    assert heir.wait(timeout=20) == 0
    # The log names the dead owner (host:pid:thread), read before recovery cleared it.
    assert f"its owner {socket.gethostname()}:{doomed.pid}:" in processes.stderr_of(heir)


def test_a_burst_worker_says_why_it_waits_before_taking_back_a_dead_workers_workflow(processes):
    from tests.test_crash import wait_for_lease_to_expire

    handle, doomed = worker_holding_in_step_two(processes, 3, **FAST)
    doomed.kill()
    doomed.wait(timeout=10)
    processes.hold.unlink()
    wait_for_lease_to_expire(handle.id)
    heir = processes.run("pgqrs_worker", "--burst", **FAST)
    assert heir.returncode == 0, heir.stderr
    assert "a running workflow's lease expired; waiting" in heir.stderr
    assert heir.stderr.count("lease expired; waiting") == 1  # once, whatever the threads
    assert handle.result(timeout=1) == 7


def test_a_step_longer_than_the_lease_keeps_its_workflow_thanks_to_the_heartbeat(processes):
    handle, owner = worker_holding_in_step_two(processes, 2, **FAST)
    rival = processes.start("pgqrs_worker", **FAST)
    processes.wait_for_stderr(rival, "started: queues default")
    time.sleep(3 * 1.5)  # three lease lengths inside one step: only renewals keep it
    assert not lease_expired(handle.id)
    processes.hold.unlink()
    assert handle.result(timeout=10) == 5
    saved = Workflow.objects.get(pk=handle.id)
    assert (saved.attempts, saved.recovery_attempts) == (1, 0)
    assert Counter(processes.traced()) == {"first:2": 1, "second:2": 1, "third:4": 1}
    for worker in (owner, rival):
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=20) == 0


def test_many_workers_run_every_workflow_exactly_once(processes):
    count = 500 if connection.vendor == "postgresql" else 100
    handles = [worker_three.start(n) for n in range(count)]
    workers = [processes.start("pgqrs_worker", "--burst", "--concurrency", "2") for _ in range(4)]
    for worker in workers:
        assert worker.wait(timeout=120) == 0, processes.stderr_of(worker)
    assert set(Workflow.objects.values_list("status", flat=True)) == {"SUCCESS"}
    assert set(Workflow.objects.values_list("attempts", flat=True)) == {1}
    assert WorkflowStep.objects.count() == 3 * count
    assert [handle.result(timeout=1) for handle in handles] == [2 * n + 1 for n in range(count)]
    traced = Counter(processes.traced())
    assert len(traced) == 3 * count and set(traced.values()) == {1}


def test_sigterm_lets_the_running_workflow_finish_and_exits_zero(processes):
    handle, worker = worker_holding_in_step_two(processes, 1)
    worker.send_signal(signal.SIGTERM)
    processes.wait_for_stderr(worker, "SIGTERM received")
    later = worker_three.start(2)
    processes.hold.unlink()
    assert worker.wait(timeout=20) == 0
    assert handle.result(timeout=1) == 3
    assert later.status() == "PENDING"  # not claimed after the signal


def test_sigterm_gives_back_what_outlives_the_grace_period(processes):
    handle, worker = worker_holding_in_step_two(processes, 5, "--grace-seconds", "0.3")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0
    saved = Workflow.objects.get(pk=handle.id)
    assert (saved.status, saved.lease_token) == ("PENDING", None)
    processes.hold.unlink()
    assert processes.run("pgqrs_worker", "--burst").returncode == 0
    assert handle.result(timeout=1) == 11
    assert Counter(processes.traced()) == {"first:5": 1, "second:5": 2, "third:10": 1}


def test_a_second_signal_exits_at_once_and_gives_the_lease_back(processes):
    handle, worker = worker_holding_in_step_two(processes, 1)
    worker.send_signal(signal.SIGINT)
    processes.wait_for_stderr(worker, "SIGINT received")
    worker.send_signal(signal.SIGINT)
    assert worker.wait(timeout=10) == 1
    assert Workflow.objects.get(pk=handle.id).status == "PENDING"


def test_a_workflow_that_keeps_killing_its_worker_is_marked_error(processes):
    handle = worker_poison.start()
    env = dict(FAST, PGQRS_TEST_MAX_RECOVERY_ATTEMPTS="1")
    for _ in range(2):  # the first run, then the one recovery allowed
        assert processes.run("pgqrs_worker", "--burst", **env).returncode == -signal.SIGKILL
        wait_until(lambda: lease_expired(handle.id), what="the lease to expire")
    done = processes.run("pgqrs_worker", "--burst", **env)
    assert done.returncode == 0, done.stderr
    with pytest.raises(WorkflowFailed, match="RecoveryLimitReached") as caught:
        handle.result(timeout=1)
    assert "MAX_RECOVERY_ATTEMPTS" in caught.value.error["message"]
    assert "recovery limit of 1 reached" in done.stderr
    assert processes.traced() == ["die", "die"]


def test_a_stale_owner_cannot_write_after_losing_its_lease(processes):
    handle, stale = worker_holding_in_step_two(processes, 3, **FAST)
    stale.send_signal(signal.SIGSTOP)  # as if its machine froze: no heartbeat, no progress
    wait_until(lambda: lease_expired(handle.id), what="the frozen owner's lease to expire")
    processes.hold.unlink()
    assert processes.run("pgqrs_worker", "--burst", **FAST).returncode == 0
    assert handle.result(timeout=1) == 7
    saved = {s.step_id: (s.output, s.completed_at) for s in WorkflowStep.objects.all()}
    stale.send_signal(signal.SIGCONT)
    processes.wait_for_stderr(stale, f"Workflow {handle.id} (worker_three): lease lost")
    assert {s.step_id: (s.output, s.completed_at) for s in WorkflowStep.objects.all()} == saved
    assert Workflow.objects.get(pk=handle.id).status == "SUCCESS"
    stale.send_signal(signal.SIGTERM)
    assert stale.wait(timeout=20) == 0


def test_a_worker_waits_for_a_database_unreachable_at_start(processes, postgres_only):
    handle = worker_three.start(6)
    proxy = DelayedProxy(target_port=int(connection.settings_dict["PORT"] or 5432), delay=2.0)
    try:
        worker = processes.start("pgqrs_worker", "--burst", PGPORT=str(proxy.port))
        assert worker.wait(timeout=30) == 0
        assert "unreachable" in processes.stderr_of(worker)
    finally:
        proxy.close()
    assert handle.result(timeout=1) == 13


def test_workers_survive_a_postgresql_restart(processes, postgres_only, private_postgres):
    # A cluster of the test's own: the suite's server may be shared, and must not be restarted.
    from tests.chaos import UNFINISHED, PrivateDatabase

    database = PrivateDatabase.create(private_postgres, "restart")
    database.migrate()
    count = 300
    database.enqueue([("worker_three", [n], 0.0) for n in range(count)])
    workers = [
        processes.start("pgqrs_worker", "--concurrency", "2", **FAST, **database.settings)
        for _ in range(2)
    ]

    def statuses() -> Counter[str]:
        with database.connect() as db:
            return Counter(
                dict(db.execute("SELECT status, count(*) FROM pgqrs_workflows GROUP BY 1"))
            )

    before = wait_until(lambda: (done := statuses())["SUCCESS"] > 20 and done, what="some progress")
    private_postgres.restart()
    assert before["SUCCESS"] < count, "every workflow finished before the restart"
    wait_until(
        lambda: not any(statuses()[status] for status in UNFINISHED),
        timeout=90,
        what="every workflow to finish after the restart",
    )
    with database.connect() as db:
        saved = db.execute("SELECT input, status, result, error FROM pgqrs_workflows").fetchall()
        steps = db.execute("SELECT count(*) FROM pgqrs_workflow_steps").fetchone()[0]
    wrong = [row for row in saved if row[1:3] != ("SUCCESS", 2 * row[0]["args"][0] + 1)]
    assert not wrong, wrong[:5]
    assert len(saved) == count and steps == 3 * count
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0, processes.stderr_of(worker)
    logs = "".join(processes.stderr_of(worker) for worker in workers)
    assert "stopped:" in logs


class DelayedProxy:
    """A TCP port that forwards to the database, but only ``delay`` seconds from now."""

    def __init__(self, target_port: int, delay: float) -> None:
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.target_port = target_port
        self._closed = threading.Event()
        self._server: socket.socket | None = None
        threading.Thread(target=self._serve, args=(delay,), daemon=True).start()

    def _serve(self, delay: float) -> None:
        if self._closed.wait(delay):
            return
        server = self._server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen()
        while not self._closed.is_set():
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed.set()
        if self._server is not None:
            self._server.close()


# --- Faults in workflows never stop the fleet --------------------------------------------------


def test_workflows_whose_saved_values_no_longer_decode_fail_alone_and_the_fleet_goes_on(processes):
    workflows.failures.append(RuntimeError("later step fails"))
    ctx = create_workflow("colored", "RED")
    with pytest.raises(RuntimeError):
        fault_workflows.colored(ctx, "RED")
    pick = WorkflowStep.objects.get(workflow=ctx.id, step_id="pick").pk
    write_raw("pgqrs_workflow_steps", "output", "id", pick, {TAG: "enum", "cls": COLOR, "v": "x"})
    operations.requeue([ctx.id])
    bad_input = fault_workflows.color_input.start(fault_workflows.Color.RED)
    purple = {TAG: "enum", "cls": COLOR, "v": "purple"}
    write_raw("pgqrs_workflows", "input", "workflow_id", bad_input.id, {"args": [purple]})
    good = [worker_three.start(n) for n in range(6)]

    done = processes.run("pgqrs_worker", "--burst", "--concurrency", "2")
    assert done.returncode == 0, done.stderr
    assert [handle.result(timeout=1) for handle in good] == [1, 3, 5, 7, 9, 11]
    for workflow_id, needle in ((ctx.id, "step 'pick'"), (bad_input.id, "'purple'")):
        # Only these columns: the input of one of them no longer decodes.
        status, token, error, attempts = Workflow.objects.values_list(
            "status", "lease_token", "error", "attempts"
        ).get(pk=workflow_id)
        assert (status, token) == ("ERROR", None)
        assert error["type"] == "django_pgqrs.exceptions.PayloadError"
        assert needle in error["message"]
    assert attempts == 1  # the one whose input no longer decodes ran once
    assert "8 workflows run (6 succeeded, 2 failed)" in done.stderr
    assert "Exception in thread" not in done.stderr


def test_a_step_raising_system_exit_cancelled_error_or_keyboard_interrupt_fails_its_workflow(
    processes,
):
    exited, cancelled = exiting.start("exit"), exiting.start("cancelled")
    interrupted = exiting.start("interrupt")
    good = [worker_three.start(n) for n in range(4)]
    done = processes.run("pgqrs_worker", "--burst", "--concurrency", "2", timeout=30)
    assert done.returncode == 0, done.stderr
    assert [handle.result(timeout=1) for handle in good] == [1, 3, 5, 7]
    with pytest.raises(WorkflowFailed, match="SystemExit: 3"):
        exited.result(timeout=1)
    with pytest.raises(WorkflowFailed, match="CancelledError"):
        cancelled.result(timeout=1)
    # In a runner thread a KeyboardInterrupt is the code's own: no Ctrl-C is delivered there.
    # (It was taken for a stop of the process, given back and run again without end.)
    with pytest.raises(WorkflowFailed, match="KeyboardInterrupt: raised by the code"):
        interrupted.result(timeout=1)
    assert Counter(processes.traced())["exits"] == 3  # each ran once: failures, not crashes
    assert "7 workflows run (4 succeeded, 3 failed)" in done.stderr


def test_a_worker_whose_runners_cannot_go_on_exits_with_an_error(processes):
    worker_three.start(1)
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE pgqrs_workflows RENAME TO pgqrs_workflows_away")
    try:
        done = processes.run("pgqrs_worker", "--burst", **FAST)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("ALTER TABLE pgqrs_workflows_away RENAME TO pgqrs_workflows")
    assert done.returncode == 1, done.stderr
    assert "The worker stopped: runner 0 failed 5 times in a row" in done.stderr


def test_verbosity_zero_quiets_the_worker_even_where_logging_configures_it(processes):
    worker_three.start(1)
    loud = processes.run("pgqrs_worker", "--burst", PGQRS_TEST_LOGGING="1")
    assert "LOGGED INFO Worker" in loud.stderr
    assert "stopped: 1 workflow run (1 succeeded, 0 failed)" in loud.stderr
    worker_three.start(2)
    # -v 0 keeps problems only; this worker runs every queue the settings name, so there are none.
    every_queue = ("--queues", "default,emails,bulk")
    quiet = processes.run(
        "pgqrs_worker", "--burst", "-v", "0", *every_queue, PGQRS_TEST_LOGGING="1"
    )
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""
    assert Workflow.objects.filter(status="SUCCESS").count() == 2


def test_starting_a_workflow_that_workers_cannot_know_warns_once(caplog):
    from django_pgqrs import registry, step, workflow

    @step
    def shout(ctx: Workflow, word: str) -> str:
        return word.upper()

    @workflow(name="defined_in_a_shell")
    def defined_in_a_shell(ctx: Workflow, word: str) -> str:
        return shout(ctx, word)

    try:
        with caplog.at_level("WARNING", logger="django_pgqrs"):
            defined_in_a_shell.start("hi")
            defined_in_a_shell.start("ho")
        warnings = [
            r.getMessage() for r in caplog.records if "defined after Django" in r.getMessage()
        ]
        assert len(warnings) == 1
        assert "worker processes do not know it" in warnings[0]
        assert "tests.test_worker" in warnings[0]
    finally:
        registry.unregister("defined_in_a_shell")


def test_options_of_a_start_go_to_using_and_a_start_takes_arguments_only():
    with pytest.raises(TypeError, match=r"worker_three.using\(queue=...\).start\(...\)"):
        worker_three.start(1, queue="email")
    assert Workflow.objects.count() == 0
    from tests.workflows import prioritised

    # A workflow whose own arguments are named like options gets them as arguments.
    handle = prioritised.using(priority=3).start(priority=7, queue="q")
    saved = handle.workflow()
    assert (saved.priority, saved.queue) == (3, "default")
    Worker(burst=True).run()
    assert handle.result(timeout=1) == [7, "q"]
