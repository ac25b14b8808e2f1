"""The optimisation loop of the retriever trainers (contrastive, query-only, LSR, corpus pairs),
with checkpoints.

Each epoch shuffles the items with a private generator seeded by the run's seed, then takes an
AdamW step per batch with a linear warm-up and decay, gradients clipped at norm 1; the stop
check is asked before every step and progress is reported after it.

Checkpoints: with `Checkpointing`, every `every` steps the loop writes the trainable weights,
the optimiser's and the schedule's state, torch's random state, where the epoch's shuffle
stands and the loss curve so far to one file, replaced atomically (a kill mid-write leaves the
previous checkpoint whole). Started again on the same folder with the same inputs, the loop
resumes after the checkpoint's step and ends with the same weights as a run never interrupted
(on the same device and threads). A checkpoint for other inputs (another seed, learning rate,
data) is never resumed: the loop says so and starts from the first step. The trainer removes
the folder once its model is saved.

Why a loop of ours for the retriever, where the LoRA generator and the reranker train on the
library's trainers (rag.training.hf_trainer): each contrastive step builds its batch from texts
(de-duplicated candidates, a query's other known positives masked, the whole corpus of frozen
vectors as negatives, GradCache), which sentence-transformers' trainer would take only as a
custom loss and collator carrying all of that; moving it is issue 12's last part, and this
loop's checkpoints are what that would replace.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rag.training import ProgressCallback, StopCheck, linear_schedule, raise_if_cancelled

CHECKPOINT_FILE = "checkpoint.pt"
# A small summary beside it (step, total), so a sweeper can see a checkpoint without loading it.
CHECKPOINT_SUMMARY = "checkpoint.json"


@dataclass(frozen=True)
class Checkpointing:
    """Where and how often the loop saves a checkpoint, and where it says what it did with one."""

    folder: Path
    every: int  # optimisation steps between checkpoints; 0 turns them off
    log: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        if self.every < 0:
            raise ValueError(f"checkpoint_every must be 0 or more, got {self.every}")


@dataclass
class LoopResult:
    curve: list[dict[str, float]]
    resumed_from_step: int  # 0: trained from the first step


def checkpoint_summary(folder: str | Path) -> dict[str, Any] | None:
    """{"step", "total_steps", "path"} of the checkpoint saved in folder, or None when there is
    none. `path` (relative to folder) is this loop's file or a library trainer's checkpoint folder."""
    try:
        summary = json.loads((Path(folder) / CHECKPOINT_SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or not isinstance(summary.get("step"), int):
        return None
    if not (Path(folder) / str(summary.get("path") or CHECKPOINT_FILE)).exists():
        return None
    return summary


def inputs_fingerprint(*parts: Any) -> str:
    """A digest of everything a checkpoint is only valid for: settings, data, base model."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(repr(part).encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    return digest.hexdigest()


def training_loop(
    *,
    model: Any,
    items: list[Any],
    backward_step: Callable[[list[Any]], float],
    epochs: int,
    batch_size: int,
    learning_rate: float,
    warmup_ratio: float,
    seed: int,
    progress: ProgressCallback | None,
    should_stop: StopCheck | None,
    fingerprint: str = "",
    checkpointing: Checkpointing | None = None,
) -> LoopResult:
    """Train `model`'s trainable parameters on `items`; backward_step(batch) accumulates the
    batch's gradients and returns its loss. `fingerprint` (inputs_fingerprint of what the
    caller's items and settings come from) decides whether a saved checkpoint may be resumed."""
    import torch

    trainable = {name: parameter for name, parameter in model.named_parameters() if parameter.requires_grad}
    steps_per_epoch = math.ceil(len(items) / batch_size)
    total_steps = epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(list(trainable.values()), lr=learning_rate)
    schedule = linear_schedule(optimizer, total_steps=total_steps, warmup_ratio=warmup_ratio)
    # A private generator: the order depends on the seed alone, not on what else drew numbers.
    shuffler = random.Random(seed)
    fingerprint = inputs_fingerprint(fingerprint, items, epochs, batch_size, learning_rate, warmup_ratio, seed)
    curve: list[dict[str, float]] = []
    first_epoch, epoch_state = 1, shuffler.getstate()
    if checkpointing is not None and checkpointing.every:
        saved = _load_checkpoint(checkpointing, fingerprint=fingerprint, total_steps=total_steps)
        if saved is not None:
            with torch.no_grad():
                for name, tensor in saved["weights"].items():
                    trainable[name].copy_(tensor)
            optimizer.load_state_dict(saved["optimizer"])
            schedule.load_state_dict(saved["schedule"])
            torch.set_rng_state(saved["torch_random"])
            if saved.get("cuda_random") and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(saved["cuda_random"])
            curve = saved["curve"]
            first_epoch, epoch_state = saved["epoch"], _as_random_state(saved["epoch_shuffle"])
            _say(checkpointing, f"resumed from the checkpoint at step {len(curve)} of {total_steps}")
    resumed_from = len(curve)

    model.train()
    shuffler.setstate(epoch_state)
    for epoch in range(first_epoch, epochs + 1):
        epoch_state = shuffler.getstate()
        order = list(items)
        shuffler.shuffle(order)
        done_in_epoch = len(curve) - (epoch - 1) * steps_per_epoch
        for start in range(done_in_epoch * batch_size, len(order), batch_size):
            step = len(curve) + 1
            raise_if_cancelled(should_stop, step=step)
            optimizer.zero_grad()
            loss = backward_step(order[start : start + batch_size])
            torch.nn.utils.clip_grad_norm_(list(trainable.values()), max_norm=1.0)
            optimizer.step()
            schedule.step()
            point = {"step": step, "loss": loss}
            curve.append(point)
            if checkpointing is not None and checkpointing.every and step % checkpointing.every == 0 and step < total_steps:
                # At the end of an epoch the next one starts from the shuffler as it is now.
                at_epoch_end = start + batch_size >= len(order)
                _save_checkpoint(
                    checkpointing,
                    fingerprint=fingerprint,
                    total_steps=total_steps,
                    state={
                        "weights": {name: parameter.detach().cpu() for name, parameter in trainable.items()},
                        "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(),
                        "torch_random": torch.get_rng_state(),
                        "cuda_random": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
                        "curve": curve,
                        "epoch": epoch + 1 if at_epoch_end else epoch,
                        "epoch_shuffle": shuffler.getstate() if at_epoch_end else epoch_state,
                    },
                )
            if progress is not None:
                progress(step / total_steps, {**point, "epoch": epoch})
    model.eval()
    return LoopResult(curve=curve, resumed_from_step=resumed_from)


def remove_checkpoint(checkpointing: Checkpointing | None) -> None:
    """Delete a finished run's checkpoint files (they are not part of the model)."""
    if checkpointing is None:
        return
    for name in (CHECKPOINT_FILE, CHECKPOINT_SUMMARY, CHECKPOINT_FILE + ".partial"):
        (checkpointing.folder / name).unlink(missing_ok=True)
    try:
        checkpointing.folder.rmdir()
    except OSError:
        pass  # not empty (something else lives there) or already gone


def _say(checkpointing: Checkpointing, message: str) -> None:
    if checkpointing.log is not None:
        checkpointing.log(message)


def _as_random_state(state: Any) -> tuple:
    # Saved as nested lists by some paths; random.setstate wants the tuples back.
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


def _save_checkpoint(checkpointing: Checkpointing, *, fingerprint: str, total_steps: int, state: dict[str, Any]) -> None:
    import torch

    folder = checkpointing.folder
    folder.mkdir(parents=True, exist_ok=True)
    step = len(state["curve"])
    partial = folder / (CHECKPOINT_FILE + ".partial")
    torch.save({**state, "fingerprint": fingerprint, "total_steps": total_steps}, partial)
    with open(partial, "rb") as written:
        os.fsync(written.fileno())
    os.replace(partial, folder / CHECKPOINT_FILE)  # atomic: the old checkpoint or the new, never half
    summary = {"step": step, "total_steps": total_steps, "path": CHECKPOINT_FILE}
    (folder / CHECKPOINT_SUMMARY).write_text(json.dumps(summary) + "\n", encoding="utf-8")


def _load_checkpoint(checkpointing: Checkpointing, *, fingerprint: str, total_steps: int) -> dict[str, Any] | None:
    import torch

    path = checkpointing.folder / CHECKPOINT_FILE
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unreadable: a disk fault, or a file from another version of the code
        reason = f"{type(error).__name__}: {error}"
        _say(checkpointing, f"the checkpoint {path} could not be read ({reason}); training from the first step")
        return None
    if saved.get("fingerprint") != fingerprint or saved.get("total_steps") != total_steps:
        _say(
            checkpointing,
            f"the checkpoint at step {len(saved.get('curve', []))} was saved for other inputs or settings; "
            "training from the first step",
        )
        return None
    return saved
