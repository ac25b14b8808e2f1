"""What a RAG app calls: the REST API under /api/v1/ (OpenAPI schema and docs there too), and
the OpenAI-compatible endpoints under /v1/ (the paths official clients build from a base URL
ending in /v1)."""

from django.urls import path

from knowledge import openai_api
from knowledge.api import api

urlpatterns = [
    path("api/v1/", api.urls),
    path("v1/chat/completions", openai_api.chat_completions, name="openai-chat-completions"),
    path("v1/models", openai_api.models_list, name="openai-models"),
]
