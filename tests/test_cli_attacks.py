"""Attacks on the operators' commands and on retention, under concurrency and faults."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
from django.db import connection, connections
from django.utils import timezone

from django_pgqrs import Workflow, WorkflowStep, operations, retention, start_workflow
from django_pgqrs.retention import PruneCounts, prune
from tests.test_cli import DAY, alive, command, make

OLD = 40 * DAY


def in_thread(fn):  # type: ignore[no-untyped-def]
    """Run ``fn`` in another thread (so on another database connection); return its result."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc
        finally:
            connections.close_all()

    thread = threading.Thread(target=target)
    thread.start()
    return thread, box


def run_in_thread(fn):  # type: ignore[no-untyped-def]
    thread, box = in_thread(fn)
    thread.join(30)
    if "error" in box:
        raise box["error"]
    return box.get("value")


# --- prune against concurrent changes ------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_prune_keeps_a_parent_whose_child_is_requeued_between_select_and_delete(
    postgres_only, monkeypatch
):
    """A child requeued (committed) after prune chose its parent: the parent now has an
    unfinished child, which prune promises never to delete."""
    parent = make("SUCCESS", age=OLD)
    child = make("ERROR", age=OLD, parent=parent)
    original = retention._descendants

    def racing(cursor, sql, params, roots):  # type: ignore[no-untyped-def]
        # Another connection requeues the child and commits, after the roots were chosen.
        assert run_in_thread(lambda: operations.requeue([child.id])) == [child.id]
        return original(cursor, sql, params, roots)

    monkeypatch.setattr(retention, "_descendants", racing)
    prune(30 * DAY, ["SUCCESS", "ERROR"])
    child.refresh_from_db()
    assert child.status == "PENDING"
    # Either both went (prune first) or the parent stays with its now unfinished child.
    assert parent.id in alive(), "the parent of an unfinished (requeued) child was deleted"
    assert child.parent_id == parent.id


@pytest.mark.django_db(transaction=True)
def test_prune_of_a_root_resumed_meanwhile_leaves_it(postgres_only, monkeypatch):
    """A root requeued after prune's snapshot but before its lock: the lock re-checks it."""
    root = make("ERROR", age=OLD)
    started = threading.Event()
    original = retention._column

    def racing(cursor, statement, params):  # type: ignore[no-untyped-def]
        if "LIMIT" in statement and not started.is_set():
            started.set()
            run_in_thread(lambda: operations.requeue([root.id]))
        return original(cursor, statement, params)

    monkeypatch.setattr(retention, "_column", racing)
    assert prune(30 * DAY, ["ERROR"]) == PruneCounts()
    assert Workflow.objects.get(pk=root.id).status == "PENDING"


@pytest.mark.django_db(transaction=True)
def test_a_requeue_waiting_for_prune_says_deleted_meanwhile(postgres_only):
    failed = make("ERROR", age=OLD)
    other = connection.copy()
    try:
        with other.cursor() as cursor:
            cursor.execute("BEGIN")
            # What prune holds while it deletes this workflow.
            cursor.execute(
                "SELECT 1 FROM pgqrs_workflows WHERE workflow_id = %s FOR UPDATE", [failed.id]
            )
            thread, box = in_thread(lambda: operations.requeue([failed.id]))
            time.sleep(0.5)
            cursor.execute("DELETE FROM pgqrs_workflows WHERE workflow_id = %s", [failed.id])
            cursor.execute("COMMIT")
            thread.join(10)
    finally:
        other.close()
    assert box == {"value": []}


@pytest.mark.django_db(transaction=True)
def test_a_fork_made_while_prune_deletes_its_original_fails_cleanly(postgres_only, monkeypatch):
    """fork_workflow() of a workflow prune is deleting: WorkflowNotFound, not a storage error."""
    from django_pgqrs.exceptions import WorkflowNotFound

    original_wf = make("SUCCESS", age=OLD, steps=2)
    forking: dict[str, Any] = {}
    real_delete = retention._delete

    def racing(cursor, sql, ids):  # type: ignore[no-untyped-def]
        # The roots are locked; a fork starts now and waits for them.
        thread, box = in_thread(lambda: operations.fork_workflow(original_wf.id, "s1"))
        forking.update(thread=thread, box=box)
        time.sleep(1.0)
        return real_delete(cursor, sql, ids)

    monkeypatch.setattr(retention, "_delete", racing)
    assert prune(30 * DAY).workflows == 1
    forking["thread"].join(10)
    box = forking["box"]
    assert "error" in box or box["value"].id in alive()
    if "error" in box:
        assert isinstance(box["error"], WorkflowNotFound), repr(box["error"])


@pytest.mark.django_db(transaction=True)
def test_start_with_a_key_whose_holder_prune_deletes_meanwhile(monkeypatch):
    """The key's holder is deleted between the INSERT that found the key taken and the SELECT
    that looks the holder up: start_workflow must give a workflow (a new one), not crash."""
    from django_pgqrs.store import Store

    first = start_workflow("add_three", 1, idempotency_key="order-9")
    Workflow.objects.filter(pk=first.id).update(status="SUCCESS", updated_at=timezone.now() - OLD)
    real_insert = Store.insert

    def racing(self, **kwargs):  # type: ignore[no-untyped-def]
        row = real_insert(self, **kwargs)
        if row is None:
            assert prune(30 * DAY).workflows == 1  # another process's prune, right then
        return row

    monkeypatch.setattr(Store, "insert", racing)
    again = start_workflow("add_three", 1, idempotency_key="order-9")
    assert again.id != first.id


@pytest.mark.django_db(transaction=True)
def test_two_prunes_at_once_with_forks_across_batches_do_not_deadlock(postgres_only):
    """Prune A holds roots X1 and Y2, prune B holds X2 and Y1, Y1 a fork of X1 and Y2 of X2:
    each unlinks the forks of its roots, which the other holds."""
    x1, x2 = make("SUCCESS", age=OLD, steps=1), make("SUCCESS", age=OLD, steps=1)
    y1 = make("SUCCESS", age=OLD, forked_from=x1)
    make("SUCCESS", age=OLD, forked_from=x2)
    step_of_x1 = WorkflowStep.objects.get(workflow=x1).pk
    t1, t2 = connection.copy(), connection.copy()
    try:
        with t1.cursor() as c1, t2.cursor() as c2:
            c1.execute("BEGIN")
            c1.execute(
                "SELECT 1 FROM pgqrs_workflows WHERE workflow_id IN (%s, %s) FOR UPDATE",
                [x2.id, y1.id],
            )
            c2.execute("BEGIN")
            c2.execute("SELECT 1 FROM pgqrs_workflow_steps WHERE id = %s FOR UPDATE", [step_of_x1])
            a_thread, a = in_thread(lambda: prune(30 * DAY, batch_size=2))
            time.sleep(0.5)  # A took X1 and Y2, and waits to delete X1's step
            c1.execute("ROLLBACK")
            b_thread, b = in_thread(lambda: prune(30 * DAY, batch_size=2))
            time.sleep(0.5)  # B took X2 and Y1, and waits to unlink Y2
            c2.execute("ROLLBACK")
            a_thread.join(20)
            b_thread.join(20)
    finally:
        t1.close()
        t2.close()
    assert "error" not in a, repr(a.get("error"))
    assert "error" not in b, repr(b.get("error"))
    assert not alive()


@pytest.mark.django_db
def test_prune_with_batch_size_one_takes_a_deep_chain_in_one_batch():
    chain = [make("SUCCESS", age=OLD)]
    for _ in range(60):
        chain.append(make("SUCCESS", age=OLD, parent=chain[-1], steps=1))
    keeper = make("SUCCESS", age=OLD)
    running = make("RUNNING", parent=keeper)
    seen: list[int] = []
    assert (
        prune(30 * DAY, batch_size=1, progress=lambda b, t: seen.append(b.workflows)).workflows
        == 61
    )
    assert seen == [61]
    assert alive() == {keeper.id, running.id}


@pytest.mark.django_db
def test_prune_chain_whose_middle_runs_keeps_its_ancestors_link_consistent():
    root = make("SUCCESS", age=OLD)
    middle = make("SUCCESS", age=OLD, parent=root)
    running = make("RUNNING", parent=middle)
    assert prune(30 * DAY, batch_size=1).workflows == 1  # root only; middle has a running child
    assert alive() == {middle.id, running.id}
    assert Workflow.objects.get(pk=middle.id).parent_id is None
    assert Workflow.objects.get(pk=running.id).parent_id == middle.id


# --- --older-than, --since, --batch-size with odd values ---------------------------------------


@pytest.mark.parametrize(
    "value",
    ["99999999w", "1000000000d", "9999999999999999999999s"],
)
def test_prune_refuses_a_duration_too_long_as_a_usage_error(processes, value):
    done = processes.run("pgqrs_prune", "--older-than", value)
    assert done.returncode == 2, done.stderr[-600:]
    assert "Traceback" not in done.stderr


def test_list_refuses_a_since_too_long_as_a_usage_error(processes):
    done = processes.run("pgqrs_list", "--since", "99999999w")
    assert done.returncode == 2, done.stderr[-600:]


def test_prune_with_a_cutoff_at_the_end_of_time_exits_zero(processes):
    make("SUCCESS", age=OLD)
    done = processes.run("pgqrs_prune", "--older-than", "9999-12-31T23:00:00-05:00")
    deleted = not alive()
    assert "Traceback" not in done.stderr, (deleted, done.returncode, done.stderr[-300:])
    assert done.returncode == 0 or (done.returncode == 2 and not deleted)


def test_prune_with_a_huge_batch_size_is_a_usage_error_or_works(processes):
    make("SUCCESS", age=OLD)
    done = processes.run("pgqrs_prune", "--older-than", "1d", "--batch-size", str(10**20))
    assert "Traceback" not in done.stderr, done.stderr[-800:]
    assert done.returncode in (0, 2)


@pytest.mark.django_db
@pytest.mark.parametrize("value", ["0s", "0d", "2999-01-01", "2024-05-01", "2024-05-01T10:00"])
def test_prune_odd_but_valid_cutoffs(value):
    finished, running = make("SUCCESS", age=OLD), make("RUNNING", age=OLD)
    out = command("pgqrs_prune", "--older-than", value)
    assert running.id in alive()
    assert finished.id not in alive() or out.startswith("No workflows")


def test_prune_negative_duration_is_a_usage_error(processes):
    done = processes.run("pgqrs_prune", "--older-than=-1d")
    assert done.returncode == 2


# --- ids out of range ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["pgqrs_cancel", "pgqrs_requeue", "pgqrs_show", "pgqrs_resume"])
def test_an_id_past_bigint_does_not_exist(processes, name):
    pending = make("PENDING")
    ids = (
        [str(10**20)] if name in ("pgqrs_show", "pgqrs_resume") else [str(pending.id), str(10**20)]
    )
    done = processes.run(name, *ids)
    assert done.returncode == 1, done.stderr[-800:]
    assert "Traceback" not in done.stderr, done.stderr[-800:]
    assert "does not exist" in done.stderr


# --- cancel and requeue against a live worker -----------------------------------------------------

FAST = {
    "PGQRS_TEST_LEASE_SECONDS": "1.5",
    "PGQRS_TEST_HEARTBEAT_SECONDS": "0.3",
    "PGQRS_TEST_POLL_SECONDS": "0.1",
}


def test_cancel_stops_a_running_workflow_at_its_next_step(processes):
    from tests.worker_workflows import worker_three

    processes.hold.touch()
    handle = worker_three.start(5)
    worker = processes.start("pgqrs_worker", PGQRS_TEST_HOLD=str(processes.hold), **FAST)
    processes.wait_for_line(worker, f"holding workflow {handle.id}")
    requeued = processes.run("pgqrs_requeue", str(handle.id))
    assert requeued.returncode == 0
    assert requeued.stdout.strip() == f"skipped {handle.id}: still RUNNING"
    done = processes.run("pgqrs_cancel", str(handle.id))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"cancelled {handle.id}"
    processes.hold.unlink()
    time.sleep(3)  # several lease lengths: recovery must not bring it back
    saved = Workflow.objects.get(pk=handle.id)
    assert saved.status == "CANCELLED"
    assert "third:10" not in processes.traced()
    assert list(
        WorkflowStep.objects.filter(workflow_id=handle.id).values_list("step_id", flat=True)
    ) == ["first"]
    again = processes.run("pgqrs_requeue", str(handle.id))
    assert again.stdout.strip() == f"skipped {handle.id}: already CANCELLED"
    cancelled_again = processes.run("pgqrs_cancel", str(handle.id))
    assert cancelled_again.stdout.strip() == f"skipped {handle.id}: already CANCELLED"
    assert worker.poll() is None
    worker.terminate()
    worker.wait(10)


def test_prune_while_a_worker_runs_parents_and_children(processes):
    from tests.primitive_workflows import fan_out

    handles = [fan_out.start([i, i + 1, i + 2]) for i in range(40)]
    worker = processes.start("pgqrs_worker", "--concurrency", "4", **FAST)
    deadline = time.monotonic() + 60
    pruned = 0
    while time.monotonic() < deadline:
        done = processes.run("pgqrs_prune", "--older-than", "0s", "--batch-size", "3", "-v", "0")
        assert done.returncode == 0, done.stderr[-800:]
        statuses = set(Workflow.objects.values_list("status", flat=True))
        assert "ERROR" not in statuses, list(
            Workflow.objects.filter(status="ERROR").values("id", "error")
        )
        if not Workflow.objects.exclude(status="SUCCESS").exists() and pruned > 3:
            break
        pruned += 1
    ids = {h.id for h in handles}
    left = Workflow.objects.filter(pk__in=ids).exclude(status="SUCCESS")
    assert not left.exists(), list(left.values("id", "status", "error"))
    worker.terminate()
    worker.wait(15)
    assert "Traceback" not in processes.stderr_of(worker), processes.stderr_of(worker)[-2000:]


@pytest.mark.django_db(transaction=True)
def test_fork_of_a_workflow_pruned_after_its_checks_raises_workflow_not_found(monkeypatch):
    """fork_workflow() looks the original up, then saves the fork: a prune in between."""
    from django_pgqrs.exceptions import WorkflowNotFound
    from django_pgqrs.store import Store

    original_wf = make("SUCCESS", age=OLD, steps=2)
    real_fork = Store.fork

    def racing(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        assert prune(30 * DAY).workflows == 1  # another process's prune, right then
        return real_fork(self, *args, **kwargs)

    monkeypatch.setattr(Store, "fork", racing)
    with pytest.raises(WorkflowNotFound):
        operations.fork_workflow(original_wf.id, "s1")


# --- pgqrs_show and pgqrs_list with odd data ---------------------------------------------------


def write(sql: str, params: list[Any]) -> None:
    cast = "::jsonb" if connection.vendor == "postgresql" else ""
    with connection.cursor() as cursor:
        cursor.execute(sql.replace("{cast}", cast), params)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("table", "column", "value"),
    [
        ("pgqrs_workflows", "error", '"a plain string"'),
        ("pgqrs_workflows", "error", '["a", "list"]'),
        ("pgqrs_workflows", "error", '{"type": "E", "message": "m", "traceback": 5}'),
        ("pgqrs_workflows", "error", '{"type": "E", "message": {"nested": [1]}}'),
        ("pgqrs_workflows", "history", '[{"attempt": 1, "outcome": "ERROR", "error": "text"}]'),
        (
            "pgqrs_workflows",
            "history",
            '[{"outcome": "ERROR", "ended_at": "0001-01-01T00:00:00+05:00"}]',
        ),
        (
            "pgqrs_workflows",
            "history",
            '[{"outcome": "ERROR", "ended_at": "9999-12-31T23:59:59-05:00"}]',
        ),
        ("pgqrs_workflows", "history", '[{"attempt": [1], "outcome": {"x": 1}, "worker": 7}]'),
        ("pgqrs_workflows", "history", '{"not": "a list"}'),
        ("pgqrs_workflows", "input", '{"args": [1e5000], "kwargs": {}}'),
        ("pgqrs_workflow_steps", "error", '"step text"'),
        ("pgqrs_workflow_steps", "error", "[1, 2]"),
    ],
)
def test_show_survives_a_row_edited_by_hand(table, column, value):
    workflow = make("ERROR")
    WorkflowStep.objects.create(workflow=workflow, step_id="s", position=0, status="ERROR")
    write(f"UPDATE {table} SET {column} = %s{{cast}} WHERE workflow_id = %s", [value, workflow.id])
    text = command("pgqrs_show", str(workflow.id))
    assert f"Workflow {workflow.id}: job" in text
    json.loads(command("pgqrs_show", str(workflow.id), "--json"))
    command("pgqrs_list")
    json.loads(command("pgqrs_list", "--json"))


@pytest.mark.django_db
def test_show_and_list_json_stay_json_with_a_number_past_float():
    """jsonb keeps 1e400 exactly (an int here); SQLite keeps 1e400, which Python reads as inf
    and json.dumps writes as Infinity, not JSON: shown as its text instead."""
    workflow = make("SUCCESS")
    write(
        "UPDATE pgqrs_workflows SET input = %s{cast}, result = %s{cast} WHERE workflow_id = %s",
        ['{"args": [1e400], "kwargs": {}}', "-1e400", workflow.id],
    )
    out = command("pgqrs_show", str(workflow.id), "--json")
    json.loads(out, parse_constant=lambda name: pytest.fail(f"not JSON: {name}"))


@pytest.mark.django_db
def test_show_and_list_with_non_ascii_and_huge_errors():
    message = "ünïcødé 名前 🎉 " + "x" * 1_000_000
    workflow = make(
        "ERROR",
        name="名前-🎉",
        queue="очередь",
        error={"type": "Ошибка", "message": message, "traceback": "tb\n" * 10_000},
    )
    text = command("pgqrs_list")
    assert "名前-🎉" in text and len(text) < 2000
    data = json.loads(command("pgqrs_list", "--json"))
    assert data[0]["error"]["message"] == message
    shown = command("pgqrs_show", str(workflow.id))
    assert "Ошибка: ünïcødé" in shown


def many_steps(count: int, size: int) -> Workflow:
    """A finished workflow of ``count`` steps whose outputs are ``size`` characters each."""
    workflow = make("SUCCESS")
    output = {"blob": "y" * size}
    WorkflowStep.objects.bulk_create(
        [
            WorkflowStep(
                workflow=workflow, step_id=f"s{i}", position=i, status="SUCCESS", output=output
            )
            for i in range(count)
        ],
        batch_size=500,
    )
    return workflow


@pytest.mark.django_db
def test_show_of_a_workflow_of_many_steps_lists_the_first_and_last_50_without_their_outputs():
    workflow = many_steps(2_000, 10)
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        text = command("pgqrs_show", str(workflow.id))
    out = command("pgqrs_show", str(workflow.id), "--json")
    # The text shows no step output: it reads none, and lists the first and the last 50 steps.
    step_sql = [q["sql"] for q in queries.captured_queries if "pgqrs_workflow_steps" in q["sql"]]
    assert not any("output" in sql for sql in step_sql), step_sql
    lines = text.splitlines()
    assert "Steps (2000):" in lines
    steps = lines[lines.index("Steps (2000):") + 2 :]
    assert len(steps) == 101
    assert steps[0].split()[:2] == ["0", "s0"] and steps[49].split()[:2] == ["49", "s49"]
    assert steps[50] == "  ... 1900 more steps (--json lists them all)"
    assert steps[51].split()[:2] == ["1950", "s1950"]
    assert steps[100].split()[:2] == ["1999", "s1999"]
    # --json lists them all, with their outputs.
    assert out.count('"step_id": ') == 2_000
    assert out.count('"blob": ') == 2_000


# The child's own peak: ru_maxrss would count the parent's (it survives the vfork and exec of
# subprocess), the test process that has just written the outputs.
PEAK_MB = (
    "int(next(line for line in open('/proc/self/status') if line.startswith('VmHWM'))"
    ".split()[1]) // 1024"
)


def test_show_holds_no_more_than_a_step_of_outputs_at_once(processes):
    """100 MB of step outputs: the text view prints none of them and reads none; --json prints
    them all, a step at a time. (Before: 448 MB for the text of 200 MB of outputs.)"""
    import subprocess
    import sys

    workflow = many_steps(2_000, 50_000)
    for options, out in (("", "io.StringIO()"), (", '--json'", "open(os.devnull, 'w')")):
        script = (
            "import io, os, django; django.setup(); "
            "from django.core.management import call_command; "
            f"out = {out}; call_command('pgqrs_show', '{workflow.id}'{options}, stdout=out); "
            f"print({PEAK_MB})"
        )
        done = subprocess.run(
            [sys.executable, "-c", script],
            env=processes.env(),
            capture_output=True,
            text=True,
            cwd=str(processes.tmp_path),
        )
        assert done.returncode == 0, done.stderr[-1000:]
        megabytes = int(done.stdout)
        assert megabytes < 150, f"pgqrs_show{options}: {megabytes} MB for 100 MB of outputs"


def test_requeue_hammered_while_a_worker_finishes_never_runs_a_step_twice(processes):
    from tests.worker_workflows import worker_three

    processes.hold.touch()
    handle = worker_three.start(7)
    worker = processes.start("pgqrs_worker", PGQRS_TEST_HOLD=str(processes.hold), **FAST)
    processes.wait_for_line(worker, f"holding workflow {handle.id}")
    stop = threading.Event()
    requeued: list[int] = []

    def hammer() -> None:
        try:
            while not stop.is_set():
                requeued.extend(operations.requeue([handle.id]))
                time.sleep(0.005)
        finally:
            connections.close_all()

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        processes.hold.unlink()
        assert handle.result(timeout=20) == 15
        time.sleep(1)
    finally:
        stop.set()
        thread.join(10)
    assert requeued == []
    assert processes.traced().count("third:14") == 1
    assert processes.traced().count("second:7") == 1
    worker.terminate()
    worker.wait(10)


def test_concurrent_prunes_on_forks_and_children_all_exit_zero(processes, postgres_only):
    """Cron runs overlapping: three prunes at once over workflows whose forks and children fall
    in other batches."""
    made: list[Workflow] = []
    for i in range(600):
        kwargs: dict[str, Any] = {}
        if made and i % 2:
            kwargs["forked_from"] = made[(i * 7919) % len(made)]
        made.append(make("SUCCESS", age=OLD, **kwargs))
    running = []
    for parent in made[::50]:
        running.append(make("RUNNING", parent=parent))
    started = [
        processes.start("pgqrs_prune", "--older-than", "30d", "--batch-size", "3", "-v", "0")
        for _ in range(3)
    ]
    codes = [p.wait(120) for p in started]
    errors = [processes.stderr_of(p)[-400:] for p in started if p.returncode]
    assert codes == [0, 0, 0], errors
    assert alive() == {w.id for w in made[::50]} | {w.id for w in running}
