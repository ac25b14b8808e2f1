"""`manage.py policy list|set|run|cycles <kb>`: a knowledge base's retraining policies.

  policy list test-kb [--json]
  policy set test-kb --component retriever --name nightly --mode contrastive \
      --param epochs=3 --schedule "0 3 * * *" --timezone Europe/Berlin --min-new-labels 200 \
      --gate-metric ndcg@10 --gate-margin 0.01 --guard recall@10=0.02 --gate-min-queries 50 --auto-promote
  policy run test-kb --component retriever          (a cycle now, whatever the triggers say)
  policy cycles test-kb [--json]                     (the loop's history)
"""

import json

from django.core.management.base import BaseCommand, CommandError

from knowledge.management.cli import service_errors_as_command_errors
from knowledge.selectors import knowledge_base_get
from training.management.commands.train import parse_parameter
from training.models import Component
from training.selectors import loop_overview, retraining_policy_get
from training.services.loop import loop_cycle_run_now, retraining_policy_set


def _policy_summary(status) -> dict:
    policy = status.policy
    return {
        "name": policy.name,
        "component": policy.component,
        "enabled": policy.enabled,
        "mode": policy.mode,
        "parameters": policy.parameters,
        "schedule": policy.schedule,
        "timezone": policy.timezone,
        "next_run_at": status.next_run_at.isoformat() if status.next_run_at else None,
        "min_new_labels": policy.min_new_labels,
        "new_final_labels": status.new_final_labels,
        "gate": {
            "metric": policy.gate_metric, "margin": policy.gate_margin, "guards": policy.gate_guards,
            "min_queries": policy.gate_min_queries,
        },  # fmt: skip
        "auto_promote": policy.auto_promote,
        "include_synthetic": policy.include_synthetic,
        "running_cycle": status.running_cycle.pk if status.running_cycle else None,
        "erased_data_action": policy.erased_data_action,
        "erased_data_deadline_days": policy.erased_data_deadline_days,
        "erased_live_version": status.erased.version.name if status.erased else None,
        "erasure_deadline": status.erased.deadline.isoformat() if status.erased and status.erased.deadline else None,
    }


def _cycle_summary(cycle) -> dict:
    return {
        "id": cycle.pk,
        "policy": cycle.policy.name,
        "component": cycle.component,
        "trigger": cycle.trigger,
        "stage": cycle.stage,
        "status": cycle.status,
        "candidate": cycle.candidate.name if cycle.candidate_id else None,
        "gate": cycle.gate_outcome or None,
        "stage_seconds": cycle.stage_seconds,
        "error": cycle.error or None,
        "created_at": cycle.created_at.isoformat(),
        "finished_at": cycle.finished_at.isoformat() if cycle.finished_at else None,
    }


def _guards(values: list[str]) -> dict[str, float]:
    guards = {}
    for value in values:
        metric, _, tolerance = value.partition("=")
        try:
            guards[metric.strip()] = float(tolerance)
        except ValueError:
            raise CommandError(f"--guard takes METRIC=TOLERANCE (e.g. recall@10=0.02), got {value!r}.") from None
    return guards


class Command(BaseCommand):
    help = "List, set or run a knowledge base's retraining policies, or show the loop's cycles."

    def add_arguments(self, parser):
        commands = parser.add_subparsers(dest="action", required=True)
        for name in ("list", "cycles"):
            sub = commands.add_parser(name)
            sub.add_argument("kb")
            sub.add_argument("--json", action="store_true")
        run = commands.add_parser("run", help="start a cycle now")
        run.add_argument("kb")
        run.add_argument("--component", choices=Component.values, required=True)
        run.add_argument("--json", action="store_true")
        change = commands.add_parser("set", help="create the component's policy or change some of its fields")
        change.add_argument("kb")
        change.add_argument("--component", choices=Component.values, required=True)
        change.add_argument("--name")
        change.add_argument("--mode")
        change.add_argument("--param", action="append", default=None, metavar="NAME=VALUE", help="replaces all parameters")
        change.add_argument("--schedule", help='cron expression, e.g. "0 3 * * *"; "" for none')
        change.add_argument("--timezone")
        change.add_argument("--min-new-labels", type=int, help="0 for no label trigger")
        change.add_argument("--gate-metric")
        change.add_argument("--gate-margin", type=float)
        change.add_argument("--guard", action="append", default=None, metavar="METRIC=TOLERANCE", help="replaces all guards")
        change.add_argument("--gate-min-queries", type=int)
        change.add_argument(
            "--erased-data", dest="erased_data_action", choices=["next_cycle", "deadline"],
            help="a live version trained on erased data: retrain at the next check, or replace by a deadline",
        )  # fmt: skip
        change.add_argument("--erased-data-deadline-days", type=int, help="days after the erasure (with --erased-data deadline)")
        for flag in ("enabled", "auto-promote", "include-synthetic"):
            group = change.add_mutually_exclusive_group()
            group.add_argument(f"--{flag}", dest=flag.replace("-", "_"), action="store_true", default=None)
            group.add_argument(f"--no-{flag}", dest=flag.replace("-", "_"), action="store_false")
        change.add_argument("--json", action="store_true")

    def handle(self, *args, action, kb, **options):
        with service_errors_as_command_errors():
            knowledge_base = knowledge_base_get(slug=kb)
            if action == "set":
                self._set(knowledge_base, options)
                action = "list"
            elif action == "run":
                policy = retraining_policy_get(knowledge_base=knowledge_base, component=options["component"])
                cycle = loop_cycle_run_now(policy=policy)
                self._write(options, _cycle_summary(cycle), f"cycle #{cycle.pk} of policy {policy.name} started")
                return
            overview = loop_overview(knowledge_base=knowledge_base)
        if action == "list":
            rows = [_policy_summary(status) for status in overview.policies]
            lines = [
                f"{row['component']:<10} {row['name']:<24} {'on' if row['enabled'] else 'off':<4} {row['mode']:<24} "
                f"schedule {row['schedule'] or '-'} ({row['timezone']}) next {row['next_run_at'] or '-'}  "
                f"labels {row['new_final_labels']}/{row['min_new_labels'] or '-'}  "
                f"gate {row['gate']['metric']} +{row['gate']['margin']:g} on >= {row['gate']['min_queries']} queries  "
                f"{'auto-promote' if row['auto_promote'] else 'review'}"
                for row in rows
            ]
            self._write(options, rows, "\n".join(lines) or f"{kb}: no retraining policy")
        else:
            rows = [_cycle_summary(cycle) for cycle in overview.cycles]
            lines = [
                f"#{row['id']:<5} {row['component']:<10} {row['trigger']:<9} {row['status']:<16} {row['stage']:<9} "
                f"{row['candidate'] or '-':<16} {(row['gate'] or {}).get('delta') or '':<10} {row['created_at']}"
                for row in rows
            ]
            self._write(options, rows, "\n".join(lines) or f"{kb}: no loop cycle yet")

    def _set(self, knowledge_base, options) -> None:
        changes = {}
        for option, field in [
            ("name", "name"), ("mode", "mode"), ("schedule", "schedule"), ("timezone", "timezone"),
            ("gate_metric", "gate_metric"), ("gate_margin", "gate_margin"), ("gate_min_queries", "gate_min_queries"),
            ("enabled", "enabled"), ("auto_promote", "auto_promote"), ("min_new_labels", "min_new_labels"),
            ("include_synthetic", "include_synthetic"), ("erased_data_action", "erased_data_action"),
            ("erased_data_deadline_days", "erased_data_deadline_days"),
        ]:  # fmt: skip
            if options.get(option) is not None:
                changes[field] = options[option]
        if options.get("param") is not None:
            changes["parameters"] = dict(parse_parameter(text) for text in options["param"])
        if options.get("guard") is not None:
            changes["gate_guards"] = _guards(options["guard"])
        retraining_policy_set(knowledge_base=knowledge_base, component=options["component"], changes=changes)

    def _write(self, options, data, text: str) -> None:
        self.stdout.write(json.dumps(data) if options.get("json") else text)
