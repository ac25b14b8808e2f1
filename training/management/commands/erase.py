"""`manage.py erase`: erase an end user, a conversation, a turn or a document (docs/erasure.md).

  erase test-kb --end-user alice@example.com [--dry-run] [--json]
  erase --end-user alice@example.com            (every knowledge base holding their conversations)
  erase test-kb --conversation c-123
  erase test-kb --turn 42
  erase test-kb --document handbook-7

Without --dry-run it erases at once (a command is already a deliberate act; the web page asks
for confirmation). Each knowledge base is one transaction with its own receipt.
"""

import json

from django.core.management.base import BaseCommand, CommandError

from knowledge.management.cli import actor_argument_add, cli_actor_name, service_errors_as_command_errors
from knowledge.selectors import knowledge_base_get
from training.services.erasure import erasure_execute, erasure_execute_everywhere, erasure_preview

SELECTOR_OPTIONS = ("end_user", "conversation", "turn", "document")


def _receipt_summary(receipt) -> dict:
    return {
        "receipt": receipt.pk, "knowledge_base": receipt.knowledge_base.slug, "selector": receipt.selector,
        "selector_value": receipt.selector_value, "rows": receipt.rows_deleted, "counts": receipt.counts,
        "flagged_versions": receipt.flagged_version_names, "created_at": receipt.created_at.isoformat(),
    }  # fmt: skip


class Command(BaseCommand):
    help = "Erase an end user's, a conversation's, a turn's or a document's data, flagging the model versions trained on it."

    def add_arguments(self, parser):
        parser.add_argument("kb", nargs="?", help="the knowledge base (may be left out with --end-user: all of them)")
        parser.add_argument("--end-user", help="the app's reference for the person, as sent (or its stored pd- digest)")
        parser.add_argument("--conversation", help="the conversation's external id")
        parser.add_argument("--turn", help="the turn's id (later turns of its conversation go with it)")
        parser.add_argument("--document", help="the document's external id")
        parser.add_argument("--dry-run", action="store_true", help="show what would be erased, erase nothing")
        parser.add_argument("--json", action="store_true")
        actor_argument_add(parser)

    def handle(self, *args, kb, dry_run, **options):
        given = [(name, options[name]) for name in SELECTOR_OPTIONS if options.get(name) is not None]
        if len(given) != 1:
            raise CommandError("Name exactly one of --end-user, --conversation, --turn, --document.")
        selector, value = given[0]
        if kb is None and (selector != "end_user" or dry_run):
            raise CommandError("Name the knowledge base (only a real --end-user erasure may go over all of them).")
        actor_name = cli_actor_name(options["actor"])
        with service_errors_as_command_errors():
            if dry_run:
                plan = erasure_preview(knowledge_base=knowledge_base_get(slug=kb), selector=selector, value=value)
                summary = {"rows": plan.rows, "counts": plan.counts, "flagged_versions": plan.flagged_version_names}
                text = "\n".join([f"{kb}: would erase {plan.rows} rows", *(f"  {k}: {n}" for k, n in plan.counts.items()),
                                  f"  would flag: {', '.join(plan.flagged_version_names) or 'no model version'}"])  # fmt: skip
                self.stdout.write(json.dumps(summary) if options["json"] else text)
                return
            if kb is None:
                receipts = erasure_execute_everywhere(end_user=value, actor_name=actor_name)
            else:
                receipts = [erasure_execute(knowledge_base=knowledge_base_get(slug=kb), selector=selector, value=value, actor_name=actor_name)]
        rows = [_receipt_summary(receipt) for receipt in receipts]
        if options["json"]:
            self.stdout.write(json.dumps(rows))
            return
        for row in rows:
            self.stdout.write(
                f"{row['knowledge_base']}: erased {row['rows']} rows (receipt #{row['receipt']}); "
                f"flagged: {', '.join(row['flagged_versions']) or 'no model version'}"
            )
