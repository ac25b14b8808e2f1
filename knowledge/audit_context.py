"""Who is acting, for the audit log: the web request being served (set by
knowledge.middleware.AuditContextMiddleware) or the management command being run (manage.py
sets "cli:<os user>"). Plain contextvars, so it imports nothing from Django and manage.py can
set it before Django starts."""

import getpass
import re
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class AuditContext:
    request: Any = None  # the HttpRequest: its user (or API token) is read when a row is written
    request_id: str = ""
    ip: str | None = None
    actor: str = ""  # a fixed actor name ("cli:alice"), used when there is no request user


_current: ContextVar[AuditContext | None] = ContextVar("ragloop_audit_context", default=None)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def audit_context_get() -> AuditContext | None:
    return _current.get()


def request_id_acceptable(value: str) -> bool:
    """A caller's X-Request-ID is kept only if it is short and plain (it goes into logs and rows)."""
    return bool(_REQUEST_ID.match(value or ""))


@contextmanager
def audit_context(**fields):
    token = _current.set(AuditContext(**fields))
    try:
        yield
    finally:
        _current.reset(token)


def cli_actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for the uid (some containers)
        user = "unknown"
    return f"cli:{user}"


def audit_context_cli_set() -> None:
    """For the rest of this process's main thread (manage.py): actions are the CLI's."""
    _current.set(AuditContext(actor=cli_actor()))
