import django
from django.apps import AppConfig
from django.conf import settings
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
        # A project whose django.tasks backend is this one hears Django's task signals from
        # every process (a web process that cancels a task, too), not only from those that
        # happened to use the backend already.
        tasks = getattr(settings, "TASKS", None) or {}
        if django.VERSION >= (6, 0) and any(
            isinstance(params, dict) and params.get("BACKEND") == "django_pgqrs.tasks.PgqrsBackend"
            for params in tasks.values()
        ):
            from . import tasks as _tasks  # noqa: F401 - connects the signal receivers
