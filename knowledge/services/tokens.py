"""API tokens: created once (the plain token is returned to the caller and never stored),
authenticated by their sha256, limited to knowledge bases and to scopes, and never worth more
than their user's rights at the time of the request. A token may expire; it can be revoked
(refused at once, 401) and rotated (a new secret with the same name, scopes, knowledge bases
and lifetime; the old one revoked in the same transaction). Creating, rotating and revoking
are recorded in the audit log.

Who may use a knowledge base is curation's to say (admins every one, curators those they are
members of), and knowledge cannot import curation: curation registers its rule here when the
app loads (`user_access_rule_register`). Until one is registered only superusers pass.
"""

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from knowledge.errors import Conflict, InvalidInput, Unauthenticated
from knowledge.models import ApiToken, KnowledgeBase, default_token_scopes
from knowledge.services.audit import audit_record

TOKEN_PREFIX = "rl_"
# read: list and read knowledge bases, documents, turns, conversations; ask: ask, retrieve, chat
# completions and end-user feedback; ingest: log turns and conversations, upload documents;
# admin: all of them.
SCOPES = ("read", "ask", "ingest", "admin")
DEFAULT_SCOPES = tuple(default_token_scopes())


@dataclass(frozen=True)
class UserAccessRule:
    may_use: Callable[[AbstractBaseUser, KnowledgeBase], bool]
    usable: Callable[[AbstractBaseUser], QuerySet]


_access_rule = UserAccessRule(
    may_use=lambda user, knowledge_base: user.is_active and user.is_superuser,
    usable=lambda user: KnowledgeBase.objects.all() if user.is_active and user.is_superuser else KnowledgeBase.objects.none(),
)


def user_access_rule_register(*, may_use, usable) -> None:
    """Set who may use which knowledge base (curation.apps registers its permissions)."""
    global _access_rule
    _access_rule = UserAccessRule(may_use=may_use, usable=usable)


def scopes_validate(scopes) -> list[str]:
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise InvalidInput(f"Token scopes must be some of {', '.join(SCOPES)}; got {', '.join(unknown) or 'none'}.")
    return [scope for scope in SCOPES if scope in set(scopes)]


def _hash(token: str) -> str:
    # Tokens carry 256 random bits, so a fast hash is enough: there is nothing to brute-force.
    return hashlib.sha256(token.encode()).hexdigest()


def _summary(token: ApiToken) -> dict:
    """What the audit log keeps of a token: never its secret or hash."""
    return {
        "name": token.name,
        "user": token.user.get_username(),
        "key_prefix": token.key_prefix,
        "scopes": list(token.scopes),
        "all_knowledge_bases": token.all_knowledge_bases,
        "knowledge_bases": sorted(token.knowledge_bases.values_list("slug", flat=True)),
        "expires_at": token.expires_at.isoformat() if token.expires_at else None,
    }


def _new_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def api_token_create(
    *,
    user: AbstractBaseUser,
    name: str,
    knowledge_bases: list[KnowledgeBase] | None = None,
    all_knowledge_bases: bool = False,
    scopes=DEFAULT_SCOPES,
    expires_at: datetime | None = None,
) -> tuple[ApiToken, str]:
    """A new token for `user`; returns it and the plain token, which is never stored."""
    scopes = scopes_validate(scopes)
    name = (name or "").strip()
    if not name or len(name) > ApiToken._meta.get_field("name").max_length:
        raise InvalidInput("A token needs a name of 1 to 100 characters.")
    if expires_at is not None and expires_at <= timezone.now():
        raise InvalidInput(f"The expiry date {expires_at.isoformat()} has passed; give a later one.")
    plain = _new_secret()
    with transaction.atomic():
        token = ApiToken.objects.create(
            user=user,
            name=name,
            key_prefix=plain[:10],
            key_hash=_hash(plain),
            all_knowledge_bases=all_knowledge_bases,
            scopes=scopes,
            expires_at=expires_at,
        )
        if knowledge_bases:
            token.knowledge_bases.set(knowledge_bases)
        audit_record(action="token.create", object_type="api_token", object_id=token.pk, after=_summary(token))
    return token, plain


def api_token_authenticate(*, plain: str) -> ApiToken | None:
    """The token for `plain`, or None if there is none (or its user is deactivated).
    Unauthenticated (401) says so when the token exists but was revoked or has expired."""
    if not plain.startswith(TOKEN_PREFIX):
        return None
    token = ApiToken.objects.select_related("user").filter(key_hash=_hash(plain), user__is_active=True).first()
    if token is None:
        return None
    now = timezone.now()
    if token.revoked_at is not None:
        raise Unauthenticated(
            f"This API token ({token.key_prefix}…) was revoked on {token.revoked_at:%Y-%m-%d %H:%M} UTC; "
            "create a new one or use the token that replaced it."
        )
    if token.expires_at is not None and token.expires_at <= now:
        raise Unauthenticated(
            f"This API token ({token.key_prefix}…) expired on {token.expires_at:%Y-%m-%d %H:%M} UTC; "
            "rotate it or create a new one."
        )
    # Record use at most once a minute: a write per request would cost more than the request.
    if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=1):
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token


def api_token_can_access(*, token: ApiToken, knowledge_base: KnowledgeBase) -> bool:
    """The token names the knowledge base (or all) and its user may use it now."""
    if not (token.all_knowledge_bases or token.knowledge_bases.filter(pk=knowledge_base.pk).exists()):
        return False
    return _access_rule.may_use(token.user, knowledge_base)


def api_token_knowledge_bases(*, token: ApiToken) -> QuerySet[KnowledgeBase]:
    """The knowledge bases the token may use now."""
    usable = _access_rule.usable(token.user)
    if not token.all_knowledge_bases:
        usable = usable.filter(api_tokens=token)
    return usable


def api_token_has_scope(*, token: ApiToken, scope: str) -> bool:
    return scope in token.scopes or "admin" in token.scopes


def api_token_revoke(*, token: ApiToken) -> ApiToken:
    """Refuse the token from now on. Revoking a revoked token changes nothing (and records nothing)."""
    with transaction.atomic():
        token = ApiToken.objects.select_for_update().select_related("user").get(pk=token.pk)
        if token.revoked_at is not None:
            return token
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        audit_record(action="token.revoke", object_type="api_token", object_id=token.pk, before=_summary(token))
    return token


def api_token_rotate(*, token: ApiToken) -> tuple[ApiToken, str]:
    """A new secret for the token: a new token with the same user, name, scopes, knowledge
    bases and lifetime (an expiry as far from now as the old one's was from its creation), and
    the old one revoked, in one transaction. Returns the new token and its plain secret."""
    with transaction.atomic():
        old = ApiToken.objects.select_for_update().select_related("user").get(pk=token.pk)
        if old.revoked_at is not None:
            raise Conflict(f"Token {old.name!r} ({old.key_prefix}…) is revoked; create a new one instead.")
        now = timezone.now()
        expires_at = now + (old.expires_at - old.created_at) if old.expires_at else None
        plain = _new_secret()
        new = ApiToken.objects.create(
            user=old.user,
            name=old.name,
            key_prefix=plain[:10],
            key_hash=_hash(plain),
            all_knowledge_bases=old.all_knowledge_bases,
            scopes=old.scopes,
            expires_at=expires_at,
            rotated_from=old,
        )
        new.knowledge_bases.set(old.knowledge_bases.all())
        old.revoked_at = now
        old.save(update_fields=["revoked_at"])
        audit_record(
            action="token.rotate", object_type="api_token", object_id=new.pk,
            before={**_summary(old), "id": old.pk}, after={**_summary(new), "id": new.pk},
        )  # fmt: skip
    return new, plain
