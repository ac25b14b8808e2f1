"""Synthetic questions: before people have asked anything, an LLM writes questions for chunks of
a knowledge base; those the live retriever answers with their source chunk in its top k become
turns of source "synthetic", queued for curators to confirm or fix (docs/cold-start.md).

A job row (SyntheticQuestionJob) records what was asked and what came of it; the Celery task
(`synthetic_question_job_execute_task`) only moves it. The chunks are a seeded sample, so a
redelivered task draws the same ones and resumes after `chunks_done`; each question's turn has
an external id made of the job, the chunk and the question's place, so none is stored twice.
"""

import logging
import os

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from curation.models import SyntheticQuestionJob
from knowledge.errors import InvalidInput
from knowledge.models import KnowledgeBase
from knowledge.selectors import passages_retrieve, retriever_for, space_chunks_sample
from knowledge.services.turns import turn_synthetic_store
from rag.generation import GeneratorError, OpenAIChatGenerator, make_generator
from rag.synthetic_questions import QuestionReplyError, RankedChunk, question_messages, questions_parse, source_rank

logger = logging.getLogger(__name__)

MAX_CHUNKS = 100_000
MAX_PER_CHUNK = 10


def question_writer_for(*, knowledge_base: KnowledgeBase) -> OpenAIChatGenerator:
    """The chat client that writes the questions: the OpenAI-compatible endpoint the generator and
    the LLM judge use (OPENAI_BASE_URL, OPENAI_API_KEY). InvalidInput when none is configured."""
    uses_openai = knowledge_base.generator_backend == KnowledgeBase.GeneratorBackend.OPENAI
    if not uses_openai and not os.environ.get("OPENAI_BASE_URL"):
        raise InvalidInput(
            f"No OpenAI-compatible endpoint is configured for {knowledge_base.slug!r}: set OPENAI_BASE_URL "
            "(and a model: RAGLOOP_SYNTHETIC_QUESTIONS_MODEL or OPENAI_MODEL), or make the knowledge base's "
            "generator 'openai'."
        )
    model = (
        settings.RAGLOOP_SYNTHETIC_QUESTIONS_MODEL
        or settings.RAGLOOP_LLM_JUDGE_MODEL
        or (knowledge_base.generator_model if uses_openai else "")
    )
    try:
        return make_generator(backend="openai", model=model)
    except ValueError as error:
        raise InvalidInput(f"Synthetic questions need a model name: {error}.") from None


def _enqueue(job_id: int) -> None:
    from curation.tasks import synthetic_question_job_execute_task  # tasks import services, not the reverse

    synthetic_question_job_execute_task.delay(job_id)


def synthetic_question_job_start(
    *, knowledge_base: KnowledgeBase, chunks: int, per_chunk: int = 1, top_k: int = 10, seed: int = 0, created_by=None,
    enqueue: bool = True,
) -> SyntheticQuestionJob:
    """Queue a job (its task is sent after commit; with enqueue=False the caller runs it itself);
    refused (InvalidInput) with nothing written when the numbers are out of range, no endpoint
    is configured or the live space has no chunk."""
    for name, value, high in (("chunks", chunks, MAX_CHUNKS), ("per_chunk", per_chunk, MAX_PER_CHUNK),
                              ("top_k", top_k, settings.RAGLOOP_MAX_K)):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
            raise InvalidInput(f"{name} must be a whole number from 1 to {high}, got {value!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
        raise InvalidInput(f"seed must be a whole number from 0 to {2**31 - 1}, got {seed!r}.")
    writer = question_writer_for(knowledge_base=knowledge_base)
    live = retriever_for(knowledge_base=knowledge_base)
    if not space_chunks_sample(space=live.space, limit=1):
        raise InvalidInput(f"Knowledge base {knowledge_base.slug!r} has no embedded chunk to write questions for.")
    with transaction.atomic():
        job = SyntheticQuestionJob.objects.create(
            knowledge_base=knowledge_base, chunks_requested=chunks, per_chunk=per_chunk, top_k=top_k, seed=seed,
            model=writer.model, created_by=created_by,
        )  # fmt: skip
        if enqueue:
            transaction.on_commit(lambda: _enqueue(job.pk))
    return job


def _fail(job_id: int, error: str) -> SyntheticQuestionJob:
    SyntheticQuestionJob.objects.filter(pk=job_id).update(
        status=SyntheticQuestionJob.Status.FAILED, error=error[:5000], finished_at=timezone.now()
    )
    return SyntheticQuestionJob.objects.get(pk=job_id)


# Second key of the job's session advisory lock (the first is the job id): training runs use 1
# and 2, evaluation jobs 3, so none of them collide.
_LOCK_CODE = 4


def synthetic_question_job_execute(*, job_id: int) -> SyntheticQuestionJob | None:
    """Write, filter and store the job's questions; a no-op for a finished job, or one another
    process is working on (its session holds the job's advisory lock).

    A chunk whose request fails or whose reply does not parse is counted and skipped; the job
    fails only when no chunk got an answer at all (an endpoint down, a wrong model).
    """
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s::integer, %s::integer)", [job_id, _LOCK_CODE])
        if not cursor.fetchone()[0]:
            return None
    try:
        return _execute(job_id)
    finally:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s::integer, %s::integer)", [job_id, _LOCK_CODE])
        except Exception:  # a broken connection: its session, and the lock with it, is gone already
            connection.close()


def _execute(job_id: int) -> SyntheticQuestionJob | None:
    with transaction.atomic():
        job = SyntheticQuestionJob.objects.select_for_update().filter(pk=job_id).first()
        if job is None or job.is_finished:
            return job
        job.status = SyntheticQuestionJob.Status.RUNNING
        job.started_at = job.started_at or timezone.now()
        job.save(update_fields=["status", "started_at"])
    knowledge_base = job.knowledge_base
    try:
        writer = question_writer_for(knowledge_base=knowledge_base)
        live = retriever_for(knowledge_base=knowledge_base)
    except InvalidInput as error:
        return _fail(job_id, str(error))
    chunks = space_chunks_sample(space=live.space, limit=job.chunks_requested, seed=job.seed)
    SyntheticQuestionJob.objects.filter(pk=job_id).update(
        chunks_total=len(chunks), retriever_version=live.version, model=writer.model
    )
    titles = dict(knowledge_base.chunks.filter(pk__in=[c for c, _ in chunks]).values_list("pk", "document__title"))
    for chunk_id, text in chunks[job.chunks_done :]:
        generated = kept = 0
        try:
            reply = writer.complete(question_messages(passage=text, title=titles.get(chunk_id, ""), count=job.per_chunk))
            questions = questions_parse(reply, count=job.per_chunk)
        except (GeneratorError, QuestionReplyError) as error:
            SyntheticQuestionJob.objects.filter(pk=job_id).update(
                chunks_done=F("chunks_done") + 1, chunks_failed=F("chunks_failed") + 1,
                last_chunk_error=f"chunk {chunk_id}: {error}"[:2000],
            )  # fmt: skip
            continue
        for place, question in enumerate(questions):
            generated += 1
            retrieved = passages_retrieve(
                space=live.space, query=question, k=job.top_k, query_model_reference=live.query_model_reference
            )
            ranked = [RankedChunk(chunk_id=p.chunk_id, rank=p.rank) for p in retrieved]
            if source_rank(ranked, source_chunk_id=chunk_id, top_k=job.top_k) is None:
                continue
            turn_synthetic_store(
                knowledge_base=knowledge_base,
                external_id=f"synthetic-{job.pk}-{chunk_id}-{place}",
                query=question,
                retrieved=retrieved,
                retriever_version=live.version,
                source_chunk_id=chunk_id,
                metadata={"synthetic": {"job": job.pk, "model": writer.model, "top_k": job.top_k}},
            )
            kept += 1
        SyntheticQuestionJob.objects.filter(pk=job_id).update(
            chunks_done=F("chunks_done") + 1, generated=F("generated") + generated, kept=F("kept") + kept,
            dropped=F("dropped") + (generated - kept),
        )  # fmt: skip
    job.refresh_from_db()
    if job.chunks_total and job.chunks_failed == job.chunks_total:
        return _fail(job_id, f"The endpoint answered no chunk with questions; the last error: {job.last_chunk_error}")
    SyntheticQuestionJob.objects.filter(pk=job_id).update(status=SyntheticQuestionJob.Status.SUCCEEDED, finished_at=timezone.now())
    job.refresh_from_db()
    return job
