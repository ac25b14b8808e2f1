"""Settings for benchmark runs: the shared settings with debug off (no query log to slow the
ORM down), the Django test client's host allowed, and quiet logging in the benchmark process."""

import os

from config.settings.base import *  # noqa: F403
from config.settings.base import ALLOWED_HOSTS as _ALLOWED_HOSTS
from config.settings.base import LOGGING as _LOGGING
from config.settings.base import SECRET_KEY as _SECRET_KEY

SECRET_KEY = _SECRET_KEY or "bench-insecure-key"
DEBUG = False
# django.test.Client sends requests to this host name.
ALLOWED_HOSTS = [*_ALLOWED_HOSTS, "testserver"]
# The benchmark tables are the output; a worker started by a benchmark sets INFO to log task times.
LOGGING = {**_LOGGING, "root": {**_LOGGING["root"], "level": os.environ.get("RAGLOOP_LOG_LEVEL", "WARNING")}}
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# A benchmark sends one token's requests back to back, faster than a client is allowed to: the
# limit is still checked on every request (its Redis round trip is part of the latency), at a
# budget no run reaches.
RAGLOOP_API_RATE_LIMIT_PER_MINUTE = env_int("RAGLOOP_API_RATE_LIMIT_PER_MINUTE", 1_000_000)  # noqa: F405
RAGLOOP_API_INGEST_RATE_LIMIT_PER_MINUTE = env_int("RAGLOOP_API_INGEST_RATE_LIMIT_PER_MINUTE", 1_000_000)  # noqa: F405
