"""API tokens: created once (the plain token is returned to the caller and never stored),
authenticated by their sha256, scoped to knowledge bases."""

import hashlib
import secrets
from datetime import timedelta

from django.contrib.auth.models import AbstractBaseUser
from django.utils import timezone

from knowledge.models import ApiToken, KnowledgeBase

TOKEN_PREFIX = "rl_"


def _hash(token: str) -> str:
    # Tokens carry 256 random bits, so a fast hash is enough: there is nothing to brute-force.
    return hashlib.sha256(token.encode()).hexdigest()


def api_token_create(
    *,
    user: AbstractBaseUser,
    name: str,
    knowledge_bases: list[KnowledgeBase] | None = None,
    all_knowledge_bases: bool = False,
) -> tuple[ApiToken, str]:
    plain = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        user=user,
        name=name,
        key_prefix=plain[:10],
        key_hash=_hash(plain),
        all_knowledge_bases=all_knowledge_bases,
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
    return token.all_knowledge_bases or token.knowledge_bases.filter(pk=knowledge_base.pk).exists()


def api_token_revoke(*, token: ApiToken) -> None:
    ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
