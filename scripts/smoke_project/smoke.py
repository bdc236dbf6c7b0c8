"""The smoke test's checks, run by scripts/smoke in a virtual environment where django-pgqrs was
installed from its wheel or its sdist, from a copy of this project outside the repository.

    python smoke.py installed EXPECTED   the installed package is the whole package, not the source
    python smoke.py inline               a workflow run in this process, and its checkpoints
    python smoke.py start                a workflow started for a worker: prints its id
    python smoke.py finished ID          that workflow, after `pgqrs_worker --burst`
    python smoke.py admin                the admin's list and page of a workflow

Each check raises (exit status 1, with a traceback) when it fails.
"""

from __future__ import annotations

import os
import sys
from importlib import metadata
from pathlib import Path

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "smokesite.settings")
django.setup()

from orders.workflows import checkout  # noqa: E402

from django_pgqrs import Workflow, WorkflowHandle  # noqa: E402


def fail(message: str) -> None:
    raise SystemExit(f"smoke: FAILED: {message}")


def installed(expected_file: str) -> None:
    """The package comes from site-packages, with every file of the source package."""
    from django.db.migrations.loader import MigrationLoader
    from django.db.migrations.recorder import MigrationRecorder

    import django_pgqrs

    package = Path(django_pgqrs.__file__).resolve().parent
    if "site-packages" not in package.parts:
        fail(f"django_pgqrs is imported from {package}, not from the virtual environment")
    if not (package / "py.typed").is_file():
        fail(f"{package}/py.typed is missing")

    files = {
        path.relative_to(package.parent).as_posix()
        for path in package.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    expected = set(Path(expected_file).read_text().split())
    if missing := sorted(expected - files):
        fail(f"files of the source package missing from the installed one: {missing}")
    if extra := sorted(files - expected):
        fail(f"files in the installed package that the source package lacks: {extra}")

    on_disk = {name for app, name in MigrationLoader(None).disk_migrations if app == "django_pgqrs"}
    shipped = {Path(name).stem for name in expected if name.startswith("django_pgqrs/migrations/0")}
    if not shipped or on_disk != shipped:
        fail(f"migrations found {sorted(on_disk)}, expected {sorted(shipped)}")
    applied = MigrationRecorder.Migration.objects.filter(app="django_pgqrs")
    if set(applied.values_list("name", flat=True)) != shipped:
        fail("`migrate` did not apply every migration of django_pgqrs")

    # The admin's templates and static files, if any, are found where Django looks for them.
    from django.contrib.staticfiles import finders
    from django.template.loader import get_template

    templates = sorted((package / "templates").rglob("*.html"))
    for template in templates:
        get_template(template.relative_to(package / "templates").as_posix())
    static = sorted(path for path in (package / "static").rglob("*") if path.is_file())
    for path in static:
        if finders.find(path.relative_to(package / "static").as_posix()) is None:
            fail(f"the static file {path} is not found by Django's finders")

    dist = metadata.distribution("django-pgqrs")
    if dist.metadata["License-Expression"] != "MIT":
        fail(f"License-Expression is {dist.metadata['License-Expression']!r}, not 'MIT'")
    licenses = [f for f in dist.files or () if f.name == "LICENSE"]
    if not licenses or "MIT License" not in licenses[0].read_text():
        fail("the LICENSE file is not in the installed distribution's metadata")
    print(
        f"smoke: django-pgqrs {dist.version} installed in {package.parent}: "
        f"{len(files)} files, migrations {', '.join(sorted(shipped))}, {len(templates)} "
        f"templates, {len(static)} static files, py.typed, LICENSE; "
        f"Django {django.get_version()}, Python {sys.version.split()[0]}"
    )


def inline() -> None:
    result = checkout.run(2, 3)
    if result != "total=5":
        fail(f"checkout.run(2, 3) returned {result!r}")
    run = Workflow.objects.get(name="checkout")
    steps = list(run.steps.order_by("position").values_list("step_id", "status"))
    if run.status != "SUCCESS" or steps != [("add", "SUCCESS"), ("describe", "SUCCESS")]:
        fail(f"workflow {run.id} is {run.status} with steps {steps}")
    print(f"smoke: workflow {run.id} ran inline: {result!r}, steps {steps}")


def start() -> None:
    handle = checkout.start(20, 22)
    if handle.status() != "PENDING":
        fail(f"a started workflow is {handle.status()}, not PENDING")
    print(handle.id)


def finished(workflow_id: str) -> None:
    handle = WorkflowHandle(int(workflow_id))
    if handle.status() != "SUCCESS":
        fail(f"workflow {workflow_id} is {handle.status()} after the worker's burst")
    result = handle.result(timeout=0)
    if result != "total=42":
        fail(f"workflow {workflow_id} returned {result!r}")
    print(f"smoke: workflow {workflow_id} ran on the worker: {result!r}")


def admin() -> None:
    from django.contrib.auth.models import User
    from django.test import Client

    user = User.objects.create(username="smoke", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(user)
    run = Workflow.objects.order_by("id").first()
    if run is None:
        fail("no workflow to show in the admin")
    for url in ("/admin/django_pgqrs/workflow/", f"/admin/django_pgqrs/workflow/{run.id}/change/"):
        response = client.get(url)
        if response.status_code != 200 or b"checkout" not in response.content:
            fail(f"GET {url}: {response.status_code}")
    print(f"smoke: the admin lists workflows and shows workflow {run.id}")


if __name__ == "__main__":
    command, *args = sys.argv[1:] or ["?"]
    checks = {
        "installed": installed,
        "inline": inline,
        "start": start,
        "finished": finished,
        "admin": admin,
    }
    if command not in checks:
        raise SystemExit(__doc__)
    checks[command](*args)
