"""`manage.py rollback <kb> --component retriever|generator [--reason TEXT]`: put back the version
that was live before the current one (or the base model)."""

import json

from django.core.management.base import BaseCommand

from knowledge.management.cli import actor_argument_add, cli_actor_name, service_errors_as_command_errors
from knowledge.selectors import knowledge_base_get
from training.services.versions import model_version_rollback


class Command(BaseCommand):
    help = "Roll back a component to the version live before the current one (or to the base model)."

    def add_arguments(self, parser):
        parser.add_argument("kb")
        parser.add_argument("--component", required=True, help="retriever or generator")
        parser.add_argument("--reason", default="", help="why, for the promotion log")
        parser.add_argument("--json", action="store_true")
        actor_argument_add(parser)

    def handle(self, *args, kb, component, reason, **options):
        with service_errors_as_command_errors():
            event = model_version_rollback(
                knowledge_base=knowledge_base_get(slug=kb),
                component=component,
                reason=reason,
                actor_name=cli_actor_name(options["actor"]),
            )
        retired = event.from_version.name
        live = event.to_version.name if event.to_version else None
        if options["json"]:
            self.stdout.write(json.dumps({"event": event.pk, "component": component, "retired": retired, "live": live}))
            return
        self.stdout.write(f"{kb}: {retired} rolled back; the live {component} is {live or 'the base model'}.")
