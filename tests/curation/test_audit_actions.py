"""Curation's audited actions each write exactly one audit row naming who did it and to what:
label submit, edit and adjudication, label import and export, role changes, memberships,
invitations, knowledge base settings; a refused action writes none. The audit log page is for
admins only (403 otherwise) and filters by action, actor, knowledge base and date."""

import json
from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.utils import timezone

from curation.models import Label, Membership
from curation.services.accounts import invitation_accept, invitation_create, user_role, user_role_set
from curation.services.adjudication import adjudication_record
from curation.services.labels import LabelInput, label_submit
from knowledge.audit_context import audit_context
from knowledge.errors import Conflict, InvalidInput
from knowledge.models import AuditEvent, Turn
from knowledge.services.documents import documents_ingest
from knowledge.services.knowledge_bases import knowledge_base_create
from knowledge.services.turns import PassageRecord, TurnRecord, turns_ingest

pytestmark = pytest.mark.django_db


@pytest.fixture
def curators(db, django_user_model, knowledge_base):
    group = Group.objects.get(name="curator")
    users = []
    for name in ("alice", "bob"):
        user = django_user_model.objects.create_user(name, password=f"pw-{name}-123")
        user.groups.add(group)
        Membership.objects.create(knowledge_base=knowledge_base, user=user)
        users.append(user)
    return users


@pytest.fixture
def turn(knowledge_base):
    record = TurnRecord(external_id="t1", query="Which enzyme do statins inhibit?", answer="HMG-CoA reductase",
                        passages=[PassageRecord(text=f"passage {i}", score=0.9 - i / 10) for i in range(2)])
    return Turn.objects.get(pk=turns_ingest(knowledge_base=knowledge_base, records=[record]).created["t1"])


def rows(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("id"))


def _submit(client, turn, payload, base_version=None):
    body = {"payload": payload} if base_version is None else {"payload": payload, "base_version": base_version}
    return client.post(f"/kbs/test-kb/turns/{turn.pk}/label/", data=json.dumps(body), content_type="application/json",
                       HTTP_X_REQUEST_ID="label-req", REMOTE_ADDR="198.51.100.4")


def test_label_submit_and_edit_from_the_workbench_write_one_row_each(client, curators, turn):
    alice = curators[0]
    client.force_login(alice)
    first, second = turn.passages.order_by("rank").values_list("pk", flat=True)
    gold = "Statins inhibit HMG-CoA reductase (said alice@example.com)"
    assert _submit(client, turn, {"passages": {str(first): "relevant"}, "answer_rating": "correct",
                                  "gold_answer": gold}).status_code == 200
    [submitted] = rows("label.submit")
    label = Label.objects.get(turn=turn, curator=alice)
    assert (submitted.actor, submitted.actor_user_id, submitted.object_type, submitted.object_id) == (
        "alice", alice.pk, "label", str(label.pk))
    assert (submitted.knowledge_base_slug, submitted.request_id, submitted.ip) == ("test-kb", "label-req", "198.51.100.4")
    assert submitted.before is None
    assert submitted.after == {"version": 1, "curator": "alice", "skipped": False, "answer_rating": "correct",
                               "passages_judged": 1, "relevant": 1, "has_gold_answer": True,
                               "has_personal_data": False, "turn": turn.pk}
    assert gold not in json.dumps(submitted.after)  # the curator's text stays out of the log

    assert _submit(client, turn, {"passages": {str(first): "relevant", str(second): "not_relevant"},
                                  "answer_rating": "wrong"}, base_version=1).status_code == 200
    [edited] = rows("label.edit")
    assert (edited.before["version"], edited.after["version"], edited.after["answer_rating"]) == (1, 2, "wrong")
    assert len(rows("label.submit")) == 1

    # a stale page's submit is refused: no row
    assert _submit(client, turn, {"answer_rating": "partly"}, base_version=1).status_code == 409
    assert AuditEvent.objects.filter(action__startswith="label.").count() == 2


def test_adjudication_writes_one_row(admin_user, curators, turn):
    first = turn.passages.order_by("rank").first().pk
    label_submit(turn=turn, curator=curators[0], data=LabelInput(passages={first: "relevant"}, answer_rating="correct"))
    label_submit(turn=turn, curator=curators[1], data=LabelInput(passages={first: "not_relevant"}, answer_rating="correct"))
    with pytest.raises(InvalidInput):
        adjudication_record(turn=turn, admin=admin_user, passage_relevance={}, answer_rating="correct")
    assert rows("label.adjudicate") == []
    adjudication_record(turn=turn, admin=admin_user, passage_relevance={first: "relevant"}, answer_rating="correct")
    [event] = rows("label.adjudicate")
    assert (event.actor, event.object_type, event.object_id, event.before) == ("root", "turn", str(turn.pk), None)
    assert event.after["passage_relevance"] == {str(first): "relevant"}


LINES = [
    {"query_id": "q1", "query": "Does vitamin D prevent hip fractures?", "curator": "alice",
     "relevant": [{"document": "d-vitd"}], "answer_rating": "partly"},
    {"query_id": "q1", "query": "Does vitamin D prevent hip fractures?", "curator": "bob",
     "relevant": [{"document": "d-vitd"}]},
]


def _lines(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def test_a_label_import_is_one_row_and_a_refused_import_none(knowledge_base, sample_documents, curators, tmp_path):
    documents_ingest(knowledge_base=knowledge_base, documents=sample_documents)
    bad = [*LINES, {"query": "x", "curator": "mallory", "relevant": [{"document": "d-vitd"}]}]
    with pytest.raises(Exception, match="mallory"), audit_context(actor="cli:ops"):
        call_command("import_labels", "test-kb", _lines(tmp_path / "bad.jsonl", bad), stdout=StringIO(), stderr=StringIO())
    assert rows("label.import") == [] and Label.objects.count() == 0
    with audit_context(actor="cli:ops"):
        call_command("import_labels", "test-kb", _lines(tmp_path / "good.jsonl", LINES), stdout=StringIO(), stderr=StringIO())
    [event] = rows("label.import")
    assert (event.actor, event.object_type, event.knowledge_base_slug) == ("cli:ops", "knowledge_base", "test-kb")
    assert (event.after["records"], event.after["labels_created"], event.after["turns_created"]) == (2, 2, 1)
    assert rows("label.submit") == []  # the imported labels are in the import's row


def test_the_labels_download_and_the_export_command_write_one_row_each(client, admin_user, curators, turn):
    label_submit(turn=turn, curator=curators[0], data=LabelInput(answer_rating="correct"))
    client.force_login(curators[0])
    assert client.get("/kbs/test-kb/labels.jsonl").status_code == 403
    assert rows("labels.export") == []
    client.force_login(admin_user)
    response = client.get("/kbs/test-kb/labels.jsonl?curator=alice")
    assert response.status_code == 200 and len(b"".join(response.streaming_content).splitlines()) == 1
    [download] = rows("labels.export")
    assert (download.actor, download.knowledge_base_slug, download.after) == ("root", "test-kb", {"curator": "alice"})
    with audit_context(actor="cli:ops"):
        call_command("export_labels", "test-kb", stdout=StringIO())
    assert [e.actor for e in rows("labels.export")] == ["root", "cli:ops"]


def test_a_role_change_writes_one_row_and_the_same_role_none(django_user_model, curators):
    alice = curators[0]
    with audit_context(actor="cli:ops"):
        user_role_set(user=alice, role="admin")
    assert user_role(alice) == "admin"
    [event] = rows("user.role_change")
    assert (event.actor, event.object_type, event.object_id) == ("cli:ops", "user", str(alice.pk))
    assert (event.before, event.after) == ({"user": "alice", "role": "curator"}, {"role": "admin"})
    user_role_set(user=alice, role="admin")
    with pytest.raises(InvalidInput, match="unknown"):
        user_role_set(user=alice, role="owner")
    assert len(rows("user.role_change")) == 1
    out = StringIO()
    call_command("user_role", "alice", "none", stdout=out)
    assert out.getvalue().strip() == "alice: none"
    assert [e.after["role"] for e in rows("user.role_change")] == ["admin", "none"]


def test_membership_changes_from_the_settings_page_write_one_row_each(admin_client, knowledge_base, curators, django_user_model):
    dave = django_user_model.objects.create_user("dave", password="pw-dave-123")
    dave.groups.add(Group.objects.get(name="curator"))
    admin_client.post("/kbs/test-kb/settings/members/", {"username": "dave"})
    admin_client.post("/kbs/test-kb/settings/members/", {"username": "dave"})  # already a member: no change
    admin_client.post(f"/kbs/test-kb/settings/members/{curators[0].pk}/remove/")
    assert [(e.action, e.actor, e.object_id) for e in AuditEvent.objects.filter(action__startswith="membership.").order_by("id")] == [
        ("membership.add", "root", str(dave.pk)), ("membership.remove", "root", str(curators[0].pk))]


def test_invitations_and_settings_are_recorded(admin_client, admin_user, knowledge_base):
    invitation, key = invitation_create(invited_by=admin_user, email="new@example.com", knowledge_bases=[knowledge_base])
    user = invitation_accept(key=key, username="newbie", password="a-long-Passw0rd!")
    with pytest.raises(Exception, match="already been used"):
        invitation_accept(key=key, username="other", password="a-long-Passw0rd!")
    [created] = rows("invitation.create")
    [accepted] = rows("invitation.accept")
    assert (created.actor, created.after) == ("root", {"email": "new@example.com", "role": "curator", "knowledge_bases": ["test-kb"]})
    assert (accepted.actor, accepted.actor_user_id, accepted.object_id) == ("newbie", user.pk, str(invitation.pk))

    assert admin_client.post("/kbs/test-kb/settings/", {"labels_per_turn": "11", "hold_minutes": "30"}).status_code == 422
    assert admin_client.post("/kbs/test-kb/guidelines/edit/", {"guidelines": "Judge kindly."}).status_code == 302
    [guidelines] = rows("knowledge_base.settings_change")
    assert (guidelines.before["guidelines_chars"], guidelines.after["guidelines_chars"]) == (0, 13)


# --- the page ---------------------------------------------------------------------------------


def test_the_audit_page_is_for_admins_only(client, curators):
    assert client.get("/audit/").status_code == 302  # anonymous: to the login page
    client.force_login(curators[0])
    assert client.get("/audit/").status_code == 403


def test_the_audit_page_lists_and_filters(admin_client, admin_user, knowledge_base, curators, turn):
    knowledge_base_create(slug="other")
    label_submit(turn=turn, curator=curators[0], data=LabelInput(answer_rating="correct"))
    AuditEvent.objects.create(actor="bob", action="label.submit", object_type="label", object_id="old",
                              created_at=timezone.now() - timedelta(days=40))

    def listed(query=""):
        response = admin_client.get(f"/audit/{query}")
        assert response.status_code == 200
        body = response.content.decode().split("<tbody>")[1].split("</tbody>")[0]
        return body.count("<tr>"), body

    count, body = listed()
    assert count == 4 and "knowledge_base.create" in body and "label.submit" in body
    assert listed("?action=label.submit")[0] == 2
    count, body = listed("?actor=alice")
    assert count == 1 and "label.submit" in body
    count, body = listed("?kb=other")
    assert count == 1 and "knowledge_base.create" in body
    count, body = listed(f"?since={(timezone.now() - timedelta(days=1)).date().isoformat()}&action=label.submit")
    assert count == 1 and "label old" not in body and "alice" in body
    count, body = listed(f"?until={(timezone.now() - timedelta(days=30)).date().isoformat()}")
    assert count == 1 and "label old" in body
    response = admin_client.get("/audit/?since=yesterday")
    assert response.status_code == 422 and "is not a date" in response.content.decode()


def test_a_failed_action_of_a_service_writes_no_row(curators, turn):
    label_submit(turn=turn, curator=curators[0], data=LabelInput(answer_rating="correct"))
    with pytest.raises(Conflict):
        label_submit(turn=turn, curator=curators[0], data=LabelInput(answer_rating="wrong"), expected_version=0)
    assert len(rows("label.submit")) == 1 and rows("label.edit") == []
