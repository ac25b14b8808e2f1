"""API rate limits (knowledge.rate_limits) against the real Redis: a token's N+1th request in a
minute on a knowledge base is refused with 429, Retry-After and a JSON message, nothing of it
done; other tokens and knowledge bases keep their own budgets; logging turns has its own; the
OpenAPI schema says so. The test settings set the limits high so the rest of the suite is never
throttled: these tests set real ones."""

import json

import pytest
from django.test import Client, override_settings

from knowledge.models import Turn
from knowledge.rate_limits import rate_limits_reset
from knowledge.services.knowledge_bases import knowledge_base_create
from knowledge.services.tokens import api_token_create

API = "/api/v1"


@pytest.fixture(autouse=True)
def fresh_counts(db):
    # Token ids repeat across test databases; counts left by an earlier run must not count.
    rate_limits_reset()
    yield
    rate_limits_reset()


def token_client(user, *knowledge_bases, **kwargs) -> Client:
    _, plain = api_token_create(user=user, name="limits", knowledge_bases=list(knowledge_bases), **kwargs)
    return Client(HTTP_AUTHORIZATION=f"Bearer {plain}")


def turn_batch(*external_ids: str) -> str:
    return json.dumps({"turns": [{"external_id": e, "query": f"question {e}", "answer": "an answer"} for e in external_ids]})


def assert_rate_limited(response, limit: int) -> int:
    assert response.status_code == 429, response.content
    assert response["Content-Type"].startswith("application/json")
    assert f"{limit} " in response.json()["detail"] and "per minute" in response.json()["detail"]
    retry_after = int(response["Retry-After"])
    assert 1 <= retry_after <= 60
    return retry_after


@override_settings(RAGLOOP_API_RATE_LIMIT_PER_MINUTE=3)
def test_the_fourth_request_in_a_minute_is_refused_with_retry_after_and_others_keep_their_budget(admin_user, knowledge_base):
    other_kb = knowledge_base_create(slug="other-kb", name="Other KB")
    api = token_client(admin_user, knowledge_base, other_kb)

    for _ in range(3):
        assert api.get(f"{API}/kbs/test-kb/documents").status_code == 200
    assert_rate_limited(api.get(f"{API}/kbs/test-kb/documents"), 3)
    # every endpoint on the knowledge base shares the budget
    assert_rate_limited(api.get(f"{API}/kbs/test-kb/conversations"), 3)

    # the same token on another knowledge base, and another token on this one, are unaffected
    assert api.get(f"{API}/kbs/other-kb/documents").status_code == 200
    assert token_client(admin_user, knowledge_base).get(f"{API}/kbs/test-kb/documents").status_code == 200


@override_settings(RAGLOOP_API_RATE_LIMIT_PER_MINUTE=2, RAGLOOP_API_INGEST_RATE_LIMIT_PER_MINUTE=4)
def test_logging_turns_has_its_own_larger_budget(admin_user, knowledge_base):
    api = token_client(admin_user, knowledge_base)
    for _ in range(2):
        assert api.get(f"{API}/kbs/test-kb/documents").status_code == 200
    assert_rate_limited(api.get(f"{API}/kbs/test-kb/documents"), 2)

    # the general budget is spent, the ingest budget is not
    for n in range(4):
        response = api.post(f"{API}/kbs/test-kb/turns", turn_batch(f"t{n}"), content_type="application/json")
        assert response.status_code == 200, response.content
    refused = api.post(f"{API}/kbs/test-kb/turns", turn_batch("t-over"), content_type="application/json")
    assert_rate_limited(refused, 4)
    # nothing of the refused request was stored
    assert sorted(Turn.objects.values_list("external_id", flat=True)) == ["t0", "t1", "t2", "t3"]
    # conversations are logged from the same budget
    conversation = {"external_id": "c1", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    assert_rate_limited(api.post(f"{API}/kbs/test-kb/conversations", conversation, content_type="application/json"), 4)


@override_settings(RAGLOOP_API_RATE_LIMIT_PER_MINUTE=2)
def test_turn_and_conversation_reads_count_against_their_knowledge_base(admin_user, knowledge_base):
    api = token_client(admin_user, knowledge_base)
    with override_settings(RAGLOOP_API_INGEST_RATE_LIMIT_PER_MINUTE=100):
        turn_id = api.post(f"{API}/kbs/test-kb/turns", turn_batch("t1"), content_type="application/json").json()["turns"][0]["turn_id"]
    assert api.get(f"{API}/turns/{turn_id}").status_code == 200
    assert api.get(f"{API}/kbs/test-kb/documents").status_code == 200
    assert_rate_limited(api.get(f"{API}/turns/{turn_id}"), 2)


@override_settings(RAGLOOP_API_RATE_LIMIT_PER_MINUTE=1)
def test_the_openai_compatible_endpoints_answer_429_in_openais_shape(admin_user, knowledge_base):
    api = token_client(admin_user, knowledge_base)
    assert api.get("/v1/models").status_code == 200
    refused = api.get("/v1/models")
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused["Retry-After"]) <= 60


@override_settings(RAGLOOP_API_RATE_LIMIT_PER_MINUTE=0)
def test_zero_turns_the_limit_off(admin_user, knowledge_base):
    api = token_client(admin_user, knowledge_base)
    assert {api.get(f"{API}/kbs/test-kb/documents").status_code for _ in range(5)} == {200}


@override_settings(RAGLOOP_API_RATE_LIMIT_PER_MINUTE=1, RAGLOOP_RATE_LIMIT_REDIS_URL="redis://127.0.0.1:1/0")
def test_requests_are_served_unthrottled_while_the_limiters_redis_is_unreachable(admin_user, knowledge_base):
    api = token_client(admin_user, knowledge_base)
    assert [api.get(f"{API}/kbs/test-kb/documents").status_code for _ in range(3)] == [200, 200, 200]


def test_the_openapi_schema_documents_429_with_retry_after_on_every_operation(client):
    schema = client.get(f"{API}/openapi.json").json()
    operations = [(path, method, op) for path, methods in schema["paths"].items() for method, op in methods.items()]
    assert len(operations) >= 10
    for path, method, operation in operations:
        refused = operation["responses"].get("429")
        assert refused is not None, (method, path)
        assert "Retry-After" in refused["headers"], (method, path)
        assert refused["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorOut")
