"""Refuses oversized API request bodies with a 413 and a message, before anything reads them
(in OpenAI's error shape on the OpenAI-compatible /v1/ paths)."""

from django.conf import settings
from django.http import JsonResponse


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
