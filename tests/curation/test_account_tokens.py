"""The account page's API tokens: your tokens with created, last used and expiry (never the
secret), revoke and rotate by POST with CSRF, only your own; admins may revoke anyone's."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.utils import timezone

from knowledge.models import ApiToken, AuditEvent
from knowledge.services.tokens import api_token_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice(django_user_model):
    user = django_user_model.objects.create_user("alice", password="pw-alice-123")
    user.groups.add(Group.objects.get_or_create(name="curator")[0])
    return user


@pytest.fixture
def bob(django_user_model):
    return django_user_model.objects.create_user("bob", password="pw-bob-123")


def _logged_in(user, *, csrf=False) -> Client:
    client = Client(enforce_csrf_checks=csrf)
    client.force_login(user)
    return client


def test_the_page_lists_your_tokens_without_their_secrets(alice, bob, knowledge_base):
    token, plain = api_token_create(user=alice, name="laptop", knowledge_bases=[knowledge_base], scopes=["read", "ask"],
                                    expires_at=timezone.now() + timedelta(days=3))
    api_token_create(user=bob, name="bobs-token", all_knowledge_bases=True)
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
    response = _logged_in(alice).get("/account/tokens/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "laptop" in html and token.key_prefix in html and "read, ask" in html and "test-kb" in html
    assert plain not in html and token.key_hash not in html
    assert f"{token.expires_at:%Y-%m-%d}" in html and "never" not in html.split("laptop")[1].split("</tr>")[0]
    assert "bobs-token" not in html and "Other users" not in html  # not an admin
    assert Client().get("/account/tokens/").status_code == 302  # anonymous: to the login page


def test_revoke_is_a_post_with_csrf_and_refuses_at_once(alice, knowledge_base):
    token, plain = api_token_create(user=alice, name="laptop", all_knowledge_bases=True)
    client = _logged_in(alice, csrf=True)
    assert client.get(f"/account/tokens/{token.pk}/revoke/").status_code == 405
    assert client.post(f"/account/tokens/{token.pk}/revoke/").status_code == 403  # no CSRF token
    assert ApiToken.objects.get(pk=token.pk).revoked_at is None
    page = client.get("/account/tokens/")
    response = client.post(f"/account/tokens/{token.pk}/revoke/", {"csrfmiddlewaretoken": page.context["csrf_token"]},
                           follow=True)
    assert response.redirect_chain == [("/account/tokens/", 302)]
    assert "is revoked" in response.content.decode()
    assert ApiToken.objects.get(pk=token.pk).revoked_at is not None
    api = Client(HTTP_AUTHORIZATION=f"Bearer {plain}")
    assert api.get("/api/v1/kbs").status_code == 401
    [event] = AuditEvent.objects.filter(action="token.revoke")
    assert (event.actor, event.object_id) == ("alice", str(token.pk))


def test_rotate_shows_the_new_secret_once(alice):
    token, _ = api_token_create(user=alice, name="laptop", all_knowledge_bases=True)
    client = _logged_in(alice)
    response = client.post(f"/account/tokens/{token.pk}/rotate/")
    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    new = ApiToken.objects.get(rotated_from=token)
    plain = response.context["new_secret"]
    assert plain.startswith(new.key_prefix) and plain in response.content.decode()
    assert plain not in client.get("/account/tokens/").content.decode()
    assert ApiToken.objects.get(pk=token.pk).revoked_at is not None
    assert client.post(f"/account/tokens/{token.pk}/rotate/").status_code == 409  # already revoked
    [event] = AuditEvent.objects.filter(action="token.rotate")
    assert event.actor == "alice"


def test_others_tokens_are_not_found_and_admins_may_revoke_but_not_rotate_them(alice, bob, admin_user):
    token, _ = api_token_create(user=bob, name="bobs-token", all_knowledge_bases=True)
    client = _logged_in(alice)
    assert client.post(f"/account/tokens/{token.pk}/revoke/").status_code == 404
    assert client.post(f"/account/tokens/{token.pk}/rotate/").status_code == 404
    assert client.post("/account/tokens/999999/revoke/").status_code == 404
    assert ApiToken.objects.get(pk=token.pk).revoked_at is None

    admin = _logged_in(admin_user)
    html = admin.get("/account/tokens/").content.decode()
    assert "Other users" in html and "bobs-token" in html
    assert admin.post(f"/account/tokens/{token.pk}/rotate/").status_code == 403
    assert ApiToken.objects.filter(rotated_from=token).count() == 0
    assert admin.post(f"/account/tokens/{token.pk}/revoke/").status_code == 302
    assert ApiToken.objects.get(pk=token.pk).revoked_at is not None
    [event] = AuditEvent.objects.filter(action="token.revoke")
    assert (event.actor, event.before["user"]) == ("root", "bob")
