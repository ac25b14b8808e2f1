"""Web UI routes: knowledge bases, their documents and embedding progress, asking, turns."""

from django.contrib.auth import views as auth_views
from django.urls import path

from curation import views

urlpatterns = [
    path("", views.home, name="home"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("password/", auth_views.PasswordChangeView.as_view(success_url="/"), name="password_change"),
    path("kbs/<slug:slug>/", views.knowledge_base_detail, name="kb_detail"),
    path("kbs/<slug:slug>/progress/", views.knowledge_base_progress, name="kb_progress"),
    path("kbs/<slug:slug>/ask/", views.knowledge_base_ask, name="kb_ask"),
    path("kbs/<slug:slug>/documents/<int:document_id>/", views.document_detail, name="document_detail"),
    path("turns/<int:turn_id>/", views.turn_detail, name="turn_detail"),
]
