"""The audit log: one append-only row per action that changes what ragloop holds or serves, or
takes data out of it. Every service that does such a thing calls `audit_record` inside its own
transaction, so the row commits with the change or not at all (docs/audit-log.md)."""

from typing import Any

from django.contrib.auth.models import AbstractBaseUser

from knowledge.audit_context import audit_context_get
from knowledge.models import AuditEvent, KnowledgeBase

SYSTEM_ACTOR = "system"


def _actor(actor: AbstractBaseUser | None, actor_name: str) -> tuple[str, int | None]:
    context = audit_context_get()
    if actor is not None and getattr(actor, "is_authenticated", False):
        if context is not None and context.request is None and context.actor:
            # A command acting for a user (`invite --by`, `promote --actor`): both are said.
            return f"{context.actor} as {actor.get_username()}", actor.pk
        return actor.get_username(), actor.pk
    if actor_name:
        return actor_name, None
    if context is None:
        return SYSTEM_ACTOR, None
    request = context.request
    if request is not None:
        token = getattr(request, "auth", None)
        # An API request: the token's prefix says which token, its user whose rights it used.
        if token is not None and hasattr(token, "key_prefix"):
            return f"token:{token.key_prefix} ({token.user.get_username()})", token.user_id
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            return user.get_username(), user.pk
    return context.actor or SYSTEM_ACTOR, None


def audit_record(
    *,
    action: str,
    object_type: str,
    object_id: Any = "",
    knowledge_base: KnowledgeBase | None = None,
    before: dict | None = None,
    after: dict | None = None,
    actor: AbstractBaseUser | None = None,
    actor_name: str = "",
) -> AuditEvent:
    """Write one audit row. `actor` (a user) or `actor_name` (who acted when no person did)
    says who; without them, the request or command being served does (knowledge.audit_context).
    `before` and `after` are short summaries: ids, counts, settings; never secrets or texts."""
    name, user_id = _actor(actor, actor_name)
    context = audit_context_get()
    return AuditEvent.objects.create(
        actor=name[:200],
        actor_user_id=user_id,
        action=action,
        object_type=object_type,
        object_id="" if object_id is None else str(object_id)[:64],
        knowledge_base=knowledge_base,
        knowledge_base_slug=knowledge_base.slug if knowledge_base is not None else "",
        before=before,
        after=after,
        request_id=context.request_id if context else "",
        ip=context.ip if context else None,
    )
