"""The admin: the list, the workflow page, the overview, and the actions with their confirmation."""

from __future__ import annotations

import datetime
import decimal
import re

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from django_pgqrs import Workflow, WorkflowCancelled, create_workflow
from django_pgqrs import admin_list as admin_list_module
from django_pgqrs.models import WorkflowStep
from django_pgqrs.operations import cancel, requeue
from django_pgqrs.testing import drain
from tests import workflows

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:django_pgqrs_workflow_changelist"


@pytest.fixture
def staff() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("admin", "admin@example.com", "pw"))
    return client


def page_url(workflow_id: int) -> str:
    return reverse("admin:django_pgqrs_workflow_change", args=[workflow_id])


def failed_workflow(message: str = "card declined") -> Workflow:
    workflows.failures.append(ValueError(message))
    ctx = create_workflow("one_flaky", 1)
    with pytest.raises(ValueError):
        workflows.one_flaky(ctx, 1)
    return ctx


def saved(**fields: object) -> Workflow:
    """A workflow row as the engine would have left it."""
    fields.setdefault("name", "add_three")
    fields.setdefault("input", {"args": [1], "kwargs": {}})
    return Workflow.objects.create(**fields)


def act(client, action, ids, confirm=True, query="", **extra):  # type: ignore[no-untyped-def]
    """POST a list action (confirmed, unless ``confirm`` is False) as the list's form does."""
    data = {"action": action, "index": "0", "_selected_action": ids, **extra}
    if confirm:
        data["confirm"] = "yes"
    return client.post(reverse(CHANGELIST) + query, data, follow=True)


def messages_of(response) -> list[str]:  # type: ignore[no-untyped-def]
    return [str(message) for message in response.context["messages"]]


# --- The list ---------------------------------------------------------------------------------


def test_the_list_shows_status_badges_steps_durations_times_and_errors(staff):
    workflows.add_three.run(1)
    failed = failed_workflow()
    running = saved(status="RUNNING", lease_expires_at=timezone.now() + datetime.timedelta(60))
    WorkflowStep.objects.create(workflow=running, step_id="add_one", position=1, status="SUCCESS")
    page = staff.get(reverse(CHANGELIST))
    assert page.status_code == 200
    text = page.content.decode()
    assert '<span class="pgqrs-status pgqrs-status-success">SUCCESS</span>' in text
    assert '<span class="pgqrs-status pgqrs-status-error">ERROR</span>' in text
    assert "failed at <code>flaky</code>" in text
    assert "after <code>add_one</code>" in text  # the running one's last checkpoint
    assert "<strong>ValueError</strong>: card declined" in text
    assert re.search(r'<time datetime="[^"]+" title="\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC">', text)
    assert "just now" in text and "so far" in text
    rows = page.context["cl"].result_list
    assert [row.pk for row in rows] == [running.pk, failed.id, failed.id - 1]  # newest first


def test_the_list_filters_by_status_name_queue_and_creation_time(staff):
    workflows.add_three.run(1)
    failed = failed_workflow()
    emails = saved(status="PENDING", queue="emails")
    old = saved(status="SUCCESS")
    Workflow.objects.filter(pk=old.pk).update(created_at=timezone.now() - datetime.timedelta(3))
    url = reverse(CHANGELIST)

    def listed(**params: str) -> list[int]:
        return [row.pk for row in staff.get(url, params).context["cl"].result_list]

    assert listed(status__exact="ERROR") == [failed.id]
    assert listed(name="one_flaky") == [failed.id]
    assert listed(queue="emails") == [emails.pk]
    assert old.pk not in listed(created="24h") and old.pk in listed(created="7d")
    filters = staff.get(url).content.decode()
    assert "?queue=emails" in filters and "?queue=default" in filters
    assert "?name=one_flaky" in filters  # registered names, whether or not they ran
    assert "?name=kinds" in filters


def test_search_finds_ids_name_prefixes_idempotency_keys_and_error_messages(staff):
    done = saved(status="SUCCESS", idempotency_key="order-77")
    failed = failed_workflow("card declined for order 77")
    other = saved(name="echo_value", status="SUCCESS")
    url = reverse(CHANGELIST)

    def found(term: str) -> set[int]:
        with CaptureQueriesContext(connection) as queries:
            rows = staff.get(url, {"q": term}).context["cl"].result_list
        assert not any("::text) = " in q["sql"] and "UPPER" in q["sql"] for q in queries)
        return {row.pk for row in rows}

    assert found(str(other.pk)) == {other.pk}
    assert found("echo_") == {other.pk}
    assert found("ECHO") == {other.pk}
    assert found("order-77") == {done.pk}
    assert found("DECLINED for order") == {failed.id}
    assert found("nothing like it") == set()


def test_the_list_reads_only_the_pages_rows_and_never_counts_the_whole_table(staff):
    for _ in range(3):
        workflows.add_three.run(1)
    with CaptureQueriesContext(connection) as queries:
        staff.get(reverse(CHANGELIST))
    sql = [q["sql"] for q in queries if "pgqrs_" in q["sql"]]
    counts = [s for s in sql if "COUNT(" in s]
    assert counts and all("LIMIT" in s for s in counts)
    assert not any("JOIN" in s and "pgqrs_workflow_steps" in s for s in sql)
    assert not any('"input"' in s or '"result"' in s for s in sql)  # large columns stay unread
    assert len(queries) <= 8


def test_past_a_bound_the_list_shows_postgres_estimate(staff, monkeypatch, postgres_only):
    monkeypatch.setattr(admin_list_module, "EXACT_UP_TO", 3)
    for _ in range(5):
        saved(status="SUCCESS")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE pgqrs_workflows")
    page = staff.get(reverse(CHANGELIST))
    assert page.context["cl"].paginator.estimated
    assert "workflows: PostgreSQL's estimate" in page.content.decode()
    assert len(page.context["cl"].result_list) == 5


def test_deep_pages_and_pages_past_an_estimate_are_served(staff, monkeypatch):
    monkeypatch.setattr(admin_list_module, "EXACT_UP_TO", 120)
    Workflow.objects.bulk_create([Workflow(name="add_three", status="SUCCESS") for _ in range(250)])
    url = reverse(CHANGELIST)
    page = staff.get(url, {"p": "3"})
    assert page.context["cl"].result_count > 120
    assert len(page.context["cl"].result_list) == 50
    past = staff.get(url, {"p": "9"})  # past the end: empty if the count was an estimate
    assert past.status_code == (200 if page.context["cl"].paginator.estimated else 302)


# --- The workflow page ------------------------------------------------------------------------


def test_a_workflow_page_shows_stored_values_as_themselves(staff):
    when = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    value = {"price": decimal.Decimal("2.99"), "at": when, "pair": (1, 2)}
    workflows.echo_value.run(value)
    workflow = Workflow.objects.get(name="echo_value")
    text = staff.get(page_url(workflow.pk)).content.decode()
    assert "&quot;price&quot;: 2.99" in text
    assert "&quot;at&quot;: 2024-01-02T03:04:05+00:00" in text
    assert "Decimal(" not in text and "__pgqrs__" not in text


def test_a_failed_workflows_page_shows_its_error_traceback_and_steps(staff):
    failed = failed_workflow()
    page = staff.get(page_url(failed.id))
    assert page.status_code == 200
    text = page.content.decode()
    assert "<strong>ValueError</strong>: card declined" in text
    assert "<details><summary>Traceback</summary>" in text and "Traceback (most recent" in text
    steps = [row.step.step_id for row in page.context["steps"]]
    assert steps == ["add_one", "flaky"]
    assert page.context["steps"][1].error["message"] == "card declined"
    assert "&quot;args&quot;" in text  # the input, as JSON


def test_a_long_workflow_shows_its_steps_a_page_at_a_time(staff):
    workflows.loop.run(250)
    workflow = Workflow.objects.get(name="loop")
    first = staff.get(page_url(workflow.pk))
    assert [row.step.position for row in first.context["steps"]] == list(range(1, 101))
    assert "Steps 1 to 100 of 250" in first.content.decode()
    last = staff.get(page_url(workflow.pk), {"steps": "last"})
    assert [row.step.position for row in last.context["steps"]] == list(range(201, 251))
    assert staff.get(page_url(workflow.pk), {"steps": "99"}).context["steps_page"] == 3


def test_large_outputs_are_cut_by_the_database_and_shown_whole_on_their_own_page(staff):
    workflows.echo_value.run("x" * 5000 + "<end>")
    workflow = Workflow.objects.get(name="echo_value")
    text = staff.get(page_url(workflow.pk)).content.decode()
    assert "The first 2,000 characters of 5,007" in text
    assert "&lt;end&gt;" not in text.split('id="steps"')[1]
    step = WorkflowStep.objects.get(workflow=workflow)
    whole = staff.get(reverse("admin:django_pgqrs_workflow_step", args=[workflow.pk, step.pk]))
    assert "&lt;end&gt;" in whole.content.decode()
    result = staff.get(reverse("admin:django_pgqrs_workflow_value", args=[workflow.pk, "result"]))
    assert "&lt;end&gt;" in result.content.decode()


def test_an_earlier_attempts_error_stays_on_the_page_after_a_resume(staff):
    failed = failed_workflow("card declined")
    requeue([failed.id])
    drain()
    page = staff.get(page_url(failed.id))
    assert Workflow.objects.get(pk=failed.id).status == "SUCCESS"
    runs = page.context["attempts"]
    assert [run["outcome"].split(">")[1].split("<")[0] for run in runs] == ["SUCCESS", "ERROR"]
    assert runs[1]["error"]["message"] == "card declined"
    assert "card declined" in page.content.decode()


def test_the_page_offers_only_the_operations_that_make_sense(staff):
    failed = failed_workflow()
    workflows.add_three.run(1)
    done = Workflow.objects.get(name="add_three")
    running = saved(status="RUNNING", lease_expires_at=timezone.now())

    def buttons(workflow_id: int) -> list[str]:
        return [op["name"] for op in staff.get(page_url(workflow_id)).context["operations"]]

    assert buttons(failed.id) == ["resume", "cancel", "fork"]
    assert buttons(done.pk) == []
    assert buttons(running.pk) == ["cancel"]


def test_workflows_cannot_be_added_or_edited_in_the_admin(staff):
    failed = failed_workflow()
    assert staff.get(reverse("admin:django_pgqrs_workflow_add")).status_code == 403
    page = staff.post(page_url(failed.id), {"status": "SUCCESS"})
    assert page.status_code == 403
    assert Workflow.objects.get(pk=failed.id).status == "ERROR"


def test_a_parents_page_links_its_children_and_a_childs_page_its_parent(staff):
    from tests import primitive_workflows

    parent = primitive_workflows.fan_out.start([1, 2])
    drain()
    children = list(Workflow.objects.filter(parent=parent.id).values_list("pk", flat=True))
    page = staff.get(page_url(parent.id)).content
    for child in children:
        assert page_url(child).encode() in page
    assert page_url(parent.id).encode() in staff.get(page_url(children[0])).content


def test_names_values_and_errors_are_escaped_everywhere(staff):
    evil = "<script>alert(1)</script>"
    workflow = saved(
        name=evil,
        status="ERROR",
        input={"args": [evil], "kwargs": {evil: evil}},
        error={"type": evil, "message": evil, "traceback": evil, "step": evil},
        idempotency_key=evil,
        lease_owner=evil,
        history=[{"attempt": 1, "worker": evil, "outcome": "ERROR", "error": {"type": evil}}],
    )
    step = WorkflowStep.objects.create(
        workflow=workflow, step_id=evil, position=1, status="SUCCESS", output={evil: evil}
    )
    WorkflowStep.objects.create(
        workflow=workflow,
        step_id="failed",
        position=2,
        status="ERROR",
        error={"type": evil, "message": evil, "traceback": evil},
    )
    urls = [
        reverse(CHANGELIST),
        reverse(CHANGELIST) + "?q=%3Cscript%3E",
        page_url(workflow.pk),
        reverse("admin:django_pgqrs_workflow_overview"),
        reverse("admin:django_pgqrs_workflow_step", args=[workflow.pk, step.pk]),
        reverse("admin:django_pgqrs_workflow_value", args=[workflow.pk, "input"]),
        reverse("admin:django_pgqrs_workflow_operate", args=[workflow.pk, "resume"]),
        reverse("admin:django_pgqrs_workflow_delete", args=[workflow.pk]),
    ]
    for url in urls:
        text = staff.get(url).content.decode()
        assert "<script>alert" not in text, url
    confirmation = act(staff, "cancel_workflows", [workflow.pk], confirm=False)
    assert "<script>alert" not in confirmation.content.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in confirmation.content.decode()


# --- The overview ----------------------------------------------------------------------------


def test_the_overview_counts_statuses_and_names_and_shows_stuck_and_failed_workflows(staff):
    workflows.add_three.run(1)
    failed = failed_workflow("card declined")
    stuck = saved(
        status="RUNNING",
        lease_owner="web-1:42",
        lease_expires_at=timezone.now() - datetime.timedelta(minutes=5),
    )
    saved(status="RUNNING", lease_expires_at=timezone.now() + datetime.timedelta(minutes=5))
    page = staff.get(reverse("admin:django_pgqrs_workflow_overview"))
    assert page.status_code == 200
    counts = {row.status: row.count for row in page.context["status_counts"]}
    assert counts == {
        "PENDING": 0,
        "RUNNING": 2,
        "SLEEPING": 0,
        "SUCCESS": 1,
        "ERROR": 1,
        "CANCELLED": 0,
    }
    names = {row.name: row for row in page.context["names"]}
    assert names["add_three"].counts == {"SUCCESS": 1, "RUNNING": 2}
    assert names["add_three"].finished_last_hour == 1
    assert names["one_flaky"].failed_last_hour == 1
    assert page.context["last_hour"] == [("SUCCESS", 1), ("ERROR", 1), ("CANCELLED", 0)]
    assert [w.pk for w in page.context["lease_expired"]] == [stuck.pk]
    assert [w.pk for w in page.context["latest_failures"]] == [failed.id]
    text = page.content.decode()
    assert "web-1:42" in text and "card declined" in text
    assert "The newest" in text or "All workflows" in text  # it says what it counted


def test_the_overview_is_linked_from_the_app_index_and_the_list(staff):
    overview = reverse("admin:django_pgqrs_workflow_overview")
    app_index = reverse("admin:app_list", args=["django_pgqrs"])
    assert overview in staff.get(app_index).content.decode()
    assert overview in staff.get(reverse(CHANGELIST)).content.decode()


# --- Actions ---------------------------------------------------------------------------------


def test_resume_asks_for_confirmation_then_says_what_it_did_to_each_workflow(staff):
    failed = failed_workflow()
    workflows.add_three.run(1)
    done = Workflow.objects.get(name="add_three")
    confirmation = act(staff, "resume_workflows", [failed.id, done.pk], confirm=False)
    assert confirmation.templates[0].name == "admin/django_pgqrs/workflow/confirm_operation.html"
    assert Workflow.objects.get(pk=failed.id).status == "ERROR"  # not yet
    summary = {row["status"]: row["acted_on"] for row in confirmation.context["statuses"]}
    assert summary == {"ERROR": True, "SUCCESS": False}
    response = act(staff, "resume_workflows", [failed.id, done.pk])
    assert messages_of(response) == [
        f"1 resumed: {failed.id}; 1 skipped: {done.pk} already SUCCESS"
    ]
    assert Workflow.objects.get(pk=failed.id).status == "PENDING"
    assert Workflow.objects.get(pk=done.pk).status == "SUCCESS"


def test_an_action_on_all_matching_workflows_reads_them_in_batches(staff, monkeypatch):
    from django_pgqrs import admin_actions

    monkeypatch.setattr(admin_actions, "BATCH", 2)
    ids = [failed_workflow().id for _ in range(5)]
    workflows.add_three.run(1)
    confirmation = act(
        staff,
        "resume_workflows",
        ids[:1],
        confirm=False,
        select_across="1",
        query="?status__exact=ERROR",
    )
    assert confirmation.context["total"] == 5 and confirmation.context["acted_on"] == 5
    response = act(
        staff, "resume_workflows", ids[:1], select_across="1", query="?status__exact=ERROR"
    )
    newest_first = ", ".join(str(pk) for pk in reversed(ids))
    assert messages_of(response) == [f"5 resumed: {newest_first}"]
    assert set(Workflow.objects.filter(pk__in=ids).values_list("status", flat=True)) == {"PENDING"}


def test_the_cancel_action_cancels_unfinished_workflows(staff):
    failed = failed_workflow()
    response = act(staff, "cancel_workflows", [failed.id])
    assert messages_of(response) == [f"1 cancelled: {failed.id}"]
    assert Workflow.objects.get(pk=failed.id).status == "CANCELLED"
    with pytest.raises(WorkflowCancelled):
        workflows.one_flaky(failed, 1)


def test_the_fork_action_forks_failed_workflows_from_their_failed_step(staff):
    failed = failed_workflow()
    workflows.add_three.run(1)
    done = Workflow.objects.get(name="add_three")
    response = act(staff, "fork_workflows", [failed.id, done.pk])
    fork = Workflow.objects.get(forked_from=failed.id)
    assert messages_of(response) == [
        f"1 forked: {failed.id} as {fork.id}; 1 skipped: {done.pk} SUCCESS, not failed"
    ]
    assert list(fork.steps.values_list("step_id", flat=True)) == ["add_one"]


def test_a_failed_workflow_is_resumed_from_its_page_after_a_confirmation(staff):
    failed = failed_workflow()
    url = reverse("admin:django_pgqrs_workflow_operate", args=[failed.id, "resume"])
    assert url in staff.get(page_url(failed.id)).content.decode()
    confirmation = staff.get(url)
    assert "Yes, resume 1 workflow" in confirmation.content.decode()
    assert Workflow.objects.get(pk=failed.id).status == "ERROR"
    response = staff.post(url, {"confirm": "yes"})
    assert response.status_code == 302 and response["Location"] == page_url(failed.id)
    assert Workflow.objects.get(pk=failed.id).status == "PENDING"
    entry = LogEntry.objects.get()
    assert (entry.object_id, entry.action_flag) == (str(failed.id), CHANGE)
    assert entry.change_message == "Resumed (was ERROR)."
    drain()
    assert Workflow.objects.get(pk=failed.id).status == "SUCCESS"


def test_a_fork_from_the_page_leads_to_the_fork(staff):
    failed = failed_workflow()
    url = reverse("admin:django_pgqrs_workflow_operate", args=[failed.id, "fork"])
    response = staff.post(url, {"confirm": "yes"})
    fork = Workflow.objects.get(forked_from=failed.id)
    assert response["Location"] == page_url(fork.id)
    logged = set(LogEntry.objects.values_list("object_id", "change_message"))
    assert logged == {
        (str(failed.id), f"Forked as workflow {fork.id} (was ERROR)."),
        (str(fork.id), f"Forked from workflow {failed.id}."),
    }


def test_requeue_leaves_running_and_finished_workflows_alone():
    workflows.add_three.run(1)
    done = Workflow.objects.get()
    assert requeue([done.id]) == []
    assert cancel([done.id]) == []
    assert Workflow.objects.get(pk=done.id).status == "SUCCESS"


def test_a_workflow_cancelled_while_it_runs_stops_at_its_next_step():
    ctx = create_workflow("loop", 3)
    original = workflows.add_one.func

    def cancel_during_the_first_step(ctx_, n):  # type: ignore[no-untyped-def]
        if n == 0:
            cancel([ctx.id])
        return original(ctx_, n)

    workflows.add_one.func = cancel_during_the_first_step
    try:
        with pytest.raises(WorkflowCancelled):
            workflows.loop(ctx, 3)
    finally:
        workflows.add_one.func = original
    saved_row = Workflow.objects.get(pk=ctx.id)
    assert saved_row.status == "CANCELLED"
    assert not saved_row.steps.exists()  # the first step's checkpoint was refused
