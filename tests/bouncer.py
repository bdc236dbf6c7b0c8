"""A throwaway PgBouncer in transaction mode, for tests and benchmarks behind a pooler.

``PgBouncer`` starts Debian's ``pgbouncer`` on a free port of 127.0.0.1, in front of a given
PostgreSQL server (by default the suite's: PGHOST/PGPORT, else 127.0.0.1:5432). Any database
name is passed through to that server, so the test database is reached by its own name. Its pool
is small, so that client connections really share server connections, as in production: a
prepared statement or a LISTEN made by one client stays on a server connection that others get.

Standard library and psycopg only: the PgBouncer benchmark uses it outside pytest and Django.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from tests.cluster import free_port

# PgBouncer refuses to run as root; as root, it runs as this OS user.
OS_USER = "postgres"
# Debian installs it into /usr/sbin, which is not on every user's PATH.
DEBIAN_BINARY = "/usr/sbin/pgbouncer"


def pgbouncer_binary() -> str | None:
    """The path of the ``pgbouncer`` program, or None if it is not installed."""
    found = shutil.which("pgbouncer")
    if found:
        return found
    if os.access(DEBIAN_BINARY, os.X_OK):
        return DEBIAN_BINARY
    return None


class PgBouncer:
    """A PgBouncer of its own: ``start()``, connect to ``port``, ``stop()``.

    Transaction pooling, ``pool_size`` server connections per database, ``auth_type = any``:
    whatever user a client names, the bouncer logs in to the server as ``user`` (default
    ``PGUSER``, else postgres; with ``password``, default ``PGPASSWORD``, if any), so it works
    with the server's trust authentication and needs no list of users. Its configuration, log
    and pid files are in a temporary directory, deleted by ``stop()``. Also a context manager
    (start on entry, stop on exit).
    """

    def __init__(
        self,
        server_host: str | None = None,
        server_port: int | None = None,
        pool_size: int = 4,
        binary: str | None = None,
        user: str | None = None,
        password: str | None = None,
    ) -> None:
        found = binary or pgbouncer_binary()
        if found is None:
            raise FileNotFoundError("pgbouncer was not found (apt-get install pgbouncer).")
        self.binary = found
        self.server_host = server_host or os.environ.get("PGHOST") or "127.0.0.1"
        self.server_port = server_port or int(os.environ.get("PGPORT") or 5432)
        self.user = user or os.environ.get("PGUSER") or "postgres"
        self.password = password or os.environ.get("PGPASSWORD") or ""
        self.pool_size = pool_size
        self._port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="pgqrs-pgbouncer-"))
        self.config = self.directory / "pgbouncer.ini"
        self.log = self.directory / "pgbouncer.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._account = pwd.getpwnam(OS_USER) if os.geteuid() == 0 else None
        if self._account is not None:
            # The bouncer makes its pid file and unix socket here.
            os.chown(self.directory, self._account.pw_uid, self._account.pw_gid)

    @property
    def port(self) -> int:
        """The port of 127.0.0.1 that the bouncer listens on."""
        return self._port

    def __enter__(self) -> PgBouncer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def url(self, dbname: str) -> str:
        """A postgres:// URL of database ``dbname`` through the bouncer."""
        return f"postgres://{self.user}@127.0.0.1:{self.port}/{dbname}"

    # --- Process --------------------------------------------------------------------------------

    def start(self, timeout: float = 30) -> None:
        """Start the bouncer and wait until it accepts connections (and reaches the server)."""
        if self.running:
            return
        for attempt in range(5):
            self._write_config()
            self._spawn()
            try:
                self._wait_until_ready(timeout)
                return
            except RuntimeError as exc:
                self._terminate()
                # Another program took the port between our look and the bouncer's bind: move.
                if attempt < 4 and "in use" in str(exc):
                    self._port = free_port()
                    continue
                raise

    def stop(self) -> None:
        """Stop the bouncer (its client and server connections are closed) and delete its files."""
        self._terminate()
        shutil.rmtree(self.directory, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # --- Admin console --------------------------------------------------------------------------

    def show(self, what: str) -> list[dict[str, Any]]:
        """The rows of the admin console's ``SHOW <what>`` (POOLS, STATS, SERVERS, CLIENTS)."""
        # The console speaks only the simple query protocol: a client-side binding cursor.
        with (
            self.connect("pgbouncer") as console,
            psycopg.ClientCursor(console) as cursor,
        ):
            cursor.execute(f"SHOW {what}")
            columns = [column.name for column in cursor.description or []]
            return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]

    def connect(self, dbname: str = "postgres", **options: Any) -> psycopg.Connection[Any]:
        """An autocommit connection through the bouncer, with no prepared statements."""
        options.setdefault("connect_timeout", 10)
        options.setdefault("autocommit", True)
        options.setdefault("prepare_threshold", None)
        return psycopg.connect(
            host="127.0.0.1", port=self.port, user=self.user, dbname=dbname, **options
        )

    # --- Helpers --------------------------------------------------------------------------------

    def _write_config(self) -> None:
        server = f"host={self.server_host} port={self.server_port} user={self.user}"
        if self.password:
            server += f" password={self.password}"
        settings = {
            "listen_addr": "127.0.0.1",
            "listen_port": str(self.port),
            "unix_socket_dir": str(self.directory),
            "auth_type": "any",
            "admin_users": self.user,
            "pool_mode": "transaction",
            "default_pool_size": str(self.pool_size),
            "min_pool_size": "0",
            "reserve_pool_size": "0",
            "max_client_conn": "1000",
            "pidfile": str(self.directory / "pgbouncer.pid"),
            # psycopg sends none of these, but JDBC-like clients do; harmless to accept.
            "ignore_startup_parameters": "extra_float_digits",
        }
        self.config.write_text(
            f"[databases]\n* = {server}\n\n[pgbouncer]\n"
            + "".join(f"{key} = {value}\n" for key, value in settings.items())
        )
        if self._account is not None:
            os.chown(self.config, self._account.pw_uid, self._account.pw_gid)
        self.config.chmod(0o600)  # it may hold the server's password

    def _spawn(self) -> None:
        # As root, the child switches to the bouncer's user itself rather than through runuser,
        # which on SIGTERM waits two seconds and exits without reaping the bouncer.
        account = self._account
        # Its log is its stderr (no logfile): so it has what goes wrong before a log is open.
        with self.log.open("w") as log:
            self._process = subprocess.Popen(
                [self.binary, str(self.config)],
                cwd=self.directory,  # the bouncer's user may not be allowed into ours
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                user=account.pw_uid if account else None,
                group=account.pw_gid if account else None,
                extra_groups=[] if account else None,
                # Its own session: a Ctrl-C meant for the tests does not stop it under them.
                start_new_session=True,
            )

    def _wait_until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if not self.running:
                raise RuntimeError(f"pgbouncer exited at start:\n{self._log_tail()}")
            # It goes on without its TCP port (on its unix socket), and whoever holds the port
            # might answer for it: believe only its own log.
            log = self._log_tail(200)
            if f"cannot listen on 127.0.0.1:{self.port}" in log:
                raise RuntimeError(f"pgbouncer could not listen: port {self.port} in use:\n{log}")
            if f"listening on 127.0.0.1:{self.port}" not in log:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"pgbouncer did not start in {timeout}s:\n{log}")
                time.sleep(0.02)
                continue
            try:
                with self.connect(connect_timeout=2) as db:
                    db.execute("SELECT 1")
                    return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"pgbouncer on port {self.port} did not answer in {timeout}s ({exc}):\n"
                        f"{self._log_tail()}"
                    ) from exc
                time.sleep(0.05)

    def _terminate(self) -> None:
        """SIGTERM (immediate shutdown) to our own process, then SIGKILL if it lingers."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __repr__(self) -> str:
        return (
            f"<PgBouncer 127.0.0.1:{self.port} -> {self.server_host}:{self.server_port}, "
            f"pool {self.pool_size}>"
        )
