"""``manage.py check`` reports settings.PGQRS mistakes."""

from __future__ import annotations

from io import StringIO
from typing import Any

import django
import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from django_pgqrs.checks import check_settings


def check_ids(pgqrs: Any) -> list[str]:
    with override_settings(PGQRS=pgqrs):
        return [error.id for error in check_settings()]


# The model checks of JSONField ask each SQLite database what it supports.
@pytest.mark.django_db(databases=["default", "other"])
def test_check_passes_with_the_test_settings():
    out = StringIO()
    call_command("check", stdout=out)
    assert "System check identified no issues" in out.getvalue()


@pytest.mark.parametrize(
    "pgqrs",
    [
        {},
        {"LEASE_SECONDS": 60, "HEARTBEAT_SECONDS": 5, "POLL_SECONDS": 0.5},
        {"MAX_RECOVERY_ATTEMPTS": 1, "MAX_PAYLOAD_BYTES": 1000, "PREPARED_STATEMENTS": False},
        {"LISTEN_DATABASE": "default"},
        {"LISTEN_DATABASE": "postgres://postgres@db.internal:5432/shop"},
    ],
)
def test_valid_settings_pass(pgqrs):
    assert check_ids(pgqrs) == []


@pytest.mark.parametrize("listen", ["replica", 5432])
def test_a_listen_database_that_is_neither_an_alias_nor_a_url_is_reported(listen):
    assert check_ids({"LISTEN_DATABASE": listen}) == ["django_pgqrs.E006"]


def test_settings_that_are_not_a_dict_are_reported():
    assert check_ids([("LEASE_SECONDS", 3)]) == ["django_pgqrs.E001"]


# The model checks of JSONField ask each SQLite database what it supports.
@pytest.mark.django_db(databases=["default", "other"])
def test_an_unknown_key_is_reported_through_manage_py_check():
    with override_settings(PGQRS={"LEASE_SECONDZ": 3}), pytest.raises(SystemCheckError) as caught:
        call_command("check")
    message = str(caught.value)
    assert "django_pgqrs.E002" in message
    assert "'LEASE_SECONDZ'" in message
    assert "LEASE_SECONDS" in message  # the hint lists the known keys


def test_each_unknown_key_is_reported():
    assert check_ids({"LEASE_SECONDZ": 3, "POLL": 1}) == ["django_pgqrs.E002"] * 2


@pytest.mark.parametrize(
    "pgqrs",
    [
        {"LEASE_SECONDS": 0},
        {"LEASE_SECONDS": -5},
        {"HEARTBEAT_SECONDS": -0.1},
        {"POLL_SECONDS": "1"},
        {"MAX_PAYLOAD_BYTES": None},
        {"MAX_RECOVERY_ATTEMPTS": True},
    ],
    ids=repr,
)
def test_a_value_that_is_not_a_positive_number_is_reported(pgqrs):
    assert check_ids(pgqrs) == ["django_pgqrs.E003"]


# The model checks of JSONField ask each SQLite database what it supports.
@pytest.mark.django_db(databases=["default", "other"])
def test_a_non_positive_value_is_reported_through_manage_py_check():
    with override_settings(PGQRS={"LEASE_SECONDS": 0}), pytest.raises(SystemCheckError) as caught:
        call_command("check")
    assert "django_pgqrs.E003" in str(caught.value)
    assert "settings.PGQRS['LEASE_SECONDS'] must be a positive number." in str(caught.value)


@pytest.mark.parametrize(
    "pgqrs",
    [
        {"LEASE_SECONDS": 10, "HEARTBEAT_SECONDS": 10},
        {"LEASE_SECONDS": 10, "HEARTBEAT_SECONDS": 20},
        {"LEASE_SECONDS": 5},  # the default heartbeat is 10
        {"HEARTBEAT_SECONDS": 30},  # the default lease is 30
    ],
    ids=repr,
)
def test_a_heartbeat_not_shorter_than_the_lease_is_reported(pgqrs):
    assert check_ids(pgqrs) == ["django_pgqrs.E004"]


# The model checks of JSONField ask each SQLite database what it supports.
@pytest.mark.django_db(databases=["default", "other"])
def test_a_heartbeat_not_shorter_than_the_lease_is_reported_through_manage_py_check():
    with (
        override_settings(PGQRS={"LEASE_SECONDS": 3, "HEARTBEAT_SECONDS": 3}),
        pytest.raises(SystemCheckError, match=r"django_pgqrs\.E004"),
    ):
        call_command("check")


def test_sqlite_without_immediate_transactions_gets_a_warning():
    from django_pgqrs.checks import sqlite_locking

    sqlite = {"ENGINE": "django.db.backends.sqlite3", "NAME": "x.sqlite3"}
    assert [m.id for m in sqlite_locking("default", sqlite)] == ["django_pgqrs.W001"]
    immediate = {**sqlite, "OPTIONS": {"transaction_mode": "IMMEDIATE", "timeout": 20}}
    assert sqlite_locking("default", immediate) == []
    assert sqlite_locking("default", {"ENGINE": "django.db.backends.postgresql"}) == []


@pytest.mark.skipif(django.VERSION >= (6, 0), reason="django.tasks exists from Django 6.0")
def test_the_tasks_backend_says_it_needs_django_6():
    import importlib
    import sys

    from django.core.exceptions import ImproperlyConfigured

    sys.modules.pop("django_pgqrs.tasks", None)
    with pytest.raises(ImproperlyConfigured, match=r"Django 6\.0.*this is Django 5\.2"):
        importlib.import_module("django_pgqrs.tasks")
