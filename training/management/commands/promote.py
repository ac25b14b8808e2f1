"""`manage.py promote <kb> <version> [--reason TEXT]`: make a model version live (atomically, logged)."""

import json

from django.core.management.base import BaseCommand

from knowledge.management.cli import actor_argument_add, cli_actor_name, service_errors_as_command_errors
from knowledge.selectors import knowledge_base_get
from training.selectors import model_version_get
from training.services.versions import model_version_promote


class Command(BaseCommand):
    help = "Promote a model version: it goes live and the previous live version of its component is retired."

    def add_arguments(self, parser):
        parser.add_argument("kb")
        parser.add_argument("version", metavar="VERSION")
        parser.add_argument("--reason", default="", help="why, for the promotion log")
        parser.add_argument("--json", action="store_true")
        actor_argument_add(parser)

    def handle(self, *args, kb, version, reason, **options):
        with service_errors_as_command_errors():
            knowledge_base = knowledge_base_get(slug=kb)
            event = model_version_promote(
                version=model_version_get(knowledge_base=knowledge_base, name=version),
                reason=reason,
                actor_name=cli_actor_name(options["actor"]),
            )
        previous = event.from_version.name if event.from_version else None
        if options["json"]:
            self.stdout.write(json.dumps({"event": event.pk, "component": event.component, "live": version, "previous": previous}))
            return
        self.stdout.write(f"{kb}: {version} is the live {event.component} (was {previous or 'the base model'}).")
