"""A knowledge base's personal-data mode on what the API stores: turns, conversations, served
answers and chat continuations (off: as sent; redact: typed placeholders; reject: 422 naming
the types, nothing stored)."""

import json

import pytest

from knowledge.errors import InvalidInput
from knowledge.models import Conversation, KnowledgeBase, RetrievedPassage, Turn
from knowledge.services.knowledge_bases import knowledge_base_create, knowledge_base_personal_data_mode_set

API = "/api/v1"
EMAIL_QUERY = "I am bob.jones@example.org, why was my statin refill refused?"


def post_json(client, url, payload):
    return client.post(url, data=json.dumps(payload), content_type="application/json")


def set_mode(knowledge_base, mode):
    knowledge_base_personal_data_mode_set(knowledge_base=knowledge_base, mode=mode)


def ingest_one(api, **turn):
    payload = {"turns": [{"external_id": "t-1", "query": EMAIL_QUERY, "answer": "Write to help@example.com.", **turn}]}
    return post_json(api, f"{API}/kbs/test-kb/turns", payload)


def test_redact_stores_placeholders_in_query_answer_passages_history_and_feedback(api, knowledge_base):
    set_mode(knowledge_base, "redact")
    response = ingest_one(
        api,
        passages=[{"text": "Call +1 415-555-0132 for refills.", "source_id": "d-1", "score": 0.5}],
        history=[{"role": "user", "content": "my card is 4111 1111 1111 1111"}, {"role": "assistant", "content": "ok"}],
        feedback=-1,
        feedback_comment="reply to bob.jones@example.org",
        conversation_id="c-1",
        position=1,
    )
    assert response.status_code == 200, response.content
    turn = Turn.objects.get()
    assert turn.query == "I am <EMAIL>, why was my statin refill refused?"
    assert turn.answer == "Write to <EMAIL>."
    assert turn.feedback_comment == "reply to <EMAIL>"
    assert turn.history == [{"role": "user", "content": "my card is <CREDIT_CARD>"}, {"role": "assistant", "content": "ok"}]
    assert RetrievedPassage.objects.get().text == "Call <PHONE_NUMBER> for refills."
    assert "bob.jones" not in json.dumps(api.get(f"{API}/turns/{turn.pk}").json())


def test_reject_answers_422_naming_the_types_and_stores_nothing(api, knowledge_base):
    set_mode(knowledge_base, "reject")
    response = ingest_one(api, feedback_comment="call 4111 1111 1111 1111?")
    assert response.status_code == 422, response.content
    body = response.json()
    assert body["entity_types"] == ["CREDIT_CARD", "EMAIL_ADDRESS"]
    assert "EMAIL_ADDRESS" in body["detail"] and "'t-1' query" in body["detail"]
    assert Turn.objects.count() == 0 and RetrievedPassage.objects.count() == 0
    # Under reject only what a person wrote refuses a turn: an answer's e-mail is redacted.
    clean = post_json(api, f"{API}/kbs/test-kb/turns", {"turns": [{"external_id": "t-2", "query": "statins?", "answer": "Mail help@example.com"}]})
    assert clean.status_code == 200, clean.content
    assert Turn.objects.get().answer == "Mail <EMAIL>"


def test_off_stores_as_sent(api, knowledge_base):
    assert KnowledgeBase.objects.get(pk=knowledge_base.pk).personal_data_mode == "off"
    assert ingest_one(api).status_code == 200
    turn = Turn.objects.get()
    assert (turn.query, turn.answer) == (EMAIL_QUERY, "Write to help@example.com.")


def test_conversation_messages_are_redacted_and_the_resend_is_still_the_same_conversation(api, knowledge_base):
    set_mode(knowledge_base, "redact")
    messages = [
        {"role": "system", "content": "Answer questions of the user at 10.0.0.12."},
        {"role": "user", "content": EMAIL_QUERY},
        {"role": "assistant", "content": "Ask +44 20 7946 0958.", "passages": [{"text": "See https://example.com/refills", "score": 0.4}]},
    ]
    payload = {"external_id": "log-1", "messages": messages}
    first = post_json(api, f"{API}/kbs/test-kb/conversations", payload)
    assert first.status_code == 200, first.content
    conversation = Conversation.objects.get()
    turn = conversation.turns.get()
    assert conversation.system_prompt == "Answer questions of the user at <IP_ADDRESS>."
    assert (turn.query, turn.answer) == ("I am <EMAIL>, why was my statin refill refused?", "Ask <PHONE_NUMBER>.")
    assert turn.history == [{"role": "system", "content": "Answer questions of the user at <IP_ADDRESS>."}]
    assert turn.passages.get().text == "See <URL>"
    # The app sends the same conversation again, raw, with one more exchange: not an edit.
    more = [*messages, {"role": "user", "content": "And mail it to bob@example.org"}, {"role": "assistant", "content": "Done."}]
    again = post_json(api, f"{API}/kbs/test-kb/conversations", {**payload, "messages": more})
    assert again.status_code == 200, again.content
    assert (again.json()["turns_existing"], len(again.json()["turns_created"])) == (1, 1)
    assert conversation.turns.get(position=1).query == "And mail it to <EMAIL>"


def test_conversation_rejected_names_the_message(api, knowledge_base):
    set_mode(knowledge_base, "reject")
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": EMAIL_QUERY}, {"role": "assistant", "content": "No."}]
    response = post_json(api, f"{API}/kbs/test-kb/conversations", {"external_id": "log-2", "messages": messages})
    assert response.status_code == 422 and response.json()["entity_types"] == ["EMAIL_ADDRESS"]
    assert "messages[2]" in response.json()["detail"]
    assert Conversation.objects.count() == 0 and Turn.objects.count() == 0


def test_served_ask_and_chat_are_redacted_and_a_chat_resent_raw_continues(api, embedded_knowledge_base):
    set_mode(embedded_knowledge_base, "redact")
    asked = post_json(api, f"{API}/kbs/test-kb/ask", {"query": "Which enzyme do statins inhibit? Reply to ann@example.com"})
    assert asked.status_code == 200, asked.content
    assert Turn.objects.get(pk=asked.json()["turn_id"]).query == "Which enzyme do statins inhibit? Reply to <EMAIL>"

    question = {"role": "user", "content": "Which enzyme do statins inhibit? I am ann@example.com"}
    first = post_json(api, "/v1/chat/completions", {"model": "test-kb", "messages": [question]}).json()
    stored = Turn.objects.get(pk=first["turn_id"])
    assert stored.query == "Which enzyme do statins inhibit? I am <EMAIL>"
    answer = {"role": "assistant", "content": first["choices"][0]["message"]["content"]}
    second = post_json(api, "/v1/chat/completions", {"model": "test-kb", "messages": [question, answer, {"role": "user", "content": "Does it cause muscle pain?"}]}).json()
    assert second["conversation_id"] == first["conversation_id"]
    assert Turn.objects.get(pk=second["turn_id"]).history[0] == {"role": "user", "content": stored.query}


def test_served_ask_under_reject_is_refused_before_answering(api, knowledge_base):
    set_mode(knowledge_base, "reject")
    response = post_json(api, f"{API}/kbs/test-kb/ask", {"query": "statins for +1 415-555-0132?"})
    assert response.status_code == 422 and response.json()["entity_types"] == ["PHONE_NUMBER"]
    assert Turn.objects.count() == 0


def test_an_unknown_mode_is_refused(db):
    with pytest.raises(InvalidInput, match="sometimes"):
        knowledge_base_create(slug="kb-x", personal_data_mode="sometimes")
    knowledge_base = knowledge_base_create(slug="kb-y", personal_data_mode="reject")
    with pytest.raises(InvalidInput):
        knowledge_base_personal_data_mode_set(knowledge_base=knowledge_base, mode="")
    assert KnowledgeBase.objects.get(slug="kb-y").personal_data_mode == "reject"


def test_turn_metadata_strings_are_redacted_at_any_depth_and_never_refuse(api, knowledge_base):
    metadata = {"user_email": "bob.jones@example.org", "client": {"ip": "10.0.0.12", "tags": ["vip", "+1 415-555-0132"]}, "n": 3}
    set_mode(knowledge_base, "redact")
    assert ingest_one(api, metadata=metadata).status_code == 200
    assert Turn.objects.get().metadata == {
        "user_email": "<EMAIL>", "client": {"ip": "<IP_ADDRESS>", "tags": ["vip", "<PHONE_NUMBER>"]}, "n": 3,
    }  # fmt: skip
    # Under reject what the app attached is redacted too: only what the person wrote refuses.
    set_mode(knowledge_base, "reject")
    clean_query = {"turns": [{"external_id": "t-2", "query": "statins?", "metadata": metadata}]}
    assert post_json(api, f"{API}/kbs/test-kb/turns", clean_query).status_code == 200
    assert Turn.objects.get(external_id="t-2").metadata["user_email"] == "<EMAIL>"


def test_conversation_metadata_is_redacted(api, knowledge_base):
    set_mode(knowledge_base, "redact")
    payload = {"external_id": "log-m", "metadata": {"contact": "ann@example.com"},
               "messages": [{"role": "user", "content": "statins?"}, {"role": "assistant", "content": "Yes."}]}
    assert post_json(api, f"{API}/kbs/test-kb/conversations", payload).status_code == 200
    assert Conversation.objects.get().metadata == {"contact": "<EMAIL>"}


def test_an_end_user_reference_holding_personal_data_is_stored_as_a_keyed_digest(api, knowledge_base):
    from knowledge.services.personal_data import end_user_digest

    set_mode(knowledge_base, "redact")
    messages = [{"role": "user", "content": "statins?"}, {"role": "assistant", "content": "Yes."}]
    for external_id, end_user in (("log-a", "ann@example.com"), ("log-b", "ann@example.com"), ("log-c", "user-42")):
        payload = {"external_id": external_id, "end_user": end_user, "messages": messages}
        assert post_json(api, f"{API}/kbs/test-kb/conversations", payload).status_code == 200
    stored = dict(Conversation.objects.values_list("external_id", "end_user"))
    digest = end_user_digest("ann@example.com")
    assert stored == {"log-a": digest, "log-b": digest, "log-c": "user-42"}
    assert digest.startswith("pd-") and "ann" not in digest
    # Listing by the reference as the app knows it still finds both of Ann's conversations.
    listed = api.get(f"{API}/kbs/test-kb/conversations", {"end_user": "ann@example.com"}).json()
    assert sorted(c["external_id"] for c in listed["items"]) == ["log-a", "log-b"]
    # Under off the reference is stored as sent.
    set_mode(knowledge_base, "off")
    payload = {"external_id": "log-d", "end_user": "ann@example.com", "messages": messages}
    assert post_json(api, f"{API}/kbs/test-kb/conversations", payload).status_code == 200
    assert Conversation.objects.get(external_id="log-d").end_user == "ann@example.com"


def test_a_chat_with_an_e_mail_as_user_continues_its_conversation_under_redact(api, embedded_knowledge_base):
    set_mode(embedded_knowledge_base, "redact")
    question = {"role": "user", "content": "Which enzyme do statins inhibit?"}
    first = post_json(api, "/v1/chat/completions", {"model": "test-kb", "user": "ann@example.com", "messages": [question]}).json()
    answer = {"role": "assistant", "content": first["choices"][0]["message"]["content"]}
    follow_up = {"role": "user", "content": "Does it cause muscle pain?"}
    second = post_json(
        api, "/v1/chat/completions", {"model": "test-kb", "user": "ann@example.com", "messages": [question, answer, follow_up]}
    ).json()
    assert second["conversation_id"] == first["conversation_id"]
    assert Conversation.objects.get().end_user.startswith("pd-")
