"""The demo page, the endpoint that submits jobs and the one that reports on them.

Views are plain sync Django views: ``Event.send()`` stores the job and returns
its id at once; the browser then learns everything else from the websocket.
"""

import json
import secrets
from typing import Any

from django.contrib.auth import get_user_model, login
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_POST

import layerq

from .events import Explode, Render

#: the session remembers the jobs its visitor submitted, newest last
SESSION_JOBS = "demo_jobs"
KEEP_JOBS = 20
#: a failing job gets one retry, so the page shows "retrying" before "failed"
EXPLODE_ATTEMPTS = 2


def _remember(request: HttpRequest, job: layerq.Job) -> None:
    jobs = [j for j in request.session.get(SESSION_JOBS, []) if j["id"] != job.id]
    jobs.append({"id": job.id, "type": job.type, "channel": job.channel})
    request.session[SESSION_JOBS] = jobs[-KEEP_JOBS:]


def _remembered(request: HttpRequest, job_id: str) -> layerq.Job | None:
    for job in request.session.get(SESSION_JOBS, []):
        if job["id"] == job_id:
            return layerq.Job(job["id"])
    return None


@require_GET
def index(request: HttpRequest) -> HttpResponse:
    """The demo page; a first-time visitor becomes a guest user, so it works with no setup."""
    if not request.user.is_authenticated:
        # No password at all (unusable): the session is the only way into this account.
        guest = get_user_model().objects.create_user(username=f"guest-{secrets.token_hex(6)}")
        login(request, guest, backend="django.contrib.auth.backends.ModelBackend")
    jobs = request.session.get(SESSION_JOBS, [])
    return render(request, "demo/index.html", {"jobs": jobs, "user": request.user})


@require_POST
def submit(request: HttpRequest) -> JsonResponse:
    """Send a Render (or, with ``"kind": "explode"``, an Explode) job; reply with its id."""
    if not request.user.is_authenticated:
        return JsonResponse({"error": "open the demo page first"}, status=403)
    try:
        data: Any = json.loads(request.body or b"{}")
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        kind = data.pop("kind", "render")
        if kind == "render":
            job = Render(**data).send(notify=layerq.user_group(request.user))
        elif kind == "explode":
            job = Explode(**data).send(
                notify=layerq.user_group(request.user), max_attempts=EXPLODE_ATTEMPTS
            )
        else:
            raise ValueError(f"unknown kind {kind!r}")
    except (ValueError, TypeError, layerq.InvalidEvent) as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    except layerq.QueueFull:
        return JsonResponse({"error": "the queue is full, try again soon"}, status=503)
    _remember(request, job)
    return JsonResponse({"id": job.id, "type": job.type}, status=202)


@require_GET
def job_detail(request: HttpRequest, job_id: str) -> JsonResponse:
    """A job's record, shaped like the websocket's job events, for the page after a reload."""
    job = _remembered(request, job_id)
    if job is None:
        return JsonResponse({"error": "no such job in this session"}, status=404)
    try:
        record = job.record()
    except layerq.JobNotFound:
        return JsonResponse({"error": "the job's record has expired"}, status=404)
    error = None
    if record.error_type is not None:
        error = {"type": record.error_type, "message": record.error_message or ""}
    return JsonResponse(
        {
            "id": record.id,
            "type": record.type,
            "channel": record.channel,
            "attempt": record.attempt,
            "status": record.status.value,
            "progress": record.progress,
            "message": record.progress_message,
            "result": record.result,
            "error": error,
        }
    )
