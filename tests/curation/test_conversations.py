"""Curating the turns of a conversation: the rewrite verdict on a label (submit, draft, history,
export and import), the judging page's view of the conversation around a turn, the queue's
conversation filter and grouping, and access to a conversation's turns."""

import json
import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone

from curation.models import Label, LabelDraft, LabelRevision, Membership
from curation.services.labels import LabelInput, label_draft_save, label_for_editing, label_submit
from knowledge.errors import InvalidInput
from knowledge.models import Conversation, RetrievedPassage, Turn
from knowledge.services.knowledge_bases import knowledge_base_create

XSS = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">'
SYSTEM_PROMPT = "You are the clinic's assistant. Answer from the leaflets only."


def _curator(django_user_model, name, *knowledge_bases):
    group, _ = Group.objects.get_or_create(name="curator")
    user = django_user_model.objects.create_user(name, password=f"pw-{name}-123")
    user.groups.add(group)
    for knowledge_base in knowledge_bases:
        Membership.objects.create(knowledge_base=knowledge_base, user=user)
    return user


@pytest.fixture
def alice(db, django_user_model, knowledge_base):
    return _curator(django_user_model, "alice", knowledge_base)


@pytest.fixture
def alice_client(client, alice):
    client.force_login(alice)
    return client


def _turn(knowledge_base, *, conversation=None, position=None, query, answer="", rewritten_query="", history=(),
          feedback=None, feedback_comment="", queue_tier=2, queue_order=0.5, scores=(0.9, 0.1), created_at=None):
    turn = Turn.objects.create(
        knowledge_base=knowledge_base, source=Turn.Source.SERVED, conversation=conversation, position=position,
        query=query, answer=answer, rewritten_query=rewritten_query, history=list(history),
        feedback=feedback, feedback_comment=feedback_comment, queue_tier=queue_tier, queue_order=queue_order,
        created_at=created_at or timezone.now(),
    )
    RetrievedPassage.objects.bulk_create(
        RetrievedPassage(turn=turn, rank=rank, score=score, title=f"doc {rank}", text=f"passage {rank} for {query}")
        for rank, score in enumerate(scores, start=1)
    )
    return turn


def _history(*exchanges, system=""):
    """The history a generator saw: the system prompt, then user/assistant messages in order."""
    messages = [{"role": "system", "content": system}] if system else []
    for question, answer in exchanges:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return messages


EXCHANGES = [
    ("Does vitamin D prevent hip fractures?", "Daily vitamin D cut hip fractures by a fifth."),
    ("How much should I take?", "800 IU a day in the trials."),
    ("And for children?", "Children need 400 IU a day."),
    ("What about the side effects for them?", "Too much can raise calcium levels."),
    ("Is that dangerous?", "Only at very high doses."),
]


def _conversation(knowledge_base, external_id="c-vitd", *, feedback=None, comments=None, tiers=None, last_activity=None):
    """A conversation of the five EXCHANGES as stored turns, each follow-up rewritten;
    `feedback`, `comments` and `tiers` map a position to that turn's value."""
    feedback, comments, tiers = feedback or {}, comments or {}, tiers or {}
    now = timezone.now()
    conversation = Conversation.objects.create(
        knowledge_base=knowledge_base, external_id=external_id, system_prompt=SYSTEM_PROMPT,
        started_at=now - timedelta(minutes=10), last_activity_at=last_activity or now, turn_count=len(EXCHANGES),
    )
    turns = []
    for position, (question, answer) in enumerate(EXCHANGES):
        turns.append(_turn(
            knowledge_base, conversation=conversation, position=position, query=question, answer=answer,
            rewritten_query=f"vitamin D: {question}" if position else "",
            history=_history(*EXCHANGES[:position], system=SYSTEM_PROMPT),
            feedback=feedback.get(position), feedback_comment=comments.get(position, ""),
            queue_tier=tiers.get(position, 2), queue_order=0.1 * (position + 1),
            created_at=now - timedelta(minutes=10 - position),
        ))
    return conversation, turns


# --- the rewrite verdict on a label -----------------------------------------------------------


def test_a_rewrite_verdict_round_trips_through_draft_submit_history_and_editing(knowledge_base, alice):
    _, turns = _conversation(knowledge_base)
    turn = turns[2]  # "And for children?", rewritten
    passage = turn.passages.first()
    payload = {"passages": {str(passage.pk): "not_relevant"}, "answer_rating": "wrong",
               "rewrite_wrong": True, "corrected_query": "vitamin D dose for children"}

    # a fresh page offers the verdict unset
    fresh, version, source = label_for_editing(turn=turn, curator=alice)
    assert (fresh["rewrite_wrong"], fresh["corrected_query"], version, source) == (False, "", 0, "new")

    label_draft_save(turn=turn, curator=alice, payload=payload, base_version=0)
    restored, _, source = label_for_editing(turn=turn, curator=alice)
    assert source == "draft"
    assert (restored["rewrite_wrong"], restored["corrected_query"]) == (True, "vitamin D dose for children")

    label = label_submit(turn=turn, curator=alice, data=LabelInput.from_payload(payload), expected_version=0)
    label.refresh_from_db()
    assert (label.rewrite_wrong, label.corrected_query, label.version) == (True, "vitamin D dose for children", 1)
    assert not LabelDraft.objects.exists()
    first = LabelRevision.objects.get(label=label)
    assert first.before is None
    assert (first.after["rewrite_wrong"], first.after["corrected_query"]) == (True, "vitamin D dose for children")

    # the curator changes their mind: the history keeps both states
    label_submit(turn=turn, curator=alice, data=LabelInput(passages={passage.pk: "not_relevant"}, answer_rating="wrong"))
    second = LabelRevision.objects.filter(label=label).last()
    assert (second.before["rewrite_wrong"], second.before["corrected_query"]) == (True, "vitamin D dose for children")
    assert (second.after["rewrite_wrong"], second.after["corrected_query"]) == (False, "")
    edited, version, source = label_for_editing(turn=turn, curator=alice)
    assert (edited["rewrite_wrong"], edited["corrected_query"], version, source) == (False, "", 2, "label")


def test_a_skip_clears_the_rewrite_verdict(knowledge_base, alice):
    _, turns = _conversation(knowledge_base)
    label = label_submit(turn=turns[1], curator=alice, data=LabelInput(
        answer_rating="wrong", rewrite_wrong=True, corrected_query="vitamin D daily dose", skipped=True, skip_reason="unsure"))
    assert (label.skipped, label.rewrite_wrong, label.corrected_query) == (True, False, "")


@pytest.mark.parametrize("position, payload, message", [
    (0, {"answer_rating": "wrong", "rewrite_wrong": True}, "was not rewritten"),
    (0, {"answer_rating": "wrong", "corrected_query": "vitamin D and hip fractures"}, "was not rewritten"),
    (2, {"answer_rating": "wrong", "rewrite_wrong": True, "corrected_query": "   "}, "corrected_query is blank"),
    (2, {"answer_rating": "wrong", "corrected_query": "vitamin D for children"}, "needs rewrite_wrong"),
    (2, {"answer_rating": "wrong", "rewrite_wrong": "yes"}, "rewrite_wrong must be true or false"),
    (2, {"answer_rating": "wrong", "rewrite_wrong": True, "corrected_query": 7}, "corrected_query must be a string"),
    (2, {"answer_rating": "wrong", "rewrite_wrong": True, "corrected_query": "x" * 20_001}, "longer than 20000"),
    (2, {"rewrite_wrong": True, "corrected_query": "vitamin D for children"}, "The label is empty"),
])
def test_a_bad_rewrite_verdict_is_refused_and_nothing_is_written(knowledge_base, alice, position, payload, message):
    _, turns = _conversation(knowledge_base)
    with pytest.raises(InvalidInput, match=message):
        label_submit(turn=turns[position], curator=alice, data=LabelInput.from_payload(payload))
    assert not Label.objects.exists() and not LabelRevision.objects.exists()


def test_a_draft_keeps_an_unfinished_correction_that_a_submit_would_refuse(knowledge_base, alice):
    """Drafts check the payload's shape only: a half-made decision is saved, not lost."""
    _, turns = _conversation(knowledge_base)
    payload = {"answer_rating": "wrong", "corrected_query": "vitamin D for"}
    label_draft_save(turn=turns[2], curator=alice, payload=payload, base_version=0)
    assert LabelDraft.objects.get(curator=alice).payload == payload
    with pytest.raises(InvalidInput, match="must be true or false"):
        label_draft_save(turn=turns[2], curator=alice, payload={"rewrite_wrong": "on"}, base_version=0)


def test_a_rewrite_verdict_never_makes_a_turn_disputed(knowledge_base, alice, django_user_model):
    from curation.selectors import turn_final_judgment

    bob = _curator(django_user_model, "bob", knowledge_base)
    knowledge_base.labels_per_turn = 2
    knowledge_base.save()
    _, turns = _conversation(knowledge_base)
    turn = turns[3]
    label_submit(turn=turn, curator=alice, data=LabelInput(answer_rating="partly", rewrite_wrong=True,
                                                           corrected_query="side effects of vitamin D in children"))
    label_submit(turn=turn, curator=bob, data=LabelInput(answer_rating="partly"))
    turn.refresh_from_db()
    assert (turn.label_count, turn.disputed) == (2, False)
    judgment = turn_final_judgment(turn)
    assert (judgment.source, judgment.corrected_query) == ("agreement", "side effects of vitamin D in children")


# --- export and import ------------------------------------------------------------------------


def _lines(records) -> bytes:
    return "".join(json.dumps(record) + "\n" for record in records).encode("utf-8")


def test_export_writes_the_rewrite_verdict_only_for_rewritten_turns_and_it_imports_back(knowledge_base, alice):
    from curation.services.label_io import label_records_parse, labels_export, labels_import

    _, turns = _conversation(knowledge_base)
    label_submit(turn=turns[0], curator=alice, data=LabelInput(answer_rating="correct"))
    label_submit(turn=turns[2], curator=alice, data=LabelInput(
        passages={turns[2].passages.first().pk: "not_relevant"}, answer_rating="wrong",
        rewrite_wrong=True, corrected_query="vitamin D dose for children"))
    label_submit(turn=turns[3], curator=alice, data=LabelInput(answer_rating="correct"))

    exported = list(labels_export(knowledge_base=knowledge_base))
    by_query = {record["query"]: record for record in exported}
    first, children, side_effects = (by_query[q] for q, _ in (EXCHANGES[0], EXCHANGES[2], EXCHANGES[3]))
    assert not {"rewritten_query", "rewrite_wrong", "corrected_query"} & set(first)  # as before conversations
    assert (children["rewritten_query"], children["rewrite_wrong"], children["corrected_query"]) == (
        "vitamin D: And for children?", True, "vitamin D dose for children")
    assert (side_effects["rewrite_wrong"], side_effects["corrected_query"]) == (False, "")

    other = knowledge_base_create(slug="other-kb")
    Membership.objects.create(knowledge_base=other, user=alice)
    records = label_records_parse(filename="labels.jsonl", data=_lines(exported))
    result = labels_import(knowledge_base=other, records=records)
    assert (result.turns_created, result.labels_created) == (3, 3)
    imported = Turn.objects.get(knowledge_base=other, query=EXCHANGES[2][0])
    assert imported.rewritten_query == "vitamin D: And for children?"
    label = Label.objects.get(turn=imported)
    assert (label.rewrite_wrong, label.corrected_query) == (True, "vitamin D dose for children")
    strip_ids = lambda records: sorted((json.dumps({k: v for k, v in r.items() if k != "turn_id"}) for r in records))  # noqa: E731
    assert strip_ids(labels_export(knowledge_base=other)) == strip_ids(exported)
    # the same file again changes nothing
    again = labels_import(knowledge_base=other, records=records)
    assert (again.labels_created, again.labels_updated, again.labels_unchanged) == (0, 0, 3)


def test_an_older_file_without_the_rewrite_fields_keeps_the_stored_verdict(knowledge_base, alice):
    from curation.services.label_io import label_records_parse, labels_import

    line = {"query_id": "q-kids", "query": "And for children?", "curator": "alice", "answer_rating": "wrong",
            "rewritten_query": "vitamin D and children", "rewrite_wrong": True, "corrected_query": "vitamin D dose for kids"}
    labels_import(knowledge_base=knowledge_base, records=label_records_parse(filename="new.jsonl", data=_lines([line])))
    older = {k: v for k, v in line.items() if k not in ("rewritten_query", "rewrite_wrong", "corrected_query")}
    older["gold_answer"] = "400 IU a day."
    result = labels_import(knowledge_base=knowledge_base, records=label_records_parse(filename="old.jsonl", data=_lines([older])))
    assert result.labels_updated == 1
    label = Label.objects.get(curator=alice)
    assert (label.gold_answer, label.rewrite_wrong, label.corrected_query, label.version) == (
        "400 IU a day.", True, "vitamin D dose for kids", 2)
    assert label.turn.rewritten_query == "vitamin D and children"


@pytest.mark.parametrize("lines, problem", [
    ([{"rewrite_wrong": True}], "which this line lacks"),
    ([{"rewritten_query": "  ", "corrected_query": "vitamin D for kids", "rewrite_wrong": True}], "which this line lacks"),
    ([{"rewritten_query": "vitamin D and children", "corrected_query": "vitamin D for kids"}], 'needs "rewrite_wrong": true'),
    ([{"rewritten_query": "vitamin D and children", "rewrite_wrong": True, "corrected_query": " "}], "is blank"),
    ([{"rewritten_query": "vitamin D and children", "rewrite_wrong": "yes"}], '"rewrite_wrong" must be true, false or null'),
    ([{"rewritten_query": "vitamin D and children"}, {"curator": "bob", "rewritten_query": "statins and children"}],
     "line 2: this query has another rewritten_query here than on labels.jsonl, line 1"),
])
def test_a_bad_rewrite_verdict_in_a_file_names_the_line_and_writes_nothing(knowledge_base, alice, lines, problem):
    from curation.services.label_io import LabelFileError, label_records_parse, labels_import

    base = {"query_id": "q-kids", "query": "And for children?", "curator": "alice", "answer_rating": "wrong"}
    with pytest.raises(LabelFileError, match=re.escape(problem)):
        records = label_records_parse(filename="labels.jsonl", data=_lines([{**base, **line} for line in lines]))
        labels_import(knowledge_base=knowledge_base, records=records, create_curators=True)
    assert not Turn.objects.exists() and not Label.objects.exists()


def test_a_reimport_must_not_change_an_imported_turns_rewrite(knowledge_base, alice):
    from curation.services.label_io import LabelFileError, label_records_parse, labels_import

    line = {"query_id": "q-kids", "query": "And for children?", "curator": "alice", "answer_rating": "wrong",
            "rewritten_query": "vitamin D and children"}
    labels_import(knowledge_base=knowledge_base, records=label_records_parse(filename="a.jsonl", data=_lines([line])))
    changed = {**line, "rewritten_query": "statins and children", "answer_rating": "partly"}
    with pytest.raises(LabelFileError, match="was imported earlier with another rewritten_query"):
        labels_import(knowledge_base=knowledge_base, records=label_records_parse(filename="b.jsonl", data=_lines([changed])))
    assert Label.objects.get().answer_rating == "wrong"
