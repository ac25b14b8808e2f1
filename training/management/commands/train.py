"""`manage.py train <kb> --component retriever|generator --mode ... [--param key=value ...]
[--snapshot ID] [--include-synthetic] [--wait [--timeout S]] [--json]`: queue a training run, optionally follow it."""

import json
import sys
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from knowledge.errors import NotFound
from knowledge.management.cli import service_errors_as_command_errors
from knowledge.selectors import knowledge_base_get
from training.models import Component, DatasetSnapshot, ModelVersion, TrainingRun
from training.services.runs import GENERATOR_MODES, RETRIEVER_MODES, training_run_start
from training.services.runs.parameters import parameter_value_from_text


def parse_parameter(text: str) -> tuple[str, Any]:
    """`key=value`; the value is read as JSON when it is a number or true/false, else kept as text."""
    name, separator, raw = text.partition("=")
    if not separator or not name.strip():
        raise CommandError(f"--param {text!r}: expected key=value", returncode=2)
    return name.strip(), parameter_value_from_text(raw)


def run_summary(run: TrainingRun) -> dict[str, Any]:
    version = ModelVersion.objects.filter(training_run=run).first()
    return {
        "id": run.pk,
        "knowledge_base": run.knowledge_base.slug,
        "component": run.component,
        "mode": run.mode,
        "status": run.status,
        "progress": round(run.progress, 4),
        "snapshot": run.snapshot_id,
        "parameters": run.parameters,
        "error": run.error,
        "cancel_requested": run.cancel_requested,
        "resumes": run.resumes,  # times it went on from a checkpoint after its worker died
        "created_at": run.created_at.isoformat(),
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "model_version": version.name if version else None,
    }


def _bar(share: float, width: int = 30) -> str:
    filled = int(width * min(max(share, 0.0), 1.0))
    return f"[{'#' * filled}{'.' * (width - filled)}] {share:6.1%}"


def wait_for_training_run(run_id: int, *, stream=None, poll_seconds: float = 0.5, timeout: float | None = None) -> TrainingRun:
    """Block until the run finishes: its new log lines scroll above one progress bar."""
    stream = stream or sys.stderr
    # Erase the rest of the line on a terminal; a log file gets plain carriage returns.
    clear = "\033[K" if getattr(stream, "isatty", lambda: False)() else ""
    started = time.monotonic()
    printed_log = 0
    warned = False
    while True:
        run = TrainingRun.objects.select_related("knowledge_base").get(pk=run_id)
        new_log = run.log[printed_log:]
        if "\n" in new_log:
            complete = new_log[: new_log.rindex("\n") + 1]
            stream.write("\r" + clear + complete)
            printed_log += len(complete)
        stream.write(f"\r{clear}training run #{run.pk} {_bar(run.progress)} {run.status}")
        stream.flush()
        if run.is_finished:
            stream.write("\n")
            return run
        elapsed = time.monotonic() - started
        if not warned and elapsed > 30 and run.status == TrainingRun.Status.QUEUED:
            stream.write("\nno worker has picked the run up yet: is a Celery worker listening on the `training` queue?\n")
            warned = True
        if timeout is not None and elapsed > timeout:
            stream.write("\n")
            raise CommandError(
                f"Training run #{run.pk} did not finish within {timeout:.0f} s; it goes on in the worker.", returncode=3
            )
        time.sleep(poll_seconds)


class Command(BaseCommand):
    help = "Train a knowledge base's retriever or generator on its curated labels (a queued training run)."

    def add_arguments(self, parser):
        parser.add_argument("kb")
        parser.add_argument("--component", required=True, choices=Component.values)
        parser.add_argument(
            "--mode",
            required=True,
            help=f"retriever: {', '.join(RETRIEVER_MODES)}; generator: {', '.join(GENERATOR_MODES)}",
        )
        parser.add_argument(
            "--param", action="append", default=[], metavar="KEY=VALUE",
            help="a training parameter (epochs=3, learning_rate=2e-5, base_model=/models/x ...); repeatable",
        )  # fmt: skip
        parser.add_argument("--snapshot", type=int, default=None, help="train on this dataset snapshot (default: a new one)")
        parser.add_argument(
            "--include-synthetic", action="store_true",
            help="the new snapshot also takes labels of synthetic (LLM-written) questions; default: only people's",
        )  # fmt: skip
        parser.add_argument("--wait", action="store_true", help="follow the run until it finishes, showing progress")
        parser.add_argument("--timeout", type=float, default=None, help="with --wait: give up waiting after this many seconds")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, kb, component, mode, param, snapshot, include_synthetic, wait, timeout, **options):
        parameters = dict(parse_parameter(text) for text in param)
        with service_errors_as_command_errors():
            knowledge_base = knowledge_base_get(slug=kb)
            snapshot_row = None
            if snapshot is not None:
                snapshot_row = DatasetSnapshot.objects.filter(pk=snapshot, knowledge_base=knowledge_base).first()
                if snapshot_row is None:
                    raise NotFound(f"Snapshot {snapshot} not found in {kb!r}.")
            run = training_run_start(
                knowledge_base=knowledge_base, component=component, mode=mode, parameters=parameters, snapshot=snapshot_row,
                include_synthetic=include_synthetic,
            )  # fmt: skip
        if not options["json"]:
            self.stdout.write(
                f"queued training run #{run.pk}: {component} {mode} on "
                + (f"snapshot {run.snapshot_id}" if run.snapshot_id else "the chunks (no labels)")
                + f" of {kb}"
            )
        if wait:
            run = wait_for_training_run(run.pk, timeout=timeout)
        if options["json"]:
            self.stdout.write(json.dumps(run_summary(run)))
        if not wait:
            return
        if run.status == TrainingRun.Status.CANCELLED:
            raise CommandError(f"training run #{run.pk} was cancelled", returncode=1)
        if run.status != TrainingRun.Status.SUCCEEDED:
            raise CommandError(f"training run #{run.pk} {run.status}: {run.error or 'no error recorded'}", returncode=1)
        if not options["json"]:
            version = ModelVersion.objects.filter(training_run=run).first()
            self.stdout.write(f"training run #{run.pk} succeeded: candidate {version.name if version else '?'}")
