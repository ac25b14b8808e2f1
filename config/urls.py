"""URL routing: each app's own urls.py (the REST API under /api/v1/, the curators' and the
admins' pages), and the Django admin."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("knowledge.urls")),
    path("", include("curation.urls")),
    path("", include("training.urls")),
]

# A database or task-queue outage is a 503 with Retry-After, not a 500 page (knowledge.error_views).
handler500 = "knowledge.error_views.server_error"
