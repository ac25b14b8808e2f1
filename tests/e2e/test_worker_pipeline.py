"""Whole-system paths with a real Celery worker process, the embedded Postgres and Redis."""

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from knowledge.models import Chunk, ChunkEmbedding, EmbeddingJob, RetrievedPassage, Turn
from tests.conftest import SAMPLE_DOCUMENTS, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def _job_status(job_id: int) -> str:
    return EmbeddingJob.objects.get(pk=job_id).status


def test_upload_embed_by_worker_ask_and_find_the_turn(api, knowledge_base, celery_worker_process):
    corpus = "\n".join(json.dumps(d) for d in SAMPLE_DOCUMENTS).encode()
    response = api.post(
        "/api/v1/kbs/test-kb/documents",
        {"files": [SimpleUploadedFile("corpus.jsonl", corpus), SimpleUploadedFile("notes.md", b"# Tea\nGreen tea has catechins.")]},
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["created"] == 5
    [job_id] = body["embedding_jobs"]

    wait_until(lambda: _job_status(job_id) == EmbeddingJob.Status.SUCCEEDED, timeout=180,
               message=f"the worker to embed the chunks\n{celery_worker_process.log()}")
    progress = api.get(f"/api/v1/kbs/test-kb/embedding-jobs/{job_id}").json()
    assert progress["status"] == "succeeded" and progress["progress_percent"] == 100
    assert progress["embedded_chunks"] == progress["total_chunks"] == Chunk.objects.count()
    assert ChunkEmbedding.objects.count() == Chunk.objects.count()

    answer = api.post("/api/v1/kbs/test-kb/ask", {"query": "Does vitamin D prevent hip fractures?", "k": 3},
                      content_type="application/json")
    assert answer.status_code == 200, answer.content
    body = answer.json()
    assert body["passages"][0]["document"] == "d-vitd"
    assert "fracture" in body["answer"].lower()

    turn = Turn.objects.get(pk=body["turn_id"])
    assert turn.query == "Does vitamin D prevent hip fractures?"
    assert turn.answer == body["answer"]
    assert (turn.retriever_version, turn.generator_version, turn.source) == ("base", "extractive", "served")
    stored = list(RetrievedPassage.objects.filter(turn=turn).order_by("rank"))
    assert [(p.rank, p.chunk_id, p.source_id) for p in stored] == [
        (p["rank"], p["chunk"], p["document"]) for p in body["passages"]
    ]
    assert [round(p.score, 6) for p in stored] == [round(p["score"], 6) for p in body["passages"]]


def test_a_killed_worker_loses_no_written_work_and_a_rerun_finishes(knowledge_base, celery_worker_process):
    """SIGKILL the worker mid-job: batches already written stay; a re-dispatch embeds only the rest."""
    from knowledge.services.documents import documents_ingest
    from knowledge.services.embeddings import embedding_jobs_resume_stalled
    from rag.documents import SourceDocument

    sentences = " ".join(f"Finding {i}: enzyme {i} binds substrate {i * 7} in yeast." for i in range(30))
    documents = [SourceDocument(external_id=f"doc-{n}", title=f"Doc {n}", text=sentences, metadata={}) for n in range(40)]
    [job] = documents_ingest(knowledge_base=knowledge_base, documents=documents).jobs
    total = Chunk.objects.count()
    assert total >= 40

    # The worker embeds in batches of 8 (see the fixture): kill it after the first batch lands.
    wait_until(lambda: ChunkEmbedding.objects.exists(), timeout=120, message="a first batch to be written")
    celery_worker_process.stop(kill=True)
    written = ChunkEmbedding.objects.count()
    assert 0 < written < total
    assert EmbeddingJob.objects.get(pk=job.pk).status == EmbeddingJob.Status.RUNNING

    # The batch the worker held is lost with it; the sweeper (run by beat) sees the stalled
    # heartbeat and dispatches every chunk still missing.
    EmbeddingJob.objects.filter(pk=job.pk).update(heartbeat_at="2000-01-01T00:00:00Z")
    assert embedding_jobs_resume_stalled() == [job.pk]
    assert ChunkEmbedding.objects.count() >= written  # nothing written before the kill was undone
    celery_worker_process.start()
    wait_until(lambda: _job_status(job.pk) == EmbeddingJob.Status.SUCCEEDED, timeout=180,
               message=f"the restarted worker to finish\n{celery_worker_process.log()}")
    assert ChunkEmbedding.objects.count() == total
    # every chunk has exactly one vector: nothing was embedded twice
    assert ChunkEmbedding.objects.values("chunk_id").distinct().count() == total


def test_cli_ingest_wait_shows_progress_until_the_worker_is_done(knowledge_base, celery_worker_process, tmp_path):
    import os
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT, _test_database_url

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps(d) for d in SAMPLE_DOCUMENTS))
    result = subprocess.run(
        [sys.executable, "manage.py", "ingest", "test-kb", str(corpus), "--wait", "--timeout", "180"],
        cwd=REPO_ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.test", "DATABASE_URL": _test_database_url(),
             "REDIS_URL": celery_worker_process.broker_url},
        capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stderr + celery_worker_process.log()
    assert "test-kb: 4 created, 0 updated, 0 unchanged" in result.stdout
    total = Chunk.objects.count()
    assert f"100.0% {total}/{total}" in result.stderr  # the progress bar's last state
    assert ChunkEmbedding.objects.count() == total
