"""Settings of django-pgqrs, read from the one ``settings.PGQRS`` dict.

Every access reads Django's settings again, so ``override_settings`` works. Keys and defaults:

``LEASE_SECONDS`` (30)
    A workflow's owner must renew its lease within this many seconds, or another process may
    take the workflow over.
``HEARTBEAT_SECONDS`` (10)
    How often a process renews the leases of the workflows it is running. Keep it well below
    ``LEASE_SECONDS``.
``POLL_SECONDS`` (1.0)
    How often a worker looks for due workflows when no notification wakes it.
``MAX_RECOVERY_ATTEMPTS`` (5)
    How many times a workflow may be taken over after its owner died before it is marked ERROR.
``MAX_PAYLOAD_BYTES`` (10_000_000)
    The largest encoded input or result accepted, in bytes.
``PREPARED_STATEMENTS`` (True)
    On PostgreSQL, prepare the engine's statements once per connection instead of having the
    server parse and plan them on every step. Behind a connection pooler that cannot keep
    prepared statements (PgBouncer in transaction mode before 1.21) a connection falls back to
    unprepared statements by itself, with one warning; set False to say so up front.
``SUSPEND_AFTER_SECONDS`` (2.0)
    A sleep, or a retry's wait, longer than this suspends the workflow (SLEEPING, its lease given
    up, no thread held) until it is due; a shorter one is waited in the process.
``LISTEN_DATABASE`` (None)
    Where a worker LISTENs for notifications of due workflows: None for the workflows' own
    database, or another database alias (a key of ``DATABASES``), or a ``postgres://`` URL. Behind
    a pooler in transaction mode, notifications cannot reach a LISTEN made through it: name a
    connection to PostgreSQL itself here. Used only for LISTEN.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings as django_settings

DEFAULTS: dict[str, Any] = {
    "LEASE_SECONDS": 30,
    "HEARTBEAT_SECONDS": 10,
    "POLL_SECONDS": 1.0,
    "MAX_RECOVERY_ATTEMPTS": 5,
    "MAX_PAYLOAD_BYTES": 10_000_000,
    "PREPARED_STATEMENTS": True,
    "SUSPEND_AFTER_SECONDS": 2.0,
    "LISTEN_DATABASE": None,
}


class Settings:
    """Lazy view of ``settings.PGQRS`` with the defaults filled in."""

    def _get(self, key: str) -> Any:
        return self.user_settings.get(key, DEFAULTS[key])

    @property
    def user_settings(self) -> dict[str, Any]:
        value = getattr(django_settings, "PGQRS", {})
        return value if isinstance(value, dict) else {}

    @property
    def LEASE_SECONDS(self) -> float:
        return float(self._get("LEASE_SECONDS"))

    @property
    def HEARTBEAT_SECONDS(self) -> float:
        return float(self._get("HEARTBEAT_SECONDS"))

    @property
    def POLL_SECONDS(self) -> float:
        return float(self._get("POLL_SECONDS"))

    @property
    def MAX_RECOVERY_ATTEMPTS(self) -> int:
        return int(self._get("MAX_RECOVERY_ATTEMPTS"))

    @property
    def MAX_PAYLOAD_BYTES(self) -> int:
        return int(self._get("MAX_PAYLOAD_BYTES"))

    @property
    def PREPARED_STATEMENTS(self) -> bool:
        return bool(self._get("PREPARED_STATEMENTS"))

    @property
    def SUSPEND_AFTER_SECONDS(self) -> float:
        return float(self._get("SUSPEND_AFTER_SECONDS"))

    @property
    def LISTEN_DATABASE(self) -> str | None:
        value = self._get("LISTEN_DATABASE")
        return None if value is None else str(value)


conf = Settings()
