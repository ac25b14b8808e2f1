"""Settings for the test suite: the embedded services, a Redis database of its own, fast hashing."""

import os

from config.settings.base import *  # noqa: F403
from config.settings.base import REDIS_URL

SECRET_KEY = "test-insecure-key"
DEBUG = False
# Tests use Redis database 1 so a running `make run` worker (database 0) never takes their tasks.
if not os.environ.get("REDIS_URL"):
    CELERY_BROKER_URL = REDIS_URL.rsplit("/", 1)[0] + "/1"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
STORAGES = {
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
