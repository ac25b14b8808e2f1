"""Refuses oversized API request bodies with a 413 and a message, before anything reads them."""

from django.conf import settings
from django.http import JsonResponse


class ApiBodySizeLimitMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path.startswith("/api/"):
            try:
                length = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                return JsonResponse({"detail": "Content-Length is not a number."}, status=400)
            limit = settings.RAGLOOP_MAX_REQUEST_BYTES
            if length > limit:
                return JsonResponse(
                    {"detail": f"Request body is {length} bytes; the limit is {limit} bytes."}, status=413
                )
        return self.get_response(request)
