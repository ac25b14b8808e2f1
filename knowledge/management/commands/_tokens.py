"""Finding the token a token command names: by id, or by the prefix `token_create` printed
(the first 10 characters of the token, as the account page and the audit log show it)."""

from django.core.management.base import CommandError

from knowledge.models import ApiToken


def token_named(reference: str) -> ApiToken:
    reference = (reference or "").strip()
    tokens = ApiToken.objects.select_related("user")
    if reference.isdigit():
        token = tokens.filter(pk=int(reference)).first()
    else:
        matches = list(tokens.filter(key_prefix=reference[:10])) if len(reference) >= 10 else []
        if len(matches) > 1:
            raise CommandError(f"{len(matches)} tokens start with {reference[:10]!r}; give the token's id", returncode=2)
        token = matches[0] if matches else None
    if token is None:
        raise CommandError(f"no API token {reference!r} (give its id or its 10-character prefix)", returncode=2)
    return token
