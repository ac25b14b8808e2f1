"""Issue 14's probe: an API token carried its creator's rights forever (a `--all` token of a
user who curates nothing still read turns and ingested). A token is now worth no more than its
user's current role and memberships, checked on every request, and only what its scopes allow."""

import json

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.test import Client

from curation.models import Membership
from knowledge.models import ApiToken, Conversation, Turn
from knowledge.services.knowledge_bases import knowledge_base_create
from knowledge.services.tokens import api_token_create

API = "/api/v1"
TURN = {"turns": [{"external_id": "t1", "query": "Which enzyme do statins inhibit?"}]}


def _client(plain: str) -> Client:
    client = Client()
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {plain}"
    return client


def _post(client, url, payload):
    return client.post(url, data=json.dumps(payload), content_type="application/json")


@pytest.fixture
def curator(db, django_user_model, knowledge_base):
    group, _ = Group.objects.get_or_create(name="curator")
    user = django_user_model.objects.create_user("carol", password="pw-carol-123")
    user.groups.add(group)
    Membership.objects.create(knowledge_base=knowledge_base, user=user)
    return user


def test_a_token_of_a_user_who_curates_nothing_reaches_nothing(django_user_model, knowledge_base):
    nobody = django_user_model.objects.create_user("nobody")
    _, plain = api_token_create(user=nobody, name="all", all_knowledge_bases=True)
    client = _client(plain)
    turn = Turn.objects.create(knowledge_base=knowledge_base, source="ingested", query="q")

    assert client.get(f"{API}/kbs").json() == []
    assert client.get(f"{API}/kbs/test-kb/documents").status_code == 404
    assert client.get(f"{API}/turns/{turn.pk}").status_code == 404
    assert _post(client, f"{API}/kbs/test-kb/turns", TURN).status_code == 404
    assert client.get("/v1/models").json()["data"] == []
    assert Turn.objects.count() == 1


def test_a_curators_token_stops_working_when_the_membership_or_the_role_goes(curator, knowledge_base):
    knowledge_base_create(slug="elsewhere", name="Elsewhere")
    _, plain = api_token_create(user=curator, name="all", all_knowledge_bases=True)
    client = _client(plain)
    assert [kb["slug"] for kb in client.get(f"{API}/kbs").json()] == ["test-kb"]  # not "elsewhere"
    assert _post(client, f"{API}/kbs/test-kb/turns", TURN).status_code == 200
    assert client.get(f"{API}/kbs/elsewhere/documents").status_code == 404

    Membership.objects.filter(user=curator).delete()
    assert client.get(f"{API}/kbs/test-kb/documents").status_code == 404
    assert client.get(f"{API}/kbs").json() == []

    Membership.objects.create(knowledge_base=knowledge_base, user=curator)
    assert client.get(f"{API}/kbs/test-kb/documents").status_code == 200
    curator.groups.clear()
    assert client.get(f"{API}/kbs/test-kb/documents").status_code == 404


def test_an_admins_token_follows_the_admin_role(django_user_model, knowledge_base):
    group, _ = Group.objects.get_or_create(name="admin")
    admin = django_user_model.objects.create_user("ada")
    admin.groups.add(group)
    _, plain = api_token_create(user=admin, name="all", all_knowledge_bases=True)
    client = _client(plain)
    assert client.get(f"{API}/kbs/test-kb/documents").status_code == 200

    admin.groups.remove(group)

    assert client.get(f"{API}/kbs/test-kb/documents").status_code == 404


def test_an_ingest_only_token_ingests_but_cannot_read_ask_or_chat(admin_user, knowledge_base):
    _, plain = api_token_create(user=admin_user, name="logger", knowledge_bases=[knowledge_base], scopes=["ingest"])
    client = _client(plain)
    conversation = Conversation.objects.create(knowledge_base=knowledge_base, external_id="c1")

    assert _post(client, f"{API}/kbs/test-kb/turns", TURN).status_code == 200
    turn = Turn.objects.get()
    refusals = [
        client.get(f"{API}/kbs/test-kb/conversations"),
        client.get(f"{API}/conversations/{conversation.pk}"),
        client.get(f"{API}/turns/{turn.pk}"),
        client.get(f"{API}/kbs/test-kb/documents"),
        _post(client, f"{API}/kbs/test-kb/ask", {"query": "q"}),
        _post(client, f"{API}/kbs/test-kb/retrieve", {"query": "q"}),
    ]
    assert [r.status_code for r in refusals] == [403] * len(refusals)
    assert "may not read" in refusals[0].json()["detail"] and "ingest" in refusals[0].json()["detail"]
    chat = _post(client, "/v1/chat/completions", {"model": "test-kb", "messages": [{"role": "user", "content": "q"}]})
    assert chat.status_code == 403 and chat.json()["error"]["code"] == "insufficient_scope"
    assert Turn.objects.count() == 1


def test_a_read_token_cannot_ingest_and_an_admin_scope_does_everything(admin_user, knowledge_base):
    _, read = api_token_create(user=admin_user, name="reader", knowledge_bases=[knowledge_base], scopes=["read"])
    _, admin = api_token_create(user=admin_user, name="ops", knowledge_bases=[knowledge_base], scopes=["admin"])

    assert _post(_client(read), f"{API}/kbs/test-kb/turns", TURN).status_code == 403
    assert _client(read).get(f"{API}/kbs/test-kb/documents").status_code == 200
    assert _post(_client(admin), f"{API}/kbs/test-kb/turns", TURN).status_code == 200
    assert _client(admin).get(f"{API}/kbs/test-kb/conversations").status_code == 200


def test_tokens_get_scopes_checked_at_creation_and_older_tokens_keep_what_they_could_do(admin_user, knowledge_base, capsys):
    assert ApiToken(user=admin_user, name="old").scopes == ["read", "ask", "ingest"]  # the migration's default
    with pytest.raises(Exception, match="scopes must be some of"):
        api_token_create(user=admin_user, name="bad", scopes=["write"])

    call_command("token_create", admin_user.username, "cli", "--kb", "test-kb", "--scope", "ingest", "--scope", "read")

    assert ApiToken.objects.get(name="cli").scopes == ["read", "ingest"]
