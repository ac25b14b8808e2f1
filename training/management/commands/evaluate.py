"""`manage.py evaluate <kb> --version V [--snapshot ID] [--json]`: score a model version against
the baseline on a snapshot's held-out split (synchronously) and print them side by side."""

import json

from django.core.management.base import BaseCommand

from knowledge.management.cli import service_errors_as_command_errors
from knowledge.selectors import knowledge_base_get
from training.selectors import UNCHANGED_TOLERANCE, model_version_get, snapshot_get
from training.services.evaluation import (
    GENERATOR_METRICS,
    HEADLINE_METRIC,
    RETRIEVER_METRICS,
    model_version_evaluate,
)


def _figure(value) -> str:
    return "—" if value is None else f"{value:.4f}"


class Command(BaseCommand):
    help = "Evaluate a model version and the live one (else the base model) on the held-out queries of a snapshot."

    def create_parser(self, prog_name, subcommand, **kwargs):
        # The interface is `--version V`; Django's own --version (print Django's
        # version) gives way to it in this command.
        return super().create_parser(prog_name, subcommand, conflict_handler="resolve", **kwargs)

    def add_arguments(self, parser):
        parser.add_argument("kb")
        parser.add_argument("--version", required=True, dest="version_name", metavar="NAME", help="the model version to evaluate")
        parser.add_argument("--snapshot", metavar="ID", help="snapshot id (default: the pinned evaluation set, else the version's training snapshot, else the latest)")
        parser.add_argument("--json", action="store_true", help="print the result as JSON")

    def handle(self, *args, kb, version_name, snapshot, **options):
        with service_errors_as_command_errors():
            knowledge_base = knowledge_base_get(slug=kb)
            version = model_version_get(knowledge_base=knowledge_base, name=version_name)
            chosen = snapshot_get(knowledge_base=knowledge_base, snapshot_id=snapshot) if snapshot else None
            evaluation = model_version_evaluate(version=version, snapshot=chosen)
        names = RETRIEVER_METRICS if version.component == "retriever" else GENERATOR_METRICS
        deltas = [result.delta for result in evaluation.query_results.all()]
        counts = {
            "improved": sum(d > UNCHANGED_TOLERANCE for d in deltas),
            "regressed": sum(d < -UNCHANGED_TOLERANCE for d in deltas),
            "unchanged": sum(abs(d) <= UNCHANGED_TOLERANCE for d in deltas),
        }
        candidate, baseline = evaluation.candidate_metrics, evaluation.baseline_metrics
        delta = {
            name: None if candidate.get(name) is None or baseline.get(name) is None else candidate[name] - baseline[name]
            for name in names
        }
        if options["json"]:
            self.stdout.write(json.dumps({
                "evaluation": evaluation.pk,
                "knowledge_base": knowledge_base.slug,
                "component": version.component,
                "candidate": version.name,
                "baseline": evaluation.baseline_name,
                "snapshot": evaluation.snapshot_id,
                "queries": candidate.get("queries"),
                "headline": HEADLINE_METRIC[version.component],
                "candidate_metrics": candidate,
                "baseline_metrics": baseline,
                "delta": delta,
                "delta_intervals": evaluation.delta_intervals,
                "heldout_left_out": evaluation.heldout_left_out,
                **counts,
            }))
            return
        width = max(len(version.name), len(evaluation.baseline_name), 10)
        self.stdout.write(
            f"{version.name} vs {evaluation.baseline_name}: held-out split of snapshot {evaluation.snapshot_id}, "
            f"{candidate.get('queries')} queries"
        )
        if evaluation.heldout_left_out:
            self.stdout.write(f"({evaluation.heldout_left_out} held-out queries left out: its lineage trained on them)")
        self.stdout.write(
            f"{'metric':<22} {version.name:>{width}} {evaluation.baseline_name:>{width}} {'delta':>9}  95% interval"
        )
        for name in names:
            change = "—" if delta[name] is None else f"{delta[name]:+.4f}"
            interval = evaluation.delta_intervals.get(name)
            bounds = f"[{interval['low']:+.4f}, {interval['high']:+.4f}]" if interval else ""
            self.stdout.write(
                f"{name:<22} {_figure(candidate.get(name)):>{width}} {_figure(baseline.get(name)):>{width}} {change:>9}  {bounds}"
            )
        self.stdout.write(
            f"per query ({HEADLINE_METRIC[version.component]}): {counts['improved']} improved, "
            f"{counts['regressed']} regressed, {counts['unchanged']} unchanged"
        )
