"""Settings and embedded services: production refuses unsafe configuration; start is idempotent."""

import os
import subprocess
import sys

import pytest

from config import devservices
from tests.conftest import REPO_ROOT


def _import_production_settings(**env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in {"DJANGO_SECRET_KEY", "DATABASE_URL", "REDIS_URL"}}
    return subprocess.run(
        [sys.executable, "-c", "import config.settings.production"],
        cwd=REPO_ROOT, env={**clean, **env}, capture_output=True, text=True, timeout=60,
    )


SERVICES = {"DATABASE_URL": "postgresql://u@db.example/ragloop", "REDIS_URL": "redis://cache:6379/0"}
GOOD_KEY = "q3Jx8_Lr-2vKp0WzYhN5mTtB9cFeUaGdS4oR7iXlQwE1nZjVbHkPsMgCyD6fOuA"  # 63 random characters


@pytest.mark.parametrize(
    "env, message",
    [
        (SERVICES, "it is not set"),
        ({"DJANGO_SECRET_KEY": "dev-insecure-key-do-not-use-in-production", **SERVICES}, "published placeholder"),
        ({"DJANGO_SECRET_KEY": "django-insecure-" + GOOD_KEY, **SERVICES}, "published placeholder"),
        ({"DJANGO_SECRET_KEY": "build-only-secret-key-not-used-at-runtime-0000", **SERVICES}, "published placeholder"),
        ({"DJANGO_SECRET_KEY": "x" * 32, **SERVICES}, "32 characters"),
        ({"DJANGO_SECRET_KEY": "k" * 60, **SERVICES}, "too predictable"),
        ({"DJANGO_SECRET_KEY": "abcde" * 12, **SERVICES}, "too predictable"),
        ({"DJANGO_SECRET_KEY": GOOD_KEY}, "DATABASE_URL"),
    ],
)
def test_production_refuses_to_start_unsafely(env, message):
    result = _import_production_settings(**env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and message in result.stderr


def test_production_starts_with_a_real_secret_and_external_services():
    result = _import_production_settings(DJANGO_SECRET_KEY=GOOD_KEY, **SERVICES)
    assert result.returncode == 0, result.stderr


def test_production_passes_the_deploy_check_for_https_and_hsts():
    clean = {k: v for k, v in os.environ.items() if k not in {"DJANGO_SECRET_KEY", "DATABASE_URL", "REDIS_URL"}}
    env = {**clean, "DJANGO_SETTINGS_MODULE": "config.settings.production", "DJANGO_SECRET_KEY": GOOD_KEY, **SERVICES}
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    output = result.stdout + result.stderr
    assert "security.W004" not in output and "security.W008" not in output, output
    assert "security.W009" not in output  # the key is long and random enough for Django too


def test_devservices_start_is_idempotent_and_reports_running():
    first = devservices.start()
    second = devservices.start()
    assert first == second
    assert devservices.status() == {"postgres": True, "redis": True}
    assert first.database_url.endswith("/ragloop")
    assert first.redis_url.startswith("redis://127.0.0.1:")


def test_redis_refuses_to_evict_queued_tasks():
    import redis

    client = redis.Redis.from_url(devservices.service_urls().redis_url)
    assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}


def test_a_stopped_redis_comes_back_on_the_port_it_had(tmp_path, monkeypatch):
    """Running web, worker and beat hold the recorded URL: a restart on a new port would
    leave them failing until restarted (issue 14's probe found exactly that)."""
    monkeypatch.setenv("RAGLOOP_DATA_DIR", str(tmp_path))  # a Redis of its own, not the suite's
    first = devservices._start_redis(None)
    try:
        devservices._stop_redis()
        assert devservices._redis_pid() is None

        again = devservices._start_redis(first)

        assert again == first
        assert devservices._redis_ping(int(first.rsplit(":", 1)[1].split("/")[0]))
    finally:
        devservices._stop_redis()


def test_the_deploy_check_finds_no_warning_in_production_settings():
    """What CI asks of the production settings: `check --deploy --fail-level WARNING` with the
    environment they need (a strong key, the hosts, external services), axes' checks included."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_URL", "REDIS_URL", "RAGLOOP_"))}
    env = {
        **clean,
        "DJANGO_SETTINGS_MODULE": "config.settings.production",
        "DJANGO_SECRET_KEY": GOOD_KEY,
        "DJANGO_ALLOWED_HOSTS": "ragloop.example.com",
        **SERVICES,
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout + result.stderr


def test_a_domain_without_https_subdomains_turns_hsts_subdomains_off_and_still_passes():
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_URL", "REDIS_URL"))}
    env = {
        **clean,
        "DJANGO_SETTINGS_MODULE": "config.settings.production",
        "DJANGO_SECRET_KEY": GOOD_KEY,
        "DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS": "false",
        **SERVICES,
    }
    probe = "from django.conf import settings as s; print(s.SECURE_HSTS_INCLUDE_SUBDOMAINS, s.SECURE_HSTS_PRELOAD)"
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", probe], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False False"
