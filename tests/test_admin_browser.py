"""The admin in a real browser (Chromium): an operator finds a failed workflow and resumes it.

Screenshots of each step go to ``screenshots/`` at the repository's root (git-ignored), or to
the folder named by PGQRS_TEST_SCREENSHOTS.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connections

from django_pgqrs import Workflow, create_workflow
from django_pgqrs.testing import drain
from tests import workflows

CHROMIUM = os.environ.get("PGQRS_TEST_CHROMIUM", "/usr/bin/chromium")
# CI sets PGQRS_TEST_BROWSER=required, so that a missing browser fails instead of skipping.
REQUIRED = os.environ.get("PGQRS_TEST_BROWSER") == "required"
SCREENSHOTS = Path(
    os.environ.get("PGQRS_TEST_SCREENSHOTS", Path(__file__).resolve().parent.parent / "screenshots")
)


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if REQUIRED:
            raise
        pytest.skip("playwright is not installed (pip install -e '.[browser]')")
    if not os.path.exists(CHROMIUM):
        if REQUIRED:
            raise AssertionError(f"no Chromium at {CHROMIUM}")
        pytest.skip(f"no Chromium at {CHROMIUM} (apt install chromium)")
    # Playwright runs an event loop in this thread; the ORM calls of the test are still sync.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
            ],
        )
        try:
            yield browser
        finally:
            browser.close()
            # The ORM calls made while Playwright's loop ran had connections of their own.
            connections.close_all()


@pytest.fixture(autouse=True)
def static_files(settings: Any, tmp_path: Path) -> None:
    """The admin's and django-pgqrs's CSS, served by the live server as collectstatic would
    (the test settings have no staticfiles app), so that the screenshots look as in use."""
    import django.contrib.admin

    import django_pgqrs

    root = tmp_path / "static"
    root.mkdir()
    for package, name in ((django.contrib.admin, "admin"), (django_pgqrs, "django_pgqrs")):
        (root / name).symlink_to(Path(package.__file__).parent / "static" / name)
    settings.STATIC_ROOT = str(root)


def staff_user(username: str, *codenames: str) -> None:
    user = User.objects.create_user(username, password="secret-pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))


def log_in(browser: Any, live_server: Any, username: str, next_url: str = "/admin/") -> Any:
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(f"{live_server.url}/admin/login/?next={next_url}")
    page.fill("#id_username", username)
    page.fill("#id_password", "secret-pw")
    page.click("input[type=submit]")
    page.wait_for_load_state()
    return page


def shoot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"admin-{name}.png"), full_page=True)


def failed_workflow() -> Workflow:
    workflows.failures.append(ValueError("card declined"))
    failed = create_workflow("one_flaky", 1)
    with pytest.raises(ValueError):
        workflows.one_flaky(failed, 1)
    return failed


@pytest.mark.django_db(transaction=True)
def test_an_operator_finds_a_failed_workflow_and_resumes_it(live_server, browser):
    staff_user("operator", "view_workflow", "operate_workflow")
    workflows.add_three.run(1)
    failed = failed_workflow()

    page = log_in(browser, live_server, "operator")
    page.click("a:has-text('Durable workflows')")
    page.click("a:has-text('Overview of the workflows')")
    page.wait_for_selector("h2:has-text('Workflows by status')")
    assert "card declined" in page.inner_text(".pgqrs-overview")
    shoot(page, "1-overview")

    page.click(".pgqrs-counts a[href$='status__exact=ERROR']")
    page.wait_for_url("**status__exact=ERROR**")
    rows = page.locator("#result_list tbody tr")
    assert rows.count() == 1
    assert "card declined" in rows.nth(0).inner_text()
    assert "failed at flaky" in rows.nth(0).inner_text()
    shoot(page, "2-failed-list")

    page.click(f"#result_list a:has-text('{failed.id}')")
    page.wait_for_selector(".field-error_json")
    assert "ValueError: card declined (in step flaky)" in page.inner_text(".field-error_json")
    assert page.inner_text(".field-status_badge .pgqrs-status") == "ERROR"
    steps = page.locator("table.pgqrs-steps tbody tr")
    assert "add_one" in steps.nth(0).inner_text()
    assert "card declined" in steps.nth(1).inner_text()
    page.click(".field-error_json summary:has-text('Traceback')")
    assert page.locator(".field-error_json pre.pgqrs-traceback").is_visible()
    shoot(page, "3-failed-workflow")

    page.click("a.pgqrs-resume")
    page.wait_for_selector("text=ERROR")
    shoot(page, "4-confirmation")
    page.click("input[type=submit][value='Yes, resume 1 workflow']")
    page.wait_for_selector(f"text=1 resumed: {failed.id}")
    assert Workflow.objects.get(pk=failed.id).status == "PENDING"

    [ran] = drain()  # a worker's run
    assert ran.status == "SUCCESS"
    page.reload()
    assert page.inner_text(".field-status_badge .pgqrs-status") == "SUCCESS"
    assert "card declined" in page.inner_text("#attempts")  # the earlier attempt's error
    shoot(page, "5-resumed")


@pytest.mark.django_db(transaction=True)
def test_a_view_only_user_sees_a_failed_workflow_and_no_action(live_server, browser):
    staff_user("auditor", "view_workflow")
    failed = failed_workflow()

    page = log_in(browser, live_server, "auditor", "/admin/django_pgqrs/workflow/")
    page.wait_for_selector("#result_list")
    assert page.locator("select[name=action]").count() == 0
    assert page.locator("#result_list input.action-select").count() == 0
    page.click(f"#result_list a:has-text('{failed.id}')")
    page.wait_for_selector(".field-error_json")
    assert "card declined" in page.inner_text(".field-error_json")
    assert page.locator("a.pgqrs-operate").count() == 0
    assert page.locator("a.deletelink").count() == 0
    shoot(page, "6-view-only")
