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
SYSTEM_PROMPT = "You are the clinic assistant. Answer from the leaflets only."


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


# --- the judging page ---------------------------------------------------------------------------


def _judge(client, turn):
    response = client.get(f"/kbs/test-kb/turns/{turn.pk}/judge/")
    assert response.status_code == 200, response.content
    return response.content.decode()


def _between(page, start, end):
    assert start in page, start
    return page.split(start, 1)[1].split(end, 1)[0]


def _exchanges(html) -> list[tuple[int | None, str]]:
    """(turn id or None, the exchange's HTML) of each exchange in a piece of the page, in order."""
    return [(int(pk) if pk else None, body) for pk, body in
            re.findall(r'<li class="wb-exchange"(?: data-turn-id="(\d+)")?>(.*?)</li>', html, re.S)]


def test_the_judging_page_shows_the_earlier_turns_in_order_with_their_feedback_and_folds_older_ones(
    alice_client, alice, knowledge_base
):
    conversation, turns = _conversation(knowledge_base, feedback={1: -1, 3: 1}, comments={1: "Not what I asked"})
    label_submit(turn=turns[0], curator=alice, data=LabelInput(answer_rating="correct"))
    page = _judge(alice_client, turns[4])

    assert "turn 5/5 of a conversation" in page
    assert f'href="/kbs/test-kb/queue/?conversation={conversation.pk}&amp;group=conversation"' in page
    assert SYSTEM_PROMPT in _between(page, '<details class="wb-system" open>', "</details>")
    # the last four messages (turns 3 and 4) are shown; the four before them are folded
    older = _between(page, '<details class="wb-older" id="wb-older">', "</details>")
    recent = _between(page, '<ol class="wb-exchanges" id="wb-recent">', "</ol>")
    assert "<summary>Show 4 earlier messages</summary>" in older
    assert [pk for pk, _ in _exchanges(older)] == [turns[0].pk, turns[1].pk]
    assert [pk for pk, _ in _exchanges(recent)] == [turns[2].pk, turns[3].pk]
    shown = dict(_exchanges(older) + _exchanges(recent))
    for position, (question, answer) in enumerate(EXCHANGES[:4]):
        body = shown[turns[position].pk]
        assert body.index(question) < body.index(answer), position
        assert f'href="/kbs/test-kb/turns/{turns[position].pk}/judge/">Judge turn {position + 1}/5</a>' in body
    assert 'data-feedback="negative"' in shown[turns[1].pk] and "<q class=\"wb-feedback-comment\">Not what I asked</q>" in shown[turns[1].pk]
    assert 'data-feedback="positive"' in shown[turns[3].pk]
    assert "no feedback" in shown[turns[2].pk] and "data-feedback" not in shown[turns[2].pk]
    assert "labelled by you" in shown[turns[0].pk] and "labelled by you" not in shown[turns[2].pk]
    # the judged turn itself is not among the earlier ones, and nothing comes after it
    assert turns[4].pk not in shown and 'id="wb-later"' not in page
    assert page.index('id="wb-conversation"') < page.index('id="wb-query"')


def test_a_short_conversation_is_not_folded_and_the_first_turn_has_only_its_system_prompt(alice_client, knowledge_base):
    _, turns = _conversation(knowledge_base)
    page = _judge(alice_client, turns[2])  # two earlier turns: four messages, all shown
    assert 'id="wb-older"' not in page
    assert [pk for pk, _ in _exchanges(_between(page, 'id="wb-recent">', "</ol>"))] == [turns[0].pk, turns[1].pk]
    first = _judge(alice_client, turns[0])
    assert SYSTEM_PROMPT in first and 'id="wb-recent"' not in first
    assert "This is the conversation's first question." in first


def test_later_turns_of_the_conversation_show_what_the_user_said_after_the_judged_answer(alice_client, knowledge_base):
    _, turns = _conversation(knowledge_base, feedback={4: -1}, comments={4: "Still wrong about children"})
    page = _judge(alice_client, turns[1])
    later = _exchanges(_between(page, 'id="wb-later"', "</section>"))
    # the next question (the user's reaction) and the later complaint; not turn 3, which says nothing
    assert [pk for pk, _ in later] == [turns[2].pk, turns[4].pk]
    assert "And for children?" in later[0][1] and "Still wrong about children" in later[1][1]
    assert 'data-feedback="negative"' in later[1][1]


def test_a_logged_turn_whose_conversation_is_not_stored_shows_its_history(alice_client, knowledge_base):
    history = _history(*EXCHANGES[:3], system="Answer briefly.")
    turn = _turn(knowledge_base, query=EXCHANGES[3][0], answer=EXCHANGES[3][1], history=history,
                 rewritten_query="vitamin D side effects in children")
    page = _judge(alice_client, turn)
    assert "Answer briefly." in _between(page, '<details class="wb-system" open>', "</details>")
    assert "As logged with this turn" in page
    shown = _exchanges(_between(page, 'id="wb-older"', "</details>")) + _exchanges(_between(page, 'id="wb-recent">', "</ol>"))
    assert [pk for pk, _ in shown] == [None, None, None]  # no stored turns: no links, no feedback
    assert [next(q for q, _ in EXCHANGES if q in body) for _, body in shown] == [q for q, _ in EXCHANGES[:3]]
    assert "wb-judge-link" not in page and '<span class="muted">no feedback</span>' not in page


def test_a_gap_in_the_stored_conversation_is_said_once(alice_client, knowledge_base):
    conversation, turns = _conversation(knowledge_base)
    Turn.objects.filter(pk__in=[turns[1].pk, turns[2].pk]).delete()
    page = _judge(alice_client, turns[4])
    assert "Turns 2–3 of this conversation are not stored." in page
    assert [pk for pk, _ in _exchanges(page)] == [turns[0].pk, turns[3].pk]


def test_a_turn_on_its_own_has_no_conversation_and_no_rewrite_verdict(alice_client, knowledge_base):
    turn = _turn(knowledge_base, query="Does coffee shorten life?", answer="No.")
    page = _judge(alice_client, turn)
    assert 'id="wb-conversation"' not in page and "of a conversation" not in page
    assert "Retrieval searched for" not in page and 'name="rewrite_wrong"' not in page


def test_the_rewrite_is_shown_and_a_correction_is_drafted_restored_and_submitted(alice_client, alice, knowledge_base):
    _, turns = _conversation(knowledge_base)
    turn = turns[2]
    page = _judge(alice_client, turn)
    assert '<span id="wb-rewritten-query">vitamin D: And for children?</span>' in page
    assert page.index('id="wb-query"') < page.index("Retrieval searched for") < page.index('id="wb-answer"')
    assert '<input type="checkbox" id="wb-rewrite-wrong" name="rewrite_wrong">' in page  # unticked, and reachable by Tab
    assert 'name="corrected_query" value=""' in page
    assert _judge(alice_client, turns[0]).count('name="rewrite_wrong"') == 0  # the first question was not rewritten

    draft = {"answer_rating": "wrong", "rewrite_wrong": True, "corrected_query": "vitamin D dose for children"}
    response = alice_client.post(f"/kbs/test-kb/turns/{turn.pk}/draft/", json.dumps({"payload": draft, "base_version": 0}),
                                 content_type="application/json")
    assert response.status_code == 200
    page = _judge(alice_client, turn)
    assert '<input type="checkbox" id="wb-rewrite-wrong" name="rewrite_wrong" checked>' in page
    assert 'name="corrected_query" value="vitamin D dose for children"' in page
    state = json.loads(_between(page, '<script id="workbench-state" type="application/json">', "</script>"))
    assert (state["payload"]["rewrite_wrong"], state["payload"]["corrected_query"]) == (True, "vitamin D dose for children")

    passage = turn.passages.first()
    response = alice_client.post(f"/kbs/test-kb/turns/{turn.pk}/label/", json.dumps({"base_version": 0, "payload": {
        **draft, "passages": {str(passage.pk): "not_relevant"}}}), content_type="application/json")
    assert response.status_code == 200, response.content
    label = Label.objects.get(turn=turn, curator=alice)
    assert (label.rewrite_wrong, label.corrected_query) == (True, "vitamin D dose for children")
    page = _judge(alice_client, turn)
    assert "You labelled this turn before (version 1)" in page
    assert 'name="rewrite_wrong" checked>' in page and 'value="vitamin D dose for children"' in page


def test_a_correction_for_a_turn_without_a_rewrite_is_refused_with_422(alice_client, knowledge_base):
    _, turns = _conversation(knowledge_base)
    response = alice_client.post(f"/kbs/test-kb/turns/{turns[0].pk}/label/", json.dumps({"base_version": 0, "payload": {
        "answer_rating": "wrong", "rewrite_wrong": True, "corrected_query": "vitamin D"}}), content_type="application/json")
    assert response.status_code == 422 and "was not rewritten" in response.json()["error"]
    assert not Label.objects.exists()


def test_conversation_text_is_escaped_everywhere_on_the_judging_page(alice_client, knowledge_base):
    conversation = Conversation.objects.create(knowledge_base=knowledge_base, external_id=XSS, system_prompt=XSS, turn_count=3)
    _turn(knowledge_base, conversation=conversation, position=0, query=XSS, answer=XSS, feedback=-1, feedback_comment=XSS)
    _turn(knowledge_base, conversation=conversation, position=2, query=XSS, answer=XSS, feedback=-1, feedback_comment=XSS)
    judged = _turn(knowledge_base, conversation=conversation, position=1, query=XSS, answer=XSS, rewritten_query=XSS,
                   history=_history((XSS, XSS), system=XSS))
    alice_client.post(f"/kbs/test-kb/turns/{judged.pk}/draft/", json.dumps({"payload": {
        "rewrite_wrong": True, "corrected_query": XSS}, "base_version": 0}), content_type="application/json")
    logged = _turn(knowledge_base, query="q", history=_history((XSS, XSS), system=XSS))
    for turn in (judged, logged):
        page = _judge(alice_client, turn)
        assert "<script>window.__xss" not in page and "<img src=x" not in page
        assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in page
    page = _judge(alice_client, judged)
    assert page.count("&lt;script&gt;window.__xss=1&lt;/script&gt;") >= 9  # every place the text appears
    assert f'value="{XSS}"' not in page


def test_the_judging_page_costs_the_same_queries_for_a_short_and_a_long_conversation(
    alice_client, alice, knowledge_base, django_user_model, django_assert_max_num_queries
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def make(external_id, length):
        conversation = Conversation.objects.create(knowledge_base=knowledge_base, external_id=external_id, turn_count=length)
        turns = [_turn(knowledge_base, conversation=conversation, position=p, query=f"q{p}", answer=f"a{p}",
                       rewritten_query=f"r{p}" if p else "", feedback=-1 if p % 3 == 0 else None)
                 for p in range(length)]
        for turn in turns[: length // 2]:
            label_submit(turn=turn, curator=alice, data=LabelInput(answer_rating="correct"))
        return turns

    short, long = make("c-short", 3), make("c-long", 40)
    with CaptureQueriesContext(connection) as captured:
        _judge(alice_client, short[1])
    with django_assert_max_num_queries(len(captured)):
        page = _judge(alice_client, long[20])
    assert len(_exchanges(page)) == 20 + 1 + 6  # earlier turns, the next one, later ones with feedback (23..39 step 3)


# --- the queue ----------------------------------------------------------------------------------


def _row_ids(response) -> list[int]:
    return [int(n) for n in re.findall(r'<tr data-turn-id="(\d+)"', response.content.decode())]


def _rows(response) -> dict[int, str]:
    return {int(pk): body for pk, body in re.findall(r'<tr data-turn-id="(\d+)"[^>]*>(.*?)</tr>', response.content.decode(), re.S)}


@pytest.fixture
def queue_data(knowledge_base):
    """Two conversations and three turns on their own, in known queue places:
    - lone-complaint: tier 0, order 0.05 (first in the queue)
    - c-vitd: position 3 has a complaint (tier 0, order 0.4); the rest tier 2
    - c-statins: position 1 is a close call (tier 1, order 0.2); the rest tier 2
    - lone-close: tier 1, order 0.1; lone-calm: tier 2, order 0.01
    """
    vitd, vitd_turns = _conversation(knowledge_base, "c-vitd", feedback={3: -1}, comments={3: "wrong"}, tiers={3: 0})
    statins = Conversation.objects.create(knowledge_base=knowledge_base, external_id="c-statins", turn_count=3)
    statins_turns = [
        _turn(knowledge_base, conversation=statins, position=p, query=f"statins {p}", answer=f"answer {p}",
              queue_tier=1 if p == 1 else 2, queue_order=0.2 if p == 1 else 0.9 - p / 10, feedback=1 if p == 2 else None)
        for p in range(3)
    ]
    lone = {
        "complaint": _turn(knowledge_base, query="lone complaint", feedback=-1, queue_tier=0, queue_order=0.05),
        "close": _turn(knowledge_base, query="lone close call", queue_tier=1, queue_order=0.1),
        "calm": _turn(knowledge_base, query="lone calm", queue_tier=2, queue_order=0.01),
    }
    return {"vitd": (vitd, vitd_turns), "statins": (statins, statins_turns), "lone": lone}


def test_the_queue_filters_by_conversation(alice_client, queue_data):
    vitd, vitd_turns = queue_data["vitd"]
    response = alice_client.get("/kbs/test-kb/queue/", {"conversation": vitd.pk})
    assert response.status_code == 200
    # in queue order (the complaint first, then the tier-2 turns by their order)
    assert _row_ids(response) == [vitd_turns[3].pk] + [vitd_turns[p].pk for p in (0, 1, 2, 4)]
    page = response.content.decode()
    assert "Only the turns of conversation <strong>c-vitd</strong>" in page
    assert f'<input type="hidden" name="conversation" value="{vitd.pk}">' in page
    # other filters still apply within it
    fragment = alice_client.get("/kbs/test-kb/queue/", {"conversation": vitd.pk, "feedback": "negative"}, HTTP_HX_REQUEST="true")
    assert _row_ids(fragment) == [vitd_turns[3].pk]


def test_grouped_by_conversation_the_turns_of_a_conversation_are_together_in_position_order(alice_client, queue_data):
    vitd, vitd_turns = queue_data["vitd"]
    statins, statins_turns = queue_data["statins"]
    lone = queue_data["lone"]
    response = alice_client.get("/kbs/test-kb/queue/", {"group": "conversation"})
    assert response.status_code == 200
    # each conversation stands where its first turn in queue order would: c-vitd with its
    # complaint (tier 0, 0.4) after the lone complaint (tier 0, 0.05); c-statins with its
    # close call (tier 1, 0.2) after the lone close call (tier 1, 0.1); the lone calm turn last
    assert _row_ids(response) == (
        [lone["complaint"].pk] + [t.pk for t in vitd_turns] + [lone["close"].pk] + [t.pk for t in statins_turns] + [lone["calm"].pk]
    )
    page = response.content.decode()
    headers = re.findall(r'<tr class="wb-group" data-conversation-id="(\d+)">', page)
    assert headers == [str(vitd.pk), str(statins.pk)]
    rows = _rows(response)
    assert re.search(r'class="wb-badge wb-position"[^>]*>\s*2/5</a>', rows[vitd_turns[1].pk], re.S)
    assert re.search(r'class="wb-badge wb-position"[^>]*>\s*3/3</a>', rows[statins_turns[2].pk], re.S)
    # a marker of the feedback on the conversation's other turns: not on the complaint itself
    assert 'data-others="negative"' in rows[vitd_turns[0].pk] and "1 negative elsewhere" in rows[vitd_turns[0].pk]
    assert 'data-others="negative"' not in rows[vitd_turns[3].pk]
    assert 'data-others="positive"' in rows[statins_turns[0].pk] and 'data-others="positive"' not in rows[statins_turns[2].pk]
    assert "wb-position" not in rows[lone["calm"].pk]  # a turn on its own appears as before
    # the default listing is the queue order, conversations or not
    plain = alice_client.get("/kbs/test-kb/queue/")
    assert _row_ids(plain)[:3] == [lone["complaint"].pk, vitd_turns[3].pk, lone["close"].pk]


def test_grouping_follows_the_filters(knowledge_base, alice, queue_data):
    from curation.services.queue import QueueFilter, turn_queue_list

    vitd, vitd_turns = queue_data["vitd"]
    statins, statins_turns = queue_data["statins"]
    lone = queue_data["lone"]
    # c-vitd's complaint is labelled: among unlabelled turns, c-vitd now stands by its best
    # remaining turn (tier 2, order 0.1), after c-statins (its close call is still open)
    label_submit(turn=vitd_turns[3], curator=alice, data=LabelInput(answer_rating="wrong"))
    listed = turn_queue_list(knowledge_base=knowledge_base, curator=alice,
                             queue_filter=QueueFilter(status="unlabelled", group="conversation"))
    assert list(listed.values_list("pk", flat=True)) == (
        [lone["complaint"].pk, lone["close"].pk] + [t.pk for t in statins_turns] + [lone["calm"].pk]
        + [vitd_turns[p].pk for p in (0, 1, 2, 4)]
    )


def test_grouped_pages_continue_a_conversation_across_the_page_break(alice_client, knowledge_base):
    conversations = [Conversation.objects.create(knowledge_base=knowledge_base, external_id=f"c{i}", turn_count=20) for i in range(3)]
    for i, conversation in enumerate(conversations):
        for p in range(20):
            _turn(knowledge_base, conversation=conversation, position=p, query=f"c{i} p{p}",
                  queue_tier=(p + i) % 3, queue_order=((p * 7 + i) % 11) / 10)
    for n in range(15):
        _turn(knowledge_base, query=f"lone {n}", queue_tier=n % 3, queue_order=((n * 5) % 13) / 10)
    turns = list(Turn.objects.filter(knowledge_base=knowledge_base))
    best = {}
    for turn in turns:
        key = turn.conversation_id or -turn.pk
        best[key] = min(best.get(key, (9, 9, 0)), (turn.queue_tier, turn.queue_order, turn.pk))
    expected = [t.pk for t in sorted(turns, key=lambda t: (best[t.conversation_id or -t.pk], t.position or 0, t.pk))]
    shown = []
    for number in (1, 2):
        response = alice_client.get("/kbs/test-kb/queue/", {"group": "conversation", "page": number})
        assert response.status_code == 200 and b"75 turns" in response.content
        shown += _row_ids(response)
    assert shown == expected


def test_the_grouped_queue_costs_the_same_number_of_queries_for_few_and_many_turns(
    alice_client, knowledge_base, django_assert_max_num_queries
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def add(prefix, conversations, length):
        for c in range(conversations):
            conversation = Conversation.objects.create(knowledge_base=knowledge_base, external_id=f"{prefix}{c}", turn_count=length)
            for p in range(length):
                _turn(knowledge_base, conversation=conversation, position=p, query=f"{prefix}{c}-{p}", feedback=-1 if p == 1 else None)
        _turn(knowledge_base, query=f"{prefix} alone")

    add("a", 1, 2)
    with CaptureQueriesContext(connection) as captured:
        alice_client.get("/kbs/test-kb/queue/", {"group": "conversation"})
    add("b", 8, 8)
    with django_assert_max_num_queries(len(captured)):
        response = alice_client.get("/kbs/test-kb/queue/", {"group": "conversation"})
    assert len(_row_ids(response)) == 50


@pytest.mark.parametrize("params, message", [
    ({"conversation": "abc"}, "is not a conversation id"),
    ({"conversation": "99999999"}, "No conversation 99999999 in this knowledge base"),
    ({"group": "user"}, "Group must be one of none, conversation"),
])
def test_bad_conversation_parameters_are_a_400_with_a_message(alice_client, queue_data, params, message):
    response = alice_client.get("/kbs/test-kb/queue/", params)
    assert response.status_code == 400 and message in response.content.decode()
    assert len(_row_ids(response)) == 11  # the filter is ignored, as for the other filters


def test_a_curator_of_another_knowledge_base_cannot_see_a_conversations_turns(client, django_user_model, knowledge_base, queue_data):
    vitd, vitd_turns = queue_data["vitd"]
    other = knowledge_base_create(slug="other-kb")
    outsider = _curator(django_user_model, "outsider", other)
    mine = _turn(other, query="their own turn")
    client.force_login(outsider)
    for url in (f"/kbs/test-kb/queue/?conversation={vitd.pk}", f"/kbs/test-kb/turns/{vitd_turns[2].pk}/judge/",
                f"/kbs/other-kb/turns/{vitd_turns[2].pk}/judge/"):
        assert client.get(url).status_code == 404, url
    # the id of a conversation of test-kb on their own queue: refused like any unknown id
    response = client.get("/kbs/other-kb/queue/", {"conversation": vitd.pk, "group": "conversation"})
    assert response.status_code == 400 and f"No conversation {vitd.pk} in this knowledge base" in response.content.decode()
    assert _row_ids(response) == [mine.pk] and "c-vitd" not in response.content.decode()


def test_a_conversation_never_shows_a_turn_of_another_knowledge_base(alice_client, knowledge_base):
    """Should a turn of another knowledge base ever point at this conversation, the judging
    page and the queue still show only this knowledge base's turns."""
    conversation, turns = _conversation(knowledge_base)
    other = knowledge_base_create(slug="other-kb")
    stray = _turn(other, conversation=conversation, position=7, query="SECRET other kb question", feedback=-1)
    page = _judge(alice_client, turns[2])
    assert "SECRET" not in page and stray.pk not in [pk for pk, _ in _exchanges(page)]
    response = alice_client.get("/kbs/test-kb/queue/", {"conversation": conversation.pk, "group": "conversation"})
    assert stray.pk not in _row_ids(response) and "SECRET" not in response.content.decode()


def test_conversation_names_are_escaped_in_the_queue(alice_client, knowledge_base):
    conversation = Conversation.objects.create(knowledge_base=knowledge_base, external_id=XSS, end_user=XSS, turn_count=1)
    _turn(knowledge_base, conversation=conversation, position=0, query=XSS)
    for params in ({"group": "conversation"}, {"conversation": conversation.pk}):
        page = alice_client.get("/kbs/test-kb/queue/", params).content.decode()
        assert "<script>window.__xss" not in page and "<img src=x" not in page
        assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in page
