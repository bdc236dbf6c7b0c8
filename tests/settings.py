"""Test settings: real PostgreSQL by default, SQLite with PGQRS_TEST_DB=sqlite.

Processes started by tests (workers, crash tests) get the name of the test database in
PGQRS_TEST_DB_NAME, and use it as it is; PGQRS_TEST_*_SECONDS,
PGQRS_TEST_MAX_RECOVERY_ATTEMPTS and PGQRS_TEST_LISTEN_DATABASE set their PGQRS settings.
"""

import os
import tempfile
from pathlib import Path

import django

from testproject import settings as demo_settings

SECRET_KEY = "tests"
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django_pgqrs",
    "demo",
    "tests",
]

# The demo project's middleware and templates, for the admin.
MIDDLEWARE = demo_settings.MIDDLEWARE
TEMPLATES = demo_settings.TEMPLATES
ROOT_URLCONF = "tests.urls"
STATIC_URL = "static/"

DB = os.environ.get("PGQRS_TEST_DB", "postgres")
CHILD_DB_NAME = os.environ.get("PGQRS_TEST_DB_NAME")

if DB == "sqlite":
    test_file = str(Path(tempfile.gettempdir()) / f"pgqrs-test-{os.getpid()}.sqlite3")
    other_file = str(Path(tempfile.gettempdir()) / f"pgqrs-test-other-{os.getpid()}.sqlite3")
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": CHILD_DB_NAME or test_file,
            "TEST": {"NAME": test_file},
            "OPTIONS": {"timeout": 30, "transaction_mode": "IMMEDIATE"},
        },
        # A second database, for the tests of routing.
        "other": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": other_file,
            "TEST": {"NAME": other_file},
            "OPTIONS": {"timeout": 30, "transaction_mode": "IMMEDIATE"},
        },
    }
elif DB == "postgres":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "HOST": os.environ.get("PGHOST", "127.0.0.1"),
            "PORT": os.environ.get("PGPORT", "5432"),
            "USER": os.environ.get("PGUSER", "postgres"),
            "PASSWORD": os.environ.get("PGPASSWORD", ""),
            # pytest-django tests in "test_" + NAME; PGQRS_TEST_NAME keeps concurrent runs apart.
            "NAME": CHILD_DB_NAME or os.environ.get("PGQRS_TEST_NAME", "pgqrs"),
        }
    }
    # A second database, for the tests of routing.
    DATABASES["other"] = {**DATABASES["default"], "NAME": DATABASES["default"]["NAME"] + "_other"}
else:
    raise ValueError(f"PGQRS_TEST_DB must be postgres or sqlite, not {DB!r}")

if django.VERSION >= (6, 0):
    # django.tasks, run as durable workflows (tests/test_tasks.py).
    TASKS = {
        "default": {
            "BACKEND": "django_pgqrs.tasks.PgqrsBackend",
            "QUEUES": ["default", "emails"],
        },
        # A second alias of the same backend, with a queue of its own.
        "bulk": {"BACKEND": "django_pgqrs.tasks.PgqrsBackend", "QUEUES": ["bulk"]},
    }

PGQRS = {
    "LEASE_SECONDS": float(os.environ.get("PGQRS_TEST_LEASE_SECONDS", 30)),
    "HEARTBEAT_SECONDS": float(os.environ.get("PGQRS_TEST_HEARTBEAT_SECONDS", 10)),
    "POLL_SECONDS": float(os.environ.get("PGQRS_TEST_POLL_SECONDS", 1.0)),
    "MAX_RECOVERY_ATTEMPTS": int(os.environ.get("PGQRS_TEST_MAX_RECOVERY_ATTEMPTS", 5)),
    "SUSPEND_AFTER_SECONDS": float(os.environ.get("PGQRS_TEST_SUSPEND_AFTER_SECONDS", 2.0)),
}
if os.environ.get("PGQRS_TEST_LISTEN_DATABASE"):
    PGQRS["LISTEN_DATABASE"] = os.environ["PGQRS_TEST_LISTEN_DATABASE"]

if os.environ.get("PGQRS_TEST_LOGGING"):
    # As a project that configures django-pgqrs's logger itself.
    LOGGING = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "LOGGED %(levelname)s %(message)s"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain"}},
        "loggers": {
            "django_pgqrs": {"handlers": ["stderr"], "level": "INFO"},
            "django.tasks": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        },
    }
