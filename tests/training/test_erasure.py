"""Erasure (training.services.erasure): by end user, conversation, turn and document, what it
deletes (counted on the receipt), the versions it flags through the snapshot lineage, what
snapshots and exports made afterwards hold, the preview, permissions, the audit row, the
command and the admin page."""

import json

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command

from curation.models import Label, LabelDraft, Membership, PassageJudgment, Suggestion
from curation.services.labels import LabelInput, label_draft_save, label_submit
from knowledge.errors import Forbidden, InvalidInput, NotFound
from knowledge.models import (
    AuditEvent,
    Chunk,
    ChunkEmbedding,
    Conversation,
    Document,
    EmbeddingSpace,
    RetrievedPassage,
    Turn,
)
from knowledge.services.conversations import ConversationMessage, ConversationRecord, conversation_ingest
from knowledge.services.turns import PassageRecord, turn_ask
from training.models import ErasureReceipt, ModelVersion, SnapshotExample
from training.services.erasure import erasure_execute, erasure_execute_everywhere, erasure_preview
from training.services.exports import dataset_export_files
from training.services.snapshots import dataset_snapshot_create

from .conftest import retriever_version

pytestmark = pytest.mark.django_db

MARIA = "maria.keller@example.com"
MARIA_QUESTION = "My account 55-1234 is locked, what now?"
BOB_QUESTION = "How do I reset a password?"


@pytest.fixture
def curator(django_user_model, knowledge_base):
    user = django_user_model.objects.create_user("alice", password="pw-alice-123")
    user.groups.add(Group.objects.get_or_create(name="curator")[0])
    Membership.objects.create(knowledge_base=knowledge_base, user=user)
    return user


def _conversation(knowledge_base, external_id, end_user, questions):
    messages = []
    for n, question in enumerate(questions):
        messages += [
            ConversationMessage("user", question),
            ConversationMessage(
                "assistant", f"answer {n} to {question}", passages=[PassageRecord(text=f"passage for {question}", source_id=f"d-{n}")]
            ),
        ]
    record = ConversationRecord(external_id=external_id, end_user=end_user, messages=messages)
    return list(conversation_ingest(knowledge_base=knowledge_base, record=record).conversation.turns.order_by("position"))


def _label(turn, curator):
    label_submit(
        turn=turn, curator=curator,
        data=LabelInput(passages={turn.passages.get().pk: "relevant"}, answer_rating="wrong", gold_answer=f"gold for {turn.query}"),
    )  # fmt: skip


@pytest.fixture
def people(knowledge_base, curator, admin_user):
    """Maria's conversation of two turns and Bob's of one, all labelled (Maria's first labelled
    twice, so it has two revisions), a draft and a suggestion on Maria's second turn, a snapshot
    of all of it with a version trained on it and a child of that version, and an older version
    whose snapshot held only Bob's turn."""
    maria = _conversation(knowledge_base, "c-maria", MARIA, [MARIA_QUESTION, "And my card ending 4242?"])
    bob = _conversation(knowledge_base, "c-bob", "bob-17", [BOB_QUESTION])
    _label(bob[0], curator)
    bob_only = dataset_snapshot_create(knowledge_base=knowledge_base, heldout_share=0.0)
    clean = retriever_version(knowledge_base, "retriever-v1", snapshot=bob_only)
    for turn in maria:
        _label(turn, curator)
    _label(maria[0], admin_user)
    label_submit(
        turn=maria[0], curator=curator,
        data=LabelInput(passages={maria[0].passages.get().pk: "partly"}, answer_rating="wrong", gold_answer="edited gold"),
    )  # fmt: skip
    label_draft_save(turn=maria[1], curator=admin_user, payload={"answer_rating": "correct"}, base_version=0)
    Suggestion.objects.create(turn=maria[1], retrieved_passage=maria[1].passages.get(), agent="retriever:base", value="relevant")
    everyone = dataset_snapshot_create(knowledge_base=knowledge_base, heldout_share=0.0)
    trained = retriever_version(knowledge_base, "retriever-v2", snapshot=everyone)
    child = retriever_version(knowledge_base, "retriever-v3", snapshot=bob_only, parent=trained)
    return {"maria": maria, "bob": bob, "clean": clean, "trained": trained, "child": child, "snapshot": everyone}


def _all_audit_text() -> str:
    return json.dumps(list(AuditEvent.objects.values("before", "after", "object_id", "actor")), default=str)


def test_erasing_an_end_user_deletes_their_data_flags_the_lineage_and_writes_a_receipt(knowledge_base, people, admin_user):
    maria_turns = [t.pk for t in people["maria"]]
    audit_rows = AuditEvent.objects.count()

    receipt = erasure_execute(knowledge_base=knowledge_base, selector="end_user", value=MARIA, actor=admin_user)

    assert not Conversation.objects.filter(external_id="c-maria").exists()
    assert not Turn.objects.filter(pk__in=maria_turns).exists()
    assert not RetrievedPassage.objects.filter(turn_id__in=maria_turns).exists()
    assert not Label.objects.filter(turn_id__in=maria_turns).exists()
    assert not LabelDraft.objects.exists() and not Suggestion.objects.exists()
    assert not SnapshotExample.objects.filter(query__contains="account 55-1234").exists()
    # Bob's data is untouched.
    assert Turn.objects.filter(query=BOB_QUESTION).count() == 1 and Label.objects.filter(turn__query=BOB_QUESTION).count() == 1
    assert SnapshotExample.objects.filter(snapshot=people["snapshot"], query=BOB_QUESTION).count() == 1

    assert receipt.counts == {
        "curation.Label": 3,  # two by alice, one by root
        "curation.LabelDraft": 1,
        "curation.LabelRevision": 4,  # alice's first turn twice, her second turn, root's
        "curation.PassageJudgment": 3,
        "curation.Suggestion": 1,
        "knowledge.Conversation": 1,
        "knowledge.RetrievedPassage": 2,
        "knowledge.Turn": 2,
        "training.SnapshotExample": 1,  # her first turn is disputed (two labels disagree): not in it
    }
    assert receipt.rows_deleted == 18 and receipt.actor == admin_user and receipt.selector == "end_user"
    # The receipt keeps a keyed digest of the reference, never the reference or the content.
    assert receipt.selector_value.startswith("pd-") and "maria" not in receipt.selector_value
    assert receipt.flagged_version_names == ["retriever-v2", "retriever-v3"]
    flagged = {v.name: (v.trained_on_erased_data, v.erasure_receipt_id) for v in ModelVersion.objects.all()}
    assert flagged == {"retriever-v1": (False, None), "retriever-v2": (True, receipt.pk), "retriever-v3": (True, receipt.pk)}

    # One audit row more (the erasure's own); none was deleted, and none holds what was erased.
    assert AuditEvent.objects.count() == audit_rows + 1
    event = AuditEvent.objects.get(action="data.erase")
    assert event.object_id == str(receipt.pk) and event.after["rows"] == 18 and event.actor == "root"
    audit_text = _all_audit_text()
    for erased in (MARIA, "maria", "55-1234", "ending 4242", "gold for", "edited gold"):
        assert erased not in audit_text


def test_a_second_erasure_keeps_the_first_receipt_on_a_version_and_stored_digests_are_found(knowledge_base, people):
    first = erasure_execute(knowledge_base=knowledge_base, selector="turn", value=people["bob"][0].pk, actor_name="cli:ops")
    # Bob's turn was in both snapshots: every version is flagged now, by this first receipt.
    assert set(ModelVersion.objects.filter(erasure_receipt=first).values_list("name", flat=True)) == {
        "retriever-v1", "retriever-v2", "retriever-v3",
    }  # fmt: skip
    second = erasure_execute(knowledge_base=knowledge_base, selector="end_user", value=MARIA, actor_name="cli:ops")
    assert second.flagged_version_names == ["retriever-v2", "retriever-v3"]
    assert set(ModelVersion.objects.values_list("erasure_receipt_id", flat=True)) == {first.pk}
    assert first.actor is None and first.actor_name == "cli:ops"


def test_snapshots_and_exports_made_after_an_erasure_hold_none_of_it(knowledge_base, people):
    old = people["snapshot"]
    before = dataset_export_files(snapshot=old, format="openai", split="all").files["openai.jsonl"].decode()
    assert MARIA_QUESTION in before  # the export did hold it (in her second turn's history)

    erasure_execute(knowledge_base=knowledge_base, selector="end_user", value=MARIA, actor_name="cli:ops")

    new = dataset_snapshot_create(knowledge_base=knowledge_base, heldout_share=0.0)
    assert new.example_count == 1
    assert list(SnapshotExample.objects.filter(snapshot=new).values_list("query", flat=True)) == [BOB_QUESTION]
    erased_bits = (MARIA_QUESTION, "card ending 4242", "gold for My account", "edited gold")
    for snapshot in (old, new):
        for export_format in ("openai", "triplets", "pairs", "beir"):
            files = dataset_export_files(snapshot=snapshot, format=export_format, split="all").files
            text = "".join(content.decode() for content in files.values())
            assert not any(bit in text for bit in erased_bits), (snapshot.pk, export_format)
        assert BOB_QUESTION in dataset_export_files(snapshot=snapshot, format="openai", split="all").files["openai.jsonl"].decode()


def test_the_preview_counts_what_the_erasure_deletes_and_keeps_everything(knowledge_base, people, admin_user):
    rows_before = (Turn.objects.count(), Label.objects.count(), SnapshotExample.objects.count(), AuditEvent.objects.count())

    plan = erasure_preview(knowledge_base=knowledge_base, selector="end_user", value=MARIA, actor=admin_user)

    assert (Turn.objects.count(), Label.objects.count(), SnapshotExample.objects.count(), AuditEvent.objects.count()) == rows_before
    assert not ErasureReceipt.objects.exists() and not ModelVersion.objects.filter(trained_on_erased_data=True).exists()
    assert plan.receipt is None and plan.flagged_version_names == ["retriever-v2", "retriever-v3"]
    receipt = erasure_execute(knowledge_base=knowledge_base, selector="end_user", value=MARIA, actor=admin_user)
    assert plan.counts == receipt.counts and plan.rows == 18


def test_erasing_a_turn_takes_the_later_turns_of_its_conversation_that_carry_it(knowledge_base, curator):
    turns = _conversation(knowledge_base, "c-three", "", ["first question", "second question", "third question"])
    receipt = erasure_execute(knowledge_base=knowledge_base, selector="turn", value=str(turns[1].pk), actor_name="cli:ops")
    assert list(Turn.objects.filter(conversation__external_id="c-three").values_list("query", flat=True)) == ["first question"]
    assert receipt.counts["knowledge.Turn"] == 2 and "knowledge.Conversation" not in receipt.counts
    assert Conversation.objects.get(external_id="c-three").turn_count == 1


def test_erasing_a_conversation_by_its_id(knowledge_base, people):
    receipt = erasure_execute(knowledge_base=knowledge_base, selector="conversation", value="c-bob", actor_name="cli:ops")
    assert receipt.selector_value == "c-bob" and receipt.counts["knowledge.Turn"] == 1
    assert not Turn.objects.filter(query=BOB_QUESTION).exists()
    assert Turn.objects.filter(conversation__external_id="c-maria").count() == 2


def test_erasing_a_document_deletes_its_chunks_every_spaces_vectors_and_the_copies(embedded_knowledge_base, curator):
    knowledge_base = embedded_knowledge_base
    document = Document.objects.get(knowledge_base=knowledge_base, external_id="d-statins") if Document.objects.filter(
        external_id="d-statins"
    ).exists() else Document.objects.filter(knowledge_base=knowledge_base).order_by("pk").first()
    chunk_ids = list(Chunk.objects.filter(document=document).values_list("pk", flat=True))
    other_space = EmbeddingSpace.objects.create(
        knowledge_base=knowledge_base, retriever_version="retriever-v9", model_reference="x", dimensions=3, status="ready"
    )
    for chunk_id in chunk_ids:
        ChunkEmbedding.objects.create(chunk_id=chunk_id, space=other_space, embedding=[0.1, 0.2, 0.3])
    turn = turn_ask(knowledge_base=knowledge_base, query=document.title or document.text[:60], k=5)
    passages = list(turn.passages.all())
    assert any(p.document_id == document.pk for p in passages)
    label_submit(
        turn=turn, curator=curator,
        data=LabelInput(passages={p.pk: "relevant" if p.document_id == document.pk else "not_relevant" for p in passages},
                        answer_rating="correct"),
    )  # fmt: skip
    snapshot = dataset_snapshot_create(knowledge_base=knowledge_base, heldout_share=0.0)
    version = retriever_version(knowledge_base, "retriever-v1", snapshot=snapshot)
    vectors = ChunkEmbedding.objects.filter(chunk_id__in=chunk_ids).count()
    assert vectors == 2 * len(chunk_ids)

    receipt = erasure_execute(knowledge_base=knowledge_base, selector="document", value=document.external_id, actor_name="cli:ops")

    assert not Document.objects.filter(pk=document.pk).exists() and not Chunk.objects.filter(pk__in=chunk_ids).exists()
    assert not ChunkEmbedding.objects.filter(chunk_id__in=chunk_ids).exists()
    assert not RetrievedPassage.objects.filter(turn=turn, source_id=document.external_id).exists()
    assert RetrievedPassage.objects.filter(turn=turn).exclude(source_id=document.external_id).exists()
    assert not PassageJudgment.objects.filter(relevance="relevant").exists()
    assert receipt.counts["knowledge.Document"] == 1 and receipt.counts["knowledge.Chunk"] == len(chunk_ids)
    assert receipt.counts["knowledge.ChunkEmbedding"] == vectors
    assert receipt.counts["training.SnapshotExample"] == 1
    version.refresh_from_db()
    assert version.trained_on_erased_data and version.erasure_receipt == receipt
    # The turn itself stays (the end user's question is not the document's), without the copies.
    assert Turn.objects.filter(pk=turn.pk).exists()


def test_refused_erasures_change_nothing(knowledge_base, people, curator):
    with pytest.raises(Forbidden):
        erasure_execute(knowledge_base=knowledge_base, selector="end_user", value=MARIA, actor=curator)
    with pytest.raises(NotFound):
        erasure_execute(knowledge_base=knowledge_base, selector="end_user", value="nobody@example.com", actor_name="cli:ops")
    with pytest.raises(NotFound):
        erasure_execute(knowledge_base=knowledge_base, selector="document", value="no-such-doc", actor_name="cli:ops")
    with pytest.raises(InvalidInput, match="whole number"):
        erasure_execute(knowledge_base=knowledge_base, selector="turn", value="12x", actor_name="cli:ops")
    with pytest.raises(InvalidInput, match="unknown"):
        erasure_execute(knowledge_base=knowledge_base, selector="label", value="1", actor_name="cli:ops")
    with pytest.raises(InvalidInput, match="NUL"):
        erasure_execute(knowledge_base=knowledge_base, selector="conversation", value="c\x00", actor_name="cli:ops")
    assert not ErasureReceipt.objects.exists() and Turn.objects.count() == 3
    assert not AuditEvent.objects.filter(action="data.erase").exists()


def test_an_end_user_is_erased_from_every_knowledge_base_one_receipt_each(knowledge_base, people):
    from knowledge.services.knowledge_bases import knowledge_base_create

    other = knowledge_base_create(slug="other-kb", name="Other")
    _conversation(other, "c-maria-2", MARIA, ["Another question of mine"])
    receipts = erasure_execute_everywhere(end_user=MARIA, actor_name="cli:ops")
    assert sorted(r.knowledge_base.slug for r in receipts) == ["other-kb", "test-kb"]
    assert not Conversation.objects.filter(end_user__in=[MARIA]).exists()
    assert Conversation.objects.filter(external_id="c-bob").exists()


def test_the_erase_command_previews_then_erases(knowledge_base, people, capsys):
    call_command("erase", "test-kb", "--end-user", MARIA, "--dry-run", "--json")
    preview = json.loads(capsys.readouterr().out)
    assert preview["rows"] == 18 and Turn.objects.count() == 3
    call_command("erase", "test-kb", "--end-user", MARIA, "--json", "--actor", "ops")
    [receipt] = json.loads(capsys.readouterr().out)
    assert receipt["rows"] == 18 and receipt["flagged_versions"] == ["retriever-v2", "retriever-v3"]
    assert ErasureReceipt.objects.get().actor_name == "cli:ops"
    with pytest.raises(Exception, match="exactly one"):
        call_command("erase", "test-kb", "--end-user", MARIA, "--turn", "1")


def test_the_erase_page_asks_for_confirmation_with_the_counts_then_erases(admin_client, client, knowledge_base, people, curator):
    url = f"/kbs/{knowledge_base.slug}/erase/"
    assert admin_client.get(url).status_code == 200

    preview = admin_client.post(url, {"selector": "end_user", "value": MARIA, "action": "preview"})
    page = preview.content.decode()
    assert preview.status_code == 200 and 'id="erase-confirm"' in page
    assert '<strong id="erase-rows">18</strong>' in page and "retriever-v2, retriever-v3" in page
    assert Turn.objects.count() == 3  # nothing erased yet

    erased = admin_client.post(url, {"selector": "end_user", "value": MARIA, "action": "erase"})
    receipt = ErasureReceipt.objects.get()
    assert erased.status_code == 302 and erased["Location"].endswith(f"#receipt-{receipt.pk}")
    assert Turn.objects.count() == 1
    listed = admin_client.get(url).content.decode()
    assert f'id="receipt-{receipt.pk}"' in listed and MARIA not in listed

    models_page = admin_client.get(f"/kbs/{knowledge_base.slug}/models/").content.decode()
    assert f"#receipt-{receipt.pk}" in models_page
    version_page = admin_client.get(f"/kbs/{knowledge_base.slug}/models/retriever-v2/").content.decode()
    assert f"erasure receipt #{receipt.pk}" in version_page

    missing = admin_client.post(url, {"selector": "conversation", "value": "c-none", "action": "preview"})
    assert missing.status_code == 404 and "No conversation" in missing.content.decode()

    client.force_login(curator)
    assert client.get(url).status_code == 403
    assert client.post(url, {"selector": "conversation", "value": "c-bob", "action": "erase"}).status_code == 403
    assert Turn.objects.filter(query=BOB_QUESTION).exists()
