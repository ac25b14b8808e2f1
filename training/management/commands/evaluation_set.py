"""`manage.py evaluation_set <kb> [--pin SNAPSHOT | --unpin] [--json]`: show, pin or unpin the
held-out set every later candidate of the knowledge base is scored on."""

import json

from django.core.management.base import BaseCommand

from knowledge.management.cli import service_errors_as_command_errors
from knowledge.selectors import knowledge_base_get
from training.models import EvaluationSet
from training.selectors import snapshot_get
from training.services.evaluation_sets import evaluation_set_pin, evaluation_set_unpin


class Command(BaseCommand):
    help = "Show, pin or unpin a knowledge base's evaluation set (a snapshot's held-out part)."

    def add_arguments(self, parser):
        parser.add_argument("kb")
        action = parser.add_mutually_exclusive_group()
        action.add_argument("--pin", metavar="SNAPSHOT", help="snapshot id, or 'latest'")
        action.add_argument("--unpin", action="store_true")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, kb, pin, unpin, **options):
        with service_errors_as_command_errors():
            knowledge_base = knowledge_base_get(slug=kb)
            if pin:
                evaluation_set_pin(knowledge_base=knowledge_base, snapshot=snapshot_get(knowledge_base=knowledge_base, snapshot_id=pin))
            elif unpin:
                evaluation_set_unpin(knowledge_base=knowledge_base)
        pinned = EvaluationSet.objects.filter(knowledge_base=knowledge_base).select_related("snapshot").first()
        summary = {
            "knowledge_base": kb,
            "snapshot": pinned.snapshot_id if pinned else None,
            "heldout": pinned.snapshot.heldout_count if pinned else None,
        }
        if options["json"]:
            self.stdout.write(json.dumps(summary))
        elif pinned:
            self.stdout.write(f"{kb}: candidates are scored on the {summary['heldout']} held-out examples of snapshot #{pinned.snapshot_id}")
        else:
            self.stdout.write(f"{kb}: no pinned evaluation set (each candidate is scored on its own snapshot's held-out part)")
