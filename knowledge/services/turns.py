"""Turns: answering a query with the live versions (and logging it), ingesting turns logged by
external RAG apps (idempotent by external id), and user feedback.

Every turn is stored with its place in the curation queue (rag.queue_priority), so the queue
reads one index in order and a turn needs no second write; training's re-scoring places open
turns again with the current models through turns_queue_places_write.
"""

import functools
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Max, Min
from django.utils import timezone

from knowledge.artifact_store import artifact_local_path
from knowledge.errors import Conflict, InvalidInput, UpstreamError
from knowledge.models import Conversation, Document, KnowledgeBase, RetrievedPassage, Turn
from knowledge.selectors import passages_search, retrieval_mode_checked
from knowledge.services.personal_data import (
    PersonalDataScrubber,
    composed_answer_scrubbed,
    metadata_scrubbed,
    personal_data_check_written,
)
from knowledge.signals import turns_stored_send_on_commit
from rag.conversation import ChatMessage, history_within_budget, messages_hash
from rag.generation import ContextPassage, GeneratorError, make_generator
from rag.queue_priority import RANDOM_TIER, QueuePosition, turn_queue_position

MAX_TURNS_PER_BATCH = 1000
MAX_REWRITTEN_QUERY_CHARS = 4000


@functools.lru_cache(maxsize=8)
def generator_load(backend: str, model: str, adapter_path: str = ""):
    """The generator of a backend and model (and LoRA adapter), loaded once per process: a local
    model loads once, not once per question (evaluation shares it with serving)."""
    return make_generator(backend=backend, model=model, options={"adapter_path": adapter_path} if adapter_path else None)


def generator_for(*, knowledge_base: KnowledgeBase):
    """(generator, version name): the live generator version that promotion wrote onto the
    knowledge base, else the knowledge base's configured generator (both as they are now: a
    promotion since the caller loaded the knowledge base changed them)."""
    knowledge_base = KnowledgeBase.objects.get(pk=knowledge_base.pk)
    if knowledge_base.live_generator_version:
        adapter = knowledge_base.live_generator_adapter_path
        if adapter:  # relative to the artifacts folder, fetched from the artifact store if there is one
            adapter = str(artifact_local_path(reference=adapter))
        generator = generator_load(knowledge_base.live_generator_backend, knowledge_base.live_generator_model, adapter)
        return generator, knowledge_base.live_generator_version
    return generator_load(knowledge_base.generator_backend, knowledge_base.generator_model), knowledge_base.generator_version


@dataclass(frozen=True)
class ComposedAnswer:
    """What serving produced for a question, before anything is stored."""

    question: str
    rewritten_query: str  # blank: retrieval used the question itself
    retrieved: list
    text: str
    cited_passages: list[int]
    retriever_version: str
    retrieval_mode: str
    generator_version: str
    history_messages_used: int
    latency_ms: float
    # Where the time went, in ms: {"embed", "first_stage", "rerank", "generate"}, and
    # "rewrite" when a follow-up was made self-contained first.
    latency_split: dict = field(default_factory=dict)
    reranker_version: str = ""  # blank: no reranker was live
    # Set once the knowledge base's personal-data mode was applied (composed_answer_scrubbed).
    personal_data_scrubbed: bool = False


def answer_compose(
    *, knowledge_base: KnowledgeBase, question: str, k: int, history: Sequence[ChatMessage] = (), mode: str | None = None
) -> ComposedAnswer:
    """Retrieve with the live retriever in the knowledge base's retrieval mode (or `mode`) and
    answer with the live generator; writes nothing.

    A follow-up (a question with earlier user messages) is first made self-contained by the
    generator (`rewrite_query`: a condensation prompt for LLM backends, rag.conversation's
    heuristic for the extractive one), and retrieval searches for the rewrite. The generator
    sees the newest messages of the history within RAGLOOP_CHAT_HISTORY_TOKENS.
    """
    started = time.perf_counter()
    retrieval_mode_checked(mode)  # before the generator rewrites anything
    generator_version = knowledge_base.generator_version
    seen_history = history_within_budget(history, max_tokens=settings.RAGLOOP_CHAT_HISTORY_TOKENS)
    split: dict[str, float] = {}
    try:
        generator, generator_version = generator_for(knowledge_base=knowledge_base)
        if seen_history:
            rewrite_started = time.perf_counter()
            rewritten = generator.rewrite_query(question=question, history=seen_history)
            split["rewrite"] = (time.perf_counter() - rewrite_started) * 1000
        else:
            rewritten = question
    except (GeneratorError, ValueError) as error:
        raise UpstreamError(f"The generator ({generator_version}) could not rewrite the follow-up: {error}") from error
    rewritten = " ".join(rewritten.split())[:MAX_REWRITTEN_QUERY_CHARS] or question
    retrieval = passages_search(knowledge_base=knowledge_base, query=rewritten, k=k, mode=mode)
    retrieved = retrieval.passages
    split.update(retrieval.timings)
    generate_started = time.perf_counter()
    try:
        answer = generator.generate(
            query=question,
            passages=[ContextPassage(text=p.text, title=p.title, source_id=p.document_external_id) for p in retrieved],
            history=seen_history,
        )
    except (GeneratorError, ValueError) as error:
        raise UpstreamError(f"The generator ({generator_version}) failed: {error}") from error
    split["generate"] = (time.perf_counter() - generate_started) * 1000
    return ComposedAnswer(
        question=question,
        rewritten_query="" if rewritten == question else rewritten,
        retrieved=retrieved,
        text=answer.text,
        cited_passages=answer.cited_passages,
        retriever_version=retrieval.retriever_version,
        retrieval_mode=retrieval.mode,
        generator_version=generator_version,
        history_messages_used=len(seen_history),
        latency_ms=(time.perf_counter() - started) * 1000,
        latency_split={name: round(value, 3) for name, value in split.items()},
        reranker_version=retrieval.reranker_version,
    )


def turn_served_store(
    *,
    knowledge_base: KnowledgeBase,
    composed: ComposedAnswer,
    conversation=None,
    position: int | None = None,
    history: Sequence[ChatMessage] = (),
    continuation_hash: str = "",
) -> Turn:
    """Store a served turn with its passages (in the caller's transaction, if any). The answer,
    rewrite and passage copies are redacted here under the knowledge base's personal-data mode;
    the question and history must already be (the callers check them before answering)."""
    composed = composed_answer_scrubbed(knowledge_base=knowledge_base, composed=composed)
    queue_tier, queue_order = turn_queue_position(feedback=None, scores=[p.score for p in composed.retrieved])
    metadata = {"cited_passages": composed.cited_passages}
    if history:
        metadata["history_messages_used"] = composed.history_messages_used
    with transaction.atomic():
        turn = Turn.objects.create(
            queue_tier=queue_tier,
            queue_order=queue_order,
            knowledge_base=knowledge_base,
            source=Turn.Source.SERVED,
            conversation=conversation,
            position=position,
            query=composed.question,
            rewritten_query=composed.rewritten_query,
            history=[m.as_dict() for m in history],
            continuation_hash=continuation_hash,
            answer=composed.text,
            retriever_version=composed.retriever_version,
            retrieval_mode=composed.retrieval_mode,
            generator_version=composed.generator_version,
            reranker_version=composed.reranker_version,
            latency_ms=composed.latency_ms,
            latency_split=composed.latency_split,
            metadata=metadata,
        )
        RetrievedPassage.objects.bulk_create(
            RetrievedPassage(
                turn=turn,
                rank=p.rank,
                score=p.score,
                chunk_id=p.chunk_id,
                document_id=p.document_id,
                source_id=p.document_external_id,
                title=p.title,
                text=p.text,
            )
            for p in composed.retrieved
        )
        turns_stored_send_on_commit(knowledge_base_id=knowledge_base.pk, turn_ids=[turn.pk])
    return turn


def turn_synthetic_store(
    *,
    knowledge_base: KnowledgeBase,
    external_id: str,
    query: str,
    retrieved: Sequence,
    retriever_version: str,
    source_chunk_id: int,
    metadata: dict,
) -> tuple[Turn, bool]:
    """Store a synthetic question (an LLM wrote it for `source_chunk_id`) as a turn with the
    passages the live retriever returned for it; (turn, created). The same `external_id` again
    returns the stored turn, so a redelivered job writes nothing twice.

    No answer is generated: curators judge its passages, and the source chunk's rank is in the
    metadata, so the judging page can point at it.
    """
    existing = Turn.objects.filter(knowledge_base=knowledge_base, external_id=external_id).first()
    if existing is not None:
        return existing, False
    queue_tier, queue_order = turn_queue_position(feedback=None, scores=[p.score for p in retrieved])
    source_rank = next((p.rank for p in retrieved if p.chunk_id == source_chunk_id), None)
    with transaction.atomic():
        turn = Turn.objects.create(
            queue_tier=queue_tier,
            queue_order=queue_order,
            knowledge_base=knowledge_base,
            source=Turn.Source.SYNTHETIC,
            external_id=external_id,
            query=query,
            retriever_version=retriever_version,
            metadata={**metadata, "synthetic": {**metadata.get("synthetic", {}), "source_chunk_id": source_chunk_id,
                                                "source_rank": source_rank}},
        )  # fmt: skip
        RetrievedPassage.objects.bulk_create(
            RetrievedPassage(
                turn=turn, rank=p.rank, score=p.score, chunk_id=p.chunk_id, document_id=p.document_id,
                source_id=p.document_external_id, title=p.title, text=p.text,
            )  # fmt: skip
            for p in retrieved
        )
        turns_stored_send_on_commit(knowledge_base_id=knowledge_base.pk, turn_ids=[turn.pk])
    return turn, True


def turn_ask(*, knowledge_base: KnowledgeBase, query: str, k: int = 5, mode: str | None = None) -> Turn:
    """Answer a question on its own (no conversation) and store the turn; `mode` overrides the
    knowledge base's retrieval mode for this turn."""
    query = personal_data_check_written(knowledge_base=knowledge_base, texts={"query": query})["query"]
    composed = answer_compose(knowledge_base=knowledge_base, question=query, k=k, mode=mode)
    return turn_served_store(knowledge_base=knowledge_base, composed=composed)


@dataclass(frozen=True)
class PassageRecord:
    text: str
    source_id: str = ""
    title: str = ""
    score: float | None = None


@dataclass(frozen=True)
class TurnRecord:
    """A turn as an external RAG app logged it."""

    external_id: str
    query: str
    answer: str = ""
    passages: list[PassageRecord] = field(default_factory=list)
    feedback: int | None = None
    feedback_comment: str = ""
    retriever_version: str = ""
    generator_version: str = ""
    latency_ms: float | None = None
    metadata: dict = field(default_factory=dict)
    created_at: datetime | None = None
    # The app's conversation id and the turn's 0-based place in it (both or neither); the
    # self-contained query the app retrieved with, and the messages before the question.
    conversation_id: str | None = None
    position: int | None = None
    rewritten_query: str = ""
    history: list[ChatMessage] = field(default_factory=list)


@dataclass
class TurnIngestResult:
    created: dict[str, int] = field(default_factory=dict)  # external id -> turn id
    existing: dict[str, int] = field(default_factory=dict)


def turns_ingest(*, knowledge_base: KnowledgeBase, records: list[TurnRecord]) -> TurnIngestResult:
    if not records:
        raise InvalidInput("No turns to ingest.")
    if len(records) > MAX_TURNS_PER_BATCH:
        raise InvalidInput(f"{len(records)} turns in one batch; the limit is {MAX_TURNS_PER_BATCH}.")
    external_ids = [r.external_id for r in records]
    duplicates = sorted(e for e, n in Counter(external_ids).items() if n > 1)
    if duplicates:
        raise InvalidInput(f"External ids appear more than once in this batch: {', '.join(duplicates[:10])}.")
    for record in records:
        if not record.query.strip():
            raise InvalidInput(f"Turn {record.external_id!r} has an empty query.")
        if record.feedback not in (None, -1, 1):
            raise InvalidInput(f"Turn {record.external_id!r}: feedback must be -1, 1 or null.")
        if (record.conversation_id is None) != (record.position is None):
            raise InvalidInput(f"Turn {record.external_id!r}: conversation_id and position go together.")
        if record.position is not None and record.position < 0:
            raise InvalidInput(f"Turn {record.external_id!r}: position must be 0 or more.")
    places = Counter((r.conversation_id, r.position) for r in records if r.conversation_id is not None)
    taken_twice = sorted(f"{c}#{p}" for (c, p), n in places.items() if n > 1)
    if taken_twice:
        raise InvalidInput(f"Two turns of this batch claim the same conversation position: {', '.join(taken_twice[:10])}.")

    records = turn_records_scrubbed(knowledge_base=knowledge_base, records=records)

    result = TurnIngestResult()
    with transaction.atomic():
        # Serialises batches per knowledge base, so two deliveries of one batch cannot both
        # create the same external id.
        KnowledgeBase.objects.select_for_update().get(pk=knowledge_base.pk)
        result.existing = dict(
            Turn.objects.filter(knowledge_base=knowledge_base, external_id__in=external_ids).values_list(
                "external_id", "pk"
            )
        )
        new_records = [r for r in records if r.external_id not in result.existing]
        conversations = _conversations_for(knowledge_base=knowledge_base, records=new_records)
        positions = [
            turn_queue_position(
                feedback=r.feedback,
                scores=[p.score for p in r.passages],
                created=r.created_at.timestamp() if r.created_at else None,
            )
            for r in new_records
        ]
        turns = Turn.objects.bulk_create(
            Turn(
                knowledge_base=knowledge_base,
                source=Turn.Source.INGESTED,
                external_id=r.external_id,
                query=r.query,
                answer=r.answer,
                retriever_version=r.retriever_version,
                generator_version=r.generator_version,
                latency_ms=r.latency_ms,
                feedback=r.feedback,
                feedback_comment=r.feedback_comment,
                metadata=r.metadata,
                queue_tier=tier,
                queue_order=order,
                created_at=r.created_at or timezone.now(),
                conversation=conversations.get(r.conversation_id),
                position=r.position,
                rewritten_query="" if r.rewritten_query.strip() == r.query.strip() else r.rewritten_query.strip(),
                history=[m.as_dict() for m in r.history],
                continuation_hash=messages_hash([*r.history, ChatMessage("user", r.query), ChatMessage("assistant", r.answer)])
                if r.conversation_id is not None and r.answer
                else "",
            )
            for r, (tier, order) in zip(new_records, positions)
        )
        _conversations_touch(conversations.values())
        ingested_passages_store(knowledge_base=knowledge_base, passages_by_turn=zip(turns, (r.passages for r in new_records)))
        result.created = {turn.external_id: turn.pk for turn in turns}
        turns_stored_send_on_commit(knowledge_base_id=knowledge_base.pk, turn_ids=[turn.pk for turn in turns])
    return result


def turn_records_scrubbed(*, knowledge_base: KnowledgeBase, records: list[TurnRecord]) -> list[TurnRecord]:
    """The records as they are to be stored under the knowledge base's personal-data mode;
    PersonalDataRejected (422) under reject when a query, history or feedback comment holds any."""
    scrubber = PersonalDataScrubber.for_knowledge_base(knowledge_base)
    if not scrubber.active:
        return records
    scrubbed = []
    for r in records:
        where = f"turn {r.external_id!r}"
        scrubbed.append(
            replace(
                r,
                query=scrubber.written(r.query, where=f"{where} query"),
                feedback_comment=scrubber.written(r.feedback_comment, where=f"{where} feedback_comment"),
                history=scrubber.messages(r.history, where=f"{where} history"),
                answer=scrubber.produced(r.answer),
                rewritten_query=scrubber.produced(r.rewritten_query),
                passages=[replace(p, text=scrubber.produced(p.text), title=scrubber.produced(p.title)) for p in r.passages],
                metadata=metadata_scrubbed(scrubber, r.metadata),
            )
        )
    scrubber.raise_if_rejected()
    return scrubbed


def ingested_passages_store(*, knowledge_base: KnowledgeBase, passages_by_turn) -> None:
    """Store the passages an external app sent with its turns ((turn, [PassageRecord]) pairs),
    ranked in the order sent and linked to the knowledge base's document of the same source id."""
    passages_by_turn = [(turn, list(passages)) for turn, passages in passages_by_turn]
    source_ids = {p.source_id for _, passages in passages_by_turn for p in passages if p.source_id}
    documents = dict(
        Document.objects.filter(knowledge_base=knowledge_base, external_id__in=source_ids).values_list("external_id", "pk")
    )
    RetrievedPassage.objects.bulk_create(
        RetrievedPassage(
            turn=turn,
            rank=rank,
            score=p.score,
            document_id=documents.get(p.source_id),
            source_id=p.source_id,
            title=p.title,
            text=p.text,
        )
        for turn, passages in passages_by_turn
        for rank, p in enumerate(passages, start=1)
    )


def _conversations_for(*, knowledge_base: KnowledgeBase, records: list[TurnRecord]) -> dict[str, Conversation]:
    """The conversations the records name (created when new, locked), after checking that no
    record takes a position another turn already holds."""
    names = sorted({r.conversation_id for r in records if r.conversation_id is not None})
    conversations = {}
    for name in names:
        if not name.strip() or len(name) > 255:
            raise InvalidInput(f"Conversation id {name[:40]!r} must be 1 to 255 characters.")
        conversations[name], _ = Conversation.objects.get_or_create(knowledge_base=knowledge_base, external_id=name)
    # The knowledge base row is locked by the caller (no concurrent batch), and the conversation
    # rows here (no concurrent served turn, see knowledge.services.conversations), so no one
    # can take a position between this check and the insert.
    list(Conversation.objects.select_for_update().filter(pk__in=[c.pk for c in conversations.values()]))
    taken = set(
        Turn.objects.filter(conversation__in=conversations.values()).values_list("conversation__external_id", "position")
    )
    clashes = sorted(f"{r.conversation_id}#{r.position}" for r in records if (r.conversation_id, r.position) in taken)
    if clashes:
        raise Conflict(f"Another turn already holds these conversation positions: {', '.join(clashes[:10])}.")
    return conversations


def _conversations_touch(conversations) -> None:
    for conversation in conversations:
        stats = conversation.turns.aggregate(count=Count("pk"), first=Min("created_at"), last=Max("created_at"))
        Conversation.objects.filter(pk=conversation.pk).update(
            turn_count=stats["count"], started_at=stats["first"], last_activity_at=stats["last"]
        )


def turn_feedback_set(*, turn: Turn, feedback: int | None, comment: str = "") -> Turn:
    if feedback not in (None, -1, 1):
        raise InvalidInput("Feedback must be -1 (thumbs down), 1 (thumbs up) or null.")
    comment = personal_data_check_written(knowledge_base=turn.knowledge_base, texts={"comment": comment})["comment"]
    turn.feedback = feedback
    turn.feedback_comment = comment
    turn.save(update_fields=["feedback", "feedback_comment"])
    turn_queue_refresh(turn=turn)  # negative feedback moves the turn to the front of the queue
    return turn


def turn_queue_refresh(*, turn: Turn) -> Turn:
    """Recompute a turn's place in the curation queue after its feedback or passages changed."""
    scores = list(turn.passages.order_by("rank").values_list("score", flat=True))
    turn.queue_tier, turn.queue_order = turn_queue_position(
        feedback=turn.feedback, scores=scores, created=turn.created_at.timestamp() if turn.created_at else None
    )
    if turn.queue_tier == RANDOM_TIER and turn.pk:
        # Keep a turn's random position when it stays in the random tier.
        previous = Turn.objects.filter(pk=turn.pk).values_list("queue_tier", "queue_order").first()
        if previous and previous[0] == RANDOM_TIER:
            turn.queue_order = previous[1]
    # The reason and the versions of an earlier re-scoring no longer hold: the next re-scoring
    # run places the turn again (training.services.queue_rescoring).
    turn.queue_reason, turn.queue_reason_value, turn.queue_scored_with = "", None, ""
    Turn.objects.filter(pk=turn.pk).update(
        queue_tier=turn.queue_tier, queue_order=turn.queue_order, queue_reason="", queue_reason_value=None, queue_scored_with=""
    )
    return turn


def turns_queue_places_write(*, knowledge_base_id: int, places: dict[int, QueuePosition], scored_with: str) -> int:
    """Store the places a re-scoring computed (turn id -> QueuePosition) and the versions it used,
    in one statement; returns how many turns moved (tier, order or reason changed).

    A turn that got negative feedback meanwhile keeps its tier-0 place (its feedback decides,
    not the models), and a row already holding these values is not written again, so running
    the same re-scoring twice changes nothing and leaves no dead rows behind.
    """
    if not places:
        return 0
    ids = list(places)
    positions = [places[pk] for pk in ids]
    with connection.cursor() as cursor:
        # `before` is the same row as it was (a self-join sees the old values): a turn moved when
        # its tier, order or reason changed; one whose only change is the versions' stamp did not.
        cursor.execute(
            """
            WITH written AS (
                UPDATE curation_turn t
                SET queue_tier = p.tier, queue_order = p.queue_order, queue_reason = p.reason,
                    queue_reason_value = p.value, queue_scored_with = %s
                FROM unnest(%s::bigint[], %s::smallint[], %s::float8[], %s::text[], %s::float8[])
                         AS p(id, tier, queue_order, reason, value),
                     curation_turn before
                WHERE t.id = p.id AND before.id = p.id AND t.knowledge_base_id = %s
                  AND t.feedback IS DISTINCT FROM -1
                  AND (t.queue_tier, t.queue_order, t.queue_reason, t.queue_reason_value, t.queue_scored_with)
                      IS DISTINCT FROM (p.tier, p.queue_order, p.reason, p.value, %s)
                RETURNING (before.queue_tier, before.queue_order, before.queue_reason)
                          IS DISTINCT FROM (p.tier, p.queue_order, p.reason) AS moved
            )
            SELECT count(*) FILTER (WHERE moved) FROM written
            """,
            [scored_with, ids, [p.tier for p in positions], [p.order for p in positions], [p.reason for p in positions],
             [p.value for p in positions], knowledge_base_id, scored_with],
        )
        return int(cursor.fetchone()[0])
