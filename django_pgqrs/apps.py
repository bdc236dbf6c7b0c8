from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules


class PgqrsConfig(AppConfig):
    name = "django_pgqrs"
    verbose_name = "Durable workflows"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401 - registers the system checks

        # Register every @workflow: each installed app's `workflows` module, as the admin
        # does with `admin.py`, so any process can resume any saved workflow by name.
        autodiscover_modules("workflows")
