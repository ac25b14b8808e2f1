"""Refuses, before any view runs: oversized API request bodies (413), and URLs whose path or
query holds text PostgreSQL cannot store or compare (NUL, lone surrogates: 400), in OpenAI's
error shape on the OpenAI-compatible /v1/ paths."""

from django.conf import settings
from django.http import HttpResponseBadRequest, JsonResponse

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
