"""The admin in a real browser (Chromium): an operator finds a failed workflow and resumes it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connections

from django_pgqrs import Workflow, create_workflow
from tests import workflows

CHROMIUM = os.environ.get("PGQRS_TEST_CHROMIUM", "/usr/bin/chromium")
# CI sets PGQRS_TEST_BROWSER=required, so that a missing browser fails instead of skipping.
REQUIRED = os.environ.get("PGQRS_TEST_BROWSER") == "required"


@pytest.fixture
def page(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
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
            yield browser.new_page()
        finally:
            browser.close()
            # The ORM calls made while Playwright's loop ran had connections of their own.
            connections.close_all()


@pytest.mark.django_db(transaction=True)
def test_an_operator_finds_a_failed_workflow_and_resumes_it(live_server, page):
    User.objects.create_superuser("operator", "operator@example.com", "secret-pw")
    workflows.add_three.run(1)
    workflows.failures.append(ValueError("card declined"))
    failed = create_workflow("one_flaky", 1)
    with pytest.raises(ValueError):
        workflows.one_flaky(failed, 1)

    page.goto(f"{live_server.url}/admin/login/?next=/admin/django_pgqrs/workflow/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", "secret-pw")
    page.click("input[type=submit]")
    page.wait_for_selector("#result_list")
    rows = page.locator("#result_list tbody tr")
    assert rows.count() == 2

    page.click("#changelist-filter a:has-text('ERROR')")
    page.wait_for_url("**status__exact=ERROR**")
    assert page.locator("#result_list tbody tr").count() == 1
    page.click(f"#result_list a:has-text('{failed.id}')")
    page.wait_for_selector("text=card declined")
    steps = page.locator(".tabular tbody tr")
    assert "add_one" in steps.nth(0).inner_text()
    assert "flaky" in steps.nth(1).inner_text()
    assert "card declined" in steps.nth(1).inner_text()

    page.go_back()
    page.check("#result_list input.action-select")
    page.select_option("select[name=action]", "resume_workflows")
    page.click("button[name=index]")
    page.wait_for_selector("text=1 workflow(s) queued to resume.")
    assert Workflow.objects.get(pk=failed.id).status == "PENDING"
