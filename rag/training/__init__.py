"""Trainers that turn curator labels into new retriever and generator versions.

Plain Python over plain data (dataclasses, paths): the training Django app schedules these
functions and stores their results, but nothing here imports Django.
"""

from __future__ import annotations

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


__all__ = [
    "ProgressCallback",
    "StopCheck",
    "TrainingCancelled",
    "pick_device",
    "seed_everything",
]
