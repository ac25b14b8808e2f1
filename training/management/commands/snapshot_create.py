"""`manage.py snapshot_create <kb> [--heldout-share 0.2] [--include-synthetic] [--json]`: freeze the current labels."""

import json

from django.core.management.base import BaseCommand

from knowledge.management.cli import service_errors_as_command_errors
from knowledge.selectors import knowledge_base_get
from training.services.snapshots import dataset_snapshot_create


class Command(BaseCommand):
    help = "Freeze a knowledge base's curated labels into a dataset snapshot with a stable train / held-out split."

    def add_arguments(self, parser):
        parser.add_argument("kb")
        parser.add_argument("--heldout-share", type=float, default=0.2, help="share of queries held out (default 0.2)")
        parser.add_argument(
            "--include-synthetic", action="store_true",
            help="also take labels of synthetic (LLM-written) questions; default: only questions people asked",
        )  # fmt: skip
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, kb, heldout_share, include_synthetic, **options):
        with service_errors_as_command_errors():
            knowledge_base = knowledge_base_get(slug=kb)
            snapshot = dataset_snapshot_create(
                knowledge_base=knowledge_base, heldout_share=heldout_share, include_synthetic=include_synthetic
            )
        summary = {
            "id": snapshot.pk,
            "knowledge_base": kb,
            "heldout_share": snapshot.heldout_share,
            "split_rule": snapshot.split_rule,
            "examples": snapshot.example_count,
            "train": snapshot.train_count,
            "heldout": snapshot.heldout_count,
            "labels": len(snapshot.label_ids),
            "curators": len(snapshot.curator_ids),
            "include_synthetic": snapshot.include_synthetic,
            "synthetic": snapshot.synthetic_count,
            "personal_data_excluded": snapshot.personal_data_excluded,
        }
        if options["json"]:
            self.stdout.write(json.dumps(summary))
        else:
            self.stdout.write(
                f"snapshot #{snapshot.pk} of {kb}: {snapshot.example_count} examples "
                f"({snapshot.train_count} train / {snapshot.heldout_count} held-out, split {snapshot.get_split_rule_display()}) "
                f"from {summary['labels']} labels"
                + (f"; {snapshot.synthetic_count} examples are synthetic questions" if snapshot.include_synthetic else "")
                + f"; {snapshot.personal_data_excluded} turns held back for personal data"
            )
