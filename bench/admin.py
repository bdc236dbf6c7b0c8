"""The admin at a million workflows: the server time and query count of each page an operator opens.

    python bench/admin.py [--workflows 1000000] [--requests 5] [--keep] [--reuse] [--act]

Loads --workflows workflows (mostly SUCCESS; one in 20 ERROR, one in 200 CANCELLED, the newest
5,000 RUNNING, SLEEPING or PENDING; 20 names, 3 queues, created over 30 days) with their steps
(three per finished workflow, about 3 million) and one workflow of 5,000 steps, with
``INSERT ... SELECT generate_series``, into a throwaway database, pgqrs_bench_admin, on
DATABASE_URL's server (default postgres://postgres@127.0.0.1:5432); then VACUUM ANALYZE, as
autovacuum would have. Each page is requested --requests times through Django's test client as a
logged-in superuser; the table gives the median server time, the number of SQL queries of one
request and the size of the page. --act also times the confirmed resume of the ERROR workflows
(once: it writes), and puts them back. The database is dropped at the end unless --keep;
--reuse measures a database kept by an earlier run, without loading it again.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import common  # noqa: F401 - puts the repository on sys.path; must come first

DATABASE = "pgqrs_bench_admin"
NAMES = [
    "checkout",
    "refund",
    "send_receipt",
    "send_newsletter",
    "import_catalog",
    "sync_inventory",
    "resize_images",
    "nightly_report",
    "charge_subscription",
    "cancel_subscription",
    "ship_order",
    "notify_carrier",
    "index_products",
    "export_orders",
    "reconcile_payments",
    "onboard_customer",
    "close_account",
    "verify_email",
    "fraud_review",
    "archive_logs",
]
QUEUES = ["default", "emails", "reports"]
BIG_STEPS = 5000
TRACEBACK = "".join(
    f'  File "/srv/shop/payments/gateway.py", line {n}, in charge\n'
    "    response = client.post(url)\n"
    for n in range(100, 115)
)


def server_url() -> str:
    """DATABASE_URL with the throwaway database's name: never the user's own database."""
    url = urlsplit(os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/"))
    return urlunsplit(url._replace(path=f"/{DATABASE}"))


def recreate_database(url: str, drop_only: bool = False) -> None:
    import psycopg
    from testproject.database_url import parse

    db = parse(url)
    params = {"host": db["HOST"], "port": db["PORT"] or 5432, "user": db["USER"]}
    with psycopg.connect(
        **params, password=db["PASSWORD"], dbname="postgres", autocommit=True
    ) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        if not drop_only:
            admin.execute(f'CREATE DATABASE "{DATABASE}"')


WORKFLOWS = """
INSERT INTO pgqrs_workflows (workflow_id, name, status, input, result, error, history,
    created_at, updated_at, lease_owner, lease_token, lease_expires_at, attempts,
    recovery_attempts, queue, priority, run_at, idempotency_key, started_at, attempted_at)
SELECT g, (%(names)s::text[])[1 + (g / 7) %% 20], s.status,
    jsonb_build_object('args', jsonb_build_array(g), 'kwargs', jsonb_build_object('order_id', g,
        'amount', jsonb_build_object('__pgqrs__', 'decimal', 'v', (g %% 1000) || '.99'))),
    CASE WHEN s.status = 'SUCCESS' THEN jsonb_build_object(
        'charged', jsonb_build_object('__pgqrs__', 'decimal', 'v', '2.99'),
        'at', jsonb_build_object('__pgqrs__', 'datetime', 'v', s.created)) END,
    CASE WHEN s.status = 'ERROR' THEN s.error END,
    CASE WHEN s.status = 'ERROR' THEN jsonb_build_array(jsonb_build_object(
        'attempt', 1, 'worker', 'web-1:' || (g %% 97), 'ended_at', s.created, 'outcome', 'ERROR',
        'error', s.error)) END,
    s.created, s.created + (g %% 600) * interval '1 second',
    CASE WHEN s.status = 'RUNNING' THEN 'worker-' || (g %% 7) || ':' || g END,
    CASE WHEN s.status = 'RUNNING' THEN gen_random_uuid() END,
    CASE WHEN s.status = 'RUNNING' THEN
        now() + CASE WHEN g %% 100 = 2 THEN interval '-5 minutes' ELSE interval '30 seconds' END
    END,
    CASE WHEN s.status = 'PENDING' THEN 0 WHEN s.status = 'ERROR' THEN 2 ELSE 1 END, 0,
    (%(queues)s::text[])[1 + (CASE WHEN g %% 10 < 7 THEN 0 WHEN g %% 10 < 9 THEN 1 ELSE 2 END)],
    0, s.created, CASE WHEN g %% 3 = 0 THEN 'order-' || g END,
    CASE WHEN s.status <> 'PENDING' THEN s.created + interval '1 second' END,
    CASE WHEN s.status <> 'PENDING' THEN s.created + interval '1 second' END
FROM generate_series(1, %(n)s) g,
LATERAL (SELECT
    now() - (%(n)s - g) * (interval '30 days' / %(n)s) AS created,
    CASE
        WHEN g %% 20 = 0 THEN 'ERROR'
        WHEN g %% 200 = 1 THEN 'CANCELLED'
        WHEN g > %(n)s - 5000 AND g %% 25 = 2 THEN 'RUNNING'
        WHEN g > %(n)s - 5000 AND g %% 6 = 3 THEN 'SLEEPING'
        WHEN g > %(n)s - 5000 THEN 'PENDING'
        ELSE 'SUCCESS'
    END AS status,
    jsonb_build_object('type', 'payments.CardDeclined',
        'message', 'card declined for order ' || g || ' ('
            || (ARRAY['insufficient funds', 'expired card', 'do not honor', 'lost card'])
               [1 + g %% 4] || ')',
        'traceback', 'Traceback (most recent call last):' || chr(10) || %(traceback)s
            || 'payments.CardDeclined: card declined for order ' || g,
        'step', 'charge') AS error
) s
"""

# Three steps per finished workflow; a failed one has two (its failed step last); an unfinished
# one, its first.
STEPS = """
INSERT INTO pgqrs_workflow_steps (workflow_id, step_id, position, status, output, error, attempts,
    started_at, completed_at, args_digest)
SELECT w.workflow_id, (ARRAY['fetch', 'charge', 'ship'])[p],  p,
    CASE WHEN w.status = 'ERROR' AND p = 2 THEN 'ERROR' ELSE 'SUCCESS' END,
    CASE WHEN w.status = 'ERROR' AND p = 2 THEN NULL
         ELSE jsonb_build_object('order_id', w.workflow_id, 'step', p,
             'total', jsonb_build_object('__pgqrs__', 'decimal', 'v', '2.99')) END,
    CASE WHEN w.status = 'ERROR' AND p = 2 THEN w.error - 'step' END,
    1, w.created_at + p * interval '1 second', w.created_at + p * interval '1.5 second',
    '0123456789abcdef'
FROM pgqrs_workflows w CROSS JOIN generate_series(1, 3) p
WHERE w.status = 'SUCCESS' OR (w.status = 'ERROR' AND p <= 2) OR p = 1
"""

BIG = """
INSERT INTO pgqrs_workflows (workflow_id, name, status, input, result, created_at, updated_at,
    attempts, recovery_attempts, queue, priority, run_at, started_at, attempted_at)
VALUES (%(id)s, 'import_catalog', 'SUCCESS', '{"args": ["catalog.csv"], "kwargs": {}}',
    '{"imported": 5000}', now() - interval '2 hours', now() - interval '1 hour', 1, 0,
    'default', 0, now() - interval '2 hours', now() - interval '2 hours',
    now() - interval '2 hours');
INSERT INTO pgqrs_workflow_steps (workflow_id, step_id, position, status, output, attempts,
    started_at, completed_at, args_digest)
SELECT %(id)s, CASE WHEN p = 1 THEN 'item' ELSE 'item#' || p END, p, 'SUCCESS',
    jsonb_build_object('sku', 'SKU-' || p, 'price', jsonb_build_object('__pgqrs__', 'decimal',
        'v', (p %% 100) || '.50'), 'description', repeat('A fine product. ',
        CASE WHEN p %% 100 = 0 THEN 1500 ELSE 20 END)),
    1, now() - interval '2 hours' + p * interval '0.7 second',
    now() - interval '2 hours' + p * interval '0.7 second' + interval '0.5 second', 'digest'
FROM generate_series(1, %(steps)s) p;
"""


def load(count: int) -> None:
    from django.db import connection

    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(
            WORKFLOWS, {"n": count, "names": NAMES, "queues": QUEUES, "traceback": TRACEBACK}
        )
        cursor.execute(STEPS)
        cursor.execute(BIG, {"id": count + 1, "steps": BIG_STEPS})
        cursor.execute(
            "SELECT setval(pg_get_serial_sequence('pgqrs_workflows', 'workflow_id'), %s)",
            [count + 1],
        )
        cursor.execute("VACUUM ANALYZE pgqrs_workflows")
        cursor.execute("VACUUM ANALYZE pgqrs_workflow_steps")
        cursor.execute("SELECT count(*) FROM pgqrs_workflow_steps")
        (steps,) = cursor.fetchone()
    print(
        f"loaded {count + 1:,} workflows and {steps:,} steps in "
        f"{time.perf_counter() - started:.0f} s"
    )


def register_names() -> None:
    """The loaded names as workflows of this process, as a project's would be."""
    from django_pgqrs import Workflow, workflow

    def placeholder(ctx: Workflow) -> None:
        """Never run here."""

    for name in NAMES:
        workflow(name=name)(placeholder)


class Pages:
    def __init__(self, requests: int) -> None:
        from django.contrib.auth.models import User
        from django.test import Client

        user, _ = User.objects.get_or_create(
            username="bench", defaults={"is_staff": True, "is_superuser": True}
        )
        self.client = Client(HTTP_HOST="localhost")
        self.client.force_login(user)
        self.requests = requests
        self.rows: list[tuple[str, float, int, int]] = []

    def measure(self, label: str, url: str, data: dict[str, Any] | None = None) -> None:
        from django.db import connection
        from django.test.utils import CaptureQueriesContext

        def request() -> Any:
            if data is not None and "action" in data:
                return self.client.post(url, data)
            return self.client.get(url, data or {})

        times = []
        for _ in range(self.requests):
            start = time.perf_counter()
            response = request()
            times.append(time.perf_counter() - start)
            if response.status_code != 200:
                raise SystemExit(f"{label}: {url} answered {response.status_code}")
        with CaptureQueriesContext(connection) as queries:
            response = request()
        row = (label, statistics.median(times), len(queries), len(response.content))
        self.rows.append(row)
        print(f"{row[0]:<44} {row[1] * 1e3:>8.0f} {row[2]:>8} {row[3] / 1024:>8.0f}", flush=True)


def measure(count: int, requests: int, act: bool) -> None:
    from django.urls import reverse

    from django_pgqrs.models import Workflow

    changelist = reverse("admin:django_pgqrs_workflow_changelist")
    errors = f"{changelist}?status__exact=ERROR"
    error_id = Workflow.objects.filter(status="ERROR").values_list("pk", flat=True).first()
    pages = Pages(requests)
    print(f"{'page':<44} {'ms':>8} {'queries':>8} {'KB':>8}")
    pages.measure("list", changelist)
    for status in ("ERROR", "PENDING", "RUNNING", "CANCELLED", "SUCCESS"):
        pages.measure(f"filter status={status}", changelist, {"status__exact": status})
    pages.measure("filter name=refund", changelist, {"name": "refund"})
    pages.measure("filter queue=reports", changelist, {"queue": "reports"})
    pages.measure("filter created in the last 24 hours", changelist, {"created": "24h"})
    both = {"status__exact": "ERROR", "name": "refund", "queue": "emails"}
    pages.measure("filter status=ERROR, name, queue", changelist, both)
    pages.measure("search an id", changelist, {"q": str(count // 2)})
    pages.measure("search a name prefix (send_)", changelist, {"q": "send_"})
    pages.measure("search an idempotency key", changelist, {"q": f"order-{count // 3 * 3}"})
    pages.measure("search error text (expired card)", changelist, {"q": "expired card"})
    pages.measure("search with no match", changelist, {"q": "no such thing"})
    pages.measure("page 500", changelist, {"p": "500"})
    pages.measure("page 500 of ERROR", changelist, {"status__exact": "ERROR", "p": "500"})
    big = reverse("admin:django_pgqrs_workflow_change", args=[count + 1])
    pages.measure("workflow of 5,000 steps", big)
    pages.measure("workflow of 5,000 steps, last steps", big, {"steps": "last"})
    failed = reverse("admin:django_pgqrs_workflow_change", args=[error_id])
    pages.measure("failed workflow", failed)
    pages.measure("overview", reverse("admin:django_pgqrs_workflow_overview"))
    selected = list(Workflow.objects.filter(status="ERROR").values_list("pk", flat=True)[:100])
    across = {"select_across": "1", "index": "0", "_selected_action": selected}
    resume = {"action": "resume_workflows", **across}
    pages.measure("confirm resume of the 50,000 ERROR", errors, resume)
    pages.measure(
        "confirm delete of the 50,000 ERROR", errors, {**resume, "action": "delete_selected"}
    )
    pages.measure("confirm resume of all 1,000,000", changelist, resume)
    slowest = max(pages.rows, key=lambda row: row[1])
    print(f"slowest: {slowest[0]}, {slowest[1] * 1e3:.0f} ms")
    if act:
        resume_all(pages, errors, across)


def resume_all(pages: Pages, url: str, across: dict[str, Any]) -> None:
    """Time the confirmed resume of every ERROR workflow, then put them back as they were."""
    from django.contrib.admin.models import LogEntry
    from django.db import connection

    from django_pgqrs.models import Workflow

    failed = list(Workflow.objects.filter(status="ERROR").values_list("pk", flat=True))
    start = time.perf_counter()
    response = pages.client.post(url, {"action": "resume_workflows", "confirm": "yes", **across})
    elapsed = time.perf_counter() - start
    resumed = Workflow.objects.filter(pk__in=failed, status="PENDING").count()
    logged = LogEntry.objects.count()
    print(
        f"resume of {len(failed):,} ERROR workflows, confirmed: {elapsed:.1f} s "
        f"({resumed:,} PENDING, {logged:,} log entries, answer {response.status_code})"
    )
    Workflow.objects.filter(pk__in=failed).update(status="ERROR")
    LogEntry.objects.all().delete()
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE pgqrs_workflows")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workflows", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=5, help="requests per page")
    parser.add_argument("--keep", action="store_true", help="keep the database")
    parser.add_argument("--reuse", action="store_true", help="measure a kept database")
    parser.add_argument("--act", action="store_true", help="also time a confirmed resume")
    args = parser.parse_args()
    url = server_url()
    os.environ["DATABASE_URL"] = url
    if not args.reuse:
        recreate_database(url)
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from django_pgqrs.models import Workflow

    try:
        if not args.reuse:
            call_command("migrate", verbosity=0)
            load(args.workflows)
        newest = Workflow.objects.order_by("-pk").values_list("pk", flat=True)[0]
        register_names()
        measure(newest - 1, args.requests, args.act)
    finally:
        connection.close()
        if not args.keep:
            recreate_database(url, drop_only=True)


if __name__ == "__main__":
    main()
