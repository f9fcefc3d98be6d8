"""The weights a training run keeps (see ``TrainingConfig.keep``) and the rule that picks them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["KeptWeights", "cpu_state", "replaces_kept"]


@dataclass
class KeptWeights:
    """The weights a run keeps (see ``TrainingConfig.keep``), copied to the CPU."""

    state: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None
    iteration: int
    metric: float | None  # their validation Dice


def replaces_kept(val: float, best: float | None, keep: str, tolerance: float) -> bool:
    """Whether weights validated at ``val`` replace the kept ones: always for
    ``keep="last"``; for ``"best"`` when within ``tolerance`` of the best
    Dice seen (later weights win such ties)."""
    if keep == "last" or best is None or math.isnan(best):
        return True
    return not math.isnan(val) and val >= best - tolerance


def cpu_state(state: Any) -> Any:
    """Deep copy of an optimizer state with tensors on the CPU."""
    if isinstance(state, dict):
        return {k: cpu_state(v) for k, v in state.items()}
    if isinstance(state, list):
        return [cpu_state(v) for v in state]
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    return state
