"""`manage.py audit [--json] [--since WHEN] [--until WHEN] [--action ACTION] [--actor TEXT] [--kb SLUG]`:
the audit log, oldest first: a table, or with --json one JSON object per line (JSON Lines),
streamed, for another system to keep."""

import json

from django.core.management.base import BaseCommand

from knowledge.audit_selectors import audit_event_record, audit_events_list, audit_time_parse
from knowledge.management.cli import service_errors_as_command_errors


class Command(BaseCommand):
    help = "Export the audit log (JSON Lines with --json), filtered by time, action, actor, knowledge base."

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="one JSON object per line")
        parser.add_argument("--since", help="from this time on: YYYY-MM-DD, an ISO date-time, or an age (7d, 12h, 30m)")
        parser.add_argument("--until", help="before this time (a date counts whole)")
        parser.add_argument("--action", default="", help='an action ("token.revoke") or a family ending in a dot ("label.")')
        parser.add_argument("--actor", default="", help="part of the actor's name")
        parser.add_argument("--kb", default="", help="a knowledge base slug")

    def handle(self, *args, json: bool, since, until, action, actor, kb, **options):
        with service_errors_as_command_errors():
            since_at = audit_time_parse(since, name="--since") if since else None
            until_at = audit_time_parse(until, name="--until", end_of_day=True) if until else None
        events = audit_events_list(action=action, actor=actor, knowledge_base_slug=kb, since=since_at, until=until_at)
        for event in events.order_by("created_at", "id").iterator(chunk_size=1000):
            if json:
                self.stdout.write(_dumps(audit_event_record(event)))
            else:
                where = f" [{event.knowledge_base_slug}]" if event.knowledge_base_slug else ""
                self.stdout.write(
                    f"{event.created_at:%Y-%m-%d %H:%M:%S} {event.actor} {event.action} "
                    f"{event.object_type}:{event.object_id}{where}"
                )


def _dumps(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False, sort_keys=True)
