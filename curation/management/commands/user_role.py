"""`manage.py user_role <username> [admin|curator|none]`: show or change a user's role
(recorded in the audit log as the CLI's)."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from curation.services.accounts import ROLES, user_role, user_role_set
from knowledge.management.cli import service_errors_as_command_errors


class Command(BaseCommand):
    help = "Show a user's role, or make them an admin, a curator, or neither."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("role", nargs="?", choices=ROLES)

    def handle(self, *args, username, role, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"user {username!r} not found", returncode=2)
        if role is not None:
            with service_errors_as_command_errors():
                user_role_set(user=user, role=role)
        self.stdout.write(f"{user.get_username()}: {user_role(user)}")
