"""Settings shared by every environment, driven by environment variables.

DATABASE_URL / REDIS_URL point at external services (docker-compose, production); when they
are unset, the embedded services started by `manage.py devservices start` are used.
"""

import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from config import devservices

BASE_DIR = Path(__file__).resolve().parent.parent.parent


def env_bool(name: str, default: bool) -> bool:
    return os.environ.get(name, str(default)).strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


_embedded = devservices.service_urls()
DATABASE_URL = os.environ.get("DATABASE_URL") or (_embedded.database_url if _embedded else "")
REDIS_URL = os.environ.get("REDIS_URL") or (_embedded.redis_url if _embedded else "")
USING_EMBEDDED_SERVICES = not os.environ.get("DATABASE_URL")

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = [h.strip() for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",") if h.strip()]
# https://docs.djangoproject.com/en/5.2/ref/settings/#csrf-trusted-origins
CSRF_TRUSTED_ORIGINS = [o.strip() for o in os.environ.get("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    # ninja in INSTALLED_APPS makes its API docs page use the bundled Swagger UI, not a CDN.
    "ninja",
    # Login lockout after repeated failures (django-axes, docs/deployment.md "Login lockout").
    "axes",
    "knowledge",
    "curation",
    "training",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Serves static/ from the app itself (no CDN, no separate web server needed).
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # Request id and client address for the audit log (docs/audit-log.md).
    "knowledge.middleware.AuditContextMiddleware",
    "knowledge.middleware.ApiBodySizeLimitMiddleware",
    "knowledge.middleware.UnstorableUrlTextMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as axes asks: it turns a locked-out login into the lockout page (429).
    "axes.middleware.AxesMiddleware",
]

# django-axes checks every login against its failure records before Django's own backend runs.
# https://django-axes.readthedocs.io/en/latest/2_installation.html
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# https://github.com/jazzband/dj-database-url
# Connections are kept for a minute and checked before reuse (CONN_HEALTH_CHECKS): after a
# PostgreSQL restart the next request reconnects instead of failing on a dead connection.
# connect_timeout bounds the wait for a server that does not answer (docs/deployment.md).
RAGLOOP_DATABASE_CONNECT_TIMEOUT_SECONDS = env_int("RAGLOOP_DATABASE_CONNECT_TIMEOUT_SECONDS", 5)
DATABASES = {
    "default": dj_database_url.parse(DATABASE_URL, conn_max_age=60, conn_health_checks=True) if DATABASE_URL else {}
}
if DATABASES["default"]:
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("connect_timeout", RAGLOOP_DATABASE_CONNECT_TIMEOUT_SECONDS)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"

# --- Login lockout (django-axes, https://django-axes.readthedocs.io/en/latest/4_configuration.html)
# Failures are rows in PostgreSQL (the database handler), so every web process, gunicorn worker
# and machine sees the same count and a lockout holds across all of them.
# https://django-axes.readthedocs.io/en/latest/8_reference.html#handlers
AXES_HANDLER = "axes.handlers.database.AxesDatabaseHandler"
# After this many failed logins the pair below is refused, even with the right password...
AXES_FAILURE_LIMIT = env_int("RAGLOOP_LOGIN_FAILURE_LIMIT", 5)
# ...until this many minutes after the last failure (a timedelta, as axes wants).
AXES_COOLOFF_TIME = timedelta(minutes=env_int("RAGLOOP_LOGIN_COOLOFF_MINUTES", 15))
# What is locked: one username from one client address. Someone guessing a curator's password
# from elsewhere cannot lock the curator out, and one address guessing cannot try another
# user's password past the limit either. The address is REMOTE_ADDR (docs/deployment.md: set
# gunicorn's --forwarded-allow-ips behind a proxy, or every client is the proxy's address).
# https://django-axes.readthedocs.io/en/latest/4_configuration.html#customizing-lockout-parameters
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
# A successful login forgets the earlier failures of that username and address.
AXES_RESET_ON_SUCCESS = True
# The lockout answer: our page, 429 Too Many Requests (never a 500).
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_HTTP_RESPONSE_CODE = 429
# No "AXES: BEGIN version ..." line at every start-up: through the personal-data log filter it
# would load Presidio, which imports spaCy and torch (seconds) in processes that need no model
# (tests/test_startup.py). Lockouts are still logged as warnings.
AXES_VERBOSE = False
# Admins unlock with `manage.py axes_reset` (all), `axes_reset_username NAME` or `axes_reset_ip IP`.
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"

# Request bodies above this are refused with 413 before they are read (uploads included).
# https://docs.djangoproject.com/en/5.2/ref/settings/#data-upload-max-memory-size
RAGLOOP_MAX_REQUEST_BYTES = env_int("RAGLOOP_MAX_REQUEST_BYTES", 20 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = RAGLOOP_MAX_REQUEST_BYTES
FILE_UPLOAD_MAX_MEMORY_SIZE = RAGLOOP_MAX_REQUEST_BYTES
# Conversations (docs/conversations.md): the generator sees the newest earlier messages within
# this many words; a conversation sent to /v1/chat/completions or /conversations may hold at
# most this many characters in all (rag.conversation also caps messages at 500).
RAGLOOP_CHAT_HISTORY_TOKENS = env_int("RAGLOOP_CHAT_HISTORY_TOKENS", 1500)
RAGLOOP_MAX_CONVERSATION_CHARS = env_int("RAGLOOP_MAX_CONVERSATION_CHARS", 1_000_000)

# --- ragloop ------------------------------------------------------------------------------
# Where trained model versions and other artifacts are written (a volume in docker-compose).
RAGLOOP_ARTIFACTS_DIR = Path(os.environ.get("RAGLOOP_ARTIFACTS_DIR", BASE_DIR / "artifacts"))
# Where the ONNX / OpenVINO exports of retriever models are built and cached, one checksummed
# folder per (weights, backend); see docs/inference-backends.md.
RAGLOOP_INFERENCE_EXPORTS_DIR = Path(
    os.environ.get("RAGLOOP_INFERENCE_EXPORTS_DIR", RAGLOOP_ARTIFACTS_DIR / "inference-exports")
)
# A live space's backend may change only if the new backend's vectors of a sample of its chunks
# all have at least this cosine with the stored ones (docs/inference-backends.md has the figures).
RAGLOOP_BACKEND_SWITCH_MIN_COSINE = float(os.environ.get("RAGLOOP_BACKEND_SWITCH_MIN_COSINE", "0.999"))
RAGLOOP_BACKEND_SWITCH_SAMPLE = env_int("RAGLOOP_BACKEND_SWITCH_SAMPLE", 64)
# Sharing artifacts between machines (knowledge.artifact_store, docs/deployment.md): empty keeps
# them in RAGLOOP_ARTIFACTS_DIR alone (one machine); `s3://bucket/prefix` also uploads every
# registered version there, and a machine that lacks one downloads it into
# RAGLOOP_ARTIFACT_CACHE_DIR (default: RAGLOOP_ARTIFACTS_DIR/.store-cache), checked against its
# checksum manifest. Credentials come from the standard AWS variables (AWS_ACCESS_KEY_ID,
# AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION), never from settings:
# https://boto3.amazonaws.com/v1/documentation/api/latest/guide/credentials.html#environment-variables
RAGLOOP_ARTIFACT_STORE = os.environ.get("RAGLOOP_ARTIFACT_STORE", "").strip()
if RAGLOOP_ARTIFACT_STORE and not RAGLOOP_ARTIFACT_STORE.startswith("s3://"):
    raise ImproperlyConfigured(
        f"RAGLOOP_ARTIFACT_STORE must be empty (the local folder) or s3://bucket/prefix, got {RAGLOOP_ARTIFACT_STORE!r}."
    )
# An S3-compatible server other than AWS (MinIO: http://minio:9000); empty: AWS's own endpoints.
RAGLOOP_ARTIFACT_STORE_ENDPOINT_URL = os.environ.get("RAGLOOP_ARTIFACT_STORE_ENDPOINT_URL", "").strip()
RAGLOOP_ARTIFACT_CACHE_DIR = os.environ.get("RAGLOOP_ARTIFACT_CACHE_DIR", "").strip()
# Downloads of one artifact before a copy that does not match its manifest is refused.
RAGLOOP_ARTIFACT_FETCH_ATTEMPTS = env_int("RAGLOOP_ARTIFACT_FETCH_ATTEMPTS", 2)
# Chunks embedded per Celery task; one task is the unit of work a killed worker can lose.
RAGLOOP_EMBED_BATCH_SIZE = env_int("RAGLOOP_EMBED_BATCH_SIZE", 256)
# Below this many chunks in an embedding space, retrieval scans exactly; above, it uses the
# space's HNSW index (https://github.com/pgvector/pgvector#hnsw).
RAGLOOP_EXACT_SEARCH_MAX_CHUNKS = env_int("RAGLOOP_EXACT_SEARCH_MAX_CHUNKS", 20_000)
RAGLOOP_MAX_K = 100
# Memory for building a space's HNSW index (one session at a time; see docs/benchmarks.md).
RAGLOOP_HNSW_BUILD_MEMORY = os.environ.get("RAGLOOP_HNSW_BUILD_MEMORY", "512MB")
# Candidates HNSW examines per query: at least this, and at least 2k (bench: recall@10 at
# 100k chunks 0.919 with 40, 0.981 with 100, for about 0.2 ms more).
RAGLOOP_HNSW_EF_SEARCH = env_int("RAGLOOP_HNSW_EF_SEARCH", 100)
# Query vectors kept per web or worker process (rag/query_cache.py), least recently used out
# first; about 1.5 KB each for a 384-dimension encoder. 0 turns the cache off.
RAGLOOP_QUERY_CACHE_SIZE = env_int("RAGLOOP_QUERY_CACHE_SIZE", 4096)
# Hybrid retrieval (docs/retrieval.md): how the dense and lexical lists are fused ("rrf":
# reciprocal rank fusion with constant RAGLOOP_RRF_K; "score": alpha * dense + (1 - alpha) *
# lexical on min-max normalised scores), and how deep each list is read before fusing.
RAGLOOP_HYBRID_FUSION = os.environ.get("RAGLOOP_HYBRID_FUSION", "rrf")
if RAGLOOP_HYBRID_FUSION not in ("rrf", "score"):
    raise ImproperlyConfigured(f"RAGLOOP_HYBRID_FUSION must be rrf or score, not {RAGLOOP_HYBRID_FUSION!r}")
RAGLOOP_RRF_K = env_int("RAGLOOP_RRF_K", 60)
RAGLOOP_HYBRID_ALPHA = float(os.environ.get("RAGLOOP_HYBRID_ALPHA", "0.5"))
RAGLOOP_HYBRID_CANDIDATES = env_int("RAGLOOP_HYBRID_CANDIDATES", 50)
# An embedding job whose heartbeat is older than this is re-dispatched by the beat sweeper.
RAGLOOP_EMBEDDING_STALL_SECONDS = env_int("RAGLOOP_EMBEDDING_STALL_SECONDS", 300)
# A running training run whose heartbeat is older than this is failed by the beat sweeper.
RAGLOOP_TRAINING_STALL_SECONDS = env_int("RAGLOOP_TRAINING_STALL_SECONDS", 600)
# A stalled local run with a checkpoint is queued again to go on from it, at most this many
# times; after that (or without a checkpoint) it is failed.
RAGLOOP_TRAINING_RESUME_LIMIT = env_int("RAGLOOP_TRAINING_RESUME_LIMIT", 3)

# --- Suggestions (docs/curation.md, "Suggestions") -----------------------------------------
# Turns per suggestion task: one task is what a killed worker loses, and what one LLM-judge
# worker works through before the next message.
RAGLOOP_SUGGESTION_BATCH_SIZE = env_int("RAGLOOP_SUGGESTION_BATCH_SIZE", 20)
# The retriever agent's threshold until a knowledge base has this many labelled passages
# (final relevant or not relevant, with a score, both kinds present) to calibrate one on.
RAGLOOP_SUGGESTION_DEFAULT_THRESHOLD = float(os.environ.get("RAGLOOP_SUGGESTION_DEFAULT_THRESHOLD", "0.5"))
RAGLOOP_SUGGESTION_CALIBRATION_MIN_PASSAGES = env_int("RAGLOOP_SUGGESTION_CALIBRATION_MIN_PASSAGES", 20)
# An agent's measured kappa picks the pre-selected suggestion only once it rests on this many items.
RAGLOOP_SUGGESTION_TRUST_MIN_ITEMS = env_int("RAGLOOP_SUGGESTION_TRUST_MIN_ITEMS", 20)
# The LLM judge runs for knowledge bases whose generator is an OpenAI-compatible endpoint
# (OPENAI_BASE_URL / OPENAI_API_KEY, as the generator); each turn costs one chat request.
# Off: no LLM judge anywhere. The model: this, else the knowledge base's generator model.
RAGLOOP_LLM_JUDGE = env_bool("RAGLOOP_LLM_JUDGE", True)
RAGLOOP_LLM_JUDGE_MODEL = os.environ.get("RAGLOOP_LLM_JUDGE_MODEL", "")
# Synthetic questions (docs/cold-start.md) ask the same OpenAI-compatible endpoint; the model:
# this, else the LLM judge's, else the knowledge base's generator model, else OPENAI_MODEL.
RAGLOOP_SYNTHETIC_QUESTIONS_MODEL = os.environ.get("RAGLOOP_SYNTHETIC_QUESTIONS_MODEL", "")

# --- The continuous loop ------------------------------------------------------------------
# How often beat's loop tick checks retraining policies (schedules and label counts) and moves
# running cycles on; also the period of the stalled-run sweepers.
RAGLOOP_LOOP_TICK_SECONDS = env_int("RAGLOOP_LOOP_TICK_SECONDS", 60)

# --- API rate limits (knowledge.rate_limits, docs/deployment.md "Rate limits") -----------
# Requests per minute one API token may send to one knowledge base (fixed one-minute windows,
# counted in Redis by the `limits` library, https://limits.readthedocs.io/en/stable/strategies.html#fixed-window,
# so every web worker shares the count); past it: 429 with Retry-After. 0 turns a limit off.
RAGLOOP_API_RATE_LIMIT_PER_MINUTE = env_int("RAGLOOP_API_RATE_LIMIT_PER_MINUTE", 600)
# Logging turns (POST /kbs/{slug}/turns and /conversations) has its own, larger budget: an app
# logs every turn it serves, and a batch is one request.
RAGLOOP_API_INGEST_RATE_LIMIT_PER_MINUTE = env_int("RAGLOOP_API_INGEST_RATE_LIMIT_PER_MINUTE", 3000)
# Where the counters live; the broker's Redis unless told otherwise.
RAGLOOP_RATE_LIMIT_REDIS_URL = os.environ.get("RAGLOOP_RATE_LIMIT_REDIS_URL") or REDIS_URL

# --- Celery (https://docs.celeryq.dev/en/stable/userguide/configuration.html) -------------
CELERY_BROKER_URL = REDIS_URL
# Work state lives in database rows (jobs as rows), so task results are not stored.
CELERY_TASK_IGNORE_RESULT = True
# Acknowledge after the task ran: a killed worker's message is delivered again, and the
# task, being idempotent, finishes what is left.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {
    "knowledge.tasks.embedding_job_dispatch_task": {"queue": "embedding"},
    "knowledge.tasks.chunk_batch_embed_task": {"queue": "embedding"},
    # Training and evaluation load models: one at a time, on the (GPU) training worker.
    "training.tasks.training_run_execute_task": {"queue": "training"},
    "training.tasks.evaluation_job_execute_task": {"queue": "training"},
    # Re-scoring the queue encodes queries: with the other encoder work, off the request path.
    "training.tasks.turn_queue_rescore_task": {"queue": "embedding"},
    # Each question is retrieved with the live encoder: encoder work too.
    "curation.tasks.synthetic_question_job_execute_task": {"queue": "embedding"},
}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Bounded waits on Redis (docs/deployment.md, "When Redis or PostgreSQL goes away"). A request
# that queues a task gives up after about RAGLOOP_REDIS_SOCKET_TIMEOUT_SECONDS per attempt and
# two quick retries, and answers 503; without socket timeouts a Redis that hangs (stopped,
# or a network partition) would hold the request forever. A worker whose broker went away
# reconnects for as long as it takes (no retry limit), so it consumes again once Redis is back.
RAGLOOP_REDIS_SOCKET_TIMEOUT_SECONDS = env_int("RAGLOOP_REDIS_SOCKET_TIMEOUT_SECONDS", 5)
CELERY_BROKER_CONNECTION_TIMEOUT = RAGLOOP_REDIS_SOCKET_TIMEOUT_SECONDS
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "socket_timeout": RAGLOOP_REDIS_SOCKET_TIMEOUT_SECONDS,
    "socket_connect_timeout": RAGLOOP_REDIS_SOCKET_TIMEOUT_SECONDS,
    "socket_keepalive": True,
    "health_check_interval": 10,
    "retry_on_timeout": False,
}
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}
CELERY_BEAT_SCHEDULE = {
    "resume-stalled-embedding-jobs": {
        "task": "knowledge.tasks.embedding_jobs_resume_stalled_task",
        "schedule": 60.0,
    },
    "fail-stalled-training-runs": {
        "task": "training.tasks.training_runs_fail_stalled_task",
        "schedule": float(RAGLOOP_LOOP_TICK_SECONDS),
    },
    # Retraining policies: schedules and label counts, running cycles moved on.
    "loop-tick": {
        "task": "training.tasks.loop_tick_task",
        "schedule": float(RAGLOOP_LOOP_TICK_SECONDS),
    },
    "delete-expired-turn-holds": {
        "task": "curation.tasks.turn_holds_expired_delete_task",
        "schedule": 3600.0,
    },
}

# Log lines go through rag.personal_data.RedactingLogFilter: e-mail addresses, phone numbers,
# cards, IBANs, IPs and URLs in a message become <EMAIL> etc. (docs/personal-data.md).
RAGLOOP_REDACT_LOGS = env_bool("RAGLOOP_REDACT_LOGS", True)
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"personal_data": {"()": "rag.personal_data.RedactingLogFilter"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "filters": ["personal_data"] if RAGLOOP_REDACT_LOGS else []},
    },
    "root": {"handlers": ["console"], "level": os.environ.get("RAGLOOP_LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "pgserver": {"level": "WARNING"},
        "presidio-analyzer": {"level": "WARNING"},
    },
}

# --- The curation queue's re-scoring (docs/curation.md, training.services.queue_rescoring) --
# How often beat re-scores the open turns of every knowledge base with the live retriever and
# the newest candidate (also after every retriever promotion or rollback); a turn already scored
# by the same versions is skipped, so a quiet knowledge base costs one query per run.
RAGLOOP_QUEUE_RESCORE_SECONDS = env_int("RAGLOOP_QUEUE_RESCORE_SECONDS", 600)
# Turns encoded and ranked per statement, and the most one run places (the next run goes on).
RAGLOOP_QUEUE_RESCORE_BATCH = env_int("RAGLOOP_QUEUE_RESCORE_BATCH", 64)
RAGLOOP_QUEUE_RESCORE_MAX_TURNS = env_int("RAGLOOP_QUEUE_RESCORE_MAX_TURNS", 5000)
CELERY_BEAT_SCHEDULE["rescore-curation-queue"] = {
    "task": "training.tasks.turn_queue_rescore_task",
    "schedule": float(RAGLOOP_QUEUE_RESCORE_SECONDS),
}

# --- Notifications (docs/notifications.md) ------------------------------------------------
# Tries per webhook message before it is marked failed, and the wait after the first failed try
# (doubled after each: 30, 60, 120 … seconds, at most six hours).
RAGLOOP_WEBHOOK_MAX_ATTEMPTS = env_int("RAGLOOP_WEBHOOK_MAX_ATTEMPTS", 6)
RAGLOOP_WEBHOOK_BACKOFF_SECONDS = env_int("RAGLOOP_WEBHOOK_BACKOFF_SECONDS", 30)
# How long one webhook request may take before the try counts as failed.
RAGLOOP_WEBHOOK_TIMEOUT_SECONDS = env_int("RAGLOOP_WEBHOOK_TIMEOUT_SECONDS", 10)
# E-mail the admins about the same events (through Django's EMAIL_* settings).
RAGLOOP_NOTIFICATION_EMAILS = env_bool("RAGLOOP_NOTIFICATION_EMAILS", True)
# Where users reach this instance (e.g. https://ragloop.example.com), for links in e-mails; empty: no links.
RAGLOOP_PUBLIC_URL = os.environ.get("RAGLOOP_PUBLIC_URL", "")
# https://docs.djangoproject.com/en/5.2/ref/settings/#default-from-email
DEFAULT_FROM_EMAIL = os.environ.get("DJANGO_DEFAULT_FROM_EMAIL", "ragloop@localhost")
SERVER_EMAIL = DEFAULT_FROM_EMAIL
# Webhook messages whose task was lost (a broker restart) are sent again; delivery is idempotent.
CELERY_BEAT_SCHEDULE["resend-due-webhook-messages"] = {
    "task": "training.tasks.webhook_messages_resend_due_task",
    "schedule": float(RAGLOOP_LOOP_TICK_SECONDS),
}

# --- Housekeeping the loop needs ----------------------------------------------------------
# A retriever version's embedding space stops receiving new documents' vectors when the version
# is retired or rejected; this long after, beat drops its vectors and HNSW index (a rollback to
# it then needs a re-embedding: knowledge.services.embedding_spaces). Default 7 days.
RAGLOOP_RETIRED_SPACE_GRACE_SECONDS = env_int("RAGLOOP_RETIRED_SPACE_GRACE_SECONDS", 7 * 24 * 3600)
CELERY_BEAT_SCHEDULE["drop-expired-embedding-spaces"] = {
    "task": "knowledge.tasks.embedding_spaces_drop_expired_task",
    "schedule": float(RAGLOOP_LOOP_TICK_SECONDS),
}
# Calls to a fine-tuning API that fail transiently (429, 5xx, timeouts, connection errors) are
# retried with exponential backoff (or the server's Retry-After), at most this many attempts per
# call and this many seconds of waiting in all (rag.training.openai_jobs.RetryPolicy).
RAGLOOP_OPENAI_RETRY_ATTEMPTS = env_int("RAGLOOP_OPENAI_RETRY_ATTEMPTS", 6)
RAGLOOP_OPENAI_RETRY_MAX_WAIT_SECONDS = env_int("RAGLOOP_OPENAI_RETRY_MAX_WAIT_SECONDS", 300)
# An OpenAI run whose worker died while its remote job ran is re-queued to follow the same job
# (never a second one) by the stall sweeper, at most this many times before it is failed.
RAGLOOP_OPENAI_REATTACH_LIMIT = env_int("RAGLOOP_OPENAI_REATTACH_LIMIT", 5)
