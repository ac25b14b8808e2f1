"""Errors a service raises for the caller to show: each maps to one HTTP status and CLI exit code."""


class ServiceError(Exception):
    """Base class; `str(error)` is a message fit to show a user."""

    status_code = 400


class InvalidInput(ServiceError):
    status_code = 422


class NotFound(ServiceError):
    status_code = 404


class Conflict(ServiceError):
    status_code = 409


class UpstreamError(ServiceError):
    """A generator backend (an OpenAI-compatible endpoint, a local model) failed."""

    status_code = 502
