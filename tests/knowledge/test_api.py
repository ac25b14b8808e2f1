"""The REST API under /api/v1/: token auth and scopes, ask and retrieve, ingested turns and
feedback, document upload, and bad input answered with a 4xx that names the problem and
writes nothing."""

import hashlib
import json
from datetime import datetime, timezone

import pytest
from django.contrib.staticfiles import finders
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from knowledge.models import (
    ApiToken,
    Chunk,
    Document,
    EmbeddingJob,
    EmbeddingSpace,
    RetrievedPassage,
    Turn,
)
from knowledge.services.documents import documents_ingest
from knowledge.services.knowledge_bases import (
    BASE_MODEL_REFERENCE,
    knowledge_base_create,
)
from knowledge.services.tokens import api_token_create, api_token_revoke
from tests.conftest import embed_everything_now

API = "/api/v1"
VITAMIN_D_QUERY = "Does vitamin D prevent hip fractures in elderly adults?"


def post_json(client, url, payload, **extra):
    body = payload if isinstance(payload, (str, bytes)) else json.dumps(payload)
    return client.post(url, data=body, content_type="application/json", **extra)


def client_with_token(plain: str) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {plain}")


def row_counts() -> dict[str, int]:
    models = (Document, Chunk, EmbeddingJob, Turn, RetrievedPassage)
    return {model.__name__: model.objects.count() for model in models}


def assert_error(response, status: int, *fragments: str) -> str:
    """A JSON error with this status and a non-empty detail naming each fragment."""
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail.strip()
    for fragment in fragments:
        assert fragment.lower() in detail.lower(), detail
    return detail


def upload(client, slug: str, *files: SimpleUploadedFile):
    return client.post(f"{API}/kbs/{slug}/documents", {"files": list(files)})


@pytest.fixture
def other_kb(db):
    return knowledge_base_create(slug="other-kb", name="Other KB")


@pytest.fixture
def other_kb_client(admin_user, other_kb):
    """A client whose token may use other-kb only."""
    _, plain = api_token_create(user=admin_user, name="other", knowledge_bases=[other_kb])
    return client_with_token(plain)


@pytest.fixture
def ingested_turn(knowledge_base):
    return Turn.objects.create(knowledge_base=knowledge_base, source=Turn.Source.INGESTED, external_id="e-1", query="q?")


@pytest.fixture
def served_turn(api, embedded_knowledge_base):
    response = post_json(api, f"{API}/kbs/test-kb/ask", {"query": VITAMIN_D_QUERY, "k": 3})
    assert response.status_code == 200, response.content
    return Turn.objects.get(pk=response.json()["turn_id"])


# --- authentication and scopes ----------------------------------------------------------


ENDPOINTS = [
    ("get", f"{API}/kbs"),
    ("post", f"{API}/kbs/test-kb/ask"),
    ("post", f"{API}/kbs/test-kb/retrieve"),
    ("post", f"{API}/kbs/test-kb/turns"),
    ("get", f"{API}/kbs/test-kb/documents"),
    ("post", f"{API}/kbs/test-kb/documents"),
    ("get", f"{API}/turns/1"),
    ("post", f"{API}/turns/1/feedback"),
]


@pytest.mark.parametrize("authorization", [None, "Bearer rl_not-a-real-token", "Bearer nope", "Token abc"])
def test_requests_without_a_valid_token_get_401(knowledge_base, authorization):
    client = Client(HTTP_AUTHORIZATION=authorization) if authorization else Client()
    before = row_counts()

    for method, url in ENDPOINTS:
        if method == "get":
            response = client.get(url)
        else:
            response = post_json(client, url, {"query": "vitamin D", "turns": [{"external_id": "t", "query": "q"}]})
        assert_error(response, 401, "token")
    assert row_counts() == before


def test_a_revoked_token_or_an_inactive_user_gets_401(admin_user, knowledge_base):
    token, plain = api_token_create(user=admin_user, name="soon revoked", knowledge_bases=[knowledge_base])
    client = client_with_token(plain)
    assert client.get(f"{API}/kbs").status_code == 200

    api_token_revoke(token=token)
    assert_error(client.get(f"{API}/kbs"), 401, "revoked")

    _, fresh = api_token_create(user=admin_user, name="fresh", knowledge_bases=[knowledge_base])
    admin_user.is_active = False
    admin_user.save()
    assert_error(client_with_token(fresh).get(f"{API}/kbs"), 401)


def test_tokens_are_stored_only_as_their_hash(admin_user, knowledge_base):
    token, plain = api_token_create(user=admin_user, name="hashed", knowledge_bases=[knowledge_base])

    stored = ApiToken.objects.filter(pk=token.pk).values().get()
    assert stored["key_hash"] == hashlib.sha256(plain.encode()).hexdigest()
    assert plain not in [str(value) for value in stored.values()]
    assert plain.startswith(stored["key_prefix"])


def test_a_token_for_another_kb_sees_this_kb_and_its_turns_as_missing(served_turn, other_kb_client):
    before = row_counts()
    unknown = assert_error(
        post_json(other_kb_client, f"{API}/kbs/no-such-kb/ask", {"query": VITAMIN_D_QUERY}), 404, "no-such-kb"
    )

    for method, url, payload in [
        ("post", f"{API}/kbs/test-kb/ask", {"query": VITAMIN_D_QUERY}),
        ("post", f"{API}/kbs/test-kb/retrieve", {"query": VITAMIN_D_QUERY}),
        ("post", f"{API}/kbs/test-kb/turns", {"turns": [{"external_id": "x-1", "query": "q"}]}),
        ("get", f"{API}/kbs/test-kb/documents", None),
    ]:
        if method == "get":
            response = other_kb_client.get(url)
        else:
            response = post_json(other_kb_client, url, payload)
        # The same answer as for a KB that does not exist: a token must not learn which exist.
        assert assert_error(response, 404, "test-kb") == unknown.replace("no-such-kb", "test-kb")
    assert_error(upload(other_kb_client, "test-kb", SimpleUploadedFile("a.txt", b"Some text.")), 404, "test-kb")

    assert_error(other_kb_client.get(f"{API}/turns/{served_turn.pk}"), 404, f"turn {served_turn.pk}")
    response = post_json(other_kb_client, f"{API}/turns/{served_turn.pk}/feedback", {"feedback": -1})
    assert_error(response, 404, f"turn {served_turn.pk}")
    served_turn.refresh_from_db()
    assert served_turn.feedback is None
    assert row_counts() == before


def test_kb_list_shows_only_the_knowledge_bases_the_token_may_use(api, embedded_knowledge_base, other_kb, admin_user):
    response = api.get(f"{API}/kbs")

    assert response.status_code == 200
    assert response.json() == [
        {
            "slug": "test-kb",
            "name": "Test KB",
            "description": "",
            "documents": 4,
            "chunks": Chunk.objects.filter(knowledge_base=embedded_knowledge_base).count(),
            "live_retriever_version": "base",
            "retrieval_mode": "dense",
            "generator": "extractive",
            "embedding_backend": "torch",
        }
    ]

    _, every_kb = api_token_create(user=admin_user, name="all", all_knowledge_bases=True)
    slugs = [kb["slug"] for kb in client_with_token(every_kb).get(f"{API}/kbs").json()]
    assert slugs == ["other-kb", "test-kb"]


# --- ask and retrieve -------------------------------------------------------------------


def test_ask_answers_from_the_right_document_and_stores_the_turn_it_returns(api, embedded_knowledge_base):
    before = row_counts()

    response = post_json(api, f"{API}/kbs/test-kb/ask", {"query": VITAMIN_D_QUERY, "k": 3})

    assert response.status_code == 200, response.content
    body = response.json()
    passages = body["passages"]
    assert [p["rank"] for p in passages] == [1, 2, 3]
    assert passages[0]["document"] == "d-vitd"
    assert passages[0]["title"] == "Vitamin D and bone health"
    scores = [p["score"] for p in passages]
    assert scores == sorted(scores, reverse=True) and scores[0] > scores[-1]
    assert len({p["document"] for p in passages}) == 3
    assert "hip fractures" in body["answer"]
    assert (body["knowledge_base"], body["source"], body["query"]) == ("test-kb", "served", VITAMIN_D_QUERY)
    assert (body["retriever_version"], body["generator_version"]) == ("base", "extractive")
    assert body["external_id"] is None and body["feedback"] is None
    assert body["latency_ms"] > 0

    turn = Turn.objects.get(pk=body["turn_id"])
    assert (turn.knowledge_base, turn.source, turn.query, turn.answer) == (
        embedded_knowledge_base,
        Turn.Source.SERVED,
        VITAMIN_D_QUERY,
        body["answer"],
    )
    assert (turn.retriever_version, turn.generator_version) == ("base", "extractive")
    stored = [
        {"rank": p.rank, "score": p.score, "document": p.source_id, "chunk": p.chunk_id, "title": p.title, "text": p.text}
        for p in turn.passages.order_by("rank")
    ]
    assert stored == passages
    for passage in turn.passages.select_related("chunk__document", "document"):
        assert passage.chunk.document == passage.document
        assert passage.document.external_id == passage.source_id
        assert passage.chunk.text == passage.text
    assert row_counts() == {**before, "Turn": before["Turn"] + 1, "RetrievedPassage": before["RetrievedPassage"] + 3}

    # GET gives back exactly what ask answered.
    assert api.get(f"{API}/turns/{turn.pk}").json() == body


def test_ask_on_a_kb_without_documents_says_it_found_no_answer(api, knowledge_base):
    response = post_json(api, f"{API}/kbs/test-kb/ask", {"query": VITAMIN_D_QUERY})

    assert response.status_code == 200, response.content
    assert response.json()["passages"] == []
    assert response.json()["answer"]
    assert Turn.objects.filter(pk=response.json()["turn_id"]).exists()


def test_a_generator_failure_is_a_502_and_stores_no_turn(admin_user, sample_documents):
    broken = knowledge_base_create(slug="hf-kb", generator_backend="hf", generator_model="/no/such/model")
    documents_ingest(knowledge_base=broken, documents=sample_documents)
    embed_everything_now(broken)
    _, plain = api_token_create(user=admin_user, name="hf", knowledge_bases=[broken])
    before = row_counts()

    response = post_json(client_with_token(plain), f"{API}/kbs/hf-kb/ask", {"query": VITAMIN_D_QUERY})

    assert_error(response, 502, "generator (hf:/no/such/model) failed", "/no/such/model")
    assert row_counts() == before


def test_retrieve_logs_nothing_and_honours_k(api, embedded_knowledge_base):
    before = row_counts()

    top_two = post_json(api, f"{API}/kbs/test-kb/retrieve", {"query": VITAMIN_D_QUERY, "k": 2}).json()
    default_k = post_json(api, f"{API}/kbs/test-kb/retrieve", {"query": "Why does coffee keep me awake?"}).json()

    assert top_two["retriever_version"] == "base"
    assert [p["rank"] for p in top_two["passages"]] == [1, 2]
    assert top_two["passages"][0]["document"] == "d-vitd"
    chunk_count = Chunk.objects.filter(knowledge_base=embedded_knowledge_base).count()
    assert len(default_k["passages"]) == min(10, chunk_count)  # k defaults to 10
    assert default_k["passages"][0]["document"] == "d-coffee"
    for passage in top_two["passages"] + default_k["passages"]:
        chunk = Chunk.objects.select_related("document").get(pk=passage["chunk"])
        assert (chunk.document.external_id, chunk.text) == (passage["document"], passage["text"])
    assert row_counts() == before


def test_retrieve_with_a_named_retriever_version(api, embedded_knowledge_base):
    dimensions = embedded_knowledge_base.live_space.dimensions
    EmbeddingSpace.objects.create(
        knowledge_base=embedded_knowledge_base,
        retriever_version="v2",
        model_reference=BASE_MODEL_REFERENCE,
        dimensions=dimensions,
        status=EmbeddingSpace.Status.READY,
    )
    embed_everything_now(embedded_knowledge_base)
    EmbeddingSpace.objects.create(
        knowledge_base=embedded_knowledge_base,
        retriever_version="v3",
        model_reference=BASE_MODEL_REFERENCE,
        dimensions=dimensions,
        status=EmbeddingSpace.Status.BUILDING,
    )
    url = f"{API}/kbs/test-kb/retrieve"

    live = post_json(api, url, {"query": VITAMIN_D_QUERY, "k": 3}).json()
    v2 = post_json(api, url, {"query": VITAMIN_D_QUERY, "k": 3, "retriever_version": "v2"}).json()

    assert v2["retriever_version"] == "v2"
    # The same model embedded the v2 space, so it ranks the same chunks the same way.
    assert [p["chunk"] for p in v2["passages"]] == [p["chunk"] for p in live["passages"]]
    assert [p["score"] for p in v2["passages"]] == pytest.approx([p["score"] for p in live["passages"]], abs=1e-5)

    assert_error(post_json(api, url, {"query": VITAMIN_D_QUERY, "retriever_version": "v9"}), 404, "'v9'", "not found")
    assert_error(post_json(api, url, {"query": VITAMIN_D_QUERY, "retriever_version": "v3"}), 422, "'v3'", "not ready")


# --- turns from external RAG apps -------------------------------------------------------


def _external_turns():
    return [
        {
            "external_id": "chat-1",
            "query": "Is vitamin D good for bones?",
            "answer": "Yes, it reduces hip fractures.",
            "passages": [
                {"text": "Vitamin D reduced hip fractures.", "source_id": "d-vitd", "score": 0.9, "title": "Vit D"},
                {"text": "Some wiki page.", "source_id": "wiki-42", "score": 0.4},
            ],
            "feedback": 1,
            "feedback_comment": "helpful",
            "retriever_version": "their-bm25",
            "generator_version": "gpt-x",
            "latency_ms": 123.5,
            "metadata": {"session": "s-1"},
            "created_at": "2024-03-01T12:30:00+00:00",
        },
        {"external_id": "chat-2", "query": "What do statins do?"},
    ]


def test_ingested_turns_are_stored_with_their_passages_and_are_idempotent(api, embedded_knowledge_base):
    url = f"{API}/kbs/test-kb/turns"
    before = row_counts()

    first = post_json(api, url, {"turns": _external_turns()})

    assert first.status_code == 200, first.content
    body = first.json()
    assert (body["created"], body["existing"]) == (2, 0)
    assert [(t["external_id"], t["created"]) for t in body["turns"]] == [("chat-1", True), ("chat-2", True)]
    ids = {t["external_id"]: t["turn_id"] for t in body["turns"]}
    turn = Turn.objects.get(pk=ids["chat-1"])
    assert (turn.knowledge_base, turn.source, turn.external_id) == (embedded_knowledge_base, Turn.Source.INGESTED, "chat-1")
    assert (turn.query, turn.answer, turn.feedback, turn.feedback_comment) == (
        "Is vitamin D good for bones?",
        "Yes, it reduces hip fractures.",
        1,
        "helpful",
    )
    assert (turn.retriever_version, turn.generator_version, turn.latency_ms) == ("their-bm25", "gpt-x", 123.5)
    assert turn.metadata == {"session": "s-1"}
    assert turn.created_at == datetime(2024, 3, 1, 12, 30, tzinfo=timezone.utc)
    passages = list(turn.passages.order_by("rank"))
    assert [(p.rank, p.source_id, p.score, p.text, p.chunk_id) for p in passages] == [
        (1, "d-vitd", 0.9, "Vitamin D reduced hip fractures.", None),
        (2, "wiki-42", 0.4, "Some wiki page.", None),
    ]
    # A source id naming a document of the KB links the passage to it.
    assert passages[0].document == Document.objects.get(knowledge_base=embedded_knowledge_base, external_id="d-vitd")
    assert passages[1].document is None
    plain = Turn.objects.get(pk=ids["chat-2"])
    assert (plain.passages.count(), plain.feedback, plain.answer) == (0, None, "")
    after_first = row_counts()
    assert after_first == {**before, "Turn": before["Turn"] + 2, "RetrievedPassage": before["RetrievedPassage"] + 2}

    again = post_json(api, url, {"turns": _external_turns()}).json()

    assert (again["created"], again["existing"]) == (0, 2)
    assert {t["external_id"]: t["turn_id"] for t in again["turns"]} == ids
    assert not any(t["created"] for t in again["turns"])
    assert row_counts() == after_first

    mixed = post_json(api, url, {"turns": [{"external_id": "chat-3", "query": "Coffee?"}, _external_turns()[1]]}).json()
    assert (mixed["created"], mixed["existing"]) == (1, 1)
    assert [(t["external_id"], t["created"]) for t in mixed["turns"]] == [("chat-3", True), ("chat-2", False)]
    assert mixed["turns"][1]["turn_id"] == ids["chat-2"]

    # GET shows an ingested turn's passages by their source ids.
    shown = api.get(f"{API}/turns/{ids['chat-1']}").json()
    assert (shown["source"], shown["external_id"], shown["created_at"]) == ("ingested", "chat-1", "2024-03-01T12:30:00+00:00")
    assert [(p["rank"], p["document"], p["chunk"], p["score"]) for p in shown["passages"]] == [
        (1, "d-vitd", None, 0.9),
        (2, "wiki-42", None, 0.4),
    ]


def test_a_batch_with_a_duplicate_external_id_writes_nothing(api, knowledge_base):
    before = row_counts()
    turns = [{"external_id": "dup", "query": "one"}, {"external_id": "ok", "query": "two"}, {"external_id": "dup", "query": "three"}]

    response = post_json(api, f"{API}/kbs/test-kb/turns", {"turns": turns})

    assert_error(response, 422, "more than once", "dup")
    assert row_counts() == before


BAD_TURNS = [
    pytest.param({"query": "q"}, ["turns.0.external_id", "required"], id="missing-external-id"),
    pytest.param({"external_id": "t"}, ["turns.0.query", "required"], id="missing-query"),
    pytest.param({"external_id": 7, "query": "q"}, ["turns.0.external_id"], id="external-id-not-a-string"),
    pytest.param({"external_id": "t", "query": "   "}, ["'t'", "empty query"], id="blank-query"),
    pytest.param({"external_id": "t", "query": "q\u0000"}, ["turns.0.query", "NUL"], id="nul-in-query"),
    pytest.param({"external_id": "t", "query": "q", "passages": [{"source_id": "x"}]}, ["turns.0.passages.0.text", "required"], id="passage-without-text"),
    pytest.param({"external_id": "t", "query": "q", "passages": "p"}, ["turns.0.passages"], id="passages-not-a-list"),
    pytest.param({"external_id": "t", "query": "q", "feedback": 5}, ["'t'", "feedback"], id="feedback-5"),
    pytest.param({"external_id": "t", "query": "q", "feedback": True}, ["turns.0.feedback"], id="feedback-true"),
    pytest.param({"external_id": "t", "query": "q", "latency_ms": -1}, ["turns.0.latency_ms"], id="negative-latency"),
    pytest.param({"external_id": "t", "query": "q", "latency_ms": False}, ["turns.0.latency_ms"], id="boolean-latency"),
    pytest.param({"external_id": "t", "query": "q", "latency_ms": "12"}, ["turns.0.latency_ms"], id="string-latency"),
    pytest.param({"external_id": "t", "query": "q", "passages": [{"text": "p", "score": True}]}, ["turns.0.passages.0.score"], id="boolean-score"),
    pytest.param({"external_id": "t", "query": "q", "latency_ms": float("inf")}, ["turns.0.latency_ms"], id="infinite-latency"),
    pytest.param({"external_id": "t", "query": "q", "passages": [{"text": "p", "score": float("nan")}]}, ["turns.0.passages.0.score"], id="nan-score"),
    pytest.param({"external_id": "t", "query": "q", "metadata": ["a"]}, ["turns.0.metadata"], id="metadata-not-an-object"),
    pytest.param({"external_id": "t", "query": "q", "metadata": {"note": ["x\u0000"]}}, ["turns.0.metadata", "NUL"], id="nul-in-metadata"),
    pytest.param({"external_id": "t", "query": "q", "metadata": {"k\u0000": 1}}, ["turns.0.metadata", "NUL"], id="nul-in-metadata-key"),
    pytest.param({"external_id": "t", "query": "q", "created_at": "2024-03-01T12:00:00"}, ["turns.0.created_at", "zone"], id="naive-created-at"),
    pytest.param({"external_id": "t", "query": "q", "created_at": "2024-13-45T00:00:00Z"}, ["turns.0.created_at", "2024-13-45"], id="impossible-created-at"),
    pytest.param({"external_id": "t", "query": "q", "created_at": "yesterday"}, ["turns.0.created_at"], id="garbage-created-at"),
]


@pytest.mark.parametrize("bad_turn,fragments", BAD_TURNS)
def test_a_batch_with_one_bad_turn_is_refused_whole(api, knowledge_base, bad_turn, fragments):
    before = row_counts()
    good = {"external_id": "good", "query": "fine", "passages": [{"text": "p", "source_id": "d-vitd"}]}

    response = post_json(api, f"{API}/kbs/test-kb/turns", {"turns": [bad_turn, good]})

    assert_error(response, 422, *fragments)
    assert row_counts() == before


@pytest.mark.parametrize(
    "payload,fragment",
    [
        ({}, "turns"),
        ({"turns": []}, "turns"),
        ({"turns": "chat-1"}, "turns"),
        ({"turns": [1]}, "turns.0"),
        ({"turns": [{"external_id": f"t{i}", "query": "q"} for i in range(1001)]}, "turns: list should have at most 1000"),
    ],
)
def test_a_batch_that_is_not_a_list_of_turns_is_refused(api, knowledge_base, payload, fragment):
    assert_error(post_json(api, f"{API}/kbs/test-kb/turns", payload), 422, fragment)
    assert Turn.objects.count() == 0


# --- feedback and turns -----------------------------------------------------------------


def test_feedback_is_set_and_cleared(api, served_turn):
    url = f"{API}/turns/{served_turn.pk}/feedback"

    down = post_json(api, url, {"feedback": -1, "comment": "wrong study"})

    assert down.status_code == 200, down.content
    assert (down.json()["feedback"], down.json()["feedback_comment"]) == (-1, "wrong study")
    served_turn.refresh_from_db()
    assert (served_turn.feedback, served_turn.feedback_comment) == (-1, "wrong study")

    assert post_json(api, url, {"feedback": 1}).json()["feedback"] == 1
    cleared = post_json(api, url, {"feedback": None})
    assert (cleared.json()["feedback"], cleared.json()["feedback_comment"]) == (None, "")
    served_turn.refresh_from_db()
    assert (served_turn.feedback, served_turn.feedback_comment) == (None, "")


@pytest.mark.parametrize(
    "payload,fragments",
    [
        ({"feedback": 5}, ["feedback", "-1"]),
        ({"feedback": True}, ["feedback"]),
        ({"feedback": "up"}, ["feedback"]),
        ({}, ["feedback", "required"]),
        ({"feedback": 1, "comment": "a\u0000"}, ["comment", "NUL"]),
    ],
)
def test_bad_feedback_is_refused_and_changes_nothing(api, ingested_turn, payload, fragments):
    post_json(api, f"{API}/turns/{ingested_turn.pk}/feedback", {"feedback": -1, "comment": "kept"})

    assert_error(post_json(api, f"{API}/turns/{ingested_turn.pk}/feedback", payload), 422, *fragments)

    ingested_turn.refresh_from_db()
    assert (ingested_turn.feedback, ingested_turn.feedback_comment) == (-1, "kept")


@pytest.mark.parametrize("turn_id", ["987654", "99999999999999999999999"])
def test_an_unknown_turn_is_404(api, knowledge_base, turn_id):
    assert_error(api.get(f"{API}/turns/{turn_id}"), 404, f"turn {turn_id} not found")
    assert_error(post_json(api, f"{API}/turns/{turn_id}/feedback", {"feedback": 1}), 404, f"turn {turn_id}")


# --- documents --------------------------------------------------------------------------


BEIR_CORPUS = b"\n".join(
    json.dumps(row).encode()
    for row in [
        {"_id": "b-1", "title": "Iron", "text": "Iron deficiency causes anaemia.", "metadata": {"year": 2020}},
        {"_id": "b-2", "title": "Zinc", "text": "Zinc supports the immune system."},
    ]
)
NOTES = "Folic acid before pregnancy prevents neural tube defects.\n"
GUIDE = "Intro line.\n\n# Omega-3 guide\n\nFish oil lowers triglycerides.\n"


def _good_files():
    return [
        SimpleUploadedFile("corpus.jsonl", BEIR_CORPUS),
        SimpleUploadedFile("notes.txt", NOTES.encode()),
        SimpleUploadedFile("guide.md", GUIDE.encode()),
    ]


def test_uploaded_documents_are_stored_chunked_and_listed(api, knowledge_base):
    response = upload(api, "test-kb", *_good_files())

    assert response.status_code == 200, response.content
    result = response.json()
    chunks = Chunk.objects.filter(knowledge_base=knowledge_base)
    assert (result["created"], result["updated"], result["unchanged"]) == (4, 0, 0)
    assert result["chunks_created"] == chunks.count() >= 4
    [job] = EmbeddingJob.objects.filter(space__knowledge_base=knowledge_base)
    assert result["embedding_jobs"] == [job.pk]
    documents = {d.external_id: d for d in Document.objects.filter(knowledge_base=knowledge_base)}
    assert set(documents) == {"b-1", "b-2", "notes.txt", "guide.md"}
    assert (documents["b-1"].title, documents["b-1"].text, documents["b-1"].metadata) == (
        "Iron",
        "Iron deficiency causes anaemia.",
        {"year": 2020},
    )
    assert (documents["notes.txt"].title, documents["notes.txt"].text) == ("notes", NOTES.strip())
    assert documents["guide.md"].title == "Omega-3 guide"
    assert "triglycerides" in documents["guide.md"].text

    job_view = api.get(f"{API}/kbs/test-kb/embedding-jobs/{job.pk}").json()
    assert (job_view["status"], job_view["retriever_version"]) == ("queued", "base")
    assert (job_view["total_chunks"], job_view["embedded_chunks"]) == (chunks.count(), 0)

    listing = api.get(f"{API}/kbs/test-kb/documents").json()
    assert (listing["count"], listing["offset"]) == (4, 0)
    assert [item["external_id"] for item in listing["items"]] == ["b-1", "b-2", "guide.md", "notes.txt"]
    for item in listing["items"]:
        document = documents[item["external_id"]]
        assert item["chunks"] == document.chunks.count() >= 1
        assert (item["title"], item["content_hash"]) == (document.title, document.content_hash)
    first_page = api.get(f"{API}/kbs/test-kb/documents", {"limit": 2}).json()
    second_page = api.get(f"{API}/kbs/test-kb/documents", {"limit": 2, "offset": 2}).json()
    past_the_end = api.get(f"{API}/kbs/test-kb/documents", {"offset": 4}).json()
    assert [i["external_id"] for i in first_page["items"]] == ["b-1", "b-2"]
    assert ([i["external_id"] for i in second_page["items"]], second_page["offset"]) == (["guide.md", "notes.txt"], 2)
    assert (past_the_end["count"], past_the_end["items"]) == (4, [])

    # The same files again change nothing.
    before = row_counts()
    again = upload(api, "test-kb", *_good_files()).json()
    assert again == {"created": 0, "updated": 0, "unchanged": 4, "chunks_created": 0, "embedding_jobs": []}
    assert row_counts() == before


BAD_UPLOADS = [
    pytest.param("latin1.txt", "Café au lait".encode("latin-1"), ["latin1.txt", "UTF-8"], id="not-utf8"),
    pytest.param("binary.txt", b"abc\x00def", ["binary.txt", "NUL"], id="nul-byte"),
    pytest.param("blank.md", b"  \n\n\t ", ["blank.md", "empty"], id="empty-document"),
    pytest.param("nothing.txt", b"", ["nothing.txt", "empty"], id="empty-file"),
    pytest.param("corpus.jsonl", b'{"_id": "a", "text": "fine"}\n{"_id": "b", "text": \n', ["corpus.jsonl", "line 2", "JSON"], id="bad-jsonl-line"),
    pytest.param("corpus.jsonl", b'{"_id": "a", "text": "fine"}\n\n{"_id": "b"}\n', ["corpus.jsonl", "line 3", "text"], id="jsonl-without-text"),
    pytest.param("corpus.jsonl", b'{"_id": "a", "text": "fine\\u0000"}\n', ["corpus.jsonl", "line 1", "NUL"], id="jsonl-nul"),
    pytest.param("corpus.jsonl", b'{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n', ["corpus.jsonl", "line 2", "duplicate"], id="jsonl-duplicate-id"),
    pytest.param("corpus.jsonl", "Café".encode("latin-1"), ["corpus.jsonl", "UTF-8"], id="jsonl-not-utf8"),
    pytest.param("table.csv", b"a,b\n1,2\n", ["table.csv", "unsupported", ".csv"], id="unsupported-suffix"),
    pytest.param("README", b"hello", ["README", "unsupported"], id="no-suffix"),
    pytest.param("scan.pdf", b"%PDF-1.4 not really", ["scan.pdf", "PDF"], id="broken-pdf"),
]


@pytest.mark.parametrize("name,data,fragments", BAD_UPLOADS)
def test_an_upload_with_one_bad_file_writes_nothing(api, knowledge_base, name, data, fragments):
    before = row_counts()

    response = upload(api, "test-kb", SimpleUploadedFile("good.txt", b"A good document."), SimpleUploadedFile(name, data))

    assert_error(response, 422, *fragments)
    assert row_counts() == before


def test_an_upload_with_the_same_file_twice_writes_nothing(api, knowledge_base):
    files = [SimpleUploadedFile("notes.txt", b"one"), SimpleUploadedFile("notes.txt", b"two")]
    assert_error(upload(api, "test-kb", *files), 422, "notes.txt", "twice")
    assert Document.objects.count() == 0


def test_an_upload_without_files_is_refused(api, knowledge_base):
    assert_error(api.post(f"{API}/kbs/test-kb/documents", {"other": "x"}), 422, "files", "required")
    assert_error(post_json(api, f"{API}/kbs/test-kb/documents", {"files": ["a.txt"]}), 422, "files")
    assert Document.objects.count() == 0


def test_an_upload_of_too_many_files_is_a_json_400(api, knowledge_base, settings):
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 3
    files = [SimpleUploadedFile(f"n{i}.txt", b"text %d" % i) for i in range(4)]

    assert_error(upload(api, "test-kb", *files), 400, "number of files")
    assert Document.objects.count() == 0


def test_an_overlong_document_id_is_refused(api, knowledge_base):
    corpus = json.dumps({"_id": "x" * 600, "text": "Too long an id."}).encode()

    response = upload(api, "test-kb", SimpleUploadedFile("corpus.jsonl", corpus))

    assert_error(response, 422, "corpus.jsonl", "line 1", "512")
    assert Document.objects.count() == 0


def test_nul_in_document_metadata_is_refused(api, knowledge_base):
    corpus = json.dumps({"_id": "m", "text": "Text.", "metadata": {"note": ["a\u0000b"]}}).encode()

    response = upload(api, "test-kb", SimpleUploadedFile("corpus.jsonl", corpus))

    assert_error(response, 422, "corpus.jsonl", "line 1", "NUL")
    assert Document.objects.count() == 0


@pytest.mark.parametrize(
    "params,fragment",
    [({"offset": -1}, "offset"), ({"limit": 0}, "limit"), ({"limit": 501}, "limit"), ({"offset": 10**20}, "offset"), ({"offset": "abc"}, "offset")],
)
def test_document_list_paging_out_of_range_is_422(api, knowledge_base, params, fragment):
    assert_error(api.get(f"{API}/kbs/test-kb/documents", params), 422, fragment)


def test_an_unknown_embedding_job_is_404(api, knowledge_base):
    assert_error(api.get(f"{API}/kbs/test-kb/embedding-jobs/424242"), 404, "424242")


# --- malformed requests -----------------------------------------------------------------


@pytest.mark.parametrize(
    "body,fragment",
    [
        pytest.param("{", "", id="truncated"),
        pytest.param("{'query': 'single quotes'}", "", id="not-json"),
        pytest.param(b"\xff\xfe\xfa", "", id="not-utf8"),
        pytest.param("[]", "JSON object", id="a-list"),
        pytest.param("null", "JSON object", id="null"),
        pytest.param('"vitamin D"', "JSON object", id="a-string"),
    ],
)
@pytest.mark.parametrize("endpoint", ["kbs/test-kb/ask", "kbs/test-kb/retrieve", "kbs/test-kb/turns"])
def test_a_body_that_is_not_a_json_object_is_a_400(api, knowledge_base, body, fragment, endpoint):
    before = row_counts()

    response = post_json(api, f"{API}/{endpoint}", body)

    assert_error(response, 400, "cannot parse request body", fragment)
    assert row_counts() == before


BAD_ASKS = [
    pytest.param({"k": 3}, ["query", "required"], id="missing-query"),
    pytest.param({"query": 123}, ["query", "string"], id="query-not-a-string"),
    pytest.param({"query": ["vitamin"]}, ["query"], id="query-a-list"),
    pytest.param({"query": ""}, ["query"], id="empty-query"),
    pytest.param({"query": "   "}, ["query", "empty"], id="blank-query"),
    pytest.param({"query": "vitamin\u0000D"}, ["query", "NUL"], id="nul-in-query"),
    pytest.param({"query": "x" * 4001}, ["query", "4000"], id="query-too-long"),
    pytest.param({"query": "vitamin", "k": 0}, ["k", "greater than or equal to 1"], id="k-0"),
    pytest.param({"query": "vitamin", "k": 101}, ["k", "less than or equal to 100"], id="k-101"),
    pytest.param({"query": "vitamin", "k": -5}, ["k"], id="k-negative"),
    pytest.param({"query": "vitamin", "k": 2.5}, ["k", "integer"], id="k-fraction"),
    pytest.param({"query": "vitamin", "k": "5"}, ["k", "integer"], id="k-a-string"),
    pytest.param({"query": "vitamin", "k": True}, ["k", "integer"], id="k-true"),
    pytest.param({"query": "vitamin", "k": None}, ["k"], id="k-null"),
]


@pytest.mark.parametrize("payload,fragments", BAD_ASKS)
@pytest.mark.parametrize("endpoint", ["ask", "retrieve"])
def test_a_bad_ask_or_retrieve_is_422_naming_the_field(api, knowledge_base, payload, fragments, endpoint):
    before = row_counts()

    response = post_json(api, f"{API}/kbs/test-kb/{endpoint}", payload)

    assert_error(response, 422, *fragments)
    assert row_counts() == before


def test_an_integer_written_with_a_zero_fraction_is_the_integer_the_schema_allows(api, embedded_knowledge_base):
    """JSON Schema's "integer" admits 81.0; the API's behaviour and its schema agree."""
    schema = api.get(f"{API}/openapi.json").json()
    ask_body = schema["paths"][f"{API}/kbs/{{slug}}/ask"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert schema["components"]["schemas"][ask_body["$ref"].rsplit("/", 1)[1]]["properties"]["k"]["type"] == "integer"

    response = post_json(api, f"{API}/kbs/test-kb/retrieve", {"query": "vitamin", "k": 3.0})

    assert response.status_code == 200, response.content
    assert len(response.json()["passages"]) == 3


def test_every_operation_documents_its_400_and_401(api):
    schema = api.get(f"{API}/openapi.json").json()
    operations = [(path, method, op) for path, item in schema["paths"].items() for method, op in item.items()]
    assert len(operations) > 10
    for path, method, operation in operations:
        assert {"400", "401"} <= set(operation["responses"]), f"{method.upper()} {path}: {sorted(operation['responses'])}"


def test_a_nul_retriever_version_is_422(api, knowledge_base):
    response = post_json(api, f"{API}/kbs/test-kb/retrieve", {"query": "vitamin", "retriever_version": "v\u0000"})
    assert_error(response, 422, "retriever_version", "NUL")


def test_oversized_bodies_are_413_and_write_nothing(api, embedded_knowledge_base, settings):
    settings.RAGLOOP_MAX_REQUEST_BYTES = 1000
    before = row_counts()
    long_query = "vitamin D " * 150

    assert_error(post_json(api, f"{API}/kbs/test-kb/ask", {"query": long_query}), 413, "limit is 1000 bytes")
    turns = {"turns": [{"external_id": f"t{i}", "query": long_query} for i in range(3)]}
    assert_error(post_json(api, f"{API}/kbs/test-kb/turns", turns), 413, "1000")
    big_file = SimpleUploadedFile("big.txt", b"Calcium and bones. " * 100)
    assert_error(upload(api, "test-kb", big_file), 413, "1000")
    assert row_counts() == before

    # Just under the limit is served.
    assert post_json(api, f"{API}/kbs/test-kb/ask", {"query": "vitamin D " * 10}).status_code == 200


def test_a_body_over_djangos_own_limit_is_a_json_413(api, knowledge_base, settings):
    # Django's DATA_UPLOAD_MAX_MEMORY_SIZE still guards bodies the middleware lets through
    # (one sent without a Content-Length, say).
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 200

    response = post_json(api, f"{API}/kbs/test-kb/ask", {"query": "vitamin D " * 50})

    assert_error(response, 413, "DATA_UPLOAD_MAX_MEMORY_SIZE")
    assert Turn.objects.count() == 0


def test_a_content_length_that_is_not_a_number_is_400(api, knowledge_base):
    response = api.post(f"{API}/kbs/test-kb/ask", data="{}", content_type="application/json", CONTENT_LENGTH="lots")
    assert_error(response, 400, "Content-Length")


# A slug with NUL ("a%00b") is refused before routing: tests/knowledge/test_malformed_input.py.
@pytest.mark.parametrize("slug", ["no-such-kb", "x" * 300, "Test-KB"])
def test_an_unknown_kb_is_404_naming_it(api, knowledge_base, slug):
    named = slug.replace("%00", "\\x00")
    before = row_counts()
    for response in [
        post_json(api, f"{API}/kbs/{slug}/ask", {"query": "vitamin"}),
        post_json(api, f"{API}/kbs/{slug}/retrieve", {"query": "vitamin"}),
        post_json(api, f"{API}/kbs/{slug}/turns", {"turns": [{"external_id": "t", "query": "q"}]}),
        upload(api, slug, SimpleUploadedFile("a.txt", b"text")),
        api.get(f"{API}/kbs/{slug}/documents"),
        api.get(f"{API}/kbs/{slug}/embedding-jobs/1"),
    ]:
        assert_error(response, 404, named, "not found")
    assert row_counts() == before


# --- schema and docs --------------------------------------------------------------------


def test_the_openapi_schema_lists_the_endpoints(client):
    response = client.get(f"{API}/openapi.json")

    assert response.status_code == 200
    schema = response.json()
    paths = schema["paths"]
    expected = {
        f"{API}/kbs": {"get"},
        f"{API}/kbs/{{slug}}/ask": {"post"},
        f"{API}/kbs/{{slug}}/retrieve": {"post"},
        f"{API}/kbs/{{slug}}/turns": {"post"},
        f"{API}/kbs/{{slug}}/documents": {"get", "post"},
        f"{API}/turns/{{turn_id}}": {"get"},
        f"{API}/turns/{{turn_id}}/feedback": {"post"},
    }
    for path, methods in expected.items():
        assert methods <= set(paths[path]), path
    ask = paths[f"{API}/kbs/{{slug}}/ask"]["post"]
    assert {"200", "401", "404", "422"} <= set(ask["responses"])
    assert any(scheme["scheme"] == "bearer" for scheme in schema["components"]["securitySchemes"].values())
    upload_body = paths[f"{API}/kbs/{{slug}}/documents"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in upload_body


def test_the_docs_page_uses_static_assets_not_a_cdn(client):
    response = client.get(f"{API}/docs")

    assert response.status_code == 200
    page = response.content.decode()
    assert "/static/ninja/swagger-ui" in page
    for cdn in ("cdn.", "unpkg.com", "jsdelivr", "cdnjs", "https://"):
        assert cdn not in page
    assert finders.find("ninja/swagger-ui.css") and finders.find("ninja/swagger-ui-bundle.js")
