"""The audit log itself: rows written by audit_record in the caller's transaction, actor and
request context, the append-only trigger (the app's own connection cannot change or delete a
row), and `manage.py audit --json`."""

import getpass
import json
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from knowledge.audit_context import audit_context, cli_actor
from knowledge.models import AuditEvent
from knowledge.services.audit import audit_record
from knowledge.services.knowledge_bases import knowledge_base_create
from knowledge.services.tokens import api_token_create

pytestmark = pytest.mark.django_db


def test_a_row_names_the_actor_object_knowledge_base_and_the_request(knowledge_base, admin_user):
    with audit_context(request=None, request_id="req-1", ip="10.1.2.3", actor="cli:ops"):
        event = audit_record(action="test.thing", object_type="thing", object_id=7, knowledge_base=knowledge_base,
                             before={"a": 1}, after={"a": 2})
    event = AuditEvent.objects.get(pk=event.pk)
    assert (event.actor, event.actor_user_id, event.action, event.object_type, event.object_id) == (
        "cli:ops", None, "test.thing", "thing", "7")
    assert (event.knowledge_base_id, event.knowledge_base_slug) == (knowledge_base.pk, "test-kb")
    assert (event.before, event.after, event.request_id, event.ip) == ({"a": 1}, {"a": 2}, "req-1", "10.1.2.3")
    # a user given by the service, under the CLI: both are said
    with audit_context(actor="cli:ops"):
        assert audit_record(action="x", object_type="y", actor=admin_user).actor == "cli:ops as root"
    # neither a request nor a command: the system
    assert audit_record(action="x", object_type="y").actor == "system"
    assert audit_record(action="x", object_type="y", actor_name="policy nightly").actor == "policy nightly"


@pytest.fixture
def event(knowledge_base):
    return AuditEvent.objects.get(action="knowledge_base.create", knowledge_base=knowledge_base)


def test_the_apps_own_connection_cannot_update_a_row(event):
    with pytest.raises(DatabaseError, match="append-only: UPDATE is refused"), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).update(actor="someone else")
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        event.after = {"slug": "forged"}
        event.save()
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("UPDATE knowledge_auditevent SET action = 'nothing' WHERE id = %s", [event.pk])
    event.refresh_from_db()
    assert (event.actor, event.after["slug"], event.action) == ("system", "test-kb", "knowledge_base.create")


def test_the_apps_own_connection_cannot_delete_a_row(event):
    with pytest.raises(DatabaseError, match="append-only: DELETE is refused"), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).delete()
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("DELETE FROM knowledge_auditevent")
    assert AuditEvent.objects.filter(pk=event.pk).exists()


def test_deleting_a_knowledge_base_or_a_user_keeps_their_rows(knowledge_base, django_user_model):
    user = django_user_model.objects.create_user("gone")
    audit_record(action="x", object_type="y", actor=user, knowledge_base=knowledge_base)
    user_id = user.pk
    knowledge_base.delete()
    user.delete()
    event = AuditEvent.objects.get(action="x")
    assert (event.actor, event.actor_user_id, event.knowledge_base_slug) == ("gone", user_id, "test-kb")


def test_a_rolled_back_transaction_leaves_no_row(admin_user, knowledge_base):
    with pytest.raises(RuntimeError), transaction.atomic():
        api_token_create(user=admin_user, name="doomed", all_knowledge_bases=True)
        assert AuditEvent.objects.filter(action="token.create").count() == 1
        raise RuntimeError("the caller's transaction fails after the service wrote")
    assert not AuditEvent.objects.filter(action="token.create").exists()
    # a service that refuses writes no row either
    with pytest.raises(Exception, match="already exists"):
        knowledge_base_create(slug="test-kb")
    assert AuditEvent.objects.filter(action="knowledge_base.create").count() == 1


def test_web_requests_carry_their_id_and_address_into_the_row(admin_client, knowledge_base):
    response = admin_client.post("/kbs/test-kb/settings/", {"labels_per_turn": "2", "hold_minutes": "30"},
                                 HTTP_X_REQUEST_ID="abc-123", REMOTE_ADDR="192.0.2.7")
    assert response.status_code in (200, 302)
    assert response["X-Request-ID"] == "abc-123"
    event = AuditEvent.objects.get(action="knowledge_base.settings_change")
    assert (event.actor, event.request_id, event.ip) == ("root", "abc-123", "192.0.2.7")
    assert event.before == {"labels_per_turn": 1, "hold_minutes": 15}
    assert event.after == {"labels_per_turn": 2, "hold_minutes": 30}
    # a request id that is not plain is replaced by one of ours
    response = admin_client.get("/", HTTP_X_REQUEST_ID="x" * 65)
    assert len(response["X-Request-ID"]) == 32 and response["X-Request-ID"] != "x" * 65


def _export(*args) -> list[dict]:
    out = StringIO()
    call_command("audit", "--json", *args, stdout=out)
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_the_audit_command_exports_json_lines_filtered(knowledge_base, admin_user):
    knowledge_base_create(slug="other")
    old = audit_record(action="token.revoke", object_type="api_token", object_id=1, knowledge_base=knowledge_base)
    # rows cannot be updated, so an old row is made by inserting it with its time
    AuditEvent.objects.create(actor="root", action="label.submit", object_type="label", object_id="9",
                              knowledge_base=knowledge_base, knowledge_base_slug="test-kb",
                              created_at=timezone.now() - timedelta(days=10))
    records = _export()
    assert [r["action"] for r in records] == ["label.submit", "knowledge_base.create", "knowledge_base.create", "token.revoke"]
    assert records[-1] == {
        "id": old.pk, "time": old.created_at.isoformat(), "actor": "system", "actor_user_id": None,
        "action": "token.revoke", "object_type": "api_token", "object_id": "1", "knowledge_base": "test-kb",
        "knowledge_base_id": knowledge_base.pk, "before": None, "after": None, "request_id": None, "ip": None,
    }
    assert [r["action"] for r in _export("--since", "7d")] == ["knowledge_base.create"] * 2 + ["token.revoke"]
    assert [r["action"] for r in _export("--action", "label.")] == ["label.submit"]
    assert [r["object_id"] for r in _export("--action", "token.revoke", "--kb", "test-kb")] == ["1"]
    assert _export("--since", (timezone.now() + timedelta(days=1)).date().isoformat()) == []
    with pytest.raises(CommandError, match="is not a date"):
        call_command("audit", "--json", "--since", "last week", stdout=StringIO())


def test_the_cli_actor_is_the_os_user():
    assert cli_actor() == f"cli:{getpass.getuser()}"
