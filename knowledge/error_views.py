"""The 500 handler (config.urls.handler500): an outage of PostgreSQL or of the task queue (Redis)
is a 503 with Retry-After that says which service is away, not a 500 page; anything else is the
usual 500 page. JSON on the API paths (OpenAI's error shape on /v1/), HTML elsewhere.

It runs for an exception raised anywhere under Django's handler, in a view or in a middleware
(the session and auth middlewares query the database before any view runs), and it never
touches the database itself: the page is rendered without the request's context processors,
whose `user` would need a query."""

import logging
import sys

from django.db import InterfaceError, OperationalError
from django.http import HttpResponse, JsonResponse
from django.template.loader import render_to_string
from django.views.defaults import server_error as django_server_error
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 15

_DATABASE_ERRORS = (OperationalError, InterfaceError)
_QUEUE_ERRORS = (KombuOperationalError, RedisError)
OUTAGE_ERRORS = _DATABASE_ERRORS + _QUEUE_ERRORS


def outage_of(error: BaseException | None) -> str | None:
    """"database" or "task queue" when `error` (or an exception it was raised from) says that
    service cannot be reached, else None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, _DATABASE_ERRORS):
            return "database"
        if isinstance(error, _QUEUE_ERRORS):
            return "task queue"
        error = error.__cause__ or error.__context__
    return None


def outage_response(request, service: str) -> HttpResponse:
    message = (
        f"The {service} cannot be reached right now, so this request could not be completed; "
        f"the platform reconnects by itself once it is back. Try again in {RETRY_AFTER_SECONDS} seconds."
    )
    if request.path.startswith("/v1/"):
        response = JsonResponse(
            {"error": {"message": message, "type": "service_unavailable", "param": None, "code": "service_unavailable"}},
            status=503,
        )
    elif request.path.startswith("/api/"):
        response = JsonResponse({"detail": message}, status=503)
    else:
        html = render_to_string("503.html", {"service": service, "retry_after": RETRY_AFTER_SECONDS})
        response = HttpResponse(html, status=503)
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def server_error(request, *args, **kwargs):
    service = outage_of(sys.exc_info()[1])
    if service is not None:
        logger.warning("%s %s answered 503: the %s cannot be reached", request.method, request.path, service)
        return outage_response(request, service)
    if request.path.startswith("/v1/"):
        return JsonResponse(
            {"error": {"message": "Internal server error.", "type": "server_error", "param": None, "code": None}},
            status=500,
        )
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "Internal server error; it has been logged."}, status=500)
    return django_server_error(request, *args, **kwargs)
