"""System checks: settings and database support, reported by ``manage.py check``."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.db import connections, router

from .conf import DEFAULTS


@register(Tags.compatibility)
def check_settings(**kwargs: Any) -> list[Error]:
    value = getattr(settings, "PGQRS", {})
    if not isinstance(value, dict):
        return [Error("settings.PGQRS must be a dict.", id="django_pgqrs.E001")]
    errors = [
        Error(
            f"settings.PGQRS has an unknown key {key!r}.",
            hint=f"Known keys: {', '.join(sorted(DEFAULTS))}.",
            id="django_pgqrs.E002",
        )
        for key in sorted(set(value) - set(DEFAULTS))
    ]
    for key in sorted(set(value) & set(DEFAULTS) - {"PREPARED_STATEMENTS", "LISTEN_DATABASE"}):
        if (
            isinstance(value[key], bool)
            or not isinstance(value[key], int | float)
            or value[key] <= 0
        ):
            errors.append(
                Error(f"settings.PGQRS[{key!r}] must be a positive number.", id="django_pgqrs.E003")
            )
    listen = value.get("LISTEN_DATABASE")
    if listen is not None and not (
        isinstance(listen, str) and (listen in settings.DATABASES or "://" in listen)
    ):
        errors.append(
            Error(
                f"settings.PGQRS['LISTEN_DATABASE'] is {listen!r}, neither a database alias nor "
                f"a URL.",
                hint="Name a key of DATABASES, or give a postgres://user@host:port/name URL.",
                id="django_pgqrs.E006",
            )
        )
    if not errors:
        lease = value.get("LEASE_SECONDS", DEFAULTS["LEASE_SECONDS"])
        beat = value.get("HEARTBEAT_SECONDS", DEFAULTS["HEARTBEAT_SECONDS"])
        if beat >= lease:
            errors.append(
                Error(
                    "settings.PGQRS['HEARTBEAT_SECONDS'] must be less than ['LEASE_SECONDS'].",
                    hint="Leases are renewed each heartbeat; renew well before they expire, "
                    "e.g. a heartbeat of a third of the lease.",
                    id="django_pgqrs.E004",
                )
            )
    return errors


@register(Tags.compatibility)
def check_time_zones(**kwargs: Any) -> list[CheckMessage]:
    if getattr(settings, "USE_TZ", True):
        return []
    return [
        Error(
            "django-pgqrs needs USE_TZ = True (Django's default): its times (leases, sleeps, "
            "deadlines) are aware datetimes.",
            id="django_pgqrs.E007",
        )
    ]


@register(Tags.database)
def check_database(databases: Any = None, **kwargs: Any) -> list[Error]:
    from .models import Workflow

    alias = router.db_for_write(Workflow) or "default"
    if databases is not None and alias not in databases:
        return []
    vendor = connections[alias].vendor
    if vendor in ("postgresql", "sqlite"):
        return []
    return [
        Error(
            f"django-pgqrs supports PostgreSQL and SQLite; database {alias!r} is {vendor}.",
            id="django_pgqrs.E005",
        )
    ]


@register(Tags.compatibility)
def check_sqlite_locking(**kwargs: Any) -> list[CheckMessage]:
    from .models import Workflow

    alias = router.db_for_write(Workflow) or "default"
    return sqlite_locking(alias, settings.DATABASES.get(alias, {}))


def sqlite_locking(alias: str, database: dict[str, Any]) -> list[CheckMessage]:
    """Warn when the workflows' SQLite database does not take its write lock up front."""
    if not database.get("ENGINE", "").endswith("sqlite3"):
        return []
    options = database.get("OPTIONS", {})
    if str(options.get("transaction_mode", "")).upper() == "IMMEDIATE":
        return []
    return [
        Warning(
            f"Database {alias!r} is SQLite without 'transaction_mode': 'IMMEDIATE'; a worker and "
            f"another process writing workflows at once may fail with 'database is locked'.",
            hint="Set DATABASES[...]['OPTIONS'] = {'transaction_mode': 'IMMEDIATE', "
            "'timeout': 20}.",
            id="django_pgqrs.W001",
        )
    ]


@register(Tags.database)
def check_routing(**kwargs: Any) -> list[CheckMessage]:
    """Warn when the models a project writes live on another database than the workflows.

    An atomic step's writes commit with its checkpoint only on the checkpoint's database; writes
    to another database commit on their own, before the checkpoint: at least once, not exactly
    once.
    """
    from django.apps import apps

    from .models import Workflow

    alias = router.db_for_write(Workflow) or "default"
    elsewhere: dict[str, set[str]] = {}
    for model in apps.get_models():
        if model._meta.app_label == Workflow._meta.app_label:
            continue
        database = router.db_for_write(model) or "default"
        if database != alias:
            elsewhere.setdefault(database, set()).add(model._meta.app_label)
    if not elsewhere:
        return []
    where = "; ".join(
        f"{', '.join(sorted(labels))} on {database!r}"
        for database, labels in sorted(elsewhere.items())
    )
    return [
        Warning(
            f"The workflow tables are on database {alias!r}, but models of other apps are "
            f"written elsewhere ({where}). An atomic step's writes happen exactly once only on "
            f"{alias!r}, with its checkpoint; its writes to other databases commit on their "
            f"own, at least once.",
            hint="Route django_pgqrs to the database of the models that atomic steps write "
            "(see the README, 'Several databases'), or silence this warning if atomic steps "
            "write only there.",
            id="django_pgqrs.W002",
        )
    ]
