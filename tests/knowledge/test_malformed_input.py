"""Input PostgreSQL cannot store or compare (lone surrogates, NUL) and malformed bodies are
answered with a 4xx that names the problem, never a 500, and nothing is written (issue 14's
probe found each of these as a 500)."""

import json

import pytest

from knowledge.models import Document, Turn

API = "/api/v1"
LONE = '"half a pair \\ud800"'  # JSON text: a lone high surrogate once parsed


def post_raw(client, url, body: str):
    return client.post(url, data=body, content_type="application/json")


@pytest.mark.parametrize(
    "turn_fields, expected",
    [
        ('"metadata": {"source": ' + LONE + "}", "metadata"),
        ('"metadata": {' + LONE + ': 1}', "metadata"),
        ('"retriever_version": ' + LONE, "retriever_version"),
        ('"answer": ' + LONE, "answer"),
    ],
)
def test_a_lone_surrogate_in_an_ingested_turn_is_a_422(api, knowledge_base, turn_fields, expected):
    body = '{"turns": [{"external_id": "t1", "query": "q", ' + turn_fields + "}]}"

    response = post_raw(api, f"{API}/kbs/test-kb/turns", body)

    assert response.status_code == 422, response.content
    # pydantic refuses a lone surrogate for a string field itself ("unable to parse raw data as
    # a unicode string"); inside a JSON object our own check names it.
    assert expected in response.json()["detail"]
    assert ("surrogate" in response.json()["detail"]) == (expected == "metadata")
    assert not Turn.objects.exists()


def test_a_lone_surrogate_in_a_chat_message_is_an_openai_400(api, knowledge_base):
    body = '{"model": "test-kb", "messages": [{"role": "user", "content": ' + LONE + "}]}"

    response = post_raw(api, "/v1/chat/completions", body)

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages[0].content" and "surrogate" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    "url",
    [
        "/kbs/test-kb/labels.jsonl?curator=al%00ice",
        "/kbs/test-kb/models/retriever%00-v1/",
        f"{API}/kbs/test%00kb/documents",
    ],
)
def test_nul_or_a_lone_surrogate_in_a_url_is_a_400_naming_it(admin_client, api_token, knowledge_base, url):
    response = admin_client.get(url, HTTP_AUTHORIZATION=f"Bearer {api_token}")

    assert response.status_code == 400, response.content[:300]
    text = response.content.decode()
    assert "URL is malformed" in text and ("NUL" in text or "surrogate" in text)


def test_a_multipart_upload_without_a_boundary_is_a_400(api, knowledge_base):
    response = api.post(
        f"{API}/kbs/test-kb/documents", data=b"--x\r\n\r\n", content_type="multipart/form-data"
    )

    assert response.status_code == 400, response.content
    assert "multipart" in response.json()["detail"].lower()
    assert not Document.objects.exists()


def test_a_paired_surrogate_escape_is_an_ordinary_character(api, knowledge_base):
    body = json.dumps({"turns": [{"external_id": "t1", "query": "smile \U0001f600", "metadata": {"mood": "\U0001f600"}}]})
    assert "\\ud83d\\ude00" in body  # sent as a surrogate pair, which decodes to one character

    assert post_raw(api, f"{API}/kbs/test-kb/turns", body).status_code == 200
    assert Turn.objects.get().metadata == {"mood": "\U0001f600"}
