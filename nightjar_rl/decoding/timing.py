"""Wall-clock timing that is honest on asynchronous devices."""

from __future__ import annotations

import time

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def now(device: torch.device) -> float:
    """perf_counter after all queued device work has finished."""
    synchronize(device)
    return time.perf_counter()
