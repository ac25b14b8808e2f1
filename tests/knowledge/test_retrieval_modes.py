"""Retrieval modes (docs/retrieval.md): BM25 in PostgreSQL on a hand-computed case, a rare keyword
that lexical retrieval finds and dense retrieval ranks low, hybrid as the RRF of both, and the
mode chosen by the knowledge base, the API's `mode` parameter and `retrieve --mode`, recorded on
the turn."""

import json
import math
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from knowledge.errors import InvalidInput
from knowledge.models import Chunk, Document, RetrievalMode, Turn
from knowledge.selectors import (
    BM25_B,
    BM25_K1,
    passages_retrieve,
    passages_retrieve_lexical,
    passages_search,
)
from knowledge.services.documents import documents_ingest
from knowledge.services.knowledge_bases import knowledge_base_create, knowledge_base_retrieval_mode_set
from knowledge.services.tokens import api_token_create
from knowledge.services.turns import turn_ask
from rag.documents import SourceDocument
from rag.fusion import reciprocal_rank_fusion
from tests.conftest import embed_everything_now

API = "/api/v1"
# A made-up drug name: one chunk mentions it, in passing, in a text about something else; the
# others are about exactly what the rest of the query asks. The embedding model has never seen
# the word, so dense retrieval ranks the topical chunks first.
KEYWORD_QUERY = "What dose of zorblatide do heart failure patients take?"
KEYWORD_DOCUMENT = "d-garden"
# About dosing drugs in heart failure in other words (no "dose", "patients" or "take"), so the
# keyword chunk's one rare lexeme outweighs their common ones ("heart", "failure") in BM25.
HEART_FAILURE_TEXTS = [
    "In heart failure, loop diuretics are given daily in milligram amounts adjusted to fluid overload.",
    "For chronic heart failure the beta blocker is titrated upwards slowly every two weeks.",
    "People with heart failure receive ACE inhibitors at the highest amount they tolerate.",
    "Digoxin in heart failure is prescribed in smaller amounts when kidney function declines.",
    "Sacubitril with valsartan replaced enalapril for many people with heart failure.",
    "Spironolactone regimens in heart failure require monitoring of potassium levels.",
]
KEYWORD_TEXT = (
    "Gardeners in the allotment study grew tomatoes, beans and onions in raised beds with compost; "
    "the prize for the largest marrow went to a variety its grower had named zorblatide."
)


@pytest.fixture
def keyword_knowledge_base(db):
    knowledge_base = knowledge_base_create(slug="keyword-kb")
    documents = [
        SourceDocument(external_id=f"d-hf-{i}", title="", text=text, metadata={}) for i, text in enumerate(HEART_FAILURE_TEXTS)
    ]
    documents.append(SourceDocument(external_id=KEYWORD_DOCUMENT, title="", text=KEYWORD_TEXT, metadata={}))
    documents_ingest(knowledge_base=knowledge_base, documents=documents)
    embed_everything_now(knowledge_base)
    return knowledge_base


def _documents(passages) -> list[str]:
    return [p.document_external_id for p in passages]


def test_bm25_in_postgres_matches_the_formula_computed_by_hand(knowledge_base):
    document = Document.objects.create(knowledge_base=knowledge_base, external_id="d", text="-", content_hash="-")
    Chunk.objects.bulk_create([
        Chunk(document=document, knowledge_base=knowledge_base, order=0, text="apple banana", token_count=2),
        Chunk(document=document, knowledge_base=knowledge_base, order=1, text="apples cherry cherries", token_count=3),
        Chunk(document=document, knowledge_base=knowledge_base, order=2, text="date", token_count=1),
    ])  # fmt: skip
    first, second, _ = Chunk.objects.filter(document=document).order_by("order")

    hits = passages_retrieve_lexical(knowledge_base=knowledge_base, query="Cherry and apple?", k=10)

    # N = 3 chunks, mean length 2; "appl" is in 2 chunks, "cherri" in 1 (the English stemmer
    # makes cherry and cherries one lexeme, and drops "and").
    def idf(df):
        return math.log(1 + (3 - df + 0.5) / (df + 0.5))

    def saturation(tf, length):
        return tf * (BM25_K1 + 1) / (tf + BM25_K1 * (1 - BM25_B + BM25_B * length / 2))

    assert [(hit.chunk_id, hit.rank) for hit in hits] == [(second.pk, 1), (first.pk, 2)]  # "date" shares no lexeme
    assert hits[0].score == pytest.approx(idf(2) * saturation(1, 3) + idf(1) * saturation(2, 3))
    assert hits[1].score == pytest.approx(idf(2) * saturation(1, 2))
    assert hits[0].score == pytest.approx(0.47000363 * 0.91346154 + 0.98082925 * 1.23376623)  # 1.6394
    assert passages_retrieve_lexical(knowledge_base=knowledge_base, query="the and of", k=10) == []  # stop words only


def test_lexical_mode_finds_a_rare_keyword_that_dense_ranks_low(keyword_knowledge_base):
    dense = passages_search(knowledge_base=keyword_knowledge_base, query=KEYWORD_QUERY, k=7, mode="dense")
    lexical = passages_search(knowledge_base=keyword_knowledge_base, query=KEYWORD_QUERY, k=7, mode="lexical")

    assert dense.mode == "dense" and dense.retriever_version == "base"
    assert _documents(dense.passages).index(KEYWORD_DOCUMENT) >= 4  # among the last of 7
    assert (lexical.mode, lexical.retriever_version) == ("lexical", "bm25")
    assert _documents(lexical.passages)[0] == KEYWORD_DOCUMENT
    assert [p.rank for p in lexical.passages] == list(range(1, len(lexical.passages) + 1))
    scores = [p.score for p in lexical.passages]
    assert scores == sorted(scores, reverse=True) and scores[-1] > 0


def test_hybrid_mode_returns_the_union_ranked_by_rrf(keyword_knowledge_base):
    space = keyword_knowledge_base.live_space
    dense = passages_retrieve(space=space, query=KEYWORD_QUERY, k=50)
    lexical = passages_retrieve_lexical(knowledge_base=keyword_knowledge_base, query=KEYWORD_QUERY, k=50)
    expected = reciprocal_rank_fusion([[p.chunk_id for p in dense], [p.chunk_id for p in lexical]], k=60)

    hybrid = passages_search(knowledge_base=keyword_knowledge_base, query=KEYWORD_QUERY, k=20, mode="hybrid")

    assert (hybrid.mode, hybrid.retriever_version) == ("hybrid", "base+bm25/rrf60")
    assert {p.chunk_id for p in hybrid.passages} == {p.chunk_id for p in dense} | {p.chunk_id for p in lexical}
    assert [(p.chunk_id, p.score) for p in hybrid.passages] == [(chunk_id, pytest.approx(score)) for chunk_id, score in expected]
    assert [p.rank for p in hybrid.passages] == list(range(1, len(expected) + 1))
    # the keyword chunk: low in dense, first in lexical, in the hybrid top 3
    top_three = passages_search(knowledge_base=keyword_knowledge_base, query=KEYWORD_QUERY, k=3, mode="hybrid")
    assert KEYWORD_DOCUMENT in _documents(top_three.passages)
    assert KEYWORD_DOCUMENT not in _documents(dense[:3])
    by_chunk = {p.chunk_id: p for p in dense}
    assert all(p.text == by_chunk[p.chunk_id].text for p in hybrid.passages)


def test_weighted_score_fusion_is_the_other_hybrid(keyword_knowledge_base, settings):
    settings.RAGLOOP_HYBRID_FUSION, settings.RAGLOOP_HYBRID_ALPHA = "score", 0.0  # lexical alone decides
    hybrid = passages_search(knowledge_base=keyword_knowledge_base, query=KEYWORD_QUERY, k=3, mode="hybrid")
    assert hybrid.retriever_version == "base+bm25/score-a0"
    assert _documents(hybrid.passages)[0] == KEYWORD_DOCUMENT and hybrid.passages[0].score == pytest.approx(1.0)


def test_the_knowledge_base_mode_serves_and_the_turn_records_it(keyword_knowledge_base):
    assert keyword_knowledge_base.retrieval_mode == RetrievalMode.DENSE  # the default
    dense_turn = turn_ask(knowledge_base=keyword_knowledge_base, query=KEYWORD_QUERY, k=3)
    knowledge_base_retrieval_mode_set(knowledge_base=keyword_knowledge_base, mode="lexical")
    lexical_turn = turn_ask(knowledge_base=keyword_knowledge_base, query=KEYWORD_QUERY, k=3)
    hybrid_turn = turn_ask(knowledge_base=keyword_knowledge_base, query=KEYWORD_QUERY, k=3, mode="hybrid")

    stored = {t.pk: t for t in Turn.objects.filter(pk__in=[dense_turn.pk, lexical_turn.pk, hybrid_turn.pk])}
    assert (stored[dense_turn.pk].retrieval_mode, stored[dense_turn.pk].retriever_version) == ("dense", "base")
    assert (stored[lexical_turn.pk].retrieval_mode, stored[lexical_turn.pk].retriever_version) == ("lexical", "bm25")
    assert (stored[hybrid_turn.pk].retrieval_mode, stored[hybrid_turn.pk].retriever_version) == ("hybrid", "base+bm25/rrf60")
    assert stored[lexical_turn.pk].passages.first().source_id == KEYWORD_DOCUMENT
    assert KEYWORD_DOCUMENT not in [p.source_id for p in stored[dense_turn.pk].passages.all()]


def test_unknown_modes_are_refused_naming_the_allowed_ones(keyword_knowledge_base):
    before = Turn.objects.count()
    for call in (
        lambda: passages_search(knowledge_base=keyword_knowledge_base, query="dose", k=3, mode="sparse"),
        lambda: turn_ask(knowledge_base=keyword_knowledge_base, query="dose", mode="bm25"),
        lambda: knowledge_base_retrieval_mode_set(knowledge_base=keyword_knowledge_base, mode="Dense"),
        lambda: knowledge_base_create(slug="other-kb", retrieval_mode="both"),
    ):
        with pytest.raises(InvalidInput, match="dense, lexical, hybrid"):
            call()
    with pytest.raises(InvalidInput, match="no retriever version"):
        passages_search(knowledge_base=keyword_knowledge_base, query="dose", k=3, mode="lexical", retriever_version="base")
    assert Turn.objects.count() == before
    keyword_knowledge_base.refresh_from_db()
    assert keyword_knowledge_base.retrieval_mode == "dense"


# --- the API and the command ----------------------------------------------------------------


@pytest.fixture
def keyword_api(client, admin_user, keyword_knowledge_base):
    _, plain = api_token_create(user=admin_user, name="modes", knowledge_bases=[keyword_knowledge_base])
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {plain}"
    return client


def _post(client, url, payload):
    return client.post(url, data=json.dumps(payload), content_type="application/json")


def test_the_api_mode_parameter_on_retrieve_and_ask(keyword_api, keyword_knowledge_base):
    url = f"{API}/kbs/keyword-kb"
    by_mode = {}
    for mode in ("dense", "lexical", "hybrid"):
        response = _post(keyword_api, f"{url}/retrieve", {"query": KEYWORD_QUERY, "k": 3, "mode": mode})
        assert response.status_code == 200, response.content
        by_mode[mode] = response.json()
    default = _post(keyword_api, f"{url}/retrieve", {"query": KEYWORD_QUERY, "k": 3}).json()

    assert (default["mode"], default["retriever_version"]) == ("dense", "base")
    assert default["passages"] == by_mode["dense"]["passages"]
    assert by_mode["lexical"]["retriever_version"] == "bm25"
    assert by_mode["lexical"]["passages"][0]["document"] == KEYWORD_DOCUMENT
    assert KEYWORD_DOCUMENT not in [p["document"] for p in by_mode["dense"]["passages"]]
    assert by_mode["hybrid"]["retriever_version"] == "base+bm25/rrf60"

    asked = _post(keyword_api, f"{url}/ask", {"query": KEYWORD_QUERY, "k": 3, "mode": "lexical"})
    assert asked.status_code == 200, asked.content
    body = asked.json()
    assert (body["retrieval_mode"], body["retriever_version"]) == ("lexical", "bm25")
    assert Turn.objects.get(pk=body["turn_id"]).retrieval_mode == "lexical"
    in_conversation = _post(keyword_api, f"{url}/ask", {"query": KEYWORD_QUERY, "mode": "hybrid", "start_conversation": True})
    assert in_conversation.json()["retrieval_mode"] == "hybrid"
    assert keyword_api.get(f"{API}/kbs").json()[0]["retrieval_mode"] == "dense"


def test_an_invalid_api_mode_is_422_naming_the_allowed_values(keyword_api, keyword_knowledge_base):
    before = Turn.objects.count()
    for endpoint in ("retrieve", "ask"):
        response = _post(keyword_api, f"{API}/kbs/keyword-kb/{endpoint}", {"query": KEYWORD_QUERY, "mode": "sparse"})
        assert response.status_code == 422, response.content
        detail = response.json()["detail"]
        assert detail.startswith("mode:") and all(name in detail for name in ("'dense'", "'lexical'", "'hybrid'")), detail
    response = _post(keyword_api, f"{API}/kbs/keyword-kb/retrieve", {"query": "x", "mode": "lexical", "retriever_version": "base"})
    assert response.status_code == 422 and "no retriever version" in response.json()["detail"]
    assert Turn.objects.count() == before


def test_the_openapi_schema_documents_the_mode(keyword_api):
    schema = keyword_api.get(f"{API}/openapi.json").json()
    for endpoint in ("retrieve", "ask"):
        body = schema["paths"][f"{API}/kbs/{{slug}}/{endpoint}"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        mode = schema["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]["properties"]["mode"]
        enums = [option.get("enum") for option in mode.get("anyOf", [mode]) if option.get("enum")]
        assert enums == [["dense", "lexical", "hybrid"]], mode
        assert "reciprocal rank fusion" in mode["description"]


def test_retrieve_command_mode(keyword_knowledge_base):
    out = StringIO()
    call_command("retrieve", "keyword-kb", KEYWORD_QUERY, "-k", "3", "--mode", "lexical", "--json", stdout=out)
    result = json.loads(out.getvalue())
    assert (result["mode"], result["retriever_version"]) == ("lexical", "bm25")
    assert result["passages"][0]["document"] == KEYWORD_DOCUMENT
    out = StringIO()
    call_command("retrieve", "keyword-kb", KEYWORD_QUERY, "-k", "3", "--json", stdout=out)
    assert json.loads(out.getvalue())["mode"] == "dense"
    with pytest.raises(CommandError, match="invalid choice"):
        call_command("retrieve", "keyword-kb", KEYWORD_QUERY, "--mode", "sparse", stdout=StringIO(), stderr=StringIO())


def test_a_repeated_dense_query_is_served_from_the_query_cache_with_the_same_ranking(keyword_knowledge_base):
    from knowledge.selectors import query_vector_cache

    cache = query_vector_cache()
    cache.clear()
    space = keyword_knowledge_base.embedding_spaces.get()
    first = passages_retrieve(space=space, query=KEYWORD_QUERY, k=3)
    again = passages_retrieve(space=space, query=f"  {KEYWORD_QUERY}  ", k=3)
    stats = cache.stats()
    assert (stats.hits, stats.misses) == (1, 1)
    assert [(p.chunk_id, round(p.score, 6)) for p in again] == [(p.chunk_id, round(p.score, 6)) for p in first]


def _server_timing(response) -> tuple[dict[str, float], dict[str, int]]:
    stages, cache = {}, {}
    for entry in response["Server-Timing"].split(", "):
        name, parameter = entry.split(";", 1)
        if name == "cache":
            cache = {k: int(v) for k, v in (pair.split("=") for pair in parameter.removeprefix('desc="').rstrip('"').split())}
        else:
            stages[name] = float(parameter.removeprefix("dur="))
    return stages, cache


def test_retrieve_and_ask_send_their_time_per_stage_and_the_query_cache_counts(keyword_api, keyword_knowledge_base):
    from knowledge.selectors import query_vector_cache

    query_vector_cache().clear()
    url = f"{API}/kbs/keyword-kb"
    first = _post(keyword_api, f"{url}/retrieve", {"query": KEYWORD_QUERY, "k": 3})
    again = _post(keyword_api, f"{url}/retrieve", {"query": KEYWORD_QUERY, "k": 3})
    (first_stages, first_cache), (_, again_cache) = _server_timing(first), _server_timing(again)
    assert {"embed", "first_stage", "rerank"} <= set(first_stages)
    assert all(value >= 0 for value in first_stages.values())
    assert (first_cache["hits"], first_cache["misses"]) == (0, 1)
    assert (again_cache["hits"], again_cache["misses"]) == (1, 1)

    asked = _post(keyword_api, f"{url}/ask", {"query": KEYWORD_QUERY, "k": 3})
    stages, cache = _server_timing(asked)
    assert {"embed", "first_stage", "generate", "store"} <= set(stages)
    assert cache["hits"] == 2
    stored = Turn.objects.get(pk=asked.json()["turn_id"]).latency_split
    assert stages["generate"] == pytest.approx(stored["generate"], abs=0.01)
