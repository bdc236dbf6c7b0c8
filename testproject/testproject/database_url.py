"""Read a database from a URL: postgres://user:password@host:port/name or sqlite:///path."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit


def parse(url: str) -> dict[str, Any]:
    """Return Django's DATABASES entry for ``url``; raise ValueError for other schemes."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        # sqlite:///relative.db and sqlite:////absolute/path.db, as in dj-database-url.
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": unquote(parts.path[1:])}
    if parts.scheme in ("postgres", "postgresql", "pgsql"):
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parts.path.lstrip("/")),
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""),
        }
    raise ValueError(f"DATABASE_URL must be postgres://... or sqlite:///..., not {url!r}")
