"""Issue 14's faults, Redis: a Redis of the test's own is hung (SIGSTOP: connections are
accepted, nothing answers), crashed (SIGKILL) and restarted on its port, while a real gunicorn
takes turns, answers questions and takes uploads and a real worker consumes.

- Requests answer within bounded time (the broker's socket timeouts and publish retries): what
  does not need the queue (turns, asks) answers 200 and is stored; an upload, whose embedding
  must be queued, answers 503 with Retry-After, its documents stored and its job row queued
  for the sweeper (nothing half-written).
- After the restart the same worker process consumes again (broker reconnection without a
  retry limit).
- A message queued before the crash is still there after it (append-only file)."""

import os

import pytest

from knowledge.models import Document, EmbeddingJob, Turn
from knowledge.services.embeddings import embedding_jobs_resume_stalled
from knowledge.services.tokens import api_token_create
from tests.conftest import CeleryWorker, WebServer, _test_database_url, embed_everything_now, wait_until
from tests.e2e.http import call, turn, upload
from tests.e2e.services import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def redis_server(tmp_path):
    """The test's own Redis, used by this process's Celery app as well as the web and worker."""
    from config.celery import app

    server = RedisServer(tmp_path / "redis")
    server.start()
    previous = app.conf.broker_url

    def use(broker_url: str) -> None:
        app.conf.broker_url = broker_url
        app._pool = None  # connections are pooled per URL: drop the pool of the old one
        app.amqp._producer_pool = None

    use(server.url())
    yield server
    use(previous)
    server.stop()


@pytest.fixture
def processes_env(redis_server):
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": _test_database_url(),
        "REDIS_URL": redis_server.url(),
        # Short socket timeouts keep the test brief; production's default is 5 s.
        "RAGLOOP_REDIS_SOCKET_TIMEOUT_SECONDS": "2",
        "OMP_NUM_THREADS": "1",
    }


@pytest.fixture
def web(processes_env):
    server = WebServer(env=processes_env, name="web-redis-faults")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def worker(processes_env):
    process = CeleryWorker(queues="default,embedding", env=processes_env, name="worker-redis-faults")
    process.start()
    yield process
    process.stop()


@pytest.fixture
def kb_and_token(redis_server, admin_user, sample_documents):
    from knowledge.services.documents import documents_ingest
    from knowledge.services.knowledge_bases import knowledge_base_create

    knowledge_base = knowledge_base_create(slug="test-kb", name="Test KB")
    documents_ingest(knowledge_base=knowledge_base, documents=sample_documents)
    embed_everything_now(knowledge_base)
    _, token = api_token_create(user=admin_user, name="app", knowledge_bases=[knowledge_base])
    return knowledge_base, token


def _job_of(document_external_id: str) -> EmbeddingJob:
    document = Document.objects.get(external_id=document_external_id)
    return EmbeddingJob.objects.filter(space__knowledge_base=document.knowledge_base).order_by("-pk").first()


def _embedded(document_external_id: str) -> bool:
    document = Document.objects.get(external_id=document_external_id)
    return document.chunks.exists() and not document.chunks.filter(embeddings__isnull=True).exists()


def test_a_hung_then_crashed_redis_gives_bounded_answers_and_the_same_worker_consumes_after_the_restart(
    redis_server, web, worker, kb_and_token, settings
):
    knowledge_base, token = kb_and_token
    base = f"{web.url}/api/v1/kbs/{knowledge_base.slug}"

    # Redis up: the worker embeds an upload; the web process loads its encoder for /ask now, so
    # that the outage's requests measure the waits on Redis only.
    assert call("POST", f"{base}/ask", token, {"query": "Which enzyme do statins inhibit?"}).status == 200
    assert upload(f"{base}/documents", token, "before.txt", "Vitamin K is needed for blood clotting.").status == 200
    wait_until(lambda: _embedded("before.txt"), timeout=120, message=f"the worker to embed\n{worker.log()}")

    redis_server.hang()
    try:
        turns = call("POST", f"{base}/turns", token, {"turns": [turn("hung-1"), turn("hung-2")]})
        ask = call("POST", f"{base}/ask", token, {"query": "Which enzyme do statins inhibit?"})
        uploaded = upload(f"{base}/documents", token, "during.txt", "Iron deficiency causes anaemia.")
    finally:
        redis_server.crash()  # a hung server killed: whatever it did not fsync is gone

    # Turns and answers need no queue: stored and answered (the suggestions they would have
    # queued are left for `manage.py suggestions_compute`).
    assert turns.status == 200, turns.body
    assert Turn.objects.filter(external_id__in=["hung-1", "hung-2"]).count() == 2
    assert ask.status == 200, ask.body
    assert Turn.objects.filter(pk=ask.json()["turn_id"]).exists()
    # The upload needs the queue: a clear 503, documents stored, the job row waiting.
    assert uploaded.status == 503, uploaded.body
    assert int(uploaded.headers["Retry-After"]) > 0 and "task queue cannot be reached" in uploaded.json()["detail"]
    job = _job_of("during.txt")
    assert job.status == EmbeddingJob.Status.QUEUED and not _embedded("during.txt")

    # Redis down (connection refused): the same answers, at once.
    refused = upload(f"{base}/documents", token, "down.txt", "Zinc supports the immune system.")
    assert refused.status == 503 and "task queue cannot be reached" in refused.json()["detail"]
    assert call("POST", f"{base}/turns", token, {"turns": [turn("down-1")]}).status == 200

    # Redis back on its port: the worker, never restarted, takes the sweeper's dispatch.
    redis_server.start()
    assert worker.process.poll() is None
    settings.RAGLOOP_EMBEDDING_STALL_SECONDS = 0
    assert job.pk in embedding_jobs_resume_stalled()
    wait_until(lambda: _embedded("during.txt") and _embedded("down.txt"), timeout=120,
               message=f"the same worker to consume after Redis's restart\n{worker.log()}")  # fmt: skip
    assert worker.process.poll() is None
    # And a fresh upload goes through as before.
    assert upload(f"{base}/documents", token, "after.txt", "Magnesium relaxes muscles.").status == 200
    wait_until(lambda: _embedded("after.txt"), timeout=120, message=f"the worker to embed\n{worker.log()}")


def test_a_message_queued_before_redis_crashes_is_consumed_after_its_restart(
    redis_server, processes_env, web, kb_and_token
):
    knowledge_base, token = kb_and_token
    base = f"{web.url}/api/v1/kbs/{knowledge_base.slug}"

    # No worker yet: the upload's dispatch message waits in Redis.
    assert upload(f"{base}/documents", token, "queued.txt", "Vitamin C deficiency causes scurvy.").status == 200
    job = _job_of("queued.txt")
    assert job.status == EmbeddingJob.Status.QUEUED
    aof = redis_server.folder / "appendonly.aof"
    wait_until(lambda: aof.exists() and b"embedding_job_dispatch_task" in aof.read_bytes(), timeout=30,
               message="the message to reach the append-only file")  # fsynced once a second
    redis_server.crash()
    redis_server.start()

    # No sweeper runs here: only the message that survived the crash can start the job.
    worker = CeleryWorker(queues="default,embedding", env=processes_env, name="worker-redis-aof")
    worker.start()
    try:
        wait_until(lambda: _embedded("queued.txt"), timeout=120,
                   message=f"the worker to consume the message kept by the append-only file\n{worker.log()}")  # fmt: skip
    finally:
        worker.stop()
    assert EmbeddingJob.objects.get(pk=job.pk).status == EmbeddingJob.Status.SUCCEEDED
