"""Issue 14's probe: with Redis down, a document upload answered 500 after the documents were
committed. It must answer 503 with Retry-After, and the stored documents must still be embedded
once the queue is back (the embedding job row waits for the stalled-job sweeper)."""

import os
import socket
import urllib.error
import urllib.request

import pytest

from knowledge.models import Document, EmbeddingJob
from knowledge.services.embeddings import embedding_jobs_resume_stalled
from knowledge.services.tokens import api_token_create
from tests.conftest import WebServer, _test_database_url, wait_until

pytestmark = pytest.mark.e2e


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens once the probe is closed


@pytest.fixture
def web_without_queue(transactional_db):
    """The web app with its Redis gone: REDIS_URL names a port nobody listens on."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": _test_database_url(),
        "REDIS_URL": f"redis://127.0.0.1:{_closed_port()}/1",
    }
    server = WebServer(env=env, name="web-no-redis")
    server.start()
    yield server
    server.stop()


def _upload(url: str, token: str) -> tuple[int, dict, str]:
    boundary = "ragloopboundary"
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"note.txt\"\r\n"
        "Content-Type: text/plain\r\n\r\nStatins inhibit HMG-CoA reductase, the enzyme of cholesterol synthesis.\r\n"
        f"--{boundary}--\r\n"
    ).encode()
    request = urllib.request.Request(
        url, data=body, method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode()


def test_an_upload_while_the_queue_is_down_is_a_503_and_is_embedded_once_it_is_back(
    web_without_queue, celery_worker_process, admin_user, knowledge_base, settings
):
    _, token = api_token_create(user=admin_user, name="app", knowledge_bases=[knowledge_base])

    status, headers, body = _upload(f"{web_without_queue.url}/api/v1/kbs/test-kb/documents", token)

    assert status == 503, body
    assert int(headers["Retry-After"]) > 0 and "task queue cannot be reached" in body
    document = Document.objects.get(knowledge_base=knowledge_base)  # committed, not lost
    job = EmbeddingJob.objects.get(space__knowledge_base=knowledge_base)
    assert job.status == EmbeddingJob.Status.QUEUED

    # The queue is back (this process and the worker use the real Redis): the sweeper's next
    # pass (beat's resume-stalled-embedding-jobs) dispatches the job the upload could not.
    settings.RAGLOOP_EMBEDDING_STALL_SECONDS = 0
    assert embedding_jobs_resume_stalled() == [job.pk]
    wait_until(lambda: EmbeddingJob.objects.get(pk=job.pk).status == EmbeddingJob.Status.SUCCEEDED, timeout=120,
               message="the job to be embedded by the worker")  # fmt: skip
    assert document.chunks.filter(embeddings__isnull=False).exists()
