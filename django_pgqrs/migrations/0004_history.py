from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("django_pgqrs", "0003_primitives"),
    ]

    operations = [
        migrations.AddField(
            model_name="workflow",
            name="history",
            field=models.JSONField(blank=True, editable=False, null=True),
        ),
        migrations.AddField(
            model_name="workflow",
            name="started_at",
            field=models.DateTimeField(blank=True, editable=False, null=True),
        ),
        migrations.AddField(
            model_name="workflow",
            name="attempted_at",
            field=models.DateTimeField(blank=True, editable=False, null=True),
        ),
        migrations.AddIndex(
            model_name="workflow",
            index=models.Index(
                condition=models.Q(("forked_from__isnull", False)),
                fields=["forked_from"],
                name="pgqrs_wf_forked_from_idx",
            ),
        ),
    ]
