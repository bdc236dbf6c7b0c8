"""URLs of the test project: the demo project's, and views that call workflows."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.urls import path
from testproject.urls import urlpatterns as demo_urlpatterns

from django_pgqrs import WorkflowHandle
from tests import workflows


async def run_view(request: HttpRequest) -> JsonResponse:
    """An ASGI view that runs a workflow to its end."""
    return JsonResponse({"result": await workflows.add_three.arun(int(request.GET["n"]))})


async def start_view(request: HttpRequest) -> JsonResponse:
    handle = await workflows.add_three.astart(int(request.GET["n"]))
    return JsonResponse({"id": handle.id, "status": await handle.astatus()})


async def result_view(request: HttpRequest, workflow_id: int) -> JsonResponse:
    result = await WorkflowHandle(workflow_id).aresult(timeout=float(request.GET["timeout"]))
    return JsonResponse({"result": result})


async def sync_call_view(request: HttpRequest) -> JsonResponse:
    """A mistake: the sync entry point, from async code."""
    return JsonResponse({"result": workflows.add_three.run(1)})


urlpatterns = [
    *demo_urlpatterns,
    path("async/run/", run_view),
    path("async/start/", start_view),
    path("async/result/<int:workflow_id>/", result_view),
    path("async/sync-call/", sync_call_view),
]
