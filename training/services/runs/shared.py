"""What the engine, the lifecycle, the inputs and the trainers share: the run's Reporter
(progress, heartbeat, log and stop check, throttled), its log lines, its output folder and the
checkpoint inside it, and Trained, what a trainer hands back."""

import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.db.models import F, TextField, Value
from django.db.models.functions import Concat
from django.utils import timezone

from knowledge.artifact_store import artifacts_root
from rag.training.checkpoints import Checkpointing, checkpoint_summary
from training.models import TrainingRun

# Progress, heartbeat and log are written, and cancellation read, at most this often.
REPORT_INTERVAL_SECONDS = 1.0


def log_line(message: str) -> str:
    return f"{timezone.now():%Y-%m-%d %H:%M:%S} {message}\n"


def _append_log(text: str):
    return Concat(F("log"), Value(text), output_field=TextField())


class Reporter:
    """A run's progress callback and stop check, throttled to one database round trip a second.

    Progress maps a phase's own 0..1 onto [low, high] of the run; each write also beats the
    heartbeat and appends the latest step's metrics to the log. The stop check answers True
    once the run was cancelled, or is no longer running (the sweeper failed it).
    """

    def __init__(self, run_id: int) -> None:
        self.run_id = run_id
        self.low, self.high = 0.0, 1.0
        self.fraction = 0.0
        self.latest: dict[str, Any] | None = None
        self.curve: list[dict[str, float]] = []
        self._last_write = -math.inf
        self._last_check = -math.inf
        self._stop = False

    def phase(self, message: str, *, low: float, high: float) -> None:
        self.low, self.high = low, high
        self.fraction = low
        self.write(note=message)

    def progress(self, fraction: float, metrics: dict[str, Any]) -> None:
        self.fraction = self.low + (self.high - self.low) * min(max(float(fraction), 0.0), 1.0)
        self.latest = metrics
        step, loss = metrics.get("step"), metrics.get("loss")
        if isinstance(step, int) and isinstance(loss, int | float) and not isinstance(loss, bool):
            point = {"step": step, "loss": float(loss)}
            if "epoch" in metrics:
                point["epoch"] = metrics["epoch"]
            if not self.curve or self.curve[-1]["step"] != step:
                self.curve.append(point)
        if time.monotonic() - self._last_write >= REPORT_INTERVAL_SECONDS:
            self.write()

    def note(self, message: str) -> None:
        """A line in the run's log now (what the trainer did with a checkpoint, e.g.)."""
        self.write(note=message)

    def tick(self, done: int, total: int) -> None:
        """Progress of a preparation loop (mining, scoring): a heartbeat, no log line."""
        self.fraction = self.low + (self.high - self.low) * (done / total if total else 1.0)
        if time.monotonic() - self._last_write >= REPORT_INTERVAL_SECONDS:
            self.write(quiet=True)

    def write(self, *, note: str | None = None, quiet: bool = False) -> None:
        lines = ""
        if self.latest and not quiet:
            lines += log_line(_metrics_text(self.latest))
            self.latest = None
        if note:
            lines += log_line(note)
        self._last_write = time.monotonic()
        update: dict[str, Any] = {"progress": self.fraction, "heartbeat_at": timezone.now()}
        if lines:
            update["log"] = _append_log(lines)
        TrainingRun.objects.filter(pk=self.run_id, status=TrainingRun.Status.RUNNING).update(**update)

    def should_stop(self) -> bool:
        if not self._stop and time.monotonic() - self._last_check >= REPORT_INTERVAL_SECONDS:
            self._last_check = time.monotonic()
            row = TrainingRun.objects.filter(pk=self.run_id).values_list("cancel_requested", "status").first()
            self._stop = row is None or row[0] or row[1] != TrainingRun.Status.RUNNING
        return self._stop

    def raise_if_stopped(self) -> None:
        from rag.training import TrainingCancelled

        if self.should_stop():
            raise TrainingCancelled()


def _metrics_text(metrics: dict[str, Any]) -> str:
    parts = []
    for name, value in metrics.items():
        if value is None:
            continue
        if isinstance(value, float):
            parts.append(f"{name} {value:.4g}")
        else:
            parts.append(f"{name} {value}")
    return ", ".join(parts)


# The checkpoint of a local trainer lives in the run's output folder until the model is saved.
CHECKPOINT_FOLDER = "checkpoint"


def run_output_folder(run: TrainingRun) -> Path:
    return artifacts_root() / run.knowledge_base.slug / run.component / str(run.pk)


def run_checkpointing(*, run: TrainingRun, folder: Path, reporter: Reporter) -> Checkpointing:
    """Checkpoints every `checkpoint_every` steps (0: none), what was done with one in the run's log."""
    return Checkpointing(folder=folder / CHECKPOINT_FOLDER, every=run.parameters.get("checkpoint_every", 0), log=reporter.note)


def run_checkpoint_step(run: TrainingRun) -> int | None:
    """The step of the checkpoint a run's last execution saved, or None when it has none."""
    summary = checkpoint_summary(run_output_folder(run) / CHECKPOINT_FOLDER)
    return int(summary["step"]) if summary is not None else None


def run_checkpoint_discard(run: TrainingRun) -> None:
    """Delete a run's checkpoint once the run can no longer go on from it (failed, cancelled)."""
    shutil.rmtree(run_output_folder(run) / CHECKPOINT_FOLDER, ignore_errors=True)


@dataclass
class Trained:
    """What a trainer produced, as ModelVersion fields plus how to finish registering it."""

    folder: Path
    fields: dict[str, Any]
    trainer_parameters: dict[str, Any] = field(default_factory=dict)
    training_curve: list[dict[str, float]] = field(default_factory=list)
    new_space_model_reference: str = ""  # full-mode retriever: its own space, to be embedded
