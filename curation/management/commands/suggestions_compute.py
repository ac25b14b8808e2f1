"""`manage.py suggestions_compute <kb> [--now] [--retry-failed] [--measure]`: suggestions for the
knowledge base's turns no agent has run on yet (turns stored before suggestions existed, or
whose task was lost), queued in batches for the workers, or computed here with --now."""

from django.conf import settings
from django.core.management.base import BaseCommand

from curation.models import SuggestionAttempt
from curation.services.suggestions import suggestion_agents_measure, turn_suggestions_compute, turns_without_suggestions
from knowledge.management.cli import service_errors_as_command_errors
from knowledge.selectors import knowledge_base_get


class Command(BaseCommand):
    help = "Compute (or queue) agent suggestions for turns that have none yet."

    def add_arguments(self, parser):
        parser.add_argument("kb")
        parser.add_argument("--now", action="store_true", help="compute in this process instead of queueing")
        parser.add_argument("--retry-failed", action="store_true", help="also run again the attempts that failed")
        parser.add_argument("--measure", action="store_true", help="then recalibrate and measure the agents")

    def handle(self, *args, kb, now, retry_failed, measure, **options):
        from curation.tasks import suggestions_compute_task

        with service_errors_as_command_errors():
            knowledge_base = knowledge_base_get(slug=kb)
        turn_ids = turns_without_suggestions(knowledge_base=knowledge_base)
        if retry_failed:
            failed = SuggestionAttempt.objects.filter(
                turn__knowledge_base=knowledge_base, status=SuggestionAttempt.Status.FAILED
            ).values_list("turn_id", flat=True)
            turn_ids = sorted(set(turn_ids) | set(failed))
        size = max(1, settings.RAGLOOP_SUGGESTION_BATCH_SIZE)
        written = failures = 0
        for start in range(0, len(turn_ids), size):
            batch = turn_ids[start : start + size]
            if now:
                result = turn_suggestions_compute(turn_ids=batch, retry_failed=retry_failed)
                written, failures = written + result.suggestions, failures + len(result.failures)
            else:
                suggestions_compute_task.delay(batch)
        if now:
            self.stdout.write(f"{len(turn_ids)} turns: {written} suggestions, {failures} failed attempts")
        else:
            self.stdout.write(f"{len(turn_ids)} turns queued in {-(-len(turn_ids) // size)} tasks")
        if measure:
            rows = suggestion_agents_measure(knowledge_base=knowledge_base)
            for row in rows:
                kappa = "-" if row.kappa is None else f"{row.kappa:.3f}"
                self.stdout.write(f"{row.agent} {row.target}: {row.agreed}/{row.items} agreed, kappa {kappa}")
