"""Conversations through the REST API: asking within one (follow-ups rewritten before
retrieval, the history stored), ingesting turns with positions and whole conversations
(idempotent, append-only), reading them back, and bad input refused with nothing written."""

import json

import pytest

from knowledge.models import Conversation, RetrievedPassage, Turn
from knowledge.services.knowledge_bases import knowledge_base_create
from knowledge.services.tokens import api_token_create

API = "/api/v1"
FIRST = "Which enzyme do statins inhibit?"
FOLLOW_UP = "Does it cause muscle pain?"


def post_json(client, url, payload, **extra):
    body = payload if isinstance(payload, (str, bytes)) else json.dumps(payload)
    return client.post(url, data=body, content_type="application/json", **extra)


def counts() -> tuple[int, int, int]:
    return Conversation.objects.count(), Turn.objects.count(), RetrievedPassage.objects.count()


def test_a_follow_up_is_rewritten_with_the_earlier_question_and_retrieves_what_it_means(api, embedded_knowledge_base):
    first = post_json(api, f"{API}/kbs/test-kb/ask", {"query": FIRST, "k": 2, "start_conversation": True, "end_user": "u-7"})
    assert first.status_code == 200, first.content
    body = first.json()
    assert body["position"] == 0 and body["rewritten_query"] == "" and body["history"] == []
    conversation = Conversation.objects.get(pk=body["conversation_id"])
    assert (conversation.external_id, conversation.end_user) == (body["conversation_external_id"], "u-7")
    assert conversation.external_id.startswith("c-")

    # Alone, "Does it cause muscle pain?" names nothing; after the statins question it means statins.
    follow = post_json(api, f"{API}/kbs/test-kb/ask", {"query": FOLLOW_UP, "k": 2, "conversation_id": conversation.pk})
    assert follow.status_code == 200, follow.content
    body2 = follow.json()
    assert (body2["conversation_id"], body2["position"], body2["query"]) == (conversation.pk, 1, FOLLOW_UP)
    assert body2["rewritten_query"].startswith(FOLLOW_UP) and "statins" in body2["rewritten_query"].lower()
    assert body2["passages"][0]["document"] == "d-statins"
    assert body2["history"] == [{"role": "user", "content": FIRST}, {"role": "assistant", "content": body["answer"]}]
    assert "Muscle pain" in body2["answer"]

    turn = Turn.objects.get(pk=body2["turn_id"])
    assert (turn.conversation_id, turn.position, turn.retrieval_query) == (conversation.pk, 1, body2["rewritten_query"])
    conversation.refresh_from_db()
    assert conversation.turn_count == 2 and conversation.last_activity_at == turn.created_at


def test_an_unknown_external_conversation_id_starts_that_conversation_and_the_next_ask_continues_it(api, embedded_knowledge_base):
    for position, query in enumerate([FIRST, FOLLOW_UP]):
        response = post_json(api, f"{API}/kbs/test-kb/ask", {"query": query, "conversation_external_id": "chat-42"})
        assert response.status_code == 200, response.content
        assert (response.json()["conversation_external_id"], response.json()["position"]) == ("chat-42", position)
    assert Conversation.objects.filter(external_id="chat-42").count() == 1


def test_a_plain_ask_belongs_to_no_conversation(api, embedded_knowledge_base):
    body = post_json(api, f"{API}/kbs/test-kb/ask", {"query": FIRST}).json()
    assert (body["conversation_id"], body["position"]) == (None, None)
    assert Conversation.objects.count() == 0


def test_asking_in_another_knowledge_bases_conversation_is_a_404_and_writes_nothing(api, admin_user, embedded_knowledge_base):
    other = knowledge_base_create(slug="other-kb", name="Other")
    foreign = Conversation.objects.create(knowledge_base=other, external_id="x")
    before = counts()

    response = post_json(api, f"{API}/kbs/test-kb/ask", {"query": FIRST, "conversation_id": foreign.pk})
    both = post_json(api, f"{API}/kbs/test-kb/ask", {"query": FIRST, "conversation_id": foreign.pk, "conversation_external_id": "y"})

    assert response.status_code == 404 and "not found" in response.json()["detail"]
    assert both.status_code == 422 and "not both" in both.json()["detail"]
    assert counts() == before


def test_conversations_are_listed_newest_first_filtered_by_end_user_and_read_back_in_order(api, embedded_knowledge_base):
    ids = []
    for name, user in [("a", "alice"), ("b", "bob"), ("c", "alice")]:
        ids.append(post_json(api, f"{API}/kbs/test-kb/ask", {"query": FIRST, "conversation_external_id": name, "end_user": user}).json()["conversation_id"])
    post_json(api, f"{API}/kbs/test-kb/ask", {"query": FOLLOW_UP, "conversation_external_id": "a"})

    listed = api.get(f"{API}/kbs/test-kb/conversations").json()
    assert listed["count"] == 3 and [c["external_id"] for c in listed["items"]] == ["a", "c", "b"]
    alice = api.get(f"{API}/kbs/test-kb/conversations?end_user=alice&limit=1&offset=1").json()
    assert alice["count"] == 2 and [c["external_id"] for c in alice["items"]] == ["c"]
    assert api.get(f"{API}/kbs/test-kb/conversations?limit=0").status_code == 422

    turn = Turn.objects.get(conversation_id=ids[0], position=0)
    post_json(api, f"{API}/turns/{turn.pk}/feedback", {"feedback": -1, "comment": "wrong enzyme"})
    detail = api.get(f"{API}/conversations/{ids[0]}").json()
    assert (detail["external_id"], detail["end_user"], detail["turn_count"]) == ("a", "alice", 2)
    assert [(t["position"], t["query"]) for t in detail["turns"]] == [(0, FIRST), (1, FOLLOW_UP)]
    assert detail["turns"][0]["feedback"] == -1 and detail["turns"][0]["feedback_comment"] == "wrong enzyme"
    assert detail["turns"][1]["rewritten_query"] and detail["turns"][1]["passages"][0]["document"] == "d-statins"


def test_a_token_of_another_knowledge_base_cannot_read_its_conversations(client, admin_user, embedded_knowledge_base):
    conversation = Conversation.objects.create(knowledge_base=embedded_knowledge_base, external_id="secret")
    other = knowledge_base_create(slug="other-kb", name="Other")
    _, plain = api_token_create(user=admin_user, name="other", knowledge_bases=[other])
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {plain}"

    assert client.get(f"{API}/conversations/{conversation.pk}").status_code == 404
    assert client.get(f"{API}/kbs/test-kb/conversations").status_code == 404


# --- ingest -------------------------------------------------------------------------------


def _turn(external_id, position, query, **fields):
    return {"external_id": external_id, "conversation_id": "app-1", "position": position, "query": query, "answer": f"answer {position}", **fields}


def test_turns_ingested_with_positions_make_one_conversation_and_a_taken_position_is_a_409(api, embedded_knowledge_base):
    history = [{"role": "user", "content": FIRST}, {"role": "assistant", "content": "answer 0"}]
    response = post_json(
        api,
        f"{API}/kbs/test-kb/turns",
        {"turns": [_turn("t0", 0, FIRST), _turn("t1", 1, FOLLOW_UP, rewritten_query="Do statins cause muscle pain?", history=history)]},
    )
    assert response.status_code == 200, response.content
    conversation = Conversation.objects.get(external_id="app-1")
    turns = list(conversation.turns.order_by("position"))
    assert [(t.external_id, t.position) for t in turns] == [("t0", 0), ("t1", 1)]
    assert turns[1].rewritten_query == "Do statins cause muscle pain?" and turns[1].history == history
    assert conversation.turn_count == 2

    before = counts()
    clash = post_json(api, f"{API}/kbs/test-kb/turns", {"turns": [_turn("t9", 3, "new"), _turn("t8", 1, "another at 1")]})
    assert clash.status_code == 409 and "app-1#1" in clash.json()["detail"]
    unpaired = post_json(api, f"{API}/kbs/test-kb/turns", {"turns": [{"external_id": "t7", "query": "q", "position": 2}]})
    assert unpaired.status_code == 422 and "go together" in unpaired.json()["detail"]
    twice = post_json(api, f"{API}/kbs/test-kb/turns", {"turns": [_turn("t5", 5, "a"), _turn("t6", 5, "b")]})
    assert twice.status_code == 422 and "same conversation position" in twice.json()["detail"]
    bad_history = post_json(api, f"{API}/kbs/test-kb/turns", {"turns": [_turn("t4", 4, "q", history=[{"role": "user", "content": "x"}])]})
    assert bad_history.status_code == 422 and "history" in bad_history.json()["detail"]
    assert counts() == before


def _conversation(messages, external_id="log-1", **fields):
    return {"external_id": external_id, "end_user": "eve", "messages": messages, **fields}


LOGGED = [
    {"role": "system", "content": "You answer health questions."},
    {"role": "user", "content": FIRST},
    {
        "role": "assistant",
        "content": "HMG-CoA reductase [1]",
        "passages": [{"text": "Statins inhibit HMG-CoA reductase.", "source_id": "d-statins", "score": 0.8}],
    },
    {"role": "user", "content": [{"type": "text", "text": "Does it"}, {"type": "text", "text": "cause muscle pain?"}]},
    {"role": "assistant", "content": "Yes [1]", "rewritten_query": "Do statins cause muscle pain?", "feedback": -1, "feedback_comment": "too short"},
]


def test_a_whole_conversation_is_ingested_once_and_sent_again_with_more_messages_only_appends(api, embedded_knowledge_base):
    response = post_json(api, f"{API}/kbs/test-kb/conversations", _conversation(LOGGED))
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["created"], len(body["turns_created"]), body["turns_existing"]) == (True, 2, 0)
    conversation = Conversation.objects.get(pk=body["conversation_id"])
    assert (conversation.system_prompt, conversation.end_user, conversation.turn_count) == ("You answer health questions.", "eve", 2)
    first, second = conversation.turns.order_by("position")
    assert (first.query, first.answer, first.source) == (FIRST, "HMG-CoA reductase [1]", Turn.Source.INGESTED)
    assert first.passages.get().document.external_id == "d-statins"
    assert second.query == "Does it\ncause muscle pain?" and second.rewritten_query == "Do statins cause muscle pain?"
    assert second.history == [
        {"role": "system", "content": "You answer health questions."},
        {"role": "user", "content": FIRST},
        {"role": "assistant", "content": "HMG-CoA reductase [1]"},
    ]
    assert (second.feedback, second.feedback_comment, second.queue_tier) == (-1, "too short", 0)

    again = post_json(api, f"{API}/kbs/test-kb/conversations", _conversation(LOGGED, end_user="someone else"))
    assert again.status_code == 200 and again.json()["turns_created"] == [] and again.json()["created"] is False
    conversation.refresh_from_db()
    assert conversation.end_user == "eve"

    longer = LOGGED + [{"role": "user", "content": "And for children?"}, {"role": "assistant", "content": "Rarely."}]
    appended = post_json(api, f"{API}/kbs/test-kb/conversations", _conversation(longer)).json()
    assert len(appended["turns_created"]) == 1 and appended["turns_existing"] == 2
    assert list(conversation.turns.order_by("position").values_list("position", "query")) == [
        (0, FIRST), (1, "Does it\ncause muscle pain?"), (2, "And for children?")
    ]


@pytest.mark.parametrize(
    "messages, status, expected",
    [
        ([{"role": "user", "content": FIRST}, {"role": "assistant", "content": "Something else"}], 409, "different messages"),
        (LOGGED[:3], 409, "already holds 2 turns"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], 422, "two user messages in a row"),
        ([{"role": "assistant", "content": "hi"}], 422, "must follow a user message"),
        ([{"role": "wizard", "content": "hi"}], 422, "must be one of"),
        ([{"role": "tool", "content": "{}"}], 422, "tool and function messages"),
        ([{"role": "user", "content": ""}], 422, "must not be empty"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], 422, "only text content parts"),
        ([{"role": "user", "content": "q", "passages": [{"text": "p"}]}], 422, "belong on assistant messages"),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}] * 251, 422, "the limit is 500"),
    ],
)
def test_bad_conversations_are_refused_with_a_message_and_nothing_written(api, embedded_knowledge_base, messages, status, expected):
    assert post_json(api, f"{API}/kbs/test-kb/conversations", _conversation(LOGGED)).status_code == 200
    before = counts()

    response = post_json(api, f"{API}/kbs/test-kb/conversations", _conversation(messages))

    assert response.status_code == status, response.content
    assert expected in response.json()["detail"]
    assert counts() == before


def test_a_conversation_over_the_character_limit_is_refused(api, embedded_knowledge_base, settings):
    settings.RAGLOOP_MAX_CONVERSATION_CHARS = 50
    before = counts()
    response = post_json(api, f"{API}/kbs/test-kb/conversations", _conversation(LOGGED, external_id="long"))
    assert response.status_code == 422 and "Start a new conversation" in response.json()["detail"]
    assert counts() == before
