"""Re-scoring the curation queue with the current models (active learning): the open turns of a
knowledge base are placed again, in batches, by rag.queue_priority.turn_queue_rescore from what
the live retriever and the newest retriever candidate retrieve for them now, so the turns whose
labels would teach the models most come first after negative feedback (the order is in
rag.queue_priority's docstring and docs/curation.md).

Why here, in training: "the newest candidate" is a ModelVersion, a training row, and the
re-scoring runs after a promotion, which training performs. Knowledge owns the turn and its
queue columns and writes them (knowledge.services.turns.turns_queue_places_write); curation's
queue only reads them, as before, so neither lower layer learns about model versions.

When: beat's `rescore-curation-queue` every RAGLOOP_QUEUE_RESCORE_SECONDS, and after every
promotion or rollback of a retriever (queued after its commit), never in a request. A run is
cheap per turn and idempotent: each batch of RAGLOOP_QUEUE_RESCORE_BATCH turns is encoded in one
call per model and ranked in one statement per model (knowledge.selectors.chunk_rankings_many),
places are written in one statement that skips rows already holding them, and every turn is
stamped with the versions it was scored with ("<live>|<candidate>"), so a later run skips it
until a model changes (a new document in the corpus alone does not re-score it). At most
RAGLOOP_QUEUE_RESCORE_MAX_TURNS turns per run; the next run goes on with the rest.
"""

from collections import defaultdict
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction

from curation.models import Suggestion
from knowledge.errors import ServiceError
from knowledge.models import KnowledgeBase, Turn
from knowledge.selectors import RetrieverChoice, chunk_rankings_many, retriever_for
from knowledge.services.turns import turns_queue_places_write
from rag import queue_priority
from rag.queue_priority import RESCORE_DEPTH, stable_random_order
from training.models import Component, ModelVersion

# Chunks retrieved per model and turn: enough to fill RESCORE_DEPTH documents most of the time
# (training.services.evaluation takes 20 chunks for 10 documents too).
CHUNKS_PER_TURN = 2 * RESCORE_DEPTH


@dataclass(frozen=True)
class RescoringOutcome:
    scored: int  # turns placed again by this run
    moved: int  # of those, turns whose tier, order or reason changed
    scored_with: str  # "<live>|<candidate>"
    stopped: str = ""  # why the run stopped early, if it did


def newest_candidate_retriever(*, knowledge_base: KnowledgeBase) -> RetrieverChoice | None:
    """The newest retriever candidate that can retrieve now (its space embedded), or None."""
    names = ModelVersion.objects.filter(
        knowledge_base=knowledge_base, component=Component.RETRIEVER, status=ModelVersion.Status.CANDIDATE
    ).order_by("-created_at", "-pk").values_list("name", flat=True)
    for name in names:
        try:
            return retriever_for(knowledge_base=knowledge_base, retriever_version=name)
        except ServiceError:  # still embedding, or its space is gone: try the one before
            continue
    return None


def queue_scoring_models(*, knowledge_base: KnowledgeBase) -> tuple[RetrieverChoice, RetrieverChoice | None]:
    """(live retriever, newest candidate or None): the models a re-scoring compares."""
    return retriever_for(knowledge_base=knowledge_base), newest_candidate_retriever(knowledge_base=knowledge_base)


def scored_with_key(live: RetrieverChoice, candidate: RetrieverChoice | None) -> str:
    return f"{live.version}|{candidate.version if candidate else ''}"


def agent_agreements(*, turn_ids: list[int]) -> dict[int, float]:
    """How much the agents that judged each turn agree, in [0, 1] (turn id -> agreement): the
    share of the turn's passages, among those two or more agents judged, on which every agent
    gave the same relevance. A turn with no passage judged by two agents is left out. One
    query for the batch."""
    verdicts: dict[tuple[int, int], set[str]] = defaultdict(set)
    agents: dict[tuple[int, int], int] = defaultdict(int)
    rows = Suggestion.objects.filter(turn_id__in=turn_ids, retrieved_passage__isnull=False).values_list(
        "turn_id", "retrieved_passage_id", "value"
    )
    for turn_id, passage_id, value in rows:
        verdicts[(turn_id, passage_id)].add(value)
        agents[(turn_id, passage_id)] += 1
    agreeing: dict[int, list[bool]] = defaultdict(list)
    for key, count in agents.items():
        if count >= 2:
            agreeing[key[0]].append(len(verdicts[key]) == 1)
    return {turn_id: sum(flags) / len(flags) for turn_id, flags in agreeing.items()}


def turn_queue_rescore(*, knowledge_base_id: int, max_turns: int | None = None) -> RescoringOutcome:
    """Place the knowledge base's open turns again with the current models; see the module docstring.

    Turns with negative feedback keep their place (feedback comes first, whatever the models
    say). A promotion between two batches stops the run (the next batch would mix two live
    versions): the promotion has queued a run of its own, which goes on with the new models.
    """
    knowledge_base = KnowledgeBase.objects.filter(pk=knowledge_base_id).first()
    if knowledge_base is None:
        return RescoringOutcome(0, 0, "", stopped="no such knowledge base")
    try:
        live, candidate = queue_scoring_models(knowledge_base=knowledge_base)
    except ServiceError as error:  # no live space: nothing retrieves, nothing to score with
        return RescoringOutcome(0, 0, "", stopped=str(error))
    key = scored_with_key(live, candidate)
    limit = settings.RAGLOOP_QUEUE_RESCORE_MAX_TURNS if max_turns is None else max_turns
    batch_size = settings.RAGLOOP_QUEUE_RESCORE_BATCH
    scored = moved = 0
    after_id = 0
    while scored < limit:
        batch = list(
            Turn.objects.filter(knowledge_base_id=knowledge_base_id, needs_labels=True, pk__gt=after_id)
            .exclude(feedback=Turn.Feedback.THUMBS_DOWN)
            .exclude(queue_scored_with=key)
            .order_by("pk")
            .values("pk", "query", "rewritten_query", "created_at", "queue_tier", "queue_order")[: min(batch_size, limit - scored)]
        )
        if not batch:
            break
        after_id = batch[-1]["pk"]
        places = _places(batch, live=live, candidate=candidate)
        with transaction.atomic():
            # Promotion holds this row FOR UPDATE while it switches the live pointers: after it
            # commits, the check below sees the new versions and this run stops.
            KnowledgeBase.objects.select_for_update(no_key=True).filter(pk=knowledge_base_id).first()
            if scored_with_key(*queue_scoring_models(knowledge_base=knowledge_base)) != key:
                return RescoringOutcome(scored, moved, key, stopped="the models changed during the run")
            moved += turns_queue_places_write(knowledge_base_id=knowledge_base_id, places=places, scored_with=key)
        scored += len(batch)
    return RescoringOutcome(scored, moved, key)


def _places(batch: list[dict], *, live: RetrieverChoice, candidate: RetrieverChoice | None) -> dict:
    queries = [turn["rewritten_query"] or turn["query"] for turn in batch]  # what retrieval searched for
    live_rankings = chunk_rankings_many(
        space=live.space, queries=queries, k=CHUNKS_PER_TURN, query_model_reference=live.query_model_reference
    )
    candidate_rankings = (
        chunk_rankings_many(
            space=candidate.space, queries=queries, k=CHUNKS_PER_TURN, query_model_reference=candidate.query_model_reference
        )
        if candidate is not None
        else [None] * len(batch)
    )
    agreements = agent_agreements(turn_ids=[turn["pk"] for turn in batch])
    return {
        turn["pk"]: queue_priority.turn_queue_rescore(
            feedback=None,
            created=turn["created_at"].timestamp(),
            live_ranking=live_ranking,
            candidate_ranking=[document for document, _ in candidate_ranking] if candidate_ranking is not None else None,
            agent_agreement=agreements.get(turn["pk"]),
            current=(turn["queue_tier"], turn["queue_order"]),
            random_order=stable_random_order(turn["pk"]),
        )
        for turn, live_ranking, candidate_ranking in zip(batch, live_rankings, candidate_rankings)
    }


def turn_queue_rescore_soon(*, knowledge_base_id: int) -> None:
    """Queue a re-scoring of the knowledge base's queue once the current transaction commits."""
    from training.tasks import turn_queue_rescore_task

    transaction.on_commit(lambda: turn_queue_rescore_task.delay(knowledge_base_id))


def turn_queues_rescore_all() -> int:
    """Beat: queue a re-scoring for every knowledge base with open turns; returns how many."""
    from training.tasks import turn_queue_rescore_task

    ids = list(
        KnowledgeBase.objects.filter(turns__needs_labels=True).values_list("pk", flat=True).distinct().order_by("pk")
    )
    for knowledge_base_id in ids:
        turn_queue_rescore_task.delay(knowledge_base_id)
    return len(ids)
