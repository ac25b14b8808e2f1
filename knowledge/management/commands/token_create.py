"""`manage.py token_create <username> <name> [--kb SLUG ...] [--all] [--scope read|ask|ingest|admin ...]`:
prints the token once. Whatever its scopes, a token can do no more than its user may do."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from knowledge.errors import InvalidInput
from knowledge.models import KnowledgeBase
from knowledge.services.tokens import DEFAULT_SCOPES, SCOPES, api_token_create


class Command(BaseCommand):
    help = "Create an API token for a user, scoped to knowledge bases; the token is printed once."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("name")
        parser.add_argument("--kb", action="append", default=[], help="a knowledge base the token may use (repeatable)")
        parser.add_argument("--all", action="store_true", help="every knowledge base, present and future")
        parser.add_argument(
            "--scope", action="append", choices=SCOPES, default=[],
            help=f"what the token may do (repeatable; default: {', '.join(DEFAULT_SCOPES)})",
        )  # fmt: skip

    def handle(self, *args, username, name, kb, all, scope, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"user {username!r} not found", returncode=2)
        if not kb and not all:
            raise CommandError("give --kb SLUG (repeatable) or --all", returncode=2)
        knowledge_bases = list(KnowledgeBase.objects.filter(slug__in=kb))
        missing = set(kb) - {k.slug for k in knowledge_bases}
        if missing:
            raise CommandError(f"knowledge base(s) not found: {', '.join(sorted(missing))}", returncode=2)
        try:
            _, plain = api_token_create(
                user=user, name=name, knowledge_bases=knowledge_bases, all_knowledge_bases=all, scopes=scope or DEFAULT_SCOPES
            )
        except InvalidInput as error:
            raise CommandError(str(error), returncode=2) from error
        self.stdout.write(plain)
