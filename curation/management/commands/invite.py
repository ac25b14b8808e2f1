"""`manage.py invite <email> [--role curator|admin] [--kb SLUG ...] [--by USERNAME] [--base-url URL]`:
creates an invitation and prints its link once."""

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.urls import reverse

from curation.models import Invitation
from curation.permissions import user_is_admin
from curation.services.accounts import invitation_create
from knowledge.management.cli import service_errors_as_command_errors
from knowledge.models import KnowledgeBase


class Command(BaseCommand):
    help = "Invite someone by email; prints the one-time sign-up link (valid for 7 days)."

    def add_arguments(self, parser):
        parser.add_argument("email")
        parser.add_argument("--role", default=Invitation.Role.CURATOR, choices=Invitation.Role.values)
        parser.add_argument("--kb", action="append", default=[], help="a knowledge base to join (repeatable)")
        parser.add_argument("--by", help="the inviting admin's username (default: the first superuser)")
        parser.add_argument(
            "--base-url",
            default="",
            help="where ragloop is served, to build the link (default: RAGLOOP_PUBLIC_URL, else http://127.0.0.1:8000)",
        )

    def handle(self, *args, email, role, kb, by, base_url, **options):
        base_url = base_url or settings.RAGLOOP_PUBLIC_URL or "http://127.0.0.1:8000"
        users = get_user_model().objects
        inviter = users.filter(username=by).first() if by else users.filter(is_superuser=True, is_active=True).order_by("pk").first()
        if inviter is None:
            raise CommandError(f"user {by!r} not found" if by else "no superuser: give --by USERNAME", returncode=2)
        if not user_is_admin(inviter):
            raise CommandError(f"{inviter.get_username()} is not an admin", returncode=2)
        knowledge_bases = list(KnowledgeBase.objects.filter(slug__in=kb))
        missing = set(kb) - {k.slug for k in knowledge_bases}
        if missing:
            raise CommandError(f"knowledge base(s) not found: {', '.join(sorted(missing))}", returncode=2)
        with service_errors_as_command_errors():
            invitation, key = invitation_create(invited_by=inviter, email=email, role=role, knowledge_bases=knowledge_bases)
        self.stdout.write(base_url.rstrip("/") + reverse("invitation_accept", args=[key]))
        self.stderr.write(f"invitation for {invitation.email} ({invitation.role}) expires {invitation.expires_at:%Y-%m-%d %H:%M} UTC")
