"""`manage.py synthesize_questions --kb SLUG [--chunks N] [--per-chunk M] [--top-k K] [--seed S]
[--now] [--json]`: ask the configured OpenAI-compatible endpoint for questions about chunks of a
knowledge base and keep, as synthetic turns for curators to confirm, those the live retriever
answers with their source chunk in its top k. Queued for a worker, or run here with --now."""

import json

from django.core.management.base import BaseCommand, CommandError

from curation.services.synthetic_questions import synthetic_question_job_execute, synthetic_question_job_start
from knowledge.management.cli import service_errors_as_command_errors
from knowledge.selectors import knowledge_base_get


def job_summary(job) -> dict:
    return {
        "id": job.pk, "knowledge_base": job.knowledge_base.slug, "status": job.status, "model": job.model,
        "retriever_version": job.retriever_version, "chunks": job.chunks_total or job.chunks_requested,
        "chunks_done": job.chunks_done, "chunks_failed": job.chunks_failed, "per_chunk": job.per_chunk,
        "top_k": job.top_k, "generated": job.generated, "kept": job.kept, "dropped": job.dropped, "error": job.error,
    }  # fmt: skip


class Command(BaseCommand):
    help = "Write synthetic questions for chunks with an LLM; keep those the live retriever answers with their chunk."

    def add_arguments(self, parser):
        parser.add_argument("--kb", required=True, help="the knowledge base's slug")
        parser.add_argument("--chunks", type=int, default=100, help="how many chunks to draw (default 100)")
        parser.add_argument("--per-chunk", type=int, default=1, help="questions asked per chunk (default 1)")
        parser.add_argument("--top-k", type=int, default=10, help="keep a question if its chunk is in the top k (default 10)")
        parser.add_argument("--seed", type=int, default=0, help="which chunks are drawn (default 0)")
        parser.add_argument("--now", action="store_true", help="run in this process instead of queueing")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, kb, chunks, per_chunk, top_k, seed, now, **options):
        with service_errors_as_command_errors():
            knowledge_base = knowledge_base_get(slug=kb)
            job = synthetic_question_job_start(
                knowledge_base=knowledge_base, chunks=chunks, per_chunk=per_chunk, top_k=top_k, seed=seed, enqueue=not now
            )
        if now:
            job = synthetic_question_job_execute(job_id=job.pk) or job
        if options["json"]:
            self.stdout.write(json.dumps(job_summary(job)))
        elif not now:
            self.stdout.write(f"queued synthetic-question job #{job.pk} for {kb} ({chunks} chunks, {per_chunk} per chunk)")
        else:
            self.stdout.write(
                f"job #{job.pk} {job.status}: {job.generated} questions written for {job.chunks_done} chunks "
                f"({job.chunks_failed} failed), {job.kept} kept as synthetic turns, {job.dropped} dropped "
                f"(source chunk not in the top {job.top_k} of {job.retriever_version})"
            )
        if job.status == job.Status.FAILED:
            raise CommandError(f"synthetic-question job #{job.pk} failed: {job.error}", returncode=1)
