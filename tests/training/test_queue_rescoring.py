"""Re-scoring the curation queue with the current models (training.services.queue_rescoring):
the documented order, what a real promotion does to it, idempotence, stable random places, the
beat entry and the task, and the reason on the queue page at the same query count."""

import re

import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext

from curation.services.queue import QueueFilter, turn_next, turn_queue_list
from knowledge.models import EmbeddingSpace, Turn
from knowledge.services.turns import PassageRecord, TurnRecord, turn_feedback_set, turns_ingest
from rag.queue_priority import (
    CANDIDATE_AGREEMENT_THRESHOLD,
    LOW_CONFIDENCE_MARGIN,
    RANDOM_TIER,
    stable_random_order,
)
from training.models import Component, ModelVersion
from training.services import queue_rescoring
from training.services.queue_rescoring import turn_queue_rescore
from training.services.versions import model_version_promote, model_version_rollback

from ..conftest import embed_everything_now
from .conftest import retriever_version

# Asked of the four sample documents (tests/conftest.py).
QUERIES = {
    "statins": "Which enzyme do statins inhibit?",
    "vitd": "Does vitamin D prevent hip fractures in old people?",
    "sleep": "What does deep sleep do to memory?",
    "coffee": "Why does caffeine make people alert?",
    "vague": "Is it good for you?",
    "complaint": "Which enzyme do statins block?",
}


@pytest.fixture
def kb(embedded_knowledge_base):
    return embedded_knowledge_base


@pytest.fixture
def sent_rescorings(monkeypatch):
    """Record the task messages instead of sending them (other test runs share the broker)."""
    import training.tasks

    sent: list[int] = []
    monkeypatch.setattr(training.tasks.turn_queue_rescore_task, "delay", lambda kb_id: sent.append(kb_id))
    return sent


def _swapped_candidate(kb, name="retriever-v1") -> ModelVersion:
    """A full-mode candidate whose space holds the base vectors with two documents' swapped: it
    ranks the sleep abstract where the base ranks the statins one, and the other way round, so
    for a question about either its top document is the one the live retriever ranks last."""
    space = EmbeddingSpace.objects.create(
        knowledge_base=kb, retriever_version=name, model_reference="base:all-MiniLM-L6-v2", dimensions=384
    )
    embed_everything_now(kb)
    with connection.cursor() as cursor:
        cursor.execute(
            """
            WITH pairs AS (
                SELECT e.chunk_id, d.external_id, e.embedding FROM curation_chunkembedding e
                JOIN curation_chunk c ON c.id = e.chunk_id JOIN curation_document d ON d.id = c.document_id
                WHERE e.space_id = %s AND d.external_id IN ('d-sleep', 'd-statins')
            )
            UPDATE curation_chunkembedding e SET embedding = other.embedding
            FROM pairs mine, pairs other
            WHERE e.space_id = %s AND e.chunk_id = mine.chunk_id AND other.external_id <> mine.external_id
            """,
            [space.pk, space.pk],
        )
    return retriever_version(kb, name, space=space)


def _ingest(kb, names=QUERIES, scores=(0.9, 0.2)):
    records = [
        TurnRecord(external_id=name, query=QUERIES[name], answer=f"answer {name}",
                   passages=[PassageRecord(text=f"p{i} {name}", score=s) for i, s in enumerate(scores)])
        for name in names
    ]
    created = turns_ingest(knowledge_base=kb, records=records).created
    return {name: created[name] for name in names}


def _places(kb) -> dict[str, tuple]:
    return {
        t.external_id: (t.queue_tier, t.queue_order, t.queue_reason, t.queue_reason_value)
        for t in Turn.objects.filter(knowledge_base=kb)
    }


def _queue(kb) -> list[str]:
    return list(Turn.objects.filter(knowledge_base=kb, needs_labels=True)
                .order_by("queue_tier", "queue_order", "id").values_list("external_id", flat=True))


def _order_of_ingest_draws(kb, names) -> list[str]:
    return sorted(names, key=lambda name: Turn.objects.get(knowledge_base=kb, external_id=name).queue_order)


def test_rescoring_puts_feedback_first_then_candidate_disagreement_then_low_margin_then_the_random_sample(kb, curator):
    _swapped_candidate(kb)
    turns = _ingest(kb)
    turn_feedback_set(turn=Turn.objects.get(pk=turns["complaint"]), feedback=-1)
    assert {name: place[0] for name, place in _places(kb).items()} == {**dict.fromkeys(QUERIES, RANDOM_TIER), "complaint": 0}
    before = _places(kb)

    outcome = turn_queue_rescore(knowledge_base_id=kb.pk)

    assert (outcome.scored, outcome.moved, outcome.scored_with, outcome.stopped) == (5, 3, "base|retriever-v1", "")
    places = _places(kb)
    # The candidate ranks the statins and sleep abstracts the other way round: for those two
    # questions its top document is the one the live retriever ranks last (RBO 0.50).
    for name in ("statins", "sleep"):
        tier, order, reason, value = places[name]
        assert (tier, reason) == (1, "candidate") and value == pytest.approx(0.4999, abs=1e-4)
        assert value < CANDIDATE_AGREEMENT_THRESHOLD
        assert order == pytest.approx(value - 1, abs=1e-4)
    # A vague question: the live retriever's two best documents are 0.038 apart now, though the
    # passages stored at ingest were 0.7 apart.
    assert places["vague"][:3] == (1, pytest.approx(0.0384, abs=1e-3), "margin") and places["vague"][3] < LOW_CONFIDENCE_MARGIN
    assert places["complaint"] == before["complaint"]  # negative feedback keeps its place
    for name in ("vitd", "coffee"):  # still in the random sample: the same random place
        assert places[name] == before[name]
    assert _queue(kb) == ["complaint", "statins", "sleep", "vague", *_order_of_ingest_draws(kb, ["vitd", "coffee"])]
    assert turn_next(knowledge_base=kb, curator=curator).external_id == "complaint"
    assert turn_next(knowledge_base=kb, curator=curator, exclude=[turns["complaint"]]).external_id == "statins"


def test_a_promotion_queues_a_rescoring_and_the_task_moves_the_turns(
    kb, admin_user, sent_rescorings, django_capture_on_commit_callbacks
):
    from training.tasks import turn_queue_rescore_task

    candidate = _swapped_candidate(kb)
    turns = _ingest(kb)
    turn_queue_rescore_task(kb.pk)
    assert _places(kb)["statins"][2] == "candidate"
    vitd_before = _places(kb)["vitd"]

    with django_capture_on_commit_callbacks(execute=True):
        model_version_promote(version=candidate, actor=admin_user)
    assert sent_rescorings == [kb.pk]  # queued after the promotion committed
    turn_queue_rescore_task(kb.pk)

    places = _places(kb)
    # The candidate is live now and there is no newer one: nothing to disagree with. Under it the
    # statins question has a clear winner, so the turn joins the random sample, at the place
    # its id gives it (the same every time).
    assert places["statins"] == (RANDOM_TIER, stable_random_order(turns["statins"]), "", None)
    assert places["sleep"] == (RANDOM_TIER, stable_random_order(turns["sleep"]), "", None)
    assert places["vague"][2] == "margin"  # scored again under the new live version
    assert places["vitd"] == vitd_before
    assert set(Turn.objects.filter(knowledge_base=kb).values_list("queue_scored_with", flat=True)) == {"retriever-v1|"}

    with django_capture_on_commit_callbacks(execute=True):
        model_version_rollback(knowledge_base=kb, component=Component.RETRIEVER, actor=admin_user)
    assert sent_rescorings == [kb.pk, kb.pk]
    turn_queue_rescore_task(kb.pk)
    assert _places(kb)["statins"] == places["statins"]  # random again, and the same random place
    assert set(Turn.objects.filter(knowledge_base=kb).values_list("queue_scored_with", flat=True)) == {"base|"}


def test_rescoring_twice_changes_nothing_and_skips_turns_scored_by_the_same_models(kb):
    _swapped_candidate(kb)
    _ingest(kb)
    first = turn_queue_rescore(knowledge_base_id=kb.pk)
    places = _places(kb)

    again = turn_queue_rescore(knowledge_base_id=kb.pk)
    assert (again.scored, again.moved) == (0, 0)  # every open turn is stamped with these versions
    Turn.objects.filter(knowledge_base=kb).update(queue_scored_with="")  # as if a run was redelivered
    redelivered = turn_queue_rescore(knowledge_base_id=kb.pk)
    assert (first.scored, redelivered.scored, redelivered.moved) == (6, 6, 0)
    assert _places(kb) == places


def test_rescoring_goes_in_batches_of_one_statement_per_model_and_stops_at_the_limit(kb, settings):
    _swapped_candidate(kb)
    _ingest(kb)
    settings.RAGLOOP_QUEUE_RESCORE_BATCH = 4
    with CaptureQueriesContext(connection) as captured:
        outcome = turn_queue_rescore(knowledge_base_id=kb.pk, max_turns=5)
    rankings = [q["sql"] for q in captured.captured_queries if "CROSS JOIN LATERAL" in q["sql"]]
    writes = [q["sql"] for q in captured.captured_queries if "UPDATE curation_turn" in q["sql"]]
    assert outcome.scored == 5 and (len(rankings), len(writes)) == (4, 2)  # batches of 4 and 1, two models each
    assert Turn.objects.filter(knowledge_base=kb, queue_scored_with="").count() == 1
    assert turn_queue_rescore(knowledge_base_id=kb.pk).scored == 1  # the next run goes on with the rest


def test_a_promotion_between_two_batches_stops_the_run(kb, admin_user, settings, monkeypatch):
    candidate = _swapped_candidate(kb)
    _ingest(kb)
    settings.RAGLOOP_QUEUE_RESCORE_BATCH = 3
    places = queue_rescoring._places
    calls = []

    def promote_after_the_first_batch(batch, **models):
        calls.append(len(batch))
        if len(calls) == 2:
            model_version_promote(version=candidate, actor=admin_user)
        return places(batch, **models)

    monkeypatch.setattr(queue_rescoring, "_places", promote_after_the_first_batch)
    outcome = turn_queue_rescore(knowledge_base_id=kb.pk)
    assert (outcome.scored, outcome.stopped) == (3, "the models changed during the run")
    # Nothing of the second batch, scored by the old live version, was written.
    assert Turn.objects.filter(knowledge_base=kb, queue_scored_with="base|retriever-v1").count() == 3
    assert Turn.objects.filter(knowledge_base=kb, queue_scored_with="").count() == 3


def test_negative_feedback_wins_over_a_rescoring_and_a_feedback_change_clears_the_reason(kb):
    from knowledge.services.turns import turns_queue_places_write
    from rag.queue_priority import QueuePosition

    _swapped_candidate(kb)
    turns = _ingest(kb)
    turn_queue_rescore(knowledge_base_id=kb.pk)
    statins = Turn.objects.get(pk=turns["statins"])
    turn_feedback_set(turn=statins, feedback=-1)
    tier_0 = _places(kb)["statins"]
    assert tier_0[0] == 0 and tier_0[2:] == ("", None)
    # A run that read the turn before the feedback came writes its place afterwards: refused.
    moved = turns_queue_places_write(
        knowledge_base_id=kb.pk, places={statins.pk: QueuePosition(1, -0.5, "candidate", 0.5)}, scored_with="base|retriever-v1"
    )
    assert moved == 0 and _places(kb)["statins"] == tier_0
    assert turn_queue_rescore(knowledge_base_id=kb.pk).scored == 0  # turns with negative feedback are not scored

    turn_feedback_set(turn=statins, feedback=None)  # feedback withdrawn: placed from its passages again
    assert Turn.objects.get(pk=statins.pk).queue_scored_with == ""
    assert turn_queue_rescore(knowledge_base_id=kb.pk).scored == 1
    assert _places(kb)["statins"][2] == "candidate"


def test_beat_queues_a_rescoring_of_every_knowledge_base_with_open_turns(kb, sent_rescorings):
    from knowledge.services.knowledge_bases import knowledge_base_create
    from training.tasks import turn_queue_rescore_task

    entry = settings.CELERY_BEAT_SCHEDULE["rescore-curation-queue"]
    assert entry == {"task": "training.tasks.turn_queue_rescore_task", "schedule": float(settings.RAGLOOP_QUEUE_RESCORE_SECONDS)}
    assert settings.CELERY_TASK_ROUTES["training.tasks.turn_queue_rescore_task"] == {"queue": "embedding"}
    knowledge_base_create(slug="empty-kb", name="No turns")
    _ingest(kb, names=["vague"])
    turn_queue_rescore_task()
    assert sent_rescorings == [kb.pk]


def test_rescoring_without_a_candidate_uses_the_live_margin_alone(kb):
    _ingest(kb)
    outcome = turn_queue_rescore(knowledge_base_id=kb.pk)
    assert outcome.scored_with == "base|"
    assert {name: place[2] for name, place in _places(kb).items()} == {**dict.fromkeys(QUERIES, ""), "vague": "margin"}


def _queue_page(client, kb):
    with CaptureQueriesContext(connection) as captured:
        response = client.get(f"/kbs/{kb.slug}/queue/")
    assert response.status_code == 200
    return response.content.decode(), len(captured)


def test_the_queue_page_says_why_each_turn_is_where_it_is_at_the_same_query_count(kb, client, curator):
    _swapped_candidate(kb)
    turns = _ingest(kb)
    turn_feedback_set(turn=Turn.objects.get(pk=turns["complaint"]), feedback=-1)
    client.force_login(curator)
    page, queries_before = _queue_page(client, kb)
    assert "candidate disagrees" not in page

    turn_queue_rescore(knowledge_base_id=kb.pk)
    page, queries_after = _queue_page(client, kb)

    assert queries_after == queries_before  # the reason is read from the turn's own row
    badges = dict(re.findall(r'<tr data-turn-id="(\d+)">\s*<td><span class="wb-badge [^"]*" data-reason="[^"]*" title="[^"]*">([^<]*)</span>', page))
    by_name = {name: badges[str(pk)] for name, pk in turns.items()}
    assert by_name == {
        "complaint": "negative feedback",
        "statins": "candidate disagrees (RBO 0.50)",
        "sleep": "candidate disagrees (RBO 0.50)",
        "vague": "low margin now (0.038)",
        "vitd": "sample",
        "coffee": "sample",
    }
    listing = turn_queue_list(knowledge_base=kb, curator=curator, queue_filter=QueueFilter())
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_sort = off")
        cursor.execute("SET LOCAL enable_seqscan = off")
    plan = listing.values_list("pk", flat=True)[5000:5050].explain()
    assert "turn_queue_all" in plan and "Sort" not in plan, plan  # the same index-only walk as before


def test_agents_agreement_is_the_share_of_passages_two_agents_judged_alike(kb):
    from curation.models import Suggestion

    _ingest(kb, names={"statins": QUERIES["statins"], "vitd": QUERIES["vitd"]})
    statins, vitd = (Turn.objects.get(knowledge_base=kb, external_id=name) for name in ("statins", "vitd"))
    first, second = statins.passages.order_by("rank")
    for passage, retriever, judge in [(first, "relevant", "relevant"), (second, "not_relevant", "relevant")]:
        Suggestion.objects.create(turn=statins, retrieved_passage=passage, agent="retriever:base", value=retriever)
        Suggestion.objects.create(turn=statins, retrieved_passage=passage, agent="llm-judge:m", value=judge)
    Suggestion.objects.create(turn=vitd, retrieved_passage=vitd.passages.first(), agent="retriever:base", value="relevant")
    Suggestion.objects.create(turn=statins, agent="llm-judge:m", value="correct")  # the answer's rating: not a passage

    agreements = queue_rescoring.agent_agreements(turn_ids=[statins.pk, vitd.pk])

    assert agreements == {statins.pk: 0.5}  # one agent alone on vitd's passage: no agreement to speak of
