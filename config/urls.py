"""URL routing: the web UI, the REST API under /api/v1/ (docs at /api/v1/docs), the Django admin."""

from django.contrib import admin
from django.urls import include, path

from curation.api import api

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", api.urls),
    path("", include("curation.urls")),
]
