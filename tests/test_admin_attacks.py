"""Attacks on the admin: permissions, deletions, races, logging, escaping and bad input."""

from __future__ import annotations

import pytest
from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client
from django.urls import reverse

from django_pgqrs import Workflow
from django_pgqrs import admin_actions as admin_actions_module
from django_pgqrs import admin_list as admin_list_module
from django_pgqrs.models import WorkflowEvent, WorkflowStep
from django_pgqrs.testing import drain
from tests import test_admin as admin_tests
from tests import test_admin_permissions as permission_tests
from tests import workflows
from tests.test_admin import failed_workflow as failed_with
from tests.test_admin import page_url, saved
from tests.test_admin_permissions import failed_workflow, operate_url, user_with

# The fixtures of the admin's tests.
staff = admin_tests.staff
viewer = permission_tests.viewer
operator = permission_tests.operator
superuser = permission_tests.superuser

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:django_pgqrs_workflow_changelist"
EVIL = "<script>alert(1)</script>"


def changelist() -> str:
    return reverse(CHANGELIST)


def delete_url(pk: int) -> str:
    return reverse("admin:django_pgqrs_workflow_delete", args=[pk])


def post(client, action, ids, query="", confirm=True, **extra):  # type: ignore[no-untyped-def]
    data = {"action": action, "index": "0", "_selected_action": ids, **extra}
    if confirm:
        data["confirm"] = "yes"
    return client.post(changelist() + query, data, follow=True)


def messages_of(response) -> list[str]:  # type: ignore[no-untyped-def]
    return [str(m) for m in response.context["messages"]]


def finished(status: str = "SUCCESS", **fields: object) -> Workflow:
    return saved(status=status, **fields)


# --- Permissions: every request, every path ---------------------------------------------------


ACTIONS = ["resume_workflows", "cancel_workflows", "fork_workflows", "delete_selected"]


@pytest.mark.parametrize("action", ACTIONS)
def test_viewer_select_across_filtered_does_nothing(viewer, action):
    failed = failed_workflow()
    done = finished()
    for query in ("", "?status__exact=ERROR", "?q=one_flaky"):
        response = post(viewer, action, [failed.id], query=query, select_across="1")
        assert response.status_code in (200, 403)
        response = post(viewer, action, [failed.id], query=query, confirm=False)
        assert response.status_code in (200, 403)
        assert response.templates[0].name != "admin/django_pgqrs/workflow/confirm_operation.html"
    assert Workflow.objects.get(pk=failed.id).status == "ERROR"
    assert set(Workflow.objects.values_list("pk", flat=True)) == {failed.id, done.pk}
    assert not LogEntry.objects.exists()


def test_viewer_cannot_delete_through_the_delete_view(viewer):
    done = finished()
    assert viewer.get(delete_url(done.pk)).status_code == 403
    assert viewer.post(delete_url(done.pk), {"post": "yes"}).status_code == 403
    assert Workflow.objects.filter(pk=done.pk).exists()


@pytest.mark.parametrize("operation", ["resume", "cancel", "fork"])
def test_operating_needs_view_and_operate_and_staff(operation):
    failed = failed_workflow()
    url = operate_url(failed.id, operation)
    # operate without view
    only_operate = user_with("operate_workflow")
    assert only_operate.post(url, {"confirm": "yes"}).status_code == 403
    assert post(only_operate, f"{operation}_workflows", [failed.id]).status_code == 403
    # anonymous
    assert Client().post(url, {"confirm": "yes"}).status_code == 302
    # not staff
    user = User.objects.create_user("nostaff", password="pw", is_staff=False)
    user.user_permissions.set(
        Permission.objects.filter(codename__in=["view_workflow", "operate_workflow"])
    )
    client = Client()
    client.force_login(user)
    assert client.post(url, {"confirm": "yes"}).status_code == 302
    assert Workflow.objects.get(pk=failed.id).status == "ERROR"
    assert Workflow.objects.count() == 1
    assert not LogEntry.objects.exists()


def test_permission_revoked_between_confirmation_and_confirm(operator):
    failed = failed_workflow()
    url = operate_url(failed.id, "resume")
    assert operator.get(url).status_code == 200
    listed = post(operator, "resume_workflows", [failed.id], confirm=False)
    assert listed.templates[0].name == "admin/django_pgqrs/workflow/confirm_operation.html"
    user = User.objects.get(username__startswith="user")
    user.user_permissions.remove(Permission.objects.get(codename="operate_workflow"))
    assert operator.post(url, {"confirm": "yes"}).status_code == 403
    post(operator, "resume_workflows", [failed.id])
    assert Workflow.objects.get(pk=failed.id).status == "ERROR"
    assert not LogEntry.objects.exists()


def test_get_with_confirm_in_the_query_does_not_operate(superuser):
    failed = failed_workflow()
    response = superuser.get(operate_url(failed.id, "resume") + "?confirm=yes")
    assert response.status_code == 200
    assert Workflow.objects.get(pk=failed.id).status == "ERROR"
    assert superuser.get(changelist() + "?action=resume_workflows&confirm=yes").status_code in (
        200,
        302,
    )
    assert Workflow.objects.get(pk=failed.id).status == "ERROR"


def test_delete_is_not_an_operation_of_the_operate_url(superuser):
    done = finished()
    for name in ("delete", "delete_selected", "RESUME", "resume/../delete"):
        response = superuser.post(
            f"/admin/django_pgqrs/workflow/{done.pk}/{name}/confirm/", {"confirm": "yes"}
        )
        assert response.status_code in (404, 302)
    assert Workflow.objects.filter(pk=done.pk).exists()


def test_csrf_holds_for_actions_operations_and_deletion():
    user = User.objects.create_superuser("csrf", "c@example.com", "pw")
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    failed = failed_workflow()
    done = finished()
    assert client.post(operate_url(failed.id, "resume"), {"confirm": "yes"}).status_code == 403
    response = client.post(
        changelist(),
        {
            "action": "delete_selected",
            "index": "0",
            "_selected_action": [done.pk],
            "confirm": "yes",
        },
    )
    assert response.status_code == 403
    assert client.post(delete_url(done.pk), {"post": "yes"}).status_code == 403
    assert Workflow.objects.get(pk=failed.id).status == "ERROR"
    assert Workflow.objects.filter(pk=done.pk).exists()


# --- Deleting --------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["PENDING", "RUNNING", "SLEEPING"])
def test_no_one_deletes_an_unfinished_workflow_by_any_path(superuser, status):
    workflow = saved(status=status)
    assert superuser.get(delete_url(workflow.pk)).status_code == 403
    assert superuser.post(delete_url(workflow.pk), {"post": "yes"}).status_code == 403
    post(superuser, "delete_selected", [workflow.pk])
    post(superuser, "delete_selected", [workflow.pk], select_across="1")
    post(
        superuser,
        "delete_selected",
        [workflow.pk],
        select_across="1",
        query=f"?status__exact={status}",
    )
    assert Workflow.objects.filter(pk=workflow.pk).exists()
    assert not LogEntry.objects.exists()


def test_deleting_a_finished_parent_keeps_its_unfinished_children_and_forks(superuser):
    parent = finished("ERROR", error={"type": "X", "message": "m", "step": "s"})
    child = saved(status="RUNNING", parent=parent)
    fork = saved(status="PENDING", forked_from=parent)
    assert superuser.post(delete_url(parent.pk), {"post": "yes"}).status_code == 302
    assert not Workflow.objects.filter(pk=parent.pk).exists()
    kept = {w.pk: (w.status, w.parent_id, w.forked_from_id) for w in Workflow.objects.all()}
    assert kept == {child.pk: ("RUNNING", None, None), fork.pk: ("PENDING", None, None)}
    parent2 = finished()
    child2 = saved(status="SLEEPING", parent=parent2)
    response = post(superuser, "delete_selected", [parent2.pk, child2.pk])
    assert messages_of(response)[-1] == (
        f"1 deleted: {parent2.pk}; 1 skipped: {child2.pk} still SLEEPING"
    )
    assert Workflow.objects.filter(pk=child2.pk, status="SLEEPING").exists()


def test_a_finished_child_is_kept_while_its_parent_has_not_ended(superuser):
    """Its parent may still read its result: deleting it would fail the parent with
    WorkflowNotFound. Neither the delete view nor the bulk action deletes it."""
    from tests import primitive_workflows

    parent = primitive_workflows.fan_out.start([1, 2])
    for _ in range(10):
        drain(limit=1)
        children = Workflow.objects.filter(parent=parent.id)
        if children.count() == 2 and all(c.status == "SUCCESS" for c in children):
            break
    assert Workflow.objects.get(pk=parent.id).status in ("SLEEPING", "PENDING")
    first, second = Workflow.objects.filter(parent=parent.id).order_by("pk")
    assert superuser.post(delete_url(first.pk), {"post": "yes"}).status_code == 403
    response = post(superuser, "delete_selected", [first.pk, second.pk])
    assert messages_of(response) == [
        f"0 deleted; 2 skipped: {second.pk}, {first.pk} kept while their parent runs "
        "(it may read their result)"
    ]
    assert not LogEntry.objects.exists()
    drain()
    assert Workflow.objects.get(pk=parent.id).status == "SUCCESS"
    # Once the parent ended, its children go.
    post(superuser, "delete_selected", [first.pk, second.pk])
    assert not Workflow.objects.filter(parent=parent.id).exists()


# --- Races between the confirmation and the confirm -------------------------------------------


def test_resume_confirmed_after_the_workflow_succeeded_is_skipped(superuser):
    failed = failed_workflow()
    confirmation = post(superuser, "resume_workflows", [failed.id], confirm=False)
    assert confirmation.context["acted_on"] == 1
    page = superuser.get(operate_url(failed.id, "resume"))
    assert page.status_code == 200
    Workflow.objects.filter(pk=failed.id).update(status="SUCCESS")
    assert messages_of(post(superuser, "resume_workflows", [failed.id])) == [
        f"0 resumed; 1 skipped: {failed.id} already SUCCESS"
    ]
    superuser.post(operate_url(failed.id, "resume"), {"confirm": "yes"})
    assert Workflow.objects.get(pk=failed.id).status == "SUCCESS"
    assert not LogEntry.objects.exists()


def test_delete_confirmed_after_the_workflow_was_resumed_is_refused(superuser):
    done = finished("ERROR")
    assert superuser.get(delete_url(done.pk)).status_code == 200
    post(superuser, "delete_selected", [done.pk], confirm=False)
    Workflow.objects.filter(pk=done.pk).update(status="RUNNING")
    assert superuser.post(delete_url(done.pk), {"post": "yes"}).status_code == 403
    response = post(superuser, "delete_selected", [done.pk])
    assert messages_of(response) == [f"0 deleted; 1 skipped: {done.pk} still RUNNING"]
    assert Workflow.objects.filter(pk=done.pk).exists()


@pytest.mark.parametrize("name", ["resume", "cancel", "fork", "delete"])
def test_a_workflow_that_starts_running_while_the_action_runs_is_left_alone(
    superuser, monkeypatch, name
):
    """Between the batch's read of the statuses and the deed, the workflow was resumed by
    someone else and a worker took it (or it succeeded)."""
    failed = failed_workflow()
    now = "RUNNING" if name == "delete" else "SUCCESS"
    real = admin_actions_module.batches

    def racing(queryset, failed_step):  # type: ignore[no-untyped-def]
        for batch in real(queryset, failed_step):
            Workflow.objects.filter(pk__in=[row[0] for row in batch]).update(status=now)
            yield batch

    monkeypatch.setattr(admin_actions_module, "batches", racing)
    action = "delete_selected" if name == "delete" else f"{name}_workflows"
    response = post(superuser, action, [failed.id])
    assert Workflow.objects.get(pk=failed.id).status == now
    assert not Workflow.objects.filter(forked_from=failed.id).exists(), messages_of(response)
    assert not LogEntry.objects.exists()


# --- Logging and messages ---------------------------------------------------------------------


def test_every_action_logs_per_workflow_including_select_across_and_children(superuser):
    a, b = failed_workflow(), failed_workflow()
    done = finished()
    response = post(superuser, "resume_workflows", [a.pk], select_across="1")
    assert messages_of(response) == [
        f"2 resumed: {b.pk}, {a.pk}; 1 skipped: {done.pk} already SUCCESS"
    ]
    assert sorted(LogEntry.objects.values_list("object_id", flat=True)) == sorted(
        [str(a.pk), str(b.pk)]
    )
    LogEntry.objects.all().delete()
    parent = saved(status="RUNNING")
    child = saved(status="PENDING", parent=parent)
    response = post(superuser, "cancel_workflows", [parent.pk])
    assert messages_of(response) == [
        f"1 cancelled: {parent.pk} (and 1 of their children: {child.pk})"
    ]
    logged = set(LogEntry.objects.values_list("object_id", "action_flag", "change_message"))
    assert logged == {
        (str(parent.pk), CHANGE, "Cancelled (was RUNNING)."),
        (str(child.pk), CHANGE, "Cancelled with its parent."),
    }
    LogEntry.objects.all().delete()
    post(superuser, "fork_workflows", [a.pk, b.pk])  # PENDING now: skipped
    assert not LogEntry.objects.exists()
    c = failed_workflow()
    post(superuser, "fork_workflows", [c.pk])
    fork = Workflow.objects.get(forked_from=c.pk)
    flags = set(LogEntry.objects.values_list("object_id", "action_flag"))
    assert flags == {(str(c.pk), CHANGE), (str(fork.pk), ADDITION)}
    LogEntry.objects.all().delete()
    response = post(superuser, "delete_selected", [done.pk, c.pk, a.pk], select_across="0")
    entries = LogEntry.objects.filter(action_flag=DELETION)
    assert sorted(entries.values_list("object_id", flat=True)) == sorted([str(done.pk), str(c.pk)])
    assert all(e.user.username == "admin" for e in entries)


# --- Escaping ----------------------------------------------------------------------------------


def test_evil_history_events_step_names_and_messages_are_escaped(superuser):
    quote = '"><img src=x onerror=alert(1)>'
    workflow = saved(
        name=EVIL,
        status="ERROR",
        error={"type": "E", "message": "m", "step": EVIL, "extra": {EVIL: [EVIL]}},
        idempotency_key=EVIL,
        history=[
            {"attempt": EVIL, "worker": EVIL, "outcome": quote, "ended_at": EVIL},
            {
                "attempt": 2,
                "worker": quote,
                "outcome": "ERROR",
                "error": {"type": EVIL, "message": EVIL, "traceback": EVIL, "step": EVIL},
            },
        ],
        lease_owner=quote,
    )
    WorkflowEvent.objects.create(workflow=workflow, name=EVIL, payload={EVIL: EVIL})
    WorkflowStep.objects.create(
        workflow=workflow, step_id=quote, position=1, status="SUCCESS", output=quote
    )
    urls = [
        page_url(workflow.pk),
        delete_url(workflow.pk),
        reverse("admin:django_pgqrs_workflow_history", args=[workflow.pk]),
        changelist() + "?q=" + EVIL,
        changelist() + "?name=" + EVIL,
        changelist() + "?queue=" + EVIL,
        reverse("admin:django_pgqrs_workflow_overview"),
        operate_url(workflow.pk, "fork"),
    ]
    for url in urls:
        response = superuser.get(url)
        assert response.status_code == 200, url
        text = response.content.decode()
        assert "<script>alert" not in text and "<img src=x" not in text, url
    # the fork fails (no saved step <script>): the message quotes the step
    response = post(superuser, "fork_workflows", [workflow.pk])
    text = response.content.decode()
    assert "not forked" in " ".join(messages_of(response))
    assert "<script>alert" not in text and "<img src=x" not in text
    history = superuser.get(reverse("admin:django_pgqrs_workflow_history", args=[workflow.pk]))
    assert "<script>alert" not in history.content.decode()
    # a forged selection value reaches the confirmation page's hidden inputs escaped
    response = post(superuser, "cancel_workflows", [workflow.pk], confirm=False)
    assert "<script>alert" not in response.content.decode()


# --- Bad input ---------------------------------------------------------------------------------


def test_bad_ids_in_urls_are_not_server_errors(superuser):
    done = finished()
    huge = "9" * 30
    for object_id in ("abc", "1.5", "-1", huge, "%00", str(2**63)):
        for suffix in ("change/", "delete/", "history/"):
            url = f"/admin/django_pgqrs/workflow/{object_id}/{suffix}"
            assert superuser.get(url).status_code in (302, 404), url
    for url in (
        f"/admin/django_pgqrs/workflow/{huge}/resume/confirm/",
        f"/admin/django_pgqrs/workflow/{huge}/steps/1/",
        f"/admin/django_pgqrs/workflow/{done.pk}/steps/{huge}/",
        f"/admin/django_pgqrs/workflow/{huge}/value/input/",
        f"/admin/django_pgqrs/workflow/{done.pk}/value/bogus/",
        "/admin/django_pgqrs/workflow/123456789/steps/1/",
        "/admin/django_pgqrs/workflow/abc/steps/1/",
    ):
        assert superuser.get(url).status_code in (302, 404), url
    other = finished()
    step = WorkflowStep.objects.create(workflow=other, step_id="s", position=1, status="SUCCESS")
    url = reverse("admin:django_pgqrs_workflow_step", args=[done.pk, step.pk])
    assert superuser.get(url).status_code == 404  # another workflow's step


@pytest.mark.parametrize(
    "params",
    [
        {"status__exact": "BOGUS"},
        {"status__exact": EVIL},
        {"created": "bogus"},
        {"name": "nope"},
        {"queue": "nope"},
        {"p": "abc"},
        {"p": "-3"},
        {"p": "9" * 30},
        {"o": "99"},
        {"o": "abc"},
        {"id__gt": "abc"},
        {"q": "%"},
        {"q": "_"},
        {"q": "\\"},
        {"q": "%_\\%"},
        {"q": "x" * 100_000},
        {"q": "9" * 100},
    ],
)
def test_bad_list_parameters_are_not_server_errors(superuser, params):
    failed_workflow()
    finished()
    response = superuser.get(changelist(), params)
    assert response.status_code in (200, 302, 400, 404)
    if "q" in params and response.status_code == 200:
        assert response.context["cl"].result_list == []


def test_sql_wildcards_in_a_search_match_literally(superuser):
    failed_with("100% off_by\\one")
    failed_with("plain")
    found = superuser.get(changelist(), {"q": "0% off_"}).context["cl"].result_list
    assert len(found) == 1
    assert superuser.get(changelist(), {"q": "%"}).context["cl"].result_list != []
    assert len(superuser.get(changelist(), {"q": "_"}).context["cl"].result_list) == 1


@pytest.mark.parametrize(
    "params", [{"q": "a\x00b"}, {"name": "a\x00b"}, {"queue": "\x00"}, {"status__exact": "\x00"}]
)
def test_a_search_or_filter_with_a_nul_character_is_not_a_server_error(superuser, params):
    finished()
    response = superuser.get(changelist(), params)
    assert response.status_code in (200, 302, 400)


def test_a_search_for_a_unicode_digit_is_not_a_server_error(superuser):
    finished()
    response = superuser.get(changelist(), {"q": "²"})
    assert response.status_code == 200


def test_a_huge_page_past_an_estimate_is_not_a_server_error(superuser, monkeypatch, postgres_only):
    """At a million workflows the list estimates its count; ?p= past bigint must not 500."""
    monkeypatch.setattr(admin_list_module, "EXACT_UP_TO", 1)
    monkeypatch.setattr(admin_list_module, "planner_rows", lambda queryset: 1_000_000)
    for _ in range(3):
        finished()
    response = superuser.get(changelist(), {"p": "9" * 30})
    assert response.status_code in (200, 302)


def test_a_bad_steps_page_is_not_a_server_error(superuser):
    done = finished()
    for value in ("abc", "-1", "0", "9" * 40, "last", "²", "1.5"):
        assert superuser.get(page_url(done.pk), {"steps": value}).status_code == 200, value


def test_a_forged_selection_is_not_a_server_error(superuser):
    done = finished()
    for ids in (["abc"], [EVIL], ["9" * 30], [str(done.pk), "x"]):
        for confirm in (False, True):
            response = post(superuser, "delete_selected", ids, confirm=confirm)
            assert response.status_code in (200, 302, 400), (ids, confirm)
    assert Workflow.objects.filter(pk=done.pk).exists()


# --- Values that no longer decode --------------------------------------------------------------


def _stored(raw_json: str, column: str = "input") -> Workflow:
    workflow = finished()
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE pgqrs_workflows SET {column} = %s::jsonb WHERE workflow_id = %s",
            [raw_json, workflow.pk],
        )
    return workflow


@pytest.mark.parametrize(
    "raw",
    [
        '{"__pgqrs__": "nope", "v": 1}',
        '{"__pgqrs__": "enum", "cls": "nowhere:Gone", "v": 1}',
        '{"__pgqrs__": "dataclass", "cls": "os:path", "v": {}}',
        '{"__pgqrs__": "decimal", "v": "not a number"}',
        '{"__pgqrs__": "datetime", "v": 12}',
        '{"__pgqrs__": ["x"], "v": 1}',
        '{"a": 1, "__pgqrs_order__": ["b"]}',
        '{"a": 1, "__pgqrs_order__": 5}',
    ],
)
def test_a_value_that_no_longer_decodes_is_shown_without_a_server_error(
    superuser, raw, postgres_only
):
    workflow = _stored(raw)
    _stored(raw, "result")
    WorkflowStep.objects.create(workflow=workflow, step_id="s", position=1, status="SUCCESS")
    with connection.cursor() as cursor:
        cursor.execute("UPDATE pgqrs_workflow_steps SET output = %s::jsonb", [raw])
    step_pk = WorkflowStep.objects.filter(workflow=workflow).values_list("pk", flat=True).get()
    for url in (
        page_url(workflow.pk),
        reverse("admin:django_pgqrs_workflow_value", args=[workflow.pk, "input"]),
        reverse("admin:django_pgqrs_workflow_step", args=[workflow.pk, step_pk]),
    ):
        response = superuser.get(url)
        assert response.status_code == 200, url


def test_a_deeply_nested_value_is_shown_without_a_server_error(superuser, postgres_only):
    workflow = _stored("[" * 3000 + "]" * 3000)
    assert superuser.get(page_url(workflow.pk)).status_code == 200


@pytest.mark.parametrize(
    "history",
    [
        [{"attempt": 1, "ended_at": "2024-13-45T00:00:00", "outcome": "ERROR"}],
        [{"attempt": 1, "ended_at": 12, "outcome": "ERROR"}],
        [{"attempt": 1, "worker": 7, "outcome": "ERROR"}],
        [{"attempt": 1, "outcome": None, "error": "a string"}],
    ],
)
def test_a_hand_edited_history_is_shown_without_a_server_error(superuser, history):
    workflow = finished("ERROR", history=history)
    assert superuser.get(page_url(workflow.pk)).status_code == 200


@pytest.mark.parametrize("depth", [300, 450])
def test_a_deep_value_the_engine_saved_is_shown_without_a_server_error(superuser, depth):
    value: list = []
    for _ in range(depth):
        value = [value]
    workflows.echo_value.run(value)
    workflow = Workflow.objects.only("pk").get(name="echo_value")
    assert superuser.get(page_url(workflow.pk)).status_code == 200


@pytest.mark.parametrize("ids", [["9" * 30], [str(2**63)]])
def test_a_huge_id_in_a_selection_is_refused_as_a_bad_request(superuser, ids):
    done = finished()
    for confirm in (False, True):
        response = post(superuser, "delete_selected", ids, confirm=confirm)
        assert response.status_code == 400
    assert Workflow.objects.filter(pk=done.pk).exists()
