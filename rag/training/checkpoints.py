"""Checkpoints of the trainers (retriever, reranker, LoRA generator), all on the libraries'
trainers (rag.training.hf_trainer): where and how often they are saved, the digest of the inputs
a checkpoint is valid for, and the summary the stall sweeper reads without loading one.

The checkpoint itself is the library's `checkpoint-N` folder (weights, optimiser, schedule,
random states, data position). A run started again on the same folder with the same inputs goes
on from the last complete checkpoint; one for other inputs is deleted and the run starts over.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A small summary beside the checkpoints (step, total, folder), so a sweeper can see one without loading it.
CHECKPOINT_SUMMARY = "checkpoint.json"


@dataclass(frozen=True)
class Checkpointing:
    """Where and how often a trainer saves a checkpoint, and where it says what it did with one."""

    folder: Path
    every: int  # optimisation steps between checkpoints; 0 turns them off
    log: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        if self.every < 0:
            raise ValueError(f"checkpoint_every must be 0 or more, got {self.every}")


def checkpoint_summary(folder: str | Path) -> dict[str, Any] | None:
    """{"step", "total_steps", "path"} of the checkpoint saved in folder, or None when there is
    none; `path` is the checkpoint's folder, relative to folder."""
    try:
        summary = json.loads((Path(folder) / CHECKPOINT_SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or not isinstance(summary.get("step"), int) or not summary.get("path"):
        return None
    if not (Path(folder) / str(summary["path"])).exists():
        return None
    return summary


def inputs_fingerprint(*parts: Any) -> str:
    """A digest of everything a checkpoint is only valid for: settings, data, base model."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(repr(part).encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    return digest.hexdigest()
