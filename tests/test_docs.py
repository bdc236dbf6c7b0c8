"""Every code sample of the README and of docs/ runs, and prints what the page shows.

Each page is one scenario in a throwaway project of its own, on a fresh database (see
``tests/docs_harness.py`` for how its blocks are taken); two pages run at once. Links between the
pages, and the API reference's list of public names, are checked too.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import django
import pytest
from django.conf import settings

from tests import docs_harness
from tests.docs_harness import ROOT, Project, blocks, run_page

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SQLITE = os.environ.get("PGQRS_TEST_DB", "postgres") == "sqlite"
JOBS = 2  # pages run at once


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


class Databases:
    """Migrated databases for the pages: one per page on SQLite (a copy of a migrated file); on
    PostgreSQL one per page running at once (``slots``), emptied for each page, its sequences
    restarted, so that ids start at 1 again. (A database of its own for each page would cost a
    second or so to drop, each.)"""

    # Rows that migrate writes once, and that no page changes.
    KEPT = ("django_migrations", "django_content_type", "auth_permission")

    def __init__(self, tmp: Path, slots: int) -> None:
        self.tmp = tmp
        self.server = dict(settings.DATABASES["default"])
        prefix = f"test_{self.server['NAME']}_docs"
        self.names = [f"{prefix}_{slot}" for slot in range(slots)]
        if SQLITE:
            self.template = self.entry(str(tmp / "template.sqlite3"))
        else:
            self.template = self.entry(self.names[0])
            for name in self.names:
                self._execute("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            self._execute("postgres", f'CREATE DATABASE "{self.names[0]}"')
        project = Project(tmp / "template", self.template, [])
        done = subprocess.run(
            [sys.executable, "manage.py", "migrate", "-v", "0"],
            cwd=project.path,
            env=project.env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        for name in self.names[1:] if not SQLITE else []:
            self._execute("postgres", f'CREATE DATABASE "{name}" TEMPLATE "{self.names[0]}"')
        self.free: queue.Queue[str] = queue.Queue()
        for name in self.names:
            self.free.put(name)

    def entry(self, name: str) -> dict[str, object]:
        if SQLITE:
            options = {"timeout": 20, "transaction_mode": "IMMEDIATE"}
            return {"ENGINE": "django.db.backends.sqlite3", "NAME": name, "OPTIONS": options}
        server = {key: self.server[key] for key in ("HOST", "PORT", "USER", "PASSWORD")}
        return {"ENGINE": "django.db.backends.postgresql", "NAME": name, **server}

    def fresh(self, slot: str, name: str) -> dict[str, object]:
        """The database of ``slot`` for a page (or a part of one, ``name``), as migrate left
        it."""
        if SQLITE:
            target = self.tmp / f"{name}.sqlite3"
            shutil.copyfile(str(self.template["NAME"]), target)
            return self.entry(str(target))
        tables = self._execute(
            slot,
            "SELECT string_agg(quote_ident(tablename), ', ') FROM pg_tables "
            "WHERE schemaname = 'public' AND tablename <> ALL(%s)",
            [list(self.KEPT)],
        )
        self._execute(slot, f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
        return self.entry(slot)

    def close(self) -> None:
        if not SQLITE:
            for name in self.names:
                self._execute("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _execute(self, database: str, statement: str, params: list[object] | None = None) -> object:
        import psycopg

        with psycopg.connect(
            dbname=database,
            host=self.server["HOST"],
            port=self.server["PORT"],
            user=self.server["USER"],
            password=self.server["PASSWORD"] or None,
            autocommit=True,
        ) as connection:
            cursor = connection.execute(statement, params)
            row = cursor.fetchone() if cursor.description else None
            return None if row is None else row[0]


def run(page: Path, databases: Databases, tmp: Path) -> None:
    """Run ``page`` in a project of its own, on a database slot of its own while it runs."""
    name = re.sub(r"\W", "_", page_id(page).lower())
    slot = databases.free.get()
    try:
        parts = iter(range(1, 100))
        project = Project(tmp / name, databases.fresh(slot, name), docs_harness.apps_of(page))
        run_page(page, project, lambda: databases.fresh(slot, f"{name}_{next(parts)}"))
    finally:
        databases.free.put(slot)


def needs_skipping(page: Path) -> str | None:
    if page.name == "tasks.md" and django.VERSION < (6, 0):
        return "django.tasks, and so the tasks page's samples, need Django 6.0"
    return None


@pytest.fixture(scope="session")
def page_runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[Path, Future[None]]]:
    """The selected pages, run JOBS at a time from the start (most of a page's time is spent
    starting processes and waiting on them); each test waits for its page."""
    pages = [
        item.callspec.params["page"]
        for item in request.session.items
        if getattr(item, "originalname", "") == "test_every_sample_of_the_page_runs"
    ]
    pages = [page for page in pages if not needs_skipping(page)]
    tmp = tmp_path_factory.mktemp("docs")
    databases = Databases(tmp, min(JOBS, max(len(pages), 1)))
    with ThreadPoolExecutor(JOBS) as pool:
        try:
            yield {page: pool.submit(run, page, databases, tmp) for page in pages}
        finally:
            pool.shutdown(cancel_futures=True)
            databases.close()


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_sample_of_the_page_runs(page: Path, page_runs: dict[Path, Future[None]]) -> None:
    reason = needs_skipping(page)
    if reason:
        pytest.skip(reason)
    page_runs[page].result(timeout=600)


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_links_between_pages_lead_somewhere(page: Path) -> None:
    text = page.read_text()
    for target, anchor in re.findall(r"\]\(([^)#\s]*?)(?:#([^)\s]+))?\)", text):
        if re.match(r"\w+:", target):
            continue  # a URL
        path = (page.parent / target).resolve() if target else page
        assert path.exists(), f"{page_id(page)} links to {target}, which does not exist"
        if anchor and path.suffix == ".md":
            assert anchor in anchors(path), (
                f"{page_id(page)} links to {target}#{anchor}: no such heading"
            )


def anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings."""
    found = set()
    fenced = False
    for line in page.read_text().split("\n"):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        match = None if fenced else re.match(r"^#{1,6}\s+(.*)$", line)
        if match:
            slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
            found.add(slug)
    return found


def test_samples_left_out_are_few_and_say_why() -> None:
    left_out = [
        (block.where, block.not_run) for page in PAGES for block in blocks(page) if block.not_run
    ]
    assert len(left_out) <= 4, left_out


def test_the_api_reference_names_every_public_name() -> None:
    import django_pgqrs
    from django_pgqrs import signals, testing
    from django_pgqrs.conf import DEFAULTS

    commands = [
        path.stem for path in (ROOT / "django_pgqrs/management/commands").glob("pgqrs_*.py")
    ]
    reference = (ROOT / "docs/api.md").read_text()
    names = [*django_pgqrs.__all__, *signals.__all__, *testing.__all__, *DEFAULTS, *commands]
    missing = [name for name in names if not re.search(rf"`[^`]*\b{name}\b", reference)]
    assert missing == [], f"docs/api.md does not mention {missing}"


@pytest.mark.parametrize(
    ("markdown", "error"),
    [
        ("```python\nprint(1 + 1)\n```\n\n```text\n3\n```\n", "page.md:6: the output differs"),
        ("```python\n1 / 0\n```\n\nNo output shown.\n", "page.md:2: raised ZeroDivisionError"),
        ("```sh\npython manage.py nosuchcommand\n```\n", "exited with status 1"),
    ],
    ids=["other output", "an exception not shown", "a failing command"],
)
def test_a_page_whose_sample_does_not_do_what_it_shows_fails(
    markdown: str, error: str, tmp_path: Path
) -> None:
    page = tmp_path / "page.md"
    page.write_text(markdown)
    database = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(tmp_path / "db.sqlite3")}
    project = Project(tmp_path / "project", database, [])
    with pytest.raises(AssertionError, match=error):
        run_page(page, project, lambda: database)
