"""A throwaway PostgreSQL cluster, for tests that restart the server or cut its connections.

The suite's own server may be shared with other programs, so nothing that disturbs a server
(a restart, ``pg_terminate_backend``) may run on it. ``PrivateCluster`` makes a cluster of its
own in a temporary directory, on a free port of 127.0.0.1, tuned for speed over durability.

Standard library and psycopg only: the chaos benchmark uses it outside pytest and Django.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

# The cluster runs as this OS user when we are root (initdb refuses root). It is also the name
# of the cluster's superuser, whoever runs it, so that clients connect alike everywhere.
OS_USER = "postgres"
SUPERUSER = "postgres"

# Durability is worthless in a cluster that is thrown away; speed is not. The socket directory
# and the port are added per cluster.
SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "200",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "32MB",
    "log_min_messages": "warning",
}


def postgres_bindir() -> Path | None:
    """The directory of PostgreSQL's server programs (initdb, pg_ctl), or None if not found."""
    candidates = []
    if shutil.which("pg_config"):
        try:
            found = subprocess.run(
                ["pg_config", "--bindir"], capture_output=True, text=True, timeout=10
            )
            candidates.append(found.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    # Debian keeps the server programs off PATH, one directory per major version: newest first.
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted(versions, key=lambda path: _version(path), reverse=True)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(str(Path(initdb).resolve().parent))
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").is_file():
            return Path(candidate)
    return None


def _version(path: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path))


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PrivateCluster:
    """A PostgreSQL cluster of its own: ``start()``, use ``port``, ``destroy()``.

    Trust authentication, superuser ``postgres``, listening on 127.0.0.1 only, its unix socket
    inside its directory. Also a context manager (start on entry, destroy on exit).
    """

    def __init__(self, bindir: Path | None = None, max_connections: int = 200) -> None:
        found = bindir or postgres_bindir()
        if found is None:
            raise FileNotFoundError("PostgreSQL's initdb was not found (pg_config --bindir).")
        self.bindir = found
        self.max_connections = max_connections
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="pgqrs-cluster-"))
        self.data = self.directory / "data"
        self.log = self.directory / "postgres.log"
        self._as_root = os.geteuid() == 0
        if self._as_root:
            account = pwd.getpwnam(OS_USER)
            os.chown(self.directory, account.pw_uid, account.pw_gid)

    def __enter__(self) -> PrivateCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    # --- Server ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Create the cluster if needed, start it, and wait until it accepts connections."""
        if not (self.data / "PG_VERSION").exists():
            self._initdb()
        for attempt in range(5):
            self._write_settings()
            started = self._pg_ctl("start", "-l", str(self.log), check=False)
            if started.returncode == 0:
                self.wait_until_ready()
                return
            # Another program took the port between our look and the server's bind: move.
            if attempt < 4 and "already in use" in self._log_tail():
                self.port = free_port()
                continue
            raise RuntimeError(
                f"PostgreSQL did not start in {self.data}:\n{started.stdout}{started.stderr}\n"
                f"{self._log_tail()}"
            )

    def stop(self) -> None:
        """Stop the server (fast shutdown: sessions are disconnected, nothing is waited for)."""
        if (self.data / "postmaster.pid").exists():
            self._pg_ctl("stop", "-m", "fast")

    def restart(self) -> None:
        """Restart the server (fast shutdown), and wait until it accepts connections again."""
        self._pg_ctl("restart", "-m", "fast", "-l", str(self.log))
        self.wait_until_ready()

    def destroy(self) -> None:
        """Stop the server and delete the cluster's directory."""
        try:
            self.stop()
        except (OSError, subprocess.SubprocessError, RuntimeError):
            # A server that will not stop cleanly must still not outlive its directory.
            self._pg_ctl("stop", "-m", "immediate", check=False)
        shutil.rmtree(self.directory, ignore_errors=True)

    def wait_until_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.connect(connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    # --- Databases and sessions -----------------------------------------------------------------

    def connect(self, dbname: str = "postgres", **options: Any) -> psycopg.Connection[Any]:
        """An autocommit connection to a database of this cluster."""
        options.setdefault("connect_timeout", 10)
        options.setdefault("autocommit", True)
        return psycopg.connect(
            host="127.0.0.1", port=self.port, user=SUPERUSER, dbname=dbname, **options
        )

    def createdb(self, name: str) -> None:
        with self.connect() as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def terminate_connections(self, dbname: str) -> int:
        """Terminate every session on database ``dbname`` except this call's own; how many."""
        with self.connect() as admin:
            row = admin.execute(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                [dbname],
            ).fetchone()
        return int(row[0]) if row else 0

    def postmaster(self) -> int:
        """The server's main process id."""
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def backends(self, dbname: str) -> set[int]:
        """The process ids of the sessions on database ``dbname`` (this call's own aside)."""
        with self.connect() as admin:
            rows = admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                [dbname],
            ).fetchall()
        return {int(row[0]) for row in rows}

    # --- Helpers --------------------------------------------------------------------------------

    def _initdb(self) -> None:
        self._run(
            [
                str(self.bindir / "initdb"),
                "--pgdata",
                str(self.data),
                "--username",
                SUPERUSER,
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--locale",
                "C",
                "--no-sync",  # nothing here needs to survive a power cut
            ]
        )
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\ninclude 'private.conf'\n")

    def _write_settings(self) -> None:
        settings = dict(
            SETTINGS,
            port=str(self.port),
            max_connections=str(self.max_connections),
            unix_socket_directories=f"'{self.directory}'",
        )
        path = self.data / "private.conf"
        path.write_text("".join(f"{key} = {value}\n" for key, value in settings.items()))
        if self._as_root:
            account = pwd.getpwnam(OS_USER)
            os.chown(path, account.pw_uid, account.pw_gid)

    def _pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / "pg_ctl"), args[0], "-D", str(self.data), "-w", "-t", "60"]
        return self._run([*command, *args[1:]], check=check)

    def _run(self, command: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        if self._as_root:
            command = ["runuser", "-u", OS_USER, "--", *command]
        # PG* variables meant for the suite's server must not steer this one's tools.
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        done = subprocess.run(
            command,
            cwd=self.directory,  # the server's user may not be allowed into ours
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}{done.stderr}\n"
                f"{self._log_tail()}"
            )
        return done

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __repr__(self) -> str:
        return f"<PrivateCluster 127.0.0.1:{self.port} in {self.directory}>"
