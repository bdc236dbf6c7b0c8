"""Run the code samples of a Markdown page as one scenario, in a throwaway Django project.

A page's fenced blocks are taken in order (``docs/index.md`` says it in short):

- A block whose first line is a comment naming a file (``# orders/workflows.py``,
  ``# pytest.ini``) is that file of the project, and its top-level directory an app in
  ``INSTALLED_APPS``; ``# orders/workflows.py (continued)`` adds to the file.
- ``# settings.py`` blocks are run at the end of the project's settings, in order. They show what
  to add: ``...`` in a list stands for what the list held (``[..., "django_pgqrs"]``), ``{...}``
  as a value for the value held (for a database alias not held, the test's database), and a dict
  adds its keys to the dict held. The test's database replaces every connection a sample names.
- Other ``python`` blocks run in one ``manage.py shell`` process of the page, so that a name one
  block defines is known to the next. A file or settings block after Python has run starts a new
  shell, as a deploy would, before the next Python block. A block that raises must be followed by
  a ``text`` block that shows the exception.
- ``sh`` blocks are commands, run one line at a time in the project's directory, with the test's
  ``python`` first on the ``PATH``; each must exit with status 0. ``pgqrs_worker`` without
  ``--burst`` runs until stopped: it runs in the background, and is sent SIGTERM when the page
  ends (it must then exit with status 0). A ``pip`` command is refused.
- ``sql`` blocks run through the project's database connection on PostgreSQL; on SQLite they are
  skipped (the guide's SQL is PostgreSQL's).
- A ``text`` block is what the sample right before it printed, compared as doctest compares
  (``...`` matches anything). After a Python block that raised, it is the output, then
  ``Traceback (most recent call last):``, ``...`` and the exception's last line.
- ``<!-- not run: REASON -->`` right before a block leaves it out; the reason is required.
- ``<!-- fresh database -->`` right before a block stops the shell and the background commands and
  gives the project a new database, for a second example that counts ids from 1 again.
- ``<!-- files of: other.md -->`` anywhere writes the file blocks of another page first (for a
  page about the quickstart's app, say).

Where Sentry's SDK is not installed, the project has a stand-in ``sentry_sdk`` module that does
nothing (the docs check their Sentry receiver with ``mock.patch``). ``testproject`` is linked into
the project, for the README's demo commands; ``DATABASE_URL`` names the project's database.

This module is also the shell's side (``serve()``), so it imports only the standard library.
"""

from __future__ import annotations

import contextlib
import doctest
import importlib.util
import io
import json
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "mysite"  # the settings package, as Django's tutorial names it
MARK = "\x00docs-shell "
FILE_COMMENT = re.compile(r"^#\s+((?:[\w.-]+/)*[\w.-]+\.(?:py|ini|toml|cfg|txt))\b")
FRESH = re.compile(r"^<!--\s*fresh database\s*-->$")
FILES_OF = re.compile(r"<!--\s*files of:\s*(\S+\.md)\s*-->")
NOT_RUN = re.compile(r"^<!--\s*not run:\s*(\S.*?)\s*-->$", re.DOTALL)
FENCE = re.compile(r"^(`{3,})(\S*)\s*$")
SHELL_LANGS = {"sh", "shell", "bash", "console"}


@dataclass
class Block:
    """A fenced block of a page: where it starts, its language and its text."""

    page: Path
    line: int  # of the block's first line of code (after the fence)
    lang: str
    text: str
    not_run: str | None = None
    fresh: bool = False  # a new database before this block

    @property
    def where(self) -> str:
        return f"{self.page.name}:{self.line}"

    @property
    def continued(self) -> bool:
        """A file block whose first line says ``(continued)`` adds to the file."""
        return self.file is not None and "(continued)" in self.text.split("\n", 1)[0]

    @property
    def file(self) -> str | None:
        """The project file this block is, from its first line's comment; else None."""
        first = self.text.split("\n", 1)[0]
        match = FILE_COMMENT.match(first)
        return match.group(1) if match else None


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of a Markdown page, with the ``not run`` comment before each."""
    lines = page.read_text().split("\n")
    found: list[Block] = []
    comment: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = FENCE.match(line.strip())
        if fence:
            ticks, lang = fence.groups()
            body: list[str] = []
            i += 1
            while i < len(lines) and lines[i].strip() != ticks:
                body.append(lines[i])
                i += 1
            reason, fresh = None, False
            if comment is not None:
                match = NOT_RUN.match(comment)
                reason = match.group(1) if match else None
                fresh = bool(FRESH.match(comment))
            # A block inside a list item is indented as its fence is.
            indent = len(line) - len(line.lstrip())
            text = "\n".join(row[indent:] if row[:indent].isspace() else row for row in body)
            found.append(Block(page, i - len(body) + 1, lang, text))
            found[-1].not_run = reason
            found[-1].fresh = fresh
            comment = None
        elif line.strip().startswith("<!--"):
            text = line.strip()
            while "-->" not in text and i + 1 < len(lines):
                i += 1
                text += " " + lines[i].strip()
            comment = text
        elif line.strip():
            comment = None
        i += 1
    return found


# --- The project ---------------------------------------------------------------------------------

BASE_SETTINGS = '''\
"""Settings of a throwaway project, as `startproject` writes them; the page's come last."""

from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "docs-only"
DEBUG = True
ALLOWED_HOSTS = ["testserver", "localhost"]
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_pgqrs",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "mysite.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
'''

MANAGE = """\
#!/usr/bin/env python
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
"""

# Where Sentry's SDK is not installed, the project gets this stand-in for the calls the docs make.
SENTRY_STAND_IN = """\
\"\"\"A stand-in for Sentry's SDK (not installed here): the calls the docs make, doing nothing.\"\"\"
import contextlib


class Scope:
    def set_tag(self, key, value):
        pass

    def set_context(self, key, value):
        pass


@contextlib.contextmanager
def new_scope():
    yield Scope()


def capture_exception(error=None, **kwargs):
    return None


def capture_message(message, level=None, **kwargs):
    return None
"""

URLS = """\
from django.contrib import admin
from django.urls import path

urlpatterns = [path("admin/", admin.site.urls)]
"""


def merge(old: Any, new: Any, default: Any = None) -> Any:
    """A setting as a fragment gives it: ``...`` in a list is what the list held, ``{...}``
    (or ``...``) as a value is the value held (``default`` where there was none), and a dict
    adds to the dict held."""
    if new is Ellipsis or new == {Ellipsis}:
        return old if old is not None else default
    if isinstance(new, list | tuple) and any(item is Ellipsis for item in new):
        at = [item is Ellipsis for item in new].index(True)
        held = [item for item in old or [] if item not in new]
        return type(new)(
            [*new[:at], *held, *(item for item in new[at + 1 :] if item is not Ellipsis)]
        )
    if isinstance(new, dict) and isinstance(old, dict):
        return {**old, **{key: merge(old.get(key), value, default) for key, value in new.items()}}
    if isinstance(new, dict):
        return {key: merge(None, value, default) for key, value in new.items()}
    return new


def apply_fragments(namespace: dict[str, Any], fragments: list[str], databases: Any) -> None:
    """Run the page's settings fragments at the end of ``namespace`` (the settings module), then
    put the test's database in place of the connections they name."""
    for source in fragments:
        held = {key: value for key, value in namespace.items() if key.isupper()}
        copies = {key: _copy(value) for key, value in held.items()}
        exec(compile(source, "settings.py (a page's fragment)", "exec"), namespace)
        for key, value in list(namespace.items()):
            if key.isupper() and value is not held.get(key):  # set by the fragment
                default = databases["default"] if key == "DATABASES" else None
                namespace[key] = merge(copies.get(key), value, default)
    for alias, database in list(namespace["DATABASES"].items()):
        connection = databases.get(alias, databases["default"])
        database = database if isinstance(database, dict) else {}
        same_engine = database.get("ENGINE") == connection["ENGINE"]
        options = {
            **connection.get("OPTIONS", {}),
            **(database.get("OPTIONS", {}) if same_engine else {}),
        }
        namespace["DATABASES"][alias] = {**database, **connection, "OPTIONS": options}


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy(item) for item in value]
    return value


class Project:
    """A throwaway Django project in ``path``, on the database ``database`` (a DATABASES
    entry)."""

    def __init__(self, path: Path, database: dict[str, Any], apps: list[str]) -> None:
        self.path = path
        self.database = database
        self.apps = apps
        self.fragments: list[str] = []
        path.mkdir(parents=True, exist_ok=True)
        (path / "manage.py").write_text(MANAGE)
        (path / PROJECT).mkdir(exist_ok=True)
        (path / PROJECT / "__init__.py").write_text("")
        (path / PROJECT / "urls.py").write_text(URLS)
        for app in apps:
            (path / app).mkdir(exist_ok=True)
            (path / app / "__init__.py").touch()
        # The demo project, for the README's `python testproject/manage.py ...` (it reads
        # DATABASE_URL, which env() sets to this project's database).
        (path / "testproject").symlink_to(ROOT / "testproject")
        if importlib.util.find_spec("sentry_sdk") is None:
            (path / "sentry_sdk.py").write_text(SENTRY_STAND_IN)
        self.write_settings()

    def write_settings(self) -> None:
        apps = "".join(f"INSTALLED_APPS.append({app!r})\n" for app in self.apps)
        tail = (
            f"\nDATABASES = {{'default': {self.database!r}}}\n{apps}"
            f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
            f"from docs_harness import apply_fragments\nsys.path.pop(0)\n"
            f"apply_fragments(globals(), {self.fragments!r}, {{'default': {self.database!r}}})\n"
        )
        (self.path / PROJECT / "settings.py").write_text(BASE_SETTINGS + tail)

    def add_settings(self, source: str) -> None:
        self.fragments.append(source)
        self.write_settings()

    def write(self, name: str, text: str) -> None:
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        for parent in target.relative_to(self.path).parents:
            if str(parent) not in (".", "") and target.suffix == ".py":
                (self.path / parent / "__init__.py").touch()
        target.write_text(text)

    def append(self, name: str, text: str) -> None:
        target = self.path / name
        if not target.exists():
            raise AssertionError(f"{name} is continued before it was written")
        target.write_text(target.read_text() + "\n\n" + text)

    def env(self) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("PYTHONPATH", "DJANGO_SETTINGS_MODULE")
        }
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env["PYTHONUNBUFFERED"] = "1"
        env["COLUMNS"] = "80"  # what pytest and argparse print is as wide on every machine
        env["DATABASE_URL"] = database_url(self.database)
        return env


def database_url(database: dict[str, Any]) -> str:
    """The URL of a DATABASES entry, for the demo project (which reads DATABASE_URL)."""
    if database["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{database['NAME']}"
    password = f":{database['PASSWORD']}" if database.get("PASSWORD") else ""
    return (
        f"postgres://{database['USER']}{password}@{database['HOST']}:{database['PORT']}/"
        f"{database['NAME']}"
    )


# --- The page's shell ----------------------------------------------------------------------------


@dataclass
class Ran:
    """What a sample printed, and the exception it raised (its last line and traceback)."""

    output: str
    exception: str | None = None
    traceback: str | None = None


class Shell:
    """One ``manage.py shell`` process that runs a page's Python blocks, in one namespace."""

    def __init__(self, project: Project, timeout: float = 120) -> None:
        self.project = project
        self.timeout = timeout
        self.stderr = project.path / f"shell-{time.monotonic_ns()}.err"
        command = (
            f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"import docs_harness; sys.path.pop(0); docs_harness.serve()"
        )
        with self.stderr.open("w") as errors:
            self.process = subprocess.Popen(
                [sys.executable, "manage.py", "shell", "-c", command],
                cwd=project.path,
                env=project.env(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
            )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def run(self, block: Block) -> Ran:
        source = "\n" * (block.line - 1) + block.text + "\n"
        request = json.dumps({"source": source, "filename": str(block.page)})
        assert self.process.stdin is not None
        self.process.stdin.write(request + "\n")
        self.process.stdin.flush()
        noise = []
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"{block.where}: no answer from the shell in {self.timeout} s\n"
                    f"{self.stderr.read_text()}"
                ) from None
            if line is None:
                raise AssertionError(
                    f"{block.where}: the shell exited ({self.process.wait()}):\n"
                    f"{''.join(noise)}{self.stderr.read_text()}"
                )
            if line.startswith(MARK):
                answer = json.loads(line[len(MARK) :])
                return Ran(answer["output"], answer["exception"], answer["traceback"])
            noise.append(line)

    def close(self) -> None:
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def serve() -> None:
    """The shell's side: run each block sent on stdin; answer with what it printed."""
    namespace: dict[str, Any] = {"__name__": "__main__"}
    answers = sys.stdout
    for request in sys.stdin:
        block = json.loads(request)
        printed = io.StringIO()
        exception = trace = None
        try:
            code = compile(block["source"], block["filename"], "exec")
            with contextlib.redirect_stdout(printed):
                exec(code, namespace)
        except BaseException as exc:  # the page shows what it raises
            exception = traceback.format_exception_only(type(exc), exc)[-1].rstrip("\n")
            trace = traceback.format_exc()
        answer = {"output": printed.getvalue(), "exception": exception, "traceback": trace}
        answers.write(MARK + json.dumps(answer) + "\n")
        answers.flush()


# --- Commands ------------------------------------------------------------------------------------


def commands(text: str) -> Iterator[str]:
    """The commands of a shell block: its lines, continued by a trailing backslash."""
    pending = ""
    for line in text.split("\n"):
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        line = pending + line
        pending = ""
        if line.strip() and not line.strip().startswith("#"):
            yield line.strip()


def runs_until_stopped(command: str) -> bool:
    words = shlex.split(command, comments=True)
    return "pgqrs_worker" in words and "--burst" not in words


@dataclass
class Page:
    """Runs one page's blocks as one scenario."""

    path: Path
    project: Project
    fresh: Callable[[], dict[str, Any]]
    shell: Shell | None = None
    restart: bool = False
    background: list[tuple[str, subprocess.Popen[str], Path]] = field(default_factory=list)
    last: tuple[Block, Ran] | None = None

    def run(self) -> None:
        try:
            for other in FILES_OF.findall(self.path.read_text()):
                for block in blocks(self.path.parent / other):
                    if block.file and block.file != "settings.py" and block.not_run is None:
                        self.take(block)
            for block in blocks(self.path):
                self.take(block)
            self.settle()
        except BaseException:
            self.stop(check=False)
            raise
        self.stop()

    def take(self, block: Block) -> None:
        if block.lang == "text" and block.not_run is None:
            self.check_output(block)
            return
        self.settle()
        if block.fresh:
            self.stop()
            self.project.database = self.fresh()
            self.project.write_settings()
        if block.not_run is not None:
            return
        name = block.file
        if name is not None:
            if name == "settings.py":
                self.project.add_settings(block.text.split("\n", 1)[1])
            elif block.continued:
                self.project.append(name, block.text.split("\n", 1)[1] + "\n")
            else:
                self.project.write(name, block.text + "\n")
            self.restart = self.shell is not None
        elif block.lang == "python":
            self.last = (block, self.python(block))
        elif block.lang in SHELL_LANGS:
            self.last = (block, self.command(block))
        elif block.lang == "sql":
            self.sql(block)
        else:
            raise AssertionError(
                f"{block.where}: a {block.lang or 'plain'} block is neither a file (its first "
                f"line a comment naming it), nor code, nor output; run it, or say why not "
                f"with <!-- not run: REASON -->"
            )

    def settle(self) -> None:
        """The sample before, whose output no text block showed: it must not have raised."""
        if self.last is not None:
            sample, ran = self.last
            self.last = None
            if ran.exception is not None:
                raise AssertionError(
                    f"{sample.where}: raised {ran.exception}\n{ran.traceback}\n(no text block "
                    f"after it shows the exception)"
                )

    def python(self, block: Block) -> Ran:
        if self.shell is None or self.restart:
            if self.shell is not None:
                self.shell.close()
            self.shell = Shell(self.project)
            self.restart = False
        return self.shell.run(block)

    def sql(self, block: Block) -> None:
        if not self.project.database["ENGINE"].endswith("postgresql"):
            return
        source = (
            "from django.db import connection\n"
            f"with connection.cursor() as cursor:\n"
            f"    for statement in {block.text!r}.split(';'):\n"
            f"        if statement.strip():\n"
            f"            cursor.execute(statement)\n"
        )
        ran = self.python(Block(block.page, block.line, "python", source))
        if ran.exception:
            raise AssertionError(f"{block.where}: {ran.exception}\n{ran.traceback}")

    def command(self, block: Block) -> Ran:
        printed = []
        for command in commands(block.text):
            words = shlex.split(command, comments=True)
            if (words and words[0] in ("pip", "pip3")) or words[:3] == ["python", "-m", "pip"]:
                raise AssertionError(
                    f"{block.where}: {command!r} would install packages; mark the block "
                    f"<!-- not run: REASON -->"
                )
            if runs_until_stopped(command):
                log = self.project.path / f"background-{len(self.background)}.log"
                with log.open("w") as out:
                    process = subprocess.Popen(
                        ["bash", "-c", f"exec {command}"],
                        cwd=self.project.path,
                        env=self.project.env(),
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        text=True,
                    )
                self.background.append((command, process, log))
                continue
            done = subprocess.run(
                ["bash", "-c", command],
                cwd=self.project.path,
                env=self.project.env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=300,
            )
            if done.returncode != 0:
                raise AssertionError(
                    f"{block.where}: `{command}` exited with status {done.returncode}:\n"
                    f"{done.stdout}"
                )
            printed.append(done.stdout)
        return Ran("".join(printed))

    def check_output(self, block: Block) -> None:
        if self.last is None:
            raise AssertionError(
                f"{block.where}: a text block shows what the sample before it printed, but "
                f"no sample ran right before it"
            )
        sample, ran = self.last
        self.last = None
        expected = block.text
        if ran.exception is not None:
            head, found, tail = expected.partition("Traceback (most recent call last):")
            if not found:
                raise AssertionError(
                    f"{sample.where}: raised {ran.exception}\n{ran.traceback}\n"
                    f"(its output, at {block.where}, shows no traceback)"
                )
            last = [line for line in tail.strip().split("\n") if line.strip()][-1]
            _compare(block, head, ran.output)
            _compare(block, last, ran.exception)
            return
        _compare(block, expected, ran.output)

    def stop(self, check: bool = True) -> None:
        """Close the shell; stop the background commands with SIGTERM (``check``: each must
        then exit with status 0)."""
        if self.shell is not None:
            self.shell.close()
            self.shell = None
        background, self.background = self.background, []
        for command, process, log in background:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                status = process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                status = process.wait()
            if check and status != 0:
                raise AssertionError(
                    f"{self.path.name}: `{command}` exited with status {status} on SIGTERM:\n"
                    f"{log.read_text()}"
                )


def _compare(block: Block, expected: str, got: str) -> None:
    want = _normal(expected)
    have = _normal(got)
    checker = doctest.OutputChecker()
    if not checker.check_output(want, have, doctest.ELLIPSIS):
        raise AssertionError(
            f"{block.where}: the output differs from the page.\n--- the page shows:\n{want}"
            f"--- the sample printed:\n{have}"
        )


def _normal(text: str) -> str:
    lines = [line.rstrip() for line in text.strip("\n").split("\n")]
    return "\n".join(lines).strip("\n") + "\n"


def run_page(page: Path, project: Project, fresh: Callable[[], dict[str, Any]]) -> None:
    """Run every sample of ``page`` in ``project``; raise AssertionError at the first that
    fails (with its page and line). ``fresh()`` gives a new database."""
    Page(page, project, fresh).run()


def apps_of(page: Path) -> list[str]:
    """The apps a page writes files of: the top-level directories of its file blocks."""
    found: list[str] = []
    others = [page.parent / other for other in FILES_OF.findall(page.read_text())]
    for block in [*(b for other in others for b in blocks(other)), *blocks(page)]:
        name = block.file
        if name and "/" in name and block.not_run is None:
            app = name.split("/", 1)[0]
            if app not in found and app != PROJECT:
                found.append(app)
    return found
