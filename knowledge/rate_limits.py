"""API rate limits: requests per minute per API token and knowledge base, counted in Redis so
every gunicorn worker and every web machine shares one count (docs/deployment.md, "Rate limits").

The counting is the `limits` library's fixed window on its Redis storage (an atomic INCR with
an expiry per window; a window starts with its first request and lasts a minute): a token gets
`RAGLOOP_API_RATE_LIMIT_PER_MINUTE` requests on one knowledge base per window, and the turn-ingest endpoints (`POST .../turns` and
`POST .../conversations`) a larger budget of their own, `RAGLOOP_API_INGEST_RATE_LIMIT_PER_MINUTE`,
since an app logs every turn it serves. A request past the budget is refused with 429 and
`Retry-After` (seconds until the window ends); nothing of it is done.

When the limiter's Redis cannot be reached the request is served unthrottled and a warning
logged: rate limits protect the service, and losing them for an outage is better than refusing
every request (the queue's own outage answers are knowledge.errors.QueueUnavailable).
"""

import logging
import math
import time
from dataclasses import dataclass

from django.conf import settings
from limits import RateLimitItemPerMinute
from limits.storage import RedisStorage
from limits.strategies import FixedWindowRateLimiter
from redis.exceptions import RedisError

from knowledge.errors import ServiceError

logger = logging.getLogger(__name__)

# Budgets (the names of the settings that size them).
API = "api"
INGEST = "ingest"
_BUDGET_SETTINGS = {API: "RAGLOOP_API_RATE_LIMIT_PER_MINUTE", INGEST: "RAGLOOP_API_INGEST_RATE_LIMIT_PER_MINUTE"}
KEY_PREFIX = "ragloop-rate"
# A limiter that cannot reach Redis gives up this fast (seconds) and lets the request through.
REDIS_TIMEOUT_SECONDS = 1.0


class RateLimited(ServiceError):
    """Over budget: 429 with Retry-After."""

    status_code = 429

    def __init__(self, message: str, *, retry_after_seconds: int, limit: int):
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds
        self.limit = limit


@dataclass(frozen=True)
class _Limiter:
    url: str
    limiter: FixedWindowRateLimiter
    storage: RedisStorage


_limiter: _Limiter | None = None


def _limiter_for(url: str) -> _Limiter:
    global _limiter
    if _limiter is None or _limiter.url != url:
        storage = RedisStorage(
            url,
            key_prefix=KEY_PREFIX,
            socket_timeout=REDIS_TIMEOUT_SECONDS,
            socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
        )
        _limiter = _Limiter(url=url, limiter=FixedWindowRateLimiter(storage), storage=storage)
    return _limiter


def budget_per_minute(budget: str) -> int:
    """Requests a token may send per minute to one knowledge base in `budget`; 0: unlimited."""
    return int(getattr(settings, _BUDGET_SETTINGS[budget]))


def rate_limit_hit(*, token_id: int, knowledge_base_id: int | None, budget: str = API) -> None:
    """Count one request of the token on the knowledge base (None: a request that names none,
    such as the list of knowledge bases) and raise RateLimited when it is over the budget."""
    per_minute = budget_per_minute(budget)
    if per_minute <= 0:
        return
    item = RateLimitItemPerMinute(per_minute)
    scope = "all" if knowledge_base_id is None else str(knowledge_base_id)
    identifiers = (budget, str(token_id), scope)
    limiter = _limiter_for(settings.RAGLOOP_RATE_LIMIT_REDIS_URL)
    try:
        if limiter.limiter.hit(item, *identifiers):
            return
        reset_at = limiter.limiter.get_window_stats(item, *identifiers).reset_time
    except RedisError as error:
        logger.warning("Rate limits are off while their Redis cannot be reached: %s", error)
        return
    retry_after = max(1, math.ceil(reset_at - time.time()))
    what = "logging turns" if budget == INGEST else "requests"
    raise RateLimited(
        f"Rate limit exceeded: this token may send {per_minute} {what} per minute"
        f"{' to this knowledge base' if knowledge_base_id is not None else ''}. Retry in {retry_after} s.",
        retry_after_seconds=retry_after,
        limit=per_minute,
    )


def rate_limits_reset() -> None:
    """Forget every count (tests, and an admin who wants a clean slate)."""
    _limiter_for(settings.RAGLOOP_RATE_LIMIT_REDIS_URL).storage.reset()
