"""`manage.py versions <kb> [--component retriever|generator] [--json]`: the model versions of a
knowledge base with status, lineage and headline figures."""

import json

from django.core.management.base import BaseCommand

from knowledge.errors import InvalidInput
from knowledge.management.cli import service_errors_as_command_errors
from knowledge.selectors import knowledge_base_get
from training.models import Component
from training.selectors import LIST_METRICS, model_versions_list


class Command(BaseCommand):
    help = "List a knowledge base's model versions (live ones marked)."

    def add_arguments(self, parser):
        parser.add_argument("kb")
        parser.add_argument("--component", help="retriever or generator (default: both)")
        parser.add_argument("--json", action="store_true", help="print the versions as JSON")

    def handle(self, *args, kb, component, **options):
        with service_errors_as_command_errors():
            knowledge_base = knowledge_base_get(slug=kb)
            if component is not None and component not in Component.values:
                raise InvalidInput(f"Component must be one of {', '.join(Component.values)}.")
        versions = model_versions_list(knowledge_base=knowledge_base, component=component)
        if options["json"]:
            self.stdout.write(json.dumps([
                {
                    "name": v.name,
                    "component": v.component,
                    "status": v.status,
                    "live": v.status == v.Status.LIVE,
                    "mode": v.mode,
                    "parent": v.parent.name if v.parent else None,
                    "snapshot": v.snapshot_id,
                    "created_at": v.created_at.isoformat(),
                    "code_revision": v.code_revision,
                    "artifact_checksum": v.artifact_checksum,
                    "metrics": v.metrics,
                }
                for v in versions
            ]))
            return
        if not versions:
            self.stdout.write(f"{kb}: no model versions yet; the base models serve.")
            return
        for v in versions:
            figures = " ".join(
                f"{name}={v.metrics[name]:.4f}" for name in LIST_METRICS[v.component] if isinstance(v.metrics.get(name), (int, float))
            )
            marker = "*" if v.status == v.Status.LIVE else " "
            self.stdout.write(
                f"{marker} {v.name:<20} {v.component:<10} {v.status:<10} parent={v.parent.name if v.parent else 'base'} "
                f"snapshot={v.snapshot_id or '-'} {v.created_at:%Y-%m-%d %H:%M} {figures}".rstrip()
            )
