"""Web UI routes of people signed in: accounts, then each page module's own `urlpatterns`
(knowledge bases, the admins' knowledge base actions, the curator workbench, admins' review, label import and export, the
account's API tokens, the audit log)."""

from django.contrib.auth import views as auth_views
from django.urls import path

from curation.views import account, audit, kb_admin, knowledge_bases, label_io, review, workbench

urlpatterns = [
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("password/", auth_views.PasswordChangeView.as_view(success_url="/"), name="password_change"),
    *knowledge_bases.urlpatterns,
    *kb_admin.urlpatterns,
    *workbench.urlpatterns,
    *review.urlpatterns,
    *label_io.urlpatterns,
    *account.urlpatterns,
    *audit.urlpatterns,
]
