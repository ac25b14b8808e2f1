"""Trainers that turn curator labels into new retriever and generator versions.

Plain Python over plain data (dataclasses, paths): the training Django app schedules these
functions and stores their results, but nothing here imports Django.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

ProgressCallback = Callable[[float, dict[str, Any]], None]
"""Called after every optimisation step with the fraction done (0..1) and metrics such as step and loss."""

StopCheck = Callable[[], bool]
"""Asked before every step; returning True cancels the run at that step."""


class TrainingCancelled(Exception):
    """A training run stopped because its should_stop check asked it to; nothing was saved."""

    def __init__(self, *, step: int | None = None) -> None:
        super().__init__("training cancelled" + (f" before step {step}" if step is not None else ""))
        self.step = step


def raise_if_cancelled(should_stop: StopCheck | None, *, step: int) -> None:
    """Raise TrainingCancelled when the caller has asked the run to stop."""
    if should_stop is not None and should_stop():
        raise TrainingCancelled(step=step)


def pick_device(device: str | None = None) -> str:
    """The device to train on: the one asked for, else the GPU when there is one.

    Called only when a trainer starts, so importing this package never initialises CUDA.
    """
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def seed_everything(seed: int) -> None:
    """Seed every random number generator a trainer draws from, so a run can be repeated."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds CUDA generators, lazily


def linear_schedule(optimizer: Any, *, total_steps: int, warmup_ratio: float) -> Any:
    """Learning rate ramped up over the first warmup_ratio of the steps, then decayed linearly.

    The warm-up keeps the first updates of a pretrained model small, while the optimiser's
    moment estimates are still noisy; it is the sentence-transformers and transformers default.
    """
    import torch

    warmup_steps = math.ceil(total_steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


__all__ = [
    "ProgressCallback",
    "StopCheck",
    "TrainingCancelled",
    "linear_schedule",
    "pick_device",
    "raise_if_cancelled",
    "seed_everything",
]
