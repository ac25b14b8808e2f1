"""Personal data in curation: label text under the knowledge base's mode, and the curator's
"contains personal data" flag that only an admin can clear (service and turn page)."""

import pytest
from django.contrib.auth.models import Group

from curation.models import Label, LabelDraft, LabelRevision, Membership
from curation.services.adjudication import adjudication_record
from curation.services.labels import LabelInput, label_draft_save, label_submit
from curation.services.personal_data import turn_personal_data_clear
from knowledge.errors import Forbidden, InvalidInput, PersonalDataRejected
from knowledge.services.knowledge_bases import knowledge_base_personal_data_mode_set
from knowledge.services.turns import PassageRecord, TurnRecord, turns_ingest


@pytest.fixture
def curator(db, django_user_model, knowledge_base):
    user = django_user_model.objects.create_user("carol", password="pw-carol-123")
    user.groups.add(Group.objects.get_or_create(name="curator")[0])
    Membership.objects.create(knowledge_base=knowledge_base, user=user)
    return user


@pytest.fixture
def turn(knowledge_base):
    result = turns_ingest(
        knowledge_base=knowledge_base,
        records=[TurnRecord(external_id="t-1", query="Which enzyme do statins inhibit?", answer="HMG-CoA reductase.",
                            passages=[PassageRecord(text="Statins inhibit HMG-CoA reductase.", source_id="d-statins")])],
    )
    return knowledge_base.turns.get(pk=result.created["t-1"])


def _judged(turn, **fields):
    return LabelInput(passages={turn.passages.get().pk: "relevant"}, answer_rating="wrong", **fields)


def test_label_text_is_redacted_under_redact(turn, curator):
    knowledge_base_personal_data_mode_set(knowledge_base=turn.knowledge_base, mode="redact")
    label = label_submit(
        turn=turn, curator=curator,
        data=_judged(turn, gold_answer="HMG-CoA reductase; ask dr.lee@example.org", comment="user gave +1 415-555-0132",
                     rationale="see https://example.com/statins"),
    )
    label.refresh_from_db()
    assert label.gold_answer == "HMG-CoA reductase; ask <EMAIL>"
    assert label.comment == "user gave <PHONE_NUMBER>"
    assert label.rationale == "see <URL>"
    assert "dr.lee" not in str(LabelRevision.objects.get(label=label).after)

    draft = label_draft_save(turn=turn, curator=curator, payload={"gold_answer": "mail dr.lee@example.org"}, base_version=1)
    assert draft.payload["gold_answer"] == "mail <EMAIL>"


def test_label_text_with_personal_data_is_refused_under_reject(turn, curator):
    knowledge_base_personal_data_mode_set(knowledge_base=turn.knowledge_base, mode="reject")
    with pytest.raises(PersonalDataRejected) as refused:
        label_submit(turn=turn, curator=curator, data=_judged(turn, gold_answer="IBAN DE89 3704 0044 0532 0130 00"))
    assert refused.value.entity_types == ["IBAN_CODE"] and "gold_answer" in str(refused.value)
    assert Label.objects.count() == 0 and LabelRevision.objects.count() == 0
    with pytest.raises(PersonalDataRejected):
        label_draft_save(turn=turn, curator=curator, payload={"comment": "mail dr.lee@example.org"}, base_version=0)
    assert LabelDraft.objects.count() == 0


def test_adjudication_text_follows_the_mode(turn, admin_user):
    knowledge_base_personal_data_mode_set(knowledge_base=turn.knowledge_base, mode="redact")
    adjudication = adjudication_record(
        turn=turn, admin=admin_user, passage_relevance={turn.passages.get().pk: "relevant"}, gold_answer="ask 10.1.2.3"
    )
    assert adjudication.gold_answer == "ask <IP_ADDRESS>"


def test_only_an_admin_clears_a_flag_and_a_new_flag_needs_a_new_clearance(turn, curator, admin_user):
    label_submit(turn=turn, curator=curator, data=_judged(turn, has_personal_data=True))
    with pytest.raises(Forbidden):
        turn_personal_data_clear(turn=turn, actor=curator)
    assert Label.objects.get().personal_data_cleared_at is None

    assert turn_personal_data_clear(turn=turn, actor=admin_user) == 1
    label = Label.objects.get()
    assert label.has_personal_data and label.personal_data_cleared_by == admin_user and label.personal_data_cleared_at
    with pytest.raises(InvalidInput):  # nothing left to clear
        turn_personal_data_clear(turn=turn, actor=admin_user)

    # Still flagged on an edit: the clearance stands. Unflagged, then flagged again: it does not.
    label_submit(turn=turn, curator=curator, data=_judged(turn, has_personal_data=True, comment="edit"))
    assert Label.objects.get().personal_data_cleared_at is not None
    label_submit(turn=turn, curator=curator, data=_judged(turn))
    label_submit(turn=turn, curator=curator, data=_judged(turn, has_personal_data=True))
    assert Label.objects.get().personal_data_cleared_at is None


def test_the_turn_page_offers_the_clear_action_to_admins_only(client, turn, curator, admin_user):
    label_submit(turn=turn, curator=curator, data=_judged(turn, has_personal_data=True))
    url = f"/turns/{turn.pk}/personal-data/clear/"

    client.force_login(curator)
    page = client.get(f"/turns/{turn.pk}/")
    assert page.status_code == 200 and b"Kept out of training snapshots" in page.content
    assert url.encode() not in page.content
    assert client.post(url).status_code == 403
    assert Label.objects.get().personal_data_cleared_at is None

    client.force_login(admin_user)
    assert url.encode() in client.get(f"/turns/{turn.pk}/").content
    response = client.post(url)
    assert response.status_code == 302 and response["Location"] == f"/turns/{turn.pk}/"
    assert Label.objects.get().personal_data_cleared_by == admin_user
    assert b"Cleared by root" in client.get(f"/turns/{turn.pk}/").content
    assert client.get(url).status_code == 405


def test_a_curator_of_another_knowledge_base_cannot_see_or_clear(client, turn, curator, django_user_model):
    label_submit(turn=turn, curator=curator, data=_judged(turn, has_personal_data=True))
    outsider = django_user_model.objects.create_user("oscar", password="pw-oscar-123")
    outsider.groups.add(Group.objects.get_or_create(name="curator")[0])
    client.force_login(outsider)
    assert client.post(f"/turns/{turn.pk}/personal-data/clear/").status_code == 404


def test_the_settings_page_sets_the_mode(admin_client, knowledge_base):
    response = admin_client.post(
        f"/kbs/{knowledge_base.slug}/settings/", {"labels_per_turn": 1, "hold_minutes": 15, "personal_data_mode": "redact"}
    )
    assert response.status_code == 302, response.content[:300]
    knowledge_base.refresh_from_db()
    assert knowledge_base.personal_data_mode == "redact"
    bad = admin_client.post(
        f"/kbs/{knowledge_base.slug}/settings/", {"labels_per_turn": 3, "hold_minutes": 15, "personal_data_mode": "maybe"}
    )
    assert bad.status_code == 422
    knowledge_base.refresh_from_db()
    assert (knowledge_base.personal_data_mode, knowledge_base.labels_per_turn) == ("redact", 1)  # nothing half-written


def _import_line(**fields) -> dict:
    return {"query_id": "q-1", "query": "Refill for bob.jones@example.org?", "curator": "carol",
            "relevant": [{"text": "Call +1 415-555-0132 for refills.", "title": "Mail ann@example.com"}],
            "answer_rating": "correct", "gold_answer": "Ask bob.jones@example.org to call.", **fields}  # fmt: skip


def test_turns_made_by_a_label_import_are_redacted_and_a_re_import_finds_them(knowledge_base, curator):
    from curation.services.label_io import labels_import
    from curation.services.label_io.records import label_record_parse
    from knowledge.models import Turn

    knowledge_base_personal_data_mode_set(knowledge_base=knowledge_base, mode="redact")
    record = label_record_parse(_import_line(), origin="labels.jsonl, line 1")
    result = labels_import(knowledge_base=knowledge_base, records=[record])
    assert result.turns_created == 1 and result.labels_created == 1
    turn = Turn.objects.get(imported=True)
    assert turn.query == "Refill for <EMAIL>?"
    passage = turn.passages.get()
    assert (passage.text, passage.title) == ("Call <PHONE_NUMBER> for refills.", "Mail <EMAIL>")
    label = Label.objects.get(turn=turn)
    assert label.gold_answer == "Ask <EMAIL> to call."
    assert label.passage_judgments.get().retrieved_passage == passage

    # The same file again: the turn and its passage are found, nothing is added or refused.
    again = labels_import(knowledge_base=knowledge_base, records=[record])
    assert (again.turns_created, again.turns_existing, again.labels_unchanged, again.passages_added) == (0, 1, 1, 0)
    # Without a query_id the turn is keyed on a hash of the stored (redacted) query.
    unnamed = label_record_parse({**_import_line(), "query_id": None}, origin="labels.jsonl, line 1")
    labels_import(knowledge_base=knowledge_base, records=[unnamed])
    labels_import(knowledge_base=knowledge_base, records=[unnamed])
    assert Turn.objects.filter(imported=True).count() == 2
    assert "bob.jones" not in " ".join(Turn.objects.values_list("query", flat=True))


def test_a_label_import_under_reject_is_refused_naming_the_line(knowledge_base, curator):
    from curation.services.label_io import labels_import
    from curation.services.label_io.records import label_record_parse
    from knowledge.models import Turn

    knowledge_base_personal_data_mode_set(knowledge_base=knowledge_base, mode="reject")
    record = label_record_parse(_import_line(), origin="labels.jsonl, line 1")
    with pytest.raises(PersonalDataRejected) as refused:
        labels_import(knowledge_base=knowledge_base, records=[record])
    assert "labels.jsonl, line 1 query" in str(refused.value) and refused.value.status_code == 422
    assert not Turn.objects.filter(imported=True).exists() and not Label.objects.exists()
