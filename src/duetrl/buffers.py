"""Rollout storage (on-policy) and a replay buffer (off-policy)."""

from __future__ import annotations

import torch
from torch import Tensor


class Rollout:
    """Steps of a batch of envs appended one at a time, stacked to ``[T, N, ...]`` tensors for the update."""

    def __init__(self) -> None:
        self.steps: list[dict[str, Tensor]] = []

    def add(self, **tensors: Tensor) -> None:
        self.steps.append(tensors)

    def __len__(self) -> int:
        return len(self.steps)

    def stack(self) -> dict[str, Tensor]:
        return {key: torch.stack([s[key] for s in self.steps]) for key in self.steps[0]}

    def clear(self) -> None:
        self.steps.clear()
