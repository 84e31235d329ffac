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


class ReplayBuffer:
    """A ring buffer of transitions in preallocated tensors, sampled uniformly."""

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, device: torch.device):
        self.capacity, self.device = capacity, device
        self.data = {
            "obs": torch.zeros(capacity, obs_dim, device=device),
            "action": torch.zeros(capacity, act_dim, device=device),
            "reward": torch.zeros(capacity, device=device),
            "next_obs": torch.zeros(capacity, obs_dim, device=device),
            "terminated": torch.zeros(capacity, device=device),
        }
        self.position = 0  # next row to write
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, **batch: Tensor) -> None:
        """Append a batch of transitions ``[N, ...]`` (one per env)."""
        n = batch["obs"].shape[0]
        rows = (self.position + torch.arange(n, device=self.device)) % self.capacity
        for key, value in batch.items():
            self.data[key][rows] = value.to(self.device, self.data[key].dtype).reshape(n, *self.data[key].shape[1:])
        self.position = (self.position + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        index = torch.randint(0, self.size, (batch_size,), device=self.device, generator=generator)
        return {key: value[index] for key, value in self.data.items()}

    def state_dict(self) -> dict[str, Tensor | int]:
        """The filled part only, so a checkpoint holds what was collected, not the whole capacity."""
        return {"position": self.position, "size": self.size, **{k: v[: self.size] for k, v in self.data.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.position, self.size = int(state["position"]), int(state["size"])
        for key, value in self.data.items():
            value[: self.size] = state[key].to(value.device)
