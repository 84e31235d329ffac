"""Running statistics for observation and reward normalisation, saved with the agent's state."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RunningNorm(nn.Module):
    """Normalises inputs by a running mean and variance (parallel Welford update over batches)."""

    def __init__(self, shape: tuple[int, ...], clip: float = 10.0, eps: float = 1e-8):
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))
        self.clip, self.eps = clip, eps

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        """Fold a batch ``[B, *shape]`` into the statistics."""
        x = x.reshape(-1, *self.mean.shape).double()
        batch_mean, batch_var, n = x.mean(0), x.var(0, unbiased=False), x.shape[0]
        delta = batch_mean - self.mean
        total = self.count + n
        self.mean += delta * n / total
        self.var.copy_((self.var * self.count + batch_var * n + delta**2 * self.count * n / total) / total)
        self.count.copy_(total)

    def forward(self, x: Tensor) -> Tensor:
        scaled = (x - self.mean.to(x.dtype)) / torch.sqrt(self.var.to(x.dtype) + self.eps)
        return scaled.clamp(-self.clip, self.clip)


class RewardScaler(nn.Module):
    """Divides rewards by the running std of the discounted return (as SB3's VecNormalize does)."""

    def __init__(self, num_envs: int, gamma: float, clip: float = 10.0, eps: float = 1e-8):
        super().__init__()
        self.stats = RunningNorm(())
        self.register_buffer("returns", torch.zeros(num_envs, dtype=torch.float64))
        self.gamma, self.clip, self.eps = gamma, clip, eps

    @torch.no_grad()
    def forward(self, reward: Tensor, done: Tensor) -> Tensor:
        self.returns.mul_(self.gamma).add_(reward.double())
        self.stats.update(self.returns)
        self.returns[done] = 0.0
        scaled = reward / torch.sqrt(self.stats.var.to(reward.dtype) + self.eps)
        return scaled.clamp(-self.clip, self.clip)
