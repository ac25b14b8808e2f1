"""Gives every request an id and its client address for the audit log; and refuses, before any view runs: oversized API request bodies (413), and URLs whose path or
query holds text PostgreSQL cannot store or compare (NUL, lone surrogates: 400), in OpenAI's
error shape on the OpenAI-compatible /v1/ paths."""

import ipaddress
import uuid

from django.conf import settings
from django.http import HttpResponseBadRequest, JsonResponse

from knowledge.audit_context import audit_context, request_id_acceptable
from rag.text_checks import text_problem


def _refusal(path: str, status: int, message: str) -> JsonResponse:
    if path.startswith("/v1/"):
        code = "request_too_large" if status == 413 else None
        return JsonResponse(
            {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}, status=status
        )
    return JsonResponse({"detail": message}, status=status)


class ApiBodySizeLimitMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path.startswith(("/api/", "/v1/")):
            try:
                length = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                return _refusal(request.path, 400, "Content-Length is not a number.")
            limit = settings.RAGLOOP_MAX_REQUEST_BYTES
            if length > limit:
                return _refusal(request.path, 413, f"Request body is {length} bytes; the limit is {limit} bytes.")
        return self.get_response(request)


class UnstorableUrlTextMiddleware:
    """A NUL or a lone surrogate in a URL ("%00" in a model name, in a filter) would reach a
    database comparison and fail there with a 500; no slug, name or filter value holds one."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        problem = text_problem(request.path) or next(
            (f"{key}: {p}" for key, values in request.GET.lists() for value in [key, *values] if (p := text_problem(value))),
            None,
        )
        if problem:
            message = f"The URL is malformed: {problem}."
            if request.path.startswith(("/api/", "/v1/")):
                return _refusal(request.path, 400, message)
            return HttpResponseBadRequest(message, content_type="text/plain; charset=utf-8")
        return self.get_response(request)


def _client_address(request) -> str | None:
    address = request.META.get("REMOTE_ADDR") or ""
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:  # a unix socket, a test client without one
        return None


class AuditContextMiddleware:
    """Lets audit rows written while serving the request name its user (or API token), its id
    and the client's address (knowledge.audit_context). The id is the caller's X-Request-ID when
    it is plain and short, else a new one; it is sent back as X-Request-ID.

    The address is REMOTE_ADDR: behind a proxy that is the proxy's, unless the proxy sets it
    (gunicorn's --forwarded-allow-ips); X-Forwarded-For is not trusted here."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        given = request.headers.get("X-Request-ID", "")
        request_id = given if request_id_acceptable(given) else uuid.uuid4().hex
        with audit_context(request=request, request_id=request_id, ip=_client_address(request)):
            response = self.get_response(request)
        response["X-Request-ID"] = request_id
        return response
