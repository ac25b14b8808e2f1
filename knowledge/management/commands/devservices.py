"""`manage.py devservices start|stop|status`: the embedded PostgreSQL+pgvector and Redis."""

from django.core.management.base import BaseCommand, CommandError

from config import devservices


class Command(BaseCommand):
    help = "Start, stop or show the embedded PostgreSQL (pgvector) and Redis under the data folder."
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["start", "stop", "status"])

    def handle(self, *args, action: str, **options):
        if action == "start":
            urls = devservices.start()
            self.stdout.write(f"DATABASE_URL={urls.database_url}")
            self.stdout.write(f"REDIS_URL={urls.redis_url}")
        elif action == "stop":
            devservices.stop()
            self.stdout.write("stopped")
        else:
            state = devservices.status()
            for name, running in state.items():
                self.stdout.write(f"{name}: {'running' if running else 'stopped'}")
            if not all(state.values()):
                raise CommandError("not all embedded services are running", returncode=1)
