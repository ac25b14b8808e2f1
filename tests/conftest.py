"""Shared fixtures: knowledge bases on the embedded Postgres, API clients with tokens, and a real
Celery worker process bound to the test database (for end-to-end tests)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

SAMPLE_DOCUMENTS = [
    {
        "_id": "d-vitd",
        "title": "Vitamin D and bone health",
        "text": "Vitamin D supplementation increases calcium absorption in the gut. "
        "In elderly adults, daily vitamin D reduced the rate of hip fractures by a fifth. "
        "The effect was strongest in people with low baseline vitamin D levels.",
    },
    {
        "_id": "d-statins",
        "title": "Statins and cholesterol",
        "text": "Statins inhibit HMG-CoA reductase, the rate-limiting enzyme of cholesterol synthesis. "
        "Lower LDL cholesterol reduces the risk of heart attacks. Muscle pain is a known side effect.",
    },
    {
        "_id": "d-sleep",
        "title": "Sleep and memory",
        "text": "During deep sleep the hippocampus replays the day's experiences. "
        "Sleep deprivation impairs the consolidation of new memories in students.",
    },
    {
        "_id": "d-coffee",
        "title": "Coffee consumption",
        "text": "Caffeine blocks adenosine receptors in the brain, which increases alertness. "
        "Moderate coffee drinking is not associated with higher mortality.",
    },
]


@pytest.fixture
def sample_documents():
    from rag.documents import SourceDocument

    return [SourceDocument(external_id=d["_id"], title=d["title"], text=d["text"], metadata={}) for d in SAMPLE_DOCUMENTS]


@pytest.fixture
def knowledge_base(db):
    from knowledge.services.knowledge_bases import knowledge_base_create

    return knowledge_base_create(slug="test-kb", name="Test KB")


def embed_everything_now(knowledge_base) -> None:
    """Run the embedding services in this process, as a worker would (for service tests)."""
    from knowledge.models import EmbeddingJob
    from knowledge.services.embeddings import chunk_batch_embed, embedding_job_start

    for space in knowledge_base.embedding_spaces.all():
        job = embedding_job_start(space=space) or EmbeddingJob.objects.filter(space=space).first()
        if job is None:
            continue
        missing = list(knowledge_base.chunks.exclude(embeddings__space=space).values_list("pk", flat=True))
        chunk_batch_embed(job_id=job.pk, chunk_ids=missing)


@pytest.fixture
def embedded_knowledge_base(knowledge_base, sample_documents):
    from knowledge.services.documents import documents_ingest

    documents_ingest(knowledge_base=knowledge_base, documents=sample_documents)
    embed_everything_now(knowledge_base)
    return knowledge_base


@pytest.fixture
def admin_user(db, django_user_model):
    return django_user_model.objects.create_superuser("root", "root@example.com", "pw-root-123")


@pytest.fixture
def admin_client(client, admin_user):
    """The `client` fixture logged in as the admin (the same object, unlike pytest-django's)."""
    client.force_login(admin_user)
    return client


@pytest.fixture
def api_token(admin_user, knowledge_base):
    """A token scoped to the test knowledge base only."""
    from knowledge.services.tokens import api_token_create

    _, plain = api_token_create(user=admin_user, name="tests", knowledge_bases=[knowledge_base])
    return plain


@pytest.fixture
def api(client, api_token):
    """A Django test client that sends the bearer token."""
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {api_token}"
    return client


def _test_database_url() -> str:
    from django.db import connection

    config = connection.settings_dict
    host = quote(config["HOST"], safe="") if config["HOST"].startswith("/") else config["HOST"]
    port = f":{config['PORT']}" if config.get("PORT") else ""
    password = f":{config['PASSWORD']}" if config.get("PASSWORD") else ""
    return f"postgresql://{config['USER']}{password}@{host}{port}/{config['NAME']}"


class CeleryWorker:
    """A real `celery worker` process (solo pool, so SIGKILL takes its task down with it)."""

    def __init__(self, *, queues: str, env: dict[str, str], name: str) -> None:
        from django.conf import settings

        self.queues, self.env, self.name = queues, env, name
        self.process: subprocess.Popen | None = None
        self.log_path = Path(settings.BASE_DIR) / ".data" / f"test-{name}-{os.getpid()}.log"

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", self.queues, "--pool", "solo",
             "-n", f"{self.name}-{os.getpid()}@%h", "--without-gossip", "--without-mingle", "--loglevel", "INFO"],
            cwd=REPO_ROOT, env=self.env, stdout=self.log_path.open("ab"), stderr=subprocess.STDOUT,
        )  # fmt: skip

    def stop(self, *, kill: bool = False) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path.exists() else ""


class CeleryBeat(CeleryWorker):
    """A real `celery beat` process with a schedule file of its own (two can run side by side)."""

    def __init__(self, *, env: dict[str, str], name: str) -> None:
        super().__init__(queues="", env=env, name=name)
        self.schedule_path = self.log_path.with_suffix(".schedule")

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "beat", "-s", str(self.schedule_path),
             "--pidfile=", "--loglevel", "INFO"],
            cwd=REPO_ROOT, env=self.env, stdout=self.log_path.open("ab"), stderr=subprocess.STDOUT,
        )  # fmt: skip

    def stop(self, *, kill: bool = False) -> None:
        super().stop(kill=kill)
        for path in self.schedule_path.parent.glob(self.schedule_path.name + "*"):
            path.unlink(missing_ok=True)


class WebServer(CeleryWorker):
    """The web app on a free local port (`url`), started with the command `make run` uses
    (gunicorn, as production runs it)."""

    def __init__(self, *, env: dict[str, str], name: str) -> None:
        import socket

        super().__init__(queues="", env=env, name=name)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        import urllib.request

        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        from knowledge.management.commands.run_local import web_command

        self.process = subprocess.Popen(
            web_command(sys.executable, f"127.0.0.1:{self.port}"),
            cwd=REPO_ROOT, env=self.env, stdout=self.log_path.open("ab"), stderr=subprocess.STDOUT,
        )  # fmt: skip

        def answers() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"the web server exited: {self.log()}")
            try:
                urllib.request.urlopen(f"{self.url}/login/", timeout=2).close()
                return True
            except OSError:
                return False

        wait_until(answers, timeout=60, message="the web server to answer")


@pytest.fixture
def web_server_process(transactional_db):
    """The web app served by a real gunicorn process bound to the test database."""
    from django.conf import settings

    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": _test_database_url(),
        "REDIS_URL": settings.CELERY_BROKER_URL,
    }
    server = WebServer(env=env, name="web")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def celery_worker_process(transactional_db):
    """Start a real worker on the `default` and `embedding` queues, bound to the test database
    and the test Redis database; `stop(kill=...)` and `start()` let a test kill and restart it."""
    import redis
    from django.conf import settings

    broker_url = settings.CELERY_BROKER_URL
    redis.Redis.from_url(broker_url).flushdb()  # no stale messages from an earlier run
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": _test_database_url(),
        "REDIS_URL": broker_url,
        # Small batches, so a job spans many tasks and a killed worker leaves a partial state.
        "RAGLOOP_EMBED_BATCH_SIZE": "8",
    }
    worker = CeleryWorker(queues="default,embedding", env=env, name="worker")
    worker.broker_url = broker_url
    worker.start()
    yield worker
    worker.stop()


def wait_until(condition, *, timeout: float = 120, interval: float = 0.3, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {message}")


class FakeJudgeServer:
    """A local OpenAI-compatible chat endpoint that plays the LLM judge (rag.suggestions).

    /judge/v1: a JSON judgment, the first passage relevant, the second partly, the others not
    relevant, the answer `FakeJudgeServer.rating`; /fenced/v1: the same in a ```json fence
    after a sentence; /malformed/v1: prose, no JSON; /down/v1: HTTP 500. Every request body is
    kept in `requests`.

    /questions/v1 writes synthetic questions (rag.synthetic_questions): for the passage of the
    prompt, "Is it true that <its first sentence>?", then one no passage answers (MARS_QUESTION),
    then numbered repeats, as many as the prompt asks for.
    """

    MARS_QUESTION = "How tall is the highest volcano on Mars?"

    requests: list[dict] = []
    rating = "correct"

    @classmethod
    def judgment(cls, user_prompt: str) -> dict:
        import re

        numbers = sorted({int(n) for n in re.findall(r"^\[(\d+)\]", user_prompt, flags=re.MULTILINE)})
        values = ["relevant", "partly"]
        return {
            "passages": [{"number": n, "relevance": values[n - 1] if n <= 2 else "not_relevant", "confidence": 0.9,
                          "reason": f"passage {n} reason"} for n in numbers],
            "answer": {"rating": cls.rating, "confidence": 0.8, "reason": "the answer matches passage 1"},
        }  # fmt: skip

    @classmethod
    def questions(cls, user_prompt: str) -> list[str]:
        import re

        passage = user_prompt.split("Passage:\n", 1)[1].split("\n\nWrite ", 1)[0]
        count = int(re.search(r"Write (\d+) different", user_prompt).group(1))
        first_sentence = re.split(r"(?<=[.!?])\s", passage, maxsplit=1)[0].rstrip(".")
        written = [f"Is it true that {first_sentence[0].lower()}{first_sentence[1:]}?", cls.MARS_QUESTION]
        return (written + [f"Question {n}?" for n in range(3, count + 1)])[:count]

    @classmethod
    def serve(cls):
        """Start the server on a free port; (base URL, stop function)."""
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                cls.requests.append({"path": self.path, "body": body})
                user = body["messages"][-1]["content"]
                if self.path.startswith("/down/"):
                    self.reply(500, {"error": {"message": "the judge is down"}})
                    return
                if self.path.startswith("/malformed/"):
                    content = "I think the first passage is quite good and the answer is fine."
                elif self.path.startswith("/fenced/"):
                    content = "Here is my judgment:\n```json\n" + json.dumps(cls.judgment(user)) + "\n```"
                elif self.path.startswith("/questions/"):
                    content = json.dumps({"questions": cls.questions(user)})
                else:
                    content = json.dumps(cls.judgment(user))
                self.reply(200, {"choices": [{"message": {"role": "assistant", "content": content}}]})

            def reply(self, status: int, payload: dict) -> None:
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()

        def stop() -> None:
            server.shutdown()
            server.server_close()

        return f"http://127.0.0.1:{server.server_address[1]}", stop


@pytest.fixture
def judge_server_url():
    FakeJudgeServer.requests.clear()
    FakeJudgeServer.rating = "correct"
    url, stop = FakeJudgeServer.serve()
    yield url
    stop()


class S3Server:
    """A real S3-compatible HTTP endpoint on loopback: moto's server (`python -m moto.server`) in
    a process of its own. The artifact store talks to it through s3fs as it would to MinIO."""

    def __init__(self):
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def wait_ready(self) -> None:
        import urllib.request

        def answers() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.process.returncode}")
            try:
                urllib.request.urlopen(self.url + "/moto-api/", timeout=2).close()
                return True
            except OSError:
                return False

        wait_until(answers, timeout=60, message="moto_server answering")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="session")
def s3_server():
    server = S3Server()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_store(s3_server, settings, monkeypatch, request):
    """RAGLOOP_ARTIFACT_STORE pointed at a new bucket of the S3 server (one per test), with the
    throwaway credentials moto accepts; yields the bucket, its prefix and an s3fs filesystem of
    the test's own to look into it."""
    import types
    import uuid

    import s3fs

    from knowledge.artifact_store import artifact_cache_forget

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "moto-test-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "moto-test-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = f"ragloop-{uuid.uuid4().hex[:12]}"
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server.url}, skip_instance_cache=True)
    fs.mkdir(bucket)
    settings.RAGLOOP_ARTIFACT_STORE = f"s3://{bucket}/models"
    settings.RAGLOOP_ARTIFACT_STORE_ENDPOINT_URL = s3_server.url
    artifact_cache_forget()
    yield types.SimpleNamespace(fs=fs, bucket=bucket, prefix=f"{bucket}/models", url=settings.RAGLOOP_ARTIFACT_STORE)
    artifact_cache_forget()
