"""A RAG app's view of ragloop: the official `openai` Python package pointed at a gunicorn
process serving the app, as a LangChain or LlamaIndex app would be by changing only its base
URL and key."""

import openai
import pytest

from knowledge.models import Conversation, Turn
from knowledge.services.tokens import api_token_create

pytestmark = pytest.mark.e2e

FIRST = "Which enzyme do statins inhibit?"
FOLLOW_UP = "Does it cause muscle pain?"


@pytest.fixture
def ragloop(web_server_process, admin_user, embedded_knowledge_base):
    _, plain = api_token_create(user=admin_user, name="app", knowledge_bases=[embedded_knowledge_base])
    return openai.OpenAI(base_url=f"{web_server_process.url}/v1", api_key=plain, max_retries=0, timeout=60)


def test_the_official_client_holds_a_three_message_conversation_streamed_and_not(ragloop, web_server_process):
    assert [m.id for m in ragloop.models.list()] == ["test-kb"]

    first = ragloop.chat.completions.create(model="test-kb", messages=[{"role": "user", "content": FIRST}], user="end-user-1")
    answer = first.choices[0].message.content
    assert "HMG-CoA reductase" in answer and first.choices[0].finish_reason == "stop"
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens > 0
    # ragloop's extra fields reach the client untouched.
    conversation_id = first.model_extra["conversation_id"]
    assert first.model_extra["passages"][0]["document"] == "d-statins"

    history = [{"role": "user", "content": FIRST}, {"role": "assistant", "content": answer}, {"role": "user", "content": FOLLOW_UP}]
    stream = ragloop.chat.completions.create(model="test-kb", messages=history, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Muscle pain" in streamed
    assert chunks[-1].usage.completion_tokens > 0

    raw = ragloop.chat.completions.with_raw_response.create(
        model="test-kb", messages=[*history, {"role": "assistant", "content": streamed}, {"role": "user", "content": "Is coffee fine?"}]
    )
    assert raw.headers["x-ragloop-conversation-id"] == conversation_id

    conversation = Conversation.objects.get(external_id=conversation_id)
    turns = list(Turn.objects.filter(conversation=conversation).order_by("position"))
    assert [(t.position, t.query) for t in turns] == [(0, FIRST), (1, FOLLOW_UP), (2, "Is coffee fine?")]
    assert turns[1].answer == streamed and "statins" in turns[1].rewritten_query.lower()
    assert conversation.end_user == "end-user-1"


def test_the_official_client_raises_its_own_errors_for_a_bad_key_an_unknown_model_and_bad_messages(ragloop, web_server_process):
    wrong_key = openai.OpenAI(base_url=f"{web_server_process.url}/v1", api_key="rl_wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as bad_key:
        wrong_key.chat.completions.create(model="test-kb", messages=[{"role": "user", "content": FIRST}])
    assert bad_key.value.code == "invalid_api_key"

    with pytest.raises(openai.NotFoundError) as unknown:
        ragloop.chat.completions.create(model="no-such-kb", messages=[{"role": "user", "content": FIRST}])
    assert unknown.value.code == "model_not_found" and unknown.value.param == "model"

    with pytest.raises(openai.BadRequestError) as malformed:
        ragloop.chat.completions.create(
            model="test-kb", messages=[{"role": "user", "content": FIRST}, {"role": "user", "content": FOLLOW_UP}]
        )
    assert malformed.value.param == "messages[1]" and "alternate" in malformed.value.message
    assert Turn.objects.count() == 0
