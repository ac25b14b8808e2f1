"""`manage.py token_create <username> <name> [--kb SLUG ...] [--all] [--scope read|ask|ingest|admin ...]
[--expires-in-days N | --expires YYYY-MM-DD]`: prints the token once. Whatever its scopes, a token
can do no more than its user may do. `token_revoke` and `token_rotate` manage it afterwards."""

from datetime import datetime, time, timedelta
from datetime import timezone as dt_timezone

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

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
        lifetime = parser.add_mutually_exclusive_group()
        lifetime.add_argument("--expires-in-days", type=int, help="the token is refused after this many days")
        lifetime.add_argument("--expires", help="the token is refused from this date on (YYYY-MM-DD, midnight UTC)")

    def handle(self, *args, username, name, kb, all, scope, expires_in_days, expires, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"user {username!r} not found", returncode=2)
        if not kb and not all:
            raise CommandError("give --kb SLUG (repeatable) or --all", returncode=2)
        knowledge_bases = list(KnowledgeBase.objects.filter(slug__in=kb))
        missing = set(kb) - {k.slug for k in knowledge_bases}
        if missing:
            raise CommandError(f"knowledge base(s) not found: {', '.join(sorted(missing))}", returncode=2)
        expires_at = None
        if expires_in_days is not None:
            if expires_in_days < 1:
                raise CommandError("--expires-in-days must be 1 or more", returncode=2)
            expires_at = timezone.now() + timedelta(days=expires_in_days)
        elif expires:
            try:
                day = datetime.strptime(expires, "%Y-%m-%d").date()
            except ValueError:
                raise CommandError(f"--expires {expires!r} is not a date (YYYY-MM-DD)", returncode=2) from None
            expires_at = datetime.combine(day, time.min, tzinfo=dt_timezone.utc)
        try:
            _, plain = api_token_create(
                user=user, name=name, knowledge_bases=knowledge_bases, all_knowledge_bases=all,
                scopes=scope or DEFAULT_SCOPES, expires_at=expires_at,
            )  # fmt: skip
        except InvalidInput as error:
            raise CommandError(str(error), returncode=2) from error
        self.stdout.write(plain)
