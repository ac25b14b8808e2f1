"""Fixtures of the end-to-end tests that run real worker (and beat) processes: a Redis database of
the test run's own, an artifacts folder, and the environment the processes share."""

import os
import zlib
from pathlib import Path

import pytest

from tests.conftest import CeleryWorker, _test_database_url


@pytest.fixture
def training_broker(settings):
    """A Redis database of this test run's own (other test runs flush and consume database 1),
    used by this process's Celery app, the CLI and the worker alike."""
    import redis

    from config.celery import app

    number = 8 + zlib.crc32(os.environ.get("RAGLOOP_TEST_DB_SUFFIX", "").encode()) % 8
    url = settings.CELERY_BROKER_URL.rsplit("/", 1)[0] + f"/{number}"
    redis.Redis.from_url(url).flushdb()
    previous = app.conf.broker_url

    def use(broker_url: str) -> None:
        app.conf.broker_url = broker_url
        app._pool = None  # connections are pooled per URL: drop the pool of the old one
        app.amqp._producer_pool = None

    use(url)
    yield url
    use(previous)
    redis.Redis.from_url(url).flushdb()


@pytest.fixture
def artifacts(settings, tmp_path) -> Path:
    settings.RAGLOOP_ARTIFACTS_DIR = tmp_path / "artifacts"
    return settings.RAGLOOP_ARTIFACTS_DIR


@pytest.fixture
def environment(training_broker, artifacts, transactional_db) -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": _test_database_url(),
        "REDIS_URL": training_broker,
        "RAGLOOP_ARTIFACTS_DIR": str(artifacts),
        "RAGLOOP_TRAINING_STALL_SECONDS": "3",
        # The test machine's few cores are shared; OpenMP threads spinning against each other
        # make small models many times slower.
        "OMP_NUM_THREADS": "1",
    }


@pytest.fixture
def training_worker(environment):
    """A `celery worker -Q training` process (solo pool: SIGKILL kills the training with it)."""
    worker = CeleryWorker(queues="training", env=environment, name="training-worker")
    worker.start()
    yield worker
    worker.stop()


