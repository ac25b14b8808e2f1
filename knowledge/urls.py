"""What a RAG app calls: the REST API under /api/v1/ (OpenAPI schema and docs there too)."""

from django.urls import path

from knowledge.api import api

urlpatterns = [
    path("api/v1/", api.urls),
]
