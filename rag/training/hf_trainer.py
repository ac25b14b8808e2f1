"""What the trainers built on Hugging Face's `Trainer` share (the LoRA generator on `Trainer`, the
reranker on sentence-transformers' `CrossEncoderTrainer`): the callback that asks the stop
check before every step and reports progress after it, and the library's own checkpoints
(`save_steps`, `resume_from_checkpoint`: model, optimiser, schedule, random states, data
position) made safe to resume: a digest of the inputs is stored beside them, so a checkpoint
for other data or settings is deleted instead of resumed, and a summary the stall sweeper reads
(rag.training.checkpoints.checkpoint_summary) is written after every save.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

from rag.training import ProgressCallback, StopCheck, TrainingCancelled
from rag.training.checkpoints import CHECKPOINT_SUMMARY, Checkpointing

INPUTS_DIGEST = "inputs.sha256"


def trainer_callback(*, progress: ProgressCallback | None, should_stop: StopCheck | None) -> Any:
    """A TrainerCallback: TrainingCancelled before the step the stop check refuses, progress
    (fraction, {"step", "loss", "epoch"}) after each logged step, the checkpoint summary after each save."""
    from transformers import TrainerCallback

    class _Report(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if should_stop is not None and should_stop():
                raise TrainingCancelled(step=state.global_step + 1)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs and progress is not None:
                point = {"step": int(state.global_step), "loss": float(logs["loss"]), "epoch": float(state.epoch or 0.0)}
                progress(state.global_step / max(1, state.max_steps), point)

        def on_save(self, args, state, control, **kwargs):
            summary = {"step": state.global_step, "total_steps": state.max_steps, "path": f"checkpoint-{state.global_step}"}
            (Path(args.output_dir) / CHECKPOINT_SUMMARY).write_text(json.dumps(summary) + "\n", encoding="utf-8")

    return _Report()


def warmup_steps(warmup_ratio: float, *, total_steps: int) -> float | int:
    """TrainingArguments' warmup_steps for a share of the steps: a float below 1 is read as that
    share (transformers 5 dropped warmup_ratio); all of them must be given as a count."""
    return warmup_ratio if warmup_ratio < 1 else total_steps


def quiet(trainer: Any) -> Any:
    """The trainer without its printer of log dicts: progress goes through trainer_callback."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer


def bf16_available(device: str) -> bool:
    """Whether training on `device` runs in bf16 mixed precision: a CUDA GPU that has it; CPUs train in float32."""
    import torch

    return device.startswith("cuda") and torch.cuda.is_bf16_supported()


def optimisation_arguments(
    *,
    rows: int,
    epochs: int,
    batch_size: int,
    gradient_accumulation_steps: int,
    learning_rate: float,
    warmup_ratio: float,
    seed: int,
    device: str,
) -> dict[str, Any]:
    """The TrainingArguments the retriever and LoRA trainers share: AdamW with weight decay 0.01,
    linear warm-up and decay, gradients clipped at norm 1, bf16 where bf16_available, a loss
    logged every optimiser step, the shuffle seeded, no printing or reporting."""
    total_steps = epochs * math.ceil(math.ceil(rows / batch_size) / gradient_accumulation_steps)
    return {
        "num_train_epochs": epochs,
        "per_device_train_batch_size": batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps,
        "learning_rate": learning_rate,
        "warmup_steps": warmup_steps(warmup_ratio, total_steps=total_steps),
        "lr_scheduler_type": "linear",
        "weight_decay": 0.01,  # torch's AdamW default, which the hand-written loops before these used
        "max_grad_norm": 1.0,
        "seed": seed,
        "data_seed": seed,
        "bf16": bf16_available(device),
        "logging_steps": 1,
        "report_to": "none",
        "use_cpu": device == "cpu",
        "disable_tqdm": True,
    }


def checkpoint_arguments(checkpointing: Checkpointing | None, *, scratch: Path) -> dict[str, Any]:
    """TrainingArguments for where and how often to save: the checkpoint folder every `every`
    steps, the last checkpoint kept; without checkpointing a scratch folder and no saving."""
    if checkpointing is None or not checkpointing.every:
        return {"output_dir": str(scratch), "save_strategy": "no"}
    return {
        "output_dir": str(checkpointing.folder),
        "save_strategy": "steps",
        "save_steps": checkpointing.every,
        "save_total_limit": 1,
    }


def checkpoint_to_resume(checkpointing: Checkpointing | None, fingerprint: str) -> Path | None:
    """The last complete checkpoint in the folder if it was saved for these inputs, else None.

    A checkpoint for other inputs is deleted (the trainer would otherwise resume from it); so is
    one a killed worker left half-written: the trainer writes its trainer_state.json last, so a
    checkpoint-N folder without a readable one at step N is incomplete, and the one before it is
    resumed. The digest of these inputs is then written for the checkpoints this run saves."""
    if checkpointing is None or not checkpointing.every:
        return None
    folder = checkpointing.folder
    last, total_steps = _last_complete_checkpoint(checkpointing)
    if last is not None:
        try:
            saved_for = (folder / INPUTS_DIGEST).read_text(encoding="utf-8")
        except OSError:
            saved_for = ""
        step = resumed_step(last)
        if saved_for == fingerprint:
            _say(checkpointing, f"resumed from the checkpoint at step {step} of {total_steps}")
            return last
        _say(checkpointing, f"the checkpoint at step {step} was saved for other inputs or settings; training from the first step")
        shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / INPUTS_DIGEST).write_text(fingerprint, encoding="utf-8")
    return None


def _last_complete_checkpoint(checkpointing: Checkpointing) -> tuple[Path | None, int]:
    """The highest checkpoint-N whose trainer state is whole, and the run's total steps it records;
    the incomplete ones above it are deleted."""
    if not checkpointing.folder.is_dir():
        return None, 0
    saved = sorted(
        (int(path.name.removeprefix("checkpoint-")), path)
        for path in checkpointing.folder.glob("checkpoint-*")
        if path.is_dir() and path.name.removeprefix("checkpoint-").isdigit()
    )
    for step, path in reversed(saved):
        try:
            state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
            complete = state.get("global_step") == step
        except (OSError, ValueError, AttributeError):
            complete = False
        if complete:
            return path, int(state.get("max_steps") or 0)
        _say(checkpointing, f"the checkpoint at step {step} is incomplete (a worker stopped while saving it); it is deleted")
        shutil.rmtree(path, ignore_errors=True)
    return None, 0


def resumed_step(checkpoint: Path | None) -> int:
    return int(checkpoint.name.removeprefix("checkpoint-")) if checkpoint is not None else 0


def loss_curve(state: Any) -> list[dict[str, float]]:
    """The loss of every step the trainer logged, those before a resume included (its state keeps them)."""
    return [
        {"step": int(entry["step"]), "loss": float(entry["loss"]), "epoch": float(entry.get("epoch") or 0.0)}
        for entry in state.log_history
        if "loss" in entry and "step" in entry
    ]


def remove_checkpoints(checkpointing: Checkpointing | None, *, scratch: Path) -> None:
    """After the model is saved: the checkpoints are not part of it."""
    shutil.rmtree(scratch, ignore_errors=True)
    if checkpointing is not None:
        shutil.rmtree(checkpointing.folder, ignore_errors=True)


def _say(checkpointing: Checkpointing, message: str) -> None:
    if checkpointing.log is not None:
        checkpointing.log(message)
