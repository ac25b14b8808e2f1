"""Errors a service raises for the caller to show: each maps to one HTTP status and CLI exit code."""


class ServiceError(Exception):
    """Base class; `str(error)` is a message fit to show a user."""

    status_code = 400


class InvalidInput(ServiceError):
    status_code = 422


class Forbidden(ServiceError):
    status_code = 403


class NotFound(ServiceError):
    status_code = 404


class Conflict(ServiceError):
    status_code = 409


class UpstreamError(ServiceError):
    """A generator backend (an OpenAI-compatible endpoint, a local model) failed."""

    status_code = 502


class QueueUnavailable(ServiceError):
    """The task queue (Redis) cannot be reached; what was committed stays, and the sweepers
    pick the work up once it is back. Answered 503 with Retry-After."""

    status_code = 503
    retry_after_seconds = 30


class Unauthenticated(ServiceError):
    """The credentials were recognised but may no longer be used (a revoked or expired API token)."""

    status_code = 401


class PersonalDataRejected(InvalidInput):
    """The knowledge base rejects personal data and the request held some: nothing was stored.
    `entity_types` are Presidio's names (EMAIL_ADDRESS, PHONE_NUMBER, ...), the API returns them."""

    def __init__(self, entity_types: list[str], places: list[str]):
        self.entity_types = sorted(set(entity_types))
        self.places = places
        where = ", ".join(places[:5]) + (f" and {len(places) - 5} more" if len(places) > 5 else "")
        super().__init__(
            f"Personal data found ({', '.join(self.entity_types)}) in {where}; this knowledge base rejects "
            "personal data, so nothing was stored. Remove it, or ask an admin to switch the knowledge base to redact."
        )
