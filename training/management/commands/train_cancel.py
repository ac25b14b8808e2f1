"""`manage.py train_cancel <run id> [--json]`: cancel a queued run, or stop a running one at its next step."""

import json

from django.core.management.base import BaseCommand

from knowledge.errors import NotFound
from knowledge.management.cli import service_errors_as_command_errors
from training.management.commands.train import run_summary
from training.models import TrainingRun
from training.services.runs import training_run_cancel


class Command(BaseCommand):
    help = "Cancel a training run (a running one stops at its next step)."

    def add_arguments(self, parser):
        parser.add_argument("run_id", type=int)
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, run_id, **options):
        with service_errors_as_command_errors():
            run = TrainingRun.objects.select_related("knowledge_base").filter(pk=run_id).first()
            if run is None:
                raise NotFound(f"Training run #{run_id} not found.")
            run = training_run_cancel(run=run)
        if options["json"]:
            self.stdout.write(json.dumps(run_summary(run)))
        elif run.status == TrainingRun.Status.CANCELLED:
            self.stdout.write(f"training run #{run.pk} cancelled")
        else:
            self.stdout.write(f"training run #{run.pk}: cancel requested; it stops at its next step")
