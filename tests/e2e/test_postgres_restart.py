"""Issue 14's faults, PostgreSQL: a cluster of the test's own (the shared embedded server is
never touched) is restarted in `fast` and in `immediate` shutdown mode while a real gunicorn
takes turns from several clients and a real worker computes their suggestions.

During each outage every request is answered, with a 503 JSON body that says the database
cannot be reached and a Retry-After header (no hang, no traceback page). Afterwards the same
web and worker processes serve and consume again (CONN_HEALTH_CHECKS drops the dead
connections), and every turn answered 200, before or after a crash, is stored."""

import itertools
import os
import threading
import time

import psycopg
import pytest
from django.db import connection

from knowledge.services.tokens import api_token_create
from tests.conftest import CeleryWorker, WebServer, wait_until
from tests.e2e.http import call, turn, upload
from tests.e2e.services import RedisServer, ThrowawayPostgres

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def throwaway_postgres(embedded_knowledge_base, admin_user):
    """The test database as it is now (migrated, one embedded knowledge base, an admin and a
    token), copied into a cluster of the test's own."""
    _, token = api_token_create(user=admin_user, name="load", knowledge_bases=[embedded_knowledge_base])
    server = ThrowawayPostgres()
    try:
        server.start()
        server.copy_database(connection.settings_dict)
        server.token = token
        yield server
    finally:
        server.destroy()


@pytest.fixture
def stack(throwaway_postgres, tmp_path):
    redis_server = RedisServer(tmp_path / "redis")
    redis_server.start()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": throwaway_postgres.url,
        "REDIS_URL": redis_server.url(),
        "RAGLOOP_DATABASE_CONNECT_TIMEOUT_SECONDS": "3",
        "OMP_NUM_THREADS": "1",
    }
    web = WebServer(env=env, name="web-pg-faults")
    worker = CeleryWorker(queues="default,embedding", env=env, name="worker-pg-faults")
    web.start()
    worker.start()
    yield web, worker
    web.stop()
    worker.stop()
    redis_server.stop()


class Load:
    """Clients that send one turn per request, as fast as the server answers, and keep every
    answer (or the exception of a request that got none)."""

    def __init__(self, url: str, token: str, clients: int = 3) -> None:
        self.url, self.token = url, token
        self.answers: list[tuple[str, float, object]] = []  # (external id, time sent, Answer or exception)
        self.counter = itertools.count()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.client, daemon=True) for _ in range(clients)]

    def client(self) -> None:
        while not self.stopping.is_set():
            external_id = f"load-{next(self.counter)}"
            sent = time.monotonic()
            try:
                answer = call("POST", self.url, self.token, {"turns": [turn(external_id)]})
            except Exception as error:  # noqa: BLE001  a timeout or a dropped connection: kept, asserted on
                answer = error
            self.answers.append((external_id, sent, answer))

    def start(self):
        for thread in self.threads:
            thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=120)

    def statuses_since(self, moment: float) -> list[int]:
        return [a.status for _, sent, a in list(self.answers) if sent >= moment and not isinstance(a, Exception)]


def _stored_external_ids(server: ThrowawayPostgres) -> set[str]:
    with psycopg.connect(host=server.socket_dir, user="postgres", dbname=server.DATABASE) as conn:
        return {row[0] for row in conn.execute("SELECT external_id FROM curation_turn WHERE external_id LIKE 'load-%'")}


def _embedded_document(server: ThrowawayPostgres, external_id: str) -> bool:
    with psycopg.connect(host=server.socket_dir, user="postgres", dbname=server.DATABASE) as conn:
        chunks, embedded = conn.execute(
            "SELECT count(DISTINCT c.id), count(DISTINCT e.chunk_id) FROM curation_chunk c "
            "JOIN curation_document d ON d.id = c.document_id "
            "LEFT JOIN curation_chunkembedding e ON e.chunk_id = c.id WHERE d.external_id = %s",
            [external_id],
        ).fetchone()
    return chunks > 0 and chunks == embedded


def test_postgres_restarted_fast_and_immediate_under_load_gives_clean_503s_recovers_and_keeps_every_200(
    throwaway_postgres, stack
):
    web, worker = stack
    server, token = throwaway_postgres, throwaway_postgres.token
    base = f"{web.url}/api/v1/kbs/test-kb"
    load = Load(f"{base}/turns", token).start()
    try:
        for mode in ("fast", "immediate"):
            phase = time.monotonic()
            wait_until(lambda: load.statuses_since(phase).count(200) >= 5, timeout=120,
                       message=f"turns to be stored before the {mode} restart")  # fmt: skip
            server.stop(mode)
            down = time.monotonic()
            wait_until(lambda: load.statuses_since(down).count(503) >= 3, timeout=60,
                       message=f"503s while PostgreSQL is down ({mode})")  # fmt: skip
            server.start_again()
            up = time.monotonic()
            wait_until(lambda: load.statuses_since(up).count(200) >= 5, timeout=120,
                       message=f"the same web process to serve again after the {mode} restart\n{web.log()}")  # fmt: skip
    finally:
        load.stop()

    failures = [(external_id, answer) for external_id, _, answer in load.answers if isinstance(answer, Exception)]
    assert not failures, failures[:5]
    statuses = {answer.status for _, _, answer in load.answers}
    assert statuses <= {200, 503}, statuses
    for _, _, answer in load.answers:
        if answer.status == 503:
            assert answer.headers.get("Content-Type", "").startswith("application/json"), answer.body[:300]
            assert "database cannot be reached" in answer.json()["detail"] and int(answer.headers["Retry-After"]) > 0
    answered = {external_id for external_id, _, answer in load.answers if answer.status == 200}
    assert answered <= _stored_external_ids(server)  # every 200 is stored, across both crashes

    # Neither process was restarted, and the worker consumes again: an upload is embedded.
    assert web.process.poll() is None and worker.process.poll() is None
    assert upload(f"{base}/documents", token, "after.txt", "Vitamin B12 deficiency causes anaemia.").status == 200
    wait_until(lambda: _embedded_document(server, "after.txt"), timeout=120,
               message=f"the worker to embed after the restarts\n{worker.log()}")  # fmt: skip
