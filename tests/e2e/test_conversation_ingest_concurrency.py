"""RELIABILITY A1 for conversations: the same conversation sent many times at once, over real
HTTP to a gunicorn process, is stored once, and every response names the same conversation."""

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from knowledge.models import Conversation, RetrievedPassage, Turn
from knowledge.services.tokens import api_token_create

pytestmark = pytest.mark.e2e

MESSAGES = [
    {"role": "user", "content": "Which enzyme do statins inhibit?"},
    {"role": "assistant", "content": "HMG-CoA reductase [1]", "passages": [{"text": "Statins inhibit HMG-CoA reductase.", "source_id": "d-statins"}]},
    {"role": "user", "content": "Does it cause muscle pain?"},
    {"role": "assistant", "content": "Yes, it is a known side effect [1]"},
]


def test_one_conversation_sent_thirty_times_at_once_is_stored_once(web_server_process, admin_user, knowledge_base):
    _, token = api_token_create(user=admin_user, name="app", knowledge_bases=[knowledge_base])
    body = json.dumps({"external_id": "dup-1", "end_user": "u", "messages": MESSAGES}).encode()

    def send(_):
        request = urllib.request.Request(
            f"{web_server_process.url}/api/v1/kbs/test-kb/conversations",
            data=body,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(send, range(30)))

    assert {status for status, _ in results} == {200}, results[:3]
    assert len({answer["conversation_id"] for _, answer in results}) == 1
    assert sum(answer["created"] for _, answer in results) == 1
    assert sorted(len(answer["turns_created"]) for _, answer in results) == [0] * 29 + [2]
    assert Conversation.objects.count() == 1
    assert list(Turn.objects.order_by("position").values_list("position", "query")) == [
        (0, "Which enzyme do statins inhibit?"), (1, "Does it cause muscle pain?")
    ]
    assert RetrievedPassage.objects.count() == 1


def test_questions_asked_at_once_in_one_conversation_get_distinct_positions(web_server_process, admin_user, embedded_knowledge_base):
    _, token = api_token_create(user=admin_user, name="app", knowledge_bases=[embedded_knowledge_base])

    def ask(index):
        request = urllib.request.Request(
            f"{web_server_process.url}/api/v1/kbs/test-kb/ask",
            data=json.dumps({"query": f"Question {index} about statins?", "conversation_external_id": "busy"}).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())

    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(ask, range(8)))

    assert sorted(a["position"] for a in answers) == list(range(8))
    assert len({a["conversation_id"] for a in answers}) == 1
    conversation = Conversation.objects.get(external_id="busy")
    assert conversation.turn_count == 8
