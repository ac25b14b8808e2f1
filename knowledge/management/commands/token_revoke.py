"""`manage.py token_revoke <id|prefix>`: the token is refused (401) from now on."""

from django.core.management.base import BaseCommand

from knowledge.management.commands._tokens import token_named
from knowledge.services.tokens import api_token_revoke


class Command(BaseCommand):
    help = "Revoke an API token (by id or by its 10-character prefix); it is refused at once."

    def add_arguments(self, parser):
        parser.add_argument("token", help="the token's id, or its prefix (rl_ and 7 more characters)")

    def handle(self, *args, token, **options):
        api_token = token_named(token)
        was_revoked = api_token.revoked_at is not None
        api_token = api_token_revoke(token=api_token)
        when = f"{api_token.revoked_at:%Y-%m-%d %H:%M:%S} UTC"
        state = "was already revoked on" if was_revoked else "revoked on"
        self.stdout.write(f"token {api_token.pk} {api_token.name!r} ({api_token.key_prefix}…) of {api_token.user} {state} {when}")
