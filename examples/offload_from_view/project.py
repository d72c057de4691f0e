"""The project code: one event, the worker that handles it, two views, the routing."""

from channels.routing import ChannelNameRouter, ProtocolTypeRouter
from django.contrib.auth.models import User
from django.core.asgi import get_asgi_application
from django.core.mail import send_mail
from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.views.decorators.http import require_POST

import layerq


class WelcomeEmail(layerq.Event, type="emails.welcome", channel="emails"):
    user_id: int


class EmailWorker(layerq.WorkerConsumer):
    """Runs in `manage.py runworker emails`; plain `def` handlers run in a thread pool."""

    def emails_welcome(self, event: WelcomeEmail) -> dict[str, str]:
        user = User.objects.get(pk=event.user_id)
        send_mail("Welcome!", f"Hello {user.username}", "hi@example.com", [user.email])
        return {"sent_to": user.email}


@require_POST
def signup(request: HttpRequest) -> JsonResponse:
    with transaction.atomic():
        user = User.objects.create_user(request.POST["username"], request.POST["email"])
        # Sent when the transaction commits, so the worker always finds the user;
        # on rollback nothing is sent. The id is known at once either way.
        job = WelcomeEmail(user_id=user.pk).send(on_commit=True)
    return JsonResponse({"job_id": job.id}, status=202)


@require_POST
def resend_welcome(request: HttpRequest, user_id: int) -> JsonResponse:
    job = WelcomeEmail(user_id=user_id).send()
    return JsonResponse({"job_id": job.id}, status=202)


urlpatterns = [
    path("signup/", signup),
    path("users/<int:user_id>/welcome/", resend_welcome),
]


# runworker finds the consumer of each worker channel in the ASGI routing
application = ProtocolTypeRouter(
    {
        "http": get_asgi_application(),
        "channel": ChannelNameRouter({"emails": EmailWorker.as_asgi()}),
    }
)
