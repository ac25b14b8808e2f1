"""`manage.py token_rotate <id|prefix>`: prints a new token (same user, name, scopes, knowledge
bases and lifetime) once; the old one is revoked in the same transaction."""

from django.core.management.base import BaseCommand, CommandError

from knowledge.errors import ServiceError
from knowledge.management.commands._tokens import token_named
from knowledge.services.tokens import api_token_rotate


class Command(BaseCommand):
    help = "Rotate an API token: print its replacement once and revoke it."

    def add_arguments(self, parser):
        parser.add_argument("token", help="the token's id, or its prefix (rl_ and 7 more characters)")

    def handle(self, *args, token, **options):
        try:
            _, plain = api_token_rotate(token=token_named(token))
        except ServiceError as error:
            raise CommandError(str(error), returncode=2) from error
        self.stdout.write(plain)
