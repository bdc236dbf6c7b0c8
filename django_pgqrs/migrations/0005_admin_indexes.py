from django.db import migrations, models

from ._concurrently import AddIndexConcurrentlyOnPostgres


class Migration(migrations.Migration):
    # The indexes are built CONCURRENTLY on PostgreSQL, so that workers go on writing while they
    # build: that cannot run in a transaction.
    atomic = False

    dependencies = [
        ("django_pgqrs", "0004_history"),
    ]

    operations = [
        migrations.AlterModelOptions(
            name="workflow",
            options={
                "ordering": ["-id"],
                "permissions": [("operate_workflow", "Can resume, cancel and fork workflows")],
            },
        ),
        AddIndexConcurrentlyOnPostgres(
            model_name="workflow",
            index=models.Index(fields=["created_at"], name="pgqrs_wf_created_idx"),
        ),
        AddIndexConcurrentlyOnPostgres(
            model_name="workflow",
            index=models.Index(fields=["queue", "id"], name="pgqrs_wf_queue_idx"),
        ),
        AddIndexConcurrentlyOnPostgres(
            model_name="workflow",
            index=models.Index(
                condition=models.Q(("status__in", ["PENDING", "CANCELLED"])),
                fields=["status", "id"],
                name="pgqrs_wf_status_idx",
            ),
        ),
    ]
