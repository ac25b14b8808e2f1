"""Settings for the test suite: the embedded services, a Redis database of its own, fast hashing."""

import os

from config.settings.base import *  # noqa: F403
from config.settings.base import CELERY_BROKER_URL, REDIS_URL, env_int

SECRET_KEY = "test-insecure-key"
DEBUG = False
# Tests use Redis database 1 so a running `make run` worker (database 0) never takes their tasks.
if not os.environ.get("REDIS_URL"):
    CELERY_BROKER_URL = REDIS_URL.rsplit("/", 1)[0] + "/1"
# Rate limits: counted in the tests' Redis database, and high enough that the suite is never
# throttled; tests/knowledge/test_rate_limits.py sets real limits with override_settings (and
# the web servers of e2e tests through these variables).
RAGLOOP_RATE_LIMIT_REDIS_URL = os.environ.get("RAGLOOP_RATE_LIMIT_REDIS_URL") or CELERY_BROKER_URL
RAGLOOP_API_RATE_LIMIT_PER_MINUTE = env_int("RAGLOOP_API_RATE_LIMIT_PER_MINUTE", 1_000_000)
RAGLOOP_API_INGEST_RATE_LIMIT_PER_MINUTE = env_int("RAGLOOP_API_INGEST_RATE_LIMIT_PER_MINUTE", 1_000_000)
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
STORAGES = {
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# Parallel test runs on one machine (two checkouts, or helpers) each need their own test database.
DATABASES["default"]["TEST"] = {"NAME": "test_ragloop" + os.environ.get("RAGLOOP_TEST_DB_SUFFIX", "")}  # noqa: F405
# Serve static files from the source folders (no collectstatic needed for tests).
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True
# Mail stays in memory, in the test process (pytest-django's mail.outbox) and in a test worker.
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
