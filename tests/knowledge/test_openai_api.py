"""The OpenAI-compatible endpoints /v1/chat/completions and /v1/models through Django's test
client: the response and stream shapes, how a request finds its conversation, and errors in
OpenAI's shape. tests/e2e/test_openai_client.py drives the same endpoints with the official
`openai` package against a server process."""

import json

import pytest

from knowledge.models import Conversation, Turn
from knowledge.services.knowledge_bases import knowledge_base_create
from knowledge.services.tokens import api_token_create

CHAT = "/v1/chat/completions"
FIRST = "Which enzyme do statins inhibit?"
FOLLOW_UP = "Does it cause muscle pain?"


def chat(client, payload, **extra):
    body = payload if isinstance(payload, (str, bytes)) else json.dumps(payload)
    return client.post(CHAT, data=body, content_type="application/json", **extra)


def user(text):
    return {"role": "user", "content": text}


def sse_chunks(response) -> list:
    raw = b"".join(response.streaming_content).decode()
    events = [line[len("data: ") :] for line in raw.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]", raw[-200:]
    return [json.loads(e) for e in events[:-1]]


def test_a_completion_has_the_chat_completions_shape_and_logs_a_turn(api, embedded_knowledge_base):
    response = chat(api, {"model": "test-kb", "messages": [{"role": "system", "content": "Be brief."}, user(FIRST)], "user": "u-1"})

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "test-kb:extractive"
    [choice] = body["choices"]
    assert (choice["index"], choice["finish_reason"], choice["message"]["role"]) == (0, "stop", "assistant")
    assert "HMG-CoA reductase" in choice["message"]["content"]
    usage = body["usage"]
    assert usage["completion_tokens"] > 0 and usage["prompt_tokens"] > usage["completion_tokens"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert body["passages"][0]["document"] == "d-statins"

    turn = Turn.objects.get(pk=body["turn_id"])
    assert (turn.query, turn.answer, turn.position) == (FIRST, choice["message"]["content"], 0)
    assert turn.history == [{"role": "system", "content": "Be brief."}]
    assert (turn.conversation.external_id, turn.conversation.end_user) == (body["conversation_id"], "u-1")
    assert turn.conversation.system_prompt == "Be brief."
    assert response["X-Ragloop-Conversation-Id"] == body["conversation_id"]


def test_a_client_that_resends_the_history_continues_the_same_conversation(api, embedded_knowledge_base):
    first = chat(api, {"model": "test-kb", "messages": [user(FIRST)]}).json()
    answer = first["choices"][0]["message"]["content"]
    history = [user(FIRST), {"role": "assistant", "content": answer}]

    second = chat(api, {"model": "test-kb", "messages": [*history, user(FOLLOW_UP)]}).json()
    third = chat(api, {"model": "test-kb", "messages": [*history, user(FOLLOW_UP), {"role": "assistant", "content": second["choices"][0]["message"]["content"]}, user("And for children?")]}).json()

    assert first["conversation_id"] == second["conversation_id"] == third["conversation_id"]
    turns = list(Turn.objects.filter(conversation__external_id=first["conversation_id"]).order_by("position"))
    assert [t.position for t in turns] == [0, 1, 2]
    assert "statins" in turns[1].rewritten_query.lower() and second["passages"][0]["document"] == "d-statins"
    assert turns[1].history == history
    # A history nobody served (edited, or from elsewhere) starts a conversation of its own.
    edited = chat(api, {"model": "test-kb", "messages": [user(FIRST), {"role": "assistant", "content": "Something else."}, user(FOLLOW_UP)]}).json()
    assert edited["conversation_id"] != first["conversation_id"]
    assert Turn.objects.get(pk=edited["turn_id"]).position == 0


def test_two_end_users_whose_chats_began_alike_stay_in_conversations_of_their_own(api, embedded_knowledge_base):
    starts = {name: chat(api, {"model": "test-kb", "messages": [user(FIRST)], "user": name}).json() for name in ("ann", "bob")}
    history = [user(FIRST), {"role": "assistant", "content": starts["ann"]["choices"][0]["message"]["content"]}]

    follow_ups = {name: chat(api, {"model": "test-kb", "messages": [*history, user(FOLLOW_UP)], "user": name}).json() for name in ("ann", "bob")}

    assert starts["ann"]["conversation_id"] != starts["bob"]["conversation_id"]
    assert {name: follow_ups[name]["conversation_id"] for name in follow_ups} == {name: starts[name]["conversation_id"] for name in starts}
    assert Conversation.objects.get(external_id=starts["bob"]["conversation_id"]).end_user == "bob"


def test_a_conversation_id_in_the_body_or_header_names_the_conversation(api, embedded_knowledge_base):
    by_body = chat(api, {"model": "test-kb", "messages": [user(FIRST)], "conversation_id": "app-conv"}).json()
    by_header = chat(api, {"model": "test-kb", "messages": [user(FOLLOW_UP)]}, HTTP_X_RAGLOOP_CONVERSATION_ID="app-conv").json()

    assert by_body["conversation_id"] == by_header["conversation_id"] == "app-conv"
    assert list(Conversation.objects.get(external_id="app-conv").turns.values_list("position", flat=True).order_by("position")) == [0, 1]


def test_a_streamed_completion_is_server_sent_chunks_that_add_up_to_the_answer(api, embedded_knowledge_base):
    response = chat(api, {"model": "test-kb", "messages": [user(FIRST)], "stream": True, "stream_options": {"include_usage": True}})

    assert response.status_code == 200 and response["Content-Type"] == "text/event-stream"
    chunks = sse_chunks(response)
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    turn = Turn.objects.get(pk=chunks[0]["turn_id"])
    assert content == turn.answer and len(chunks) > 4
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    assert response["X-Ragloop-Conversation-Id"] == chunks[0]["conversation_id"] == turn.conversation.external_id


def test_models_lists_the_knowledge_bases_the_key_may_use(client, admin_user, embedded_knowledge_base):
    knowledge_base_create(slug="hidden-kb", name="Hidden")
    _, plain = api_token_create(user=admin_user, name="one", knowledge_bases=[embedded_knowledge_base])
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {plain}"

    body = client.get("/v1/models").json()

    assert body["object"] == "list" and [m["id"] for m in body["data"]] == ["test-kb"]
    assert body["data"][0]["object"] == "model" and body["data"][0]["owned_by"] == "ragloop"


def _error(response, status):
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


@pytest.mark.parametrize(
    "payload, status, param, expected",
    [
        ({"model": "nope", "messages": [user(FIRST)]}, 404, "model", "does not exist"),
        ({"model": "test-kb:generator-v9", "messages": [user(FIRST)]}, 404, "model", "live generator"),
        ({"messages": [user(FIRST)]}, 400, "model", "name the knowledge base"),
        ({"model": "test-kb", "messages": []}, 400, "messages", "at least one message"),
        ({"model": "test-kb", "messages": "hello"}, 400, "messages", "must be a list"),
        ({"model": "test-kb", "messages": [user(FIRST), user(FOLLOW_UP)]}, 400, "messages[1]", "two user messages"),
        ({"model": "test-kb", "messages": [{"role": "tool", "content": "{}", "tool_call_id": "x"}]}, 400, "messages[0]", "tool"),
        ({"model": "test-kb", "messages": [{"role": "user"}]}, 400, "messages[0].content", "needs text content"),
        ({"model": "test-kb", "messages": [user(FIRST), {"role": "assistant", "content": "a"}]}, 400, "messages", "last message must be a user"),
        ({"model": "test-kb", "messages": [user(FIRST)], "n": 2}, 400, "n", "one choice"),
        ({"model": "test-kb", "messages": [user(FIRST)], "tools": [{"type": "function"}]}, 400, "tools", "do not call tools"),
        ({"model": "test-kb", "messages": [user(FIRST)], "stream": "yes"}, 400, "stream", "not a valid value"),
        ({"model": "test-kb", "messages": [user(FIRST)], "k": 0}, 400, "k", "not a valid value"),
        ({"model": "test-kb", "messages": [user("q"), {"role": "assistant", "content": "a"}] * 250 + [user("q")]}, 400, "messages", "limit is 500"),
    ],
)
def test_bad_requests_get_an_openai_error_object_and_write_nothing(api, embedded_knowledge_base, payload, status, param, expected):
    before = Turn.objects.count(), Conversation.objects.count()

    error = _error(chat(api, payload), status)

    assert error["param"] == param and expected in error["message"]
    assert error["type"] == "invalid_request_error"
    assert (Turn.objects.count(), Conversation.objects.count()) == before


def test_a_bad_key_is_a_401_a_foreign_knowledge_base_a_404_and_bad_json_a_400(client, admin_user, embedded_knowledge_base, settings):
    assert _error(chat(client, {"model": "test-kb", "messages": [user(FIRST)]}), 401)["code"] == "invalid_api_key"
    client.defaults["HTTP_AUTHORIZATION"] = "Bearer rl_not-a-real-token"
    assert _error(chat(client, {"model": "test-kb", "messages": [user(FIRST)]}), 401)["code"] == "invalid_api_key"
    assert _error(client.get("/v1/models"), 401)["code"] == "invalid_api_key"

    other = knowledge_base_create(slug="other-kb", name="Other")
    _, plain = api_token_create(user=admin_user, name="other", knowledge_bases=[other])
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {plain}"
    assert _error(chat(client, {"model": "test-kb", "messages": [user(FIRST)]}), 404)["code"] == "model_not_found"
    assert "not valid JSON" in _error(chat(client, "{nope"), 400)["message"]
    assert _error(client.get(CHAT), 405)

    settings.RAGLOOP_MAX_REQUEST_BYTES = 100
    assert _error(chat(client, {"model": "other-kb", "messages": [user("x" * 200)]}), 413)["code"] == "request_too_large"
    assert Turn.objects.count() == 0
