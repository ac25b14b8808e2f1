"""Admin pages that confirm or undo: the settings page says what it saved, a pending invitation
can be revoked (service, audit row, button; its link stops working), and the API docs page
links back to the app."""

import re

import pytest
from django.contrib.auth.models import Group

from curation.models import Invitation, Membership
from curation.services.accounts import invitation_create, invitation_revoke
from knowledge.errors import Conflict, NotFound
from knowledge.models import AuditEvent, KnowledgeBase
from tests.curation.test_accounts import PASSWORD, invite_via_page


@pytest.fixture
def knowledge_bases(db):
    return [KnowledgeBase.objects.create(slug=slug, name=f"KB {slug}") for slug in ("kb-one", "kb-two")]


def _messages(html: str) -> list[str]:
    return re.findall(r'<li class="message[^"]*">(.*?)</li>', html)


def test_saving_settings_says_what_was_saved(admin_client, knowledge_base):
    response = admin_client.post("/kbs/test-kb/settings/", {"labels_per_turn": "2", "hold_minutes": "45",
                                                            "personal_data_mode": "off"}, follow=True)
    assert response.status_code == 200
    assert _messages(response.content.decode()) == [
        "Saved: 2 labels per turn, holds of 45 minutes, personal data mode: off."]
    # Shown once: the next visit has no message.
    assert _messages(admin_client.get("/kbs/test-kb/settings/").content.decode()) == []


def test_a_failure_tag_change_confirms(admin_client, knowledge_base):
    response = admin_client.post("/kbs/test-kb/settings/failure-tags/", {"action": "add", "name": "Wrong language"}, follow=True)
    assert _messages(response.content.decode()) == ["Failure tag added."]


def test_a_refused_settings_save_shows_the_error_and_no_saved_message(admin_client, knowledge_base):
    response = admin_client.post("/kbs/test-kb/settings/", {"labels_per_turn": "11", "hold_minutes": "30"})
    assert response.status_code == 422 and _messages(response.content.decode()) == []


def test_an_admin_revokes_a_pending_invitation_and_its_link_stops_working(client, admin_client, admin_user, knowledge_bases):
    link = invite_via_page(admin_client, email="late@example.com")
    invitation = Invitation.objects.get(email="late@example.com")
    page = admin_client.get("/invitations/new/").content.decode()
    assert f'action="/invitations/{invitation.pk}/revoke/"' in page
    response = admin_client.post(f"/invitations/{invitation.pk}/revoke/", follow=True)
    html = response.content.decode()
    assert _messages(html) == ["The invitation for late@example.com is revoked: its link no longer works."]
    row = html.split("late@example.com</td>")[1].split("</tr>")[0]
    assert "<td>revoked" in row and "/revoke/" not in row
    event = AuditEvent.objects.get(action="invitation.revoke")
    assert (event.actor_user_id, event.object_id, event.after["status"]) == (admin_user.pk, str(invitation.pk), "revoked")
    client.logout()
    refused = client.post(link, {"username": "late", "password1": PASSWORD, "password2": PASSWORD})
    assert refused.status_code == 410 and "was revoked" in refused.content.decode()
    assert not Invitation.objects.get(pk=invitation.pk).accepted_at


def test_revoking_twice_records_once_and_an_accepted_invitation_is_refused(admin_user, knowledge_bases, django_user_model):
    invitation, _ = invitation_create(invited_by=admin_user, email="a@example.com")
    invitation_revoke(invitation_id=invitation.pk, actor=admin_user)
    invitation_revoke(invitation_id=invitation.pk, actor=admin_user)
    assert AuditEvent.objects.filter(action="invitation.revoke").count() == 1
    accepted, _ = invitation_create(invited_by=admin_user, email="b@example.com")
    user = django_user_model.objects.create_user("b")
    Invitation.objects.filter(pk=accepted.pk).update(accepted_by=user, accepted_at=accepted.created_at)
    with pytest.raises(Conflict, match="accepted already"):
        invitation_revoke(invitation_id=accepted.pk, actor=admin_user)
    with pytest.raises(NotFound):
        invitation_revoke(invitation_id=999999, actor=admin_user)


def test_only_admins_revoke(client, admin_user, knowledge_bases, django_user_model):
    invitation, _ = invitation_create(invited_by=admin_user, email="c@example.com")
    curator = django_user_model.objects.create_user("cur", password="pw-cur-123")
    curator.groups.add(Group.objects.get_or_create(name="curator")[0])
    Membership.objects.create(knowledge_base=knowledge_bases[0], user=curator)
    client.force_login(curator)
    assert client.post(f"/invitations/{invitation.pk}/revoke/").status_code == 403
    assert Invitation.objects.get(pk=invitation.pk).revoked_at is None


def test_the_api_docs_page_links_back_to_the_app(admin_client):
    html = admin_client.get("/api/v1/docs").content.decode()
    assert '<a id="back-to-app" href="/">← Back to the app</a>' in html
    assert "swagger-ui-bundle.js" in html and "cdn" not in html.lower()
