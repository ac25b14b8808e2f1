"""Sign-up by invitation: an admin creates one (only the key's hash is stored), the invitee
accepts it once before it expires, and ends up in the role's group with the invited
knowledge bases only. Also the `invite` command."""

import hashlib
import re
from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from curation.models import Invitation, Membership
from curation.permissions import user_is_admin, user_is_curator
from curation.services.accounts import (
    InvitationUnusable,
    invitation_accept,
    invitation_create,
)
from knowledge.errors import InvalidInput, NotFound
from knowledge.models import KnowledgeBase

PASSWORD = "a-Long-enough-passphrase-42"


@pytest.fixture
def knowledge_bases(db):
    # Plain rows: these tests need no embedding space, and creating one loads a model.
    return [KnowledgeBase.objects.create(slug=slug, name=f"KB {slug}") for slug in ("kb-one", "kb-two")]


def invite_via_page(admin_client, email="new@example.com", role="curator", kbs=("kb-one",)) -> str:
    response = admin_client.post("/invitations/new/", {"email": email, "role": role, "knowledge_bases": list(kbs)})
    assert response.status_code == 200, response.content.decode()
    assert "no-store" in response["Cache-Control"]
    link = re.search(r'id="invitation-link">([^<]+)<', response.content.decode()).group(1)
    return link.removeprefix("http://testserver")


def test_an_admin_creates_an_invitation_and_only_the_key_hash_is_stored(admin_client, admin_user, knowledge_bases):
    path = invite_via_page(admin_client)
    key = re.fullmatch(r"/invitations/([A-Za-z0-9_-]+)/accept/", path).group(1)
    invitation = Invitation.objects.get()
    assert invitation.key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert key not in str(Invitation.objects.values().get())
    assert invitation.invited_by == admin_user and invitation.role == "curator"
    assert [kb.slug for kb in invitation.knowledge_bases.all()] == ["kb-one"]
    assert abs(invitation.expires_at - (timezone.now() + timedelta(days=7))) < timedelta(minutes=1)
    # the list of invitations shows it as pending, without the link
    page = admin_client.get("/invitations/new/").content.decode()
    assert "new@example.com" in page and "pending" in page and key not in page


@pytest.mark.parametrize("form, message", [
    ({"email": "not-an-email", "role": "curator"}, "is not an email address"),
    ({"email": "x@example.com", "role": "owner"}, "Role &#x27;owner&#x27; is unknown"),
    ({"email": "x@example.com", "role": "curator", "knowledge_bases": ["nope"]}, "does not exist"),
])
def test_invalid_invitations_are_refused(admin_client, knowledge_bases, form, message):
    response = admin_client.post("/invitations/new/", form)
    assert response.status_code == 422
    assert message in response.content.decode()
    assert not Invitation.objects.exists()


def test_accepting_creates_a_curator_who_sees_only_the_invited_knowledge_bases(client, admin_client, knowledge_bases,
                                                                               django_user_model):
    path = invite_via_page(admin_client)
    visitor = client.__class__()
    form = visitor.get(path)
    assert form.status_code == 200 and "new@example.com" in form.content.decode()
    response = visitor.post(path, {"username": "newbie", "password1": PASSWORD, "password2": PASSWORD})
    assert response.status_code == 302 and response["Location"] == "/"
    user = django_user_model.objects.get(username="newbie")
    assert user.email == "new@example.com" and user.check_password(PASSWORD)
    assert user_is_curator(user) and not user_is_admin(user)
    assert [m.knowledge_base.slug for m in Membership.objects.filter(user=user)] == ["kb-one"]
    invitation = Invitation.objects.get()
    assert invitation.accepted_by == user and invitation.accepted_at is not None
    # logged in as the new curator: their knowledge base only
    home = visitor.get("/").content.decode()
    assert "KB kb-one" in home and "KB kb-two" not in home
    assert visitor.get("/kbs/kb-one/dashboard/").status_code == 200
    assert visitor.get("/kbs/kb-two/dashboard/").status_code == 404
    assert visitor.get("/kbs/kb-two/").status_code == 404
    assert visitor.get("/kbs/kb-one/settings/").status_code == 403


def test_an_admin_invitation_makes_an_admin(admin_client, knowledge_bases, django_user_model):
    path = invite_via_page(admin_client, email="boss@example.com", role="admin", kbs=())
    key = path.split("/")[2]
    user = invitation_accept(key=key, username="boss", password=PASSWORD)
    assert user_is_admin(user) and not user.is_superuser and not user.is_staff


def test_an_invitation_is_single_use(client, admin_client, knowledge_bases, django_user_model):
    path = invite_via_page(admin_client)
    visitor = client.__class__()
    assert visitor.post(path, {"username": "first", "password1": PASSWORD, "password2": PASSWORD}).status_code == 302
    again = client.__class__()
    for response in (again.get(path), again.post(path, {"username": "second", "password1": PASSWORD, "password2": PASSWORD})):
        assert response.status_code == 410
        assert "already been used" in response.content.decode()
    assert not django_user_model.objects.filter(username="second").exists()


def test_an_expired_invitation_is_refused(client, admin_user, knowledge_bases, django_user_model):
    invitation, key = invitation_create(invited_by=admin_user, email="late@example.com", knowledge_bases=knowledge_bases)
    Invitation.objects.filter(pk=invitation.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = client.get(f"/invitations/{key}/accept/")
    assert response.status_code == 410 and "expired" in response.content.decode()
    response = client.post(f"/invitations/{key}/accept/", {"username": "late", "password1": PASSWORD, "password2": PASSWORD})
    assert response.status_code == 410
    assert not django_user_model.objects.filter(username="late").exists()
    with pytest.raises(InvitationUnusable):
        invitation_accept(key=key, username="late", password=PASSWORD)


def test_an_unknown_key_is_not_found(client, admin_user, knowledge_bases, django_user_model):
    invitation_create(invited_by=admin_user, email="someone@example.com")
    response = client.get("/invitations/not-a-real-key/accept/")
    assert response.status_code == 404 and "not valid" in response.content.decode()
    assert client.post("/invitations/not-a-real-key/accept/", {"username": "x", "password1": PASSWORD,
                                                              "password2": PASSWORD}).status_code == 404
    with pytest.raises(NotFound):
        invitation_accept(key="", username="x", password=PASSWORD)
    assert django_user_model.objects.count() == 1  # the admin only


@pytest.mark.parametrize("username, password1, password2, message", [
    ("newbie", "short", "short", "too short"),
    ("newbie", "password", "password", "too common"),
    ("newbie", PASSWORD, PASSWORD + "x", "The two passwords differ"),
    ("root", PASSWORD, PASSWORD, "is taken"),
    ("ROOT", PASSWORD, PASSWORD, "is taken"),
    ("bad name!", PASSWORD, PASSWORD, "Enter a valid username"),
    ("", PASSWORD, PASSWORD, "Choose a username"),
])
def test_a_refused_sign_up_keeps_the_invitation_usable(client, admin_user, knowledge_bases, django_user_model,
                                                       username, password1, password2, message):
    _, key = invitation_create(invited_by=admin_user, email="new@example.com", knowledge_bases=knowledge_bases[:1])
    response = client.post(f"/invitations/{key}/accept/", {"username": username, "password1": password1, "password2": password2})
    assert response.status_code == 422
    assert message in response.content.decode()
    assert django_user_model.objects.count() == 1
    assert Invitation.objects.get().accepted_at is None
    assert invitation_accept(key=key, username="newbie", password=PASSWORD).username == "newbie"


def test_only_admins_invite(client, knowledge_bases, django_user_model):
    assert client.get("/invitations/new/").status_code == 302  # to the login page
    curator = django_user_model.objects.create_user("cur", password="pw-cur-123")
    curator.groups.add(Group.objects.get(name="curator"))
    client.force_login(curator)
    assert client.get("/invitations/new/").status_code == 403
    assert client.post("/invitations/new/", {"email": "x@example.com", "role": "admin"}).status_code == 403
    assert not Invitation.objects.exists()


def test_invitation_emails_are_escaped(admin_client, knowledge_bases):
    invite_via_page(admin_client, email='"<script>alert(1)</script>"@example.com')
    page = admin_client.get("/invitations/new/").content.decode()
    assert "<script>alert(1)</script>" not in page


def test_invite_command_prints_a_working_link(admin_user, knowledge_bases):
    out = StringIO()
    call_command("invite", "cli@example.com", "--role", "curator", "--kb", "kb-two", "--base-url", "https://rag.example.org/",
                 stdout=out, stderr=StringIO())
    link = out.getvalue().strip()
    assert link.startswith("https://rag.example.org/invitations/") and link.endswith("/accept/")
    key = link.split("/")[-3]
    user = invitation_accept(key=key, username="cli", password=PASSWORD)
    assert [m.knowledge_base.slug for m in Membership.objects.filter(user=user)] == ["kb-two"]


def test_invite_command_builds_links_on_the_configured_public_url(admin_user, knowledge_bases, settings):
    settings.RAGLOOP_PUBLIC_URL = "https://ragloop.example.com/"
    out = StringIO()
    call_command("invite", "site@example.com", stdout=out, stderr=StringIO())
    assert out.getvalue().strip().startswith("https://ragloop.example.com/invitations/")
    settings.RAGLOOP_PUBLIC_URL = ""
    out = StringIO()
    call_command("invite", "local@example.com", stdout=out, stderr=StringIO())
    assert out.getvalue().strip().startswith("http://127.0.0.1:8000/invitations/")


def test_invite_command_refuses_bad_arguments(admin_user, knowledge_bases, django_user_model):
    for args, message in [
        (["x@example.com", "--kb", "missing"], "not found"),
        (["not-an-email"], "not an email address"),
        (["x@example.com", "--by", "ghost"], "not found"),
    ]:
        with pytest.raises(CommandError, match=message):
            call_command("invite", *args, stdout=StringIO(), stderr=StringIO())
    django_user_model.objects.create_user("plain", password="pw-plain-123")
    with pytest.raises(CommandError, match="is not an admin"):
        call_command("invite", "x@example.com", "--by", "plain", stdout=StringIO(), stderr=StringIO())
    assert not Invitation.objects.exists()


def test_services_validate_their_input(admin_user):
    with pytest.raises(InvalidInput):
        invitation_create(invited_by=admin_user, email="x@example.com", role="owner")
