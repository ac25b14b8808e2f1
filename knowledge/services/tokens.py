"""API tokens: created once (the plain token is returned to the caller and never stored),
authenticated by their sha256, limited to knowledge bases and to scopes, and never worth more
than their user's rights at the time of the request.

Who may use a knowledge base is curation's to say (admins every one, curators those they are
members of), and knowledge cannot import curation: curation registers its rule here when the
app loads (`user_access_rule_register`). Until one is registered only superusers pass.
"""

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet
from django.utils import timezone

from knowledge.errors import InvalidInput
from knowledge.models import ApiToken, KnowledgeBase, default_token_scopes

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


def api_token_create(
    *,
    user: AbstractBaseUser,
    name: str,
    knowledge_bases: list[KnowledgeBase] | None = None,
    all_knowledge_bases: bool = False,
    scopes=DEFAULT_SCOPES,
) -> tuple[ApiToken, str]:
    scopes = scopes_validate(scopes)
    plain = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        user=user,
        name=name,
        key_prefix=plain[:10],
        key_hash=_hash(plain),
        all_knowledge_bases=all_knowledge_bases,
        scopes=scopes,
    )
    if knowledge_bases:
        token.knowledge_bases.set(knowledge_bases)
    return token, plain


def api_token_authenticate(*, plain: str) -> ApiToken | None:
    if not plain.startswith(TOKEN_PREFIX):
        return None
    token = (
        ApiToken.objects.select_related("user")
        .filter(key_hash=_hash(plain), revoked_at__isnull=True, user__is_active=True)
        .first()
    )
    if token is None:
        return None
    now = timezone.now()
    # Record use at most once a minute: a write per request would cost more than the request.
    if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=1):
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
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


def api_token_revoke(*, token: ApiToken) -> None:
    ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
