"""API token lifecycle: expiry, revocation and rotation (services and `token_*` commands), a
clear 401 for a revoked or expired token on both APIs, last use written at most once a minute,
and each change recorded once in the audit log."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.utils import timezone

from knowledge.audit_context import audit_context
from knowledge.errors import Conflict, InvalidInput, Unauthenticated
from knowledge.models import ApiToken, AuditEvent
from knowledge.services.tokens import api_token_authenticate, api_token_create, api_token_revoke, api_token_rotate

pytestmark = pytest.mark.django_db


def _client(plain: str) -> Client:
    client = Client()
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {plain}"
    return client


def _run(*args) -> str:
    out = StringIO()
    with audit_context(actor="cli:tester"):  # what manage.py sets for a real command
        call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue().strip()


def test_a_revoked_token_fails_at_once_with_a_clear_401(admin_user, knowledge_base):
    token, plain = api_token_create(user=admin_user, name="ci", knowledge_bases=[knowledge_base])
    client = _client(plain)
    assert client.get("/api/v1/kbs").status_code == 200
    api_token_revoke(token=token)
    response = client.get("/api/v1/kbs")
    assert response.status_code == 401
    assert response.json()["detail"].startswith(f"This API token ({token.key_prefix}…) was revoked on ")
    response = client.get("/v1/models")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert "was revoked on" in response.json()["error"]["message"]
    # an unknown token keeps the generic answer
    assert _client("rl_nope").get("/api/v1/kbs").json()["detail"].startswith("Missing or unknown API token")


def test_an_expired_token_fails_with_a_clear_401(admin_user, knowledge_base):
    token, plain = api_token_create(user=admin_user, name="ci", knowledge_bases=[knowledge_base],
                                    expires_at=timezone.now() + timedelta(hours=1))
    client = _client(plain)
    assert client.get("/api/v1/kbs").status_code == 200
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = client.get("/api/v1/kbs")
    assert response.status_code == 401
    assert "expired on" in response.json()["detail"] and "rotate it" in response.json()["detail"]
    assert "expired on" in client.get("/v1/models").json()["error"]["message"]
    with pytest.raises(Unauthenticated, match="expired"):
        api_token_authenticate(plain=plain)


def test_an_expiry_in_the_past_or_a_blank_name_is_refused(admin_user):
    with pytest.raises(InvalidInput, match="has passed"):
        api_token_create(user=admin_user, name="x", all_knowledge_bases=True, expires_at=timezone.now() - timedelta(days=1))
    with pytest.raises(InvalidInput, match="needs a name"):
        api_token_create(user=admin_user, name="  ", all_knowledge_bases=True)
    assert not ApiToken.objects.exists()
    assert not AuditEvent.objects.filter(action="token.create").exists()


def test_last_use_is_written_at_most_once_a_minute(admin_user, knowledge_base):
    token, plain = api_token_create(user=admin_user, name="ci", knowledge_bases=[knowledge_base])
    assert token.last_used_at is None
    client = _client(plain)
    client.get("/api/v1/kbs")
    first = ApiToken.objects.get(pk=token.pk).last_used_at
    assert first is not None
    client.get("/api/v1/kbs")
    assert ApiToken.objects.get(pk=token.pk).last_used_at == first  # not written again within the minute
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=first - timedelta(seconds=61))
    client.get("/api/v1/kbs")
    assert ApiToken.objects.get(pk=token.pk).last_used_at > first


def test_rotation_revokes_the_old_secret_and_keeps_name_scopes_knowledge_bases_and_lifetime(admin_user, knowledge_base):
    old, old_plain = api_token_create(user=admin_user, name="ci", knowledge_bases=[knowledge_base], scopes=["read"],
                                      expires_at=timezone.now() + timedelta(days=30))
    new, new_plain = api_token_rotate(token=old)
    old.refresh_from_db()
    assert old.revoked_at is not None and new.revoked_at is None and new.rotated_from == old
    assert (new.name, new.scopes, list(new.knowledge_bases.all()), new.user) == ("ci", ["read"], [knowledge_base], admin_user)
    assert timedelta(days=29, hours=23) < new.expires_at - new.created_at <= timedelta(days=30, seconds=1)
    assert new_plain != old_plain
    assert _client(new_plain).get("/api/v1/kbs").status_code == 200
    assert _client(old_plain).get("/api/v1/kbs").status_code == 401
    with pytest.raises(Conflict, match="is revoked"):
        api_token_rotate(token=old)
    [event] = AuditEvent.objects.filter(action="token.rotate")
    assert (event.object_id, event.before["id"], event.after["id"]) == (str(new.pk), old.pk, new.pk)
    assert "key_hash" not in event.after and new_plain not in str(event.after)


def test_token_create_revoke_and_rotate_from_the_cli_each_write_one_audit_row(admin_user, knowledge_base):
    plain = _run("token_create", "root", "deploy", "--kb", "test-kb", "--scope", "ingest", "--expires-in-days", "7")
    token = ApiToken.objects.get(key_prefix=plain[:10])
    assert timedelta(days=6, hours=23) < token.expires_at - timezone.now() <= timedelta(days=7)
    [created] = AuditEvent.objects.filter(action="token.create")
    assert (created.actor, created.object_id) == ("cli:tester", str(token.pk))
    assert created.after == {"name": "deploy", "user": "root", "key_prefix": token.key_prefix, "scopes": ["ingest"],
                             "all_knowledge_bases": False, "knowledge_bases": ["test-kb"],
                             "expires_at": token.expires_at.isoformat()}

    new_plain = _run("token_rotate", token.key_prefix)
    assert new_plain.startswith("rl_") and new_plain != plain
    new = ApiToken.objects.get(key_prefix=new_plain[:10])
    assert "revoked on" in _run("token_revoke", str(new.pk))
    assert "already revoked" in _run("token_revoke", str(new.pk))
    assert ApiToken.objects.filter(revoked_at__isnull=True).count() == 0
    assert list(AuditEvent.objects.filter(action__startswith="token.").order_by("id").values_list("action", "actor")) == [
        ("token.create", "cli:tester"), ("token.rotate", "cli:tester"), ("token.revoke", "cli:tester")]
    [revoked] = AuditEvent.objects.filter(action="token.revoke")
    assert revoked.object_id == str(new.pk) and revoked.before["key_prefix"] == new.key_prefix

    with pytest.raises(CommandError, match="no API token"):
        _run("token_revoke", "rl_unknown")
    with pytest.raises(CommandError, match="is revoked"):
        _run("token_rotate", str(new.pk))
    with pytest.raises(CommandError, match="not a date"):
        _run("token_create", "root", "x", "--all", "--expires", "soon")
    with pytest.raises(CommandError, match="has passed"):
        _run("token_create", "root", "x", "--all", "--expires", "2001-01-01")


@pytest.mark.django_db(transaction=True)  # a real manage.py process must see the user; the flush after it TRUNCATEs the log
def test_a_real_manage_py_command_is_recorded_as_the_cli_of_the_os_user(django_user_model):
    import getpass
    import os
    import subprocess
    import sys

    from django.conf import settings

    from tests.conftest import REPO_ROOT, _test_database_url

    django_user_model.objects.create_user("ops")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.test", "DATABASE_URL": _test_database_url(),
           "REDIS_URL": settings.CELERY_BROKER_URL}
    done = subprocess.run([sys.executable, "manage.py", "token_create", "ops", "cron", "--all"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    token = ApiToken.objects.get(key_prefix=done.stdout.strip()[:10])
    [event] = AuditEvent.objects.filter(action="token.create")
    assert (event.actor, event.object_id, event.request_id, event.ip) == (f"cli:{getpass.getuser()}", str(token.pk), "", None)
