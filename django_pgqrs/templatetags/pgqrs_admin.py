"""Template filters of django-pgqrs's admin pages."""

from __future__ import annotations

from typing import Any

from django import template
from django.utils.safestring import SafeString

from django_pgqrs.admin_display import error_html

register = template.Library()


@register.filter(name="error_html")
def error_html_filter(error: dict[str, Any] | None) -> SafeString:
    """An error (a workflow's, a step's or a run's) as the admin shows it everywhere."""
    return error_html(error)
