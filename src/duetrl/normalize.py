"""Running statistics for observation and reward normalisation, saved with the agent's state.

Both run once per env step, where torch's few-microsecond cost per operation on tiny tensors made up a third of a
1-env rollout's time. So on CPU the update pools in numpy, on views of the same memory, and the float32 shift and
scale that ``forward`` applies are cached whenever the statistics change (after an update or a loaded checkpoint).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class RunningNorm(nn.Module):
    """Normalises inputs by a running mean and variance (float64, pooled over batches)."""

    def __init__(self, shape: tuple[int, ...], clip: float = 10.0, eps: float = 1e-8):
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))
        self.clip, self.eps = clip, eps
        self.register_buffer("shift", torch.zeros(shape), persistent=False)  # float32 copies for forward
        self.register_buffer("scale", torch.ones(shape), persistent=False)
        self.refresh()
        self.register_load_state_dict_post_hook(lambda module, _keys: module.refresh())

    @torch.no_grad()
    def refresh(self) -> None:
        """Recompute the cached float32 mean and std from the float64 statistics."""
        self.shift.copy_(self.mean)
        self.scale.copy_(self.var).add_(self.eps).sqrt_()

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        """Fold a batch ``[B, *shape]`` into the statistics: the pooled mean and variance of all data so far."""
        x = x.reshape(-1, *self.mean.shape).double()
        batch_mean, batch_var = x.mean(0), x.var(0, unbiased=False)
        stats = (self.mean, self.var, self.count)
        if x.is_cpu and self.mean.is_cpu:
            # The same float64 arithmetic on numpy views of the same memory, bit for bit: ~1 us per operation
            # instead of torch's ~4.
            pool(*(t.numpy() for t in stats), batch_mean.numpy(), batch_var.numpy(), len(x))
        else:
            pool(*stats, batch_mean, batch_var, len(x))
        self.refresh()

    def forward(self, x: Tensor) -> Tensor:
        return ((x - self.shift) / self.scale).clamp(-self.clip, self.clip)


class RewardScaler(nn.Module):
    """Divides rewards by the running std of the discounted return (as SB3's VecNormalize does)."""

    def __init__(self, num_envs: int, gamma: float, clip: float = 10.0, eps: float = 1e-8):
        super().__init__()
        self.stats = RunningNorm((), eps=eps)
        self.register_buffer("returns", torch.zeros(num_envs, dtype=torch.float64))
        self.gamma, self.clip = gamma, clip

    @torch.no_grad()
    def forward(self, reward: Tensor, done: Tensor) -> Tensor:
        self.returns.mul_(self.gamma).add_(reward)
        self.stats.update(self.returns)
        self.returns.masked_fill_(done, 0.0)
        return (reward / self.stats.scale).clamp(-self.clip, self.clip)


def pool(mean: Any, var: Any, count: Any, batch_mean: Any, batch_var: Any, n: int) -> None:
    """Fold a batch's mean and variance (of ``n`` samples) into running ones, in place. Written once for numpy
    arrays and torch tensors alike, operation for operation as before the numpy path, so results stay bit for bit."""
    delta = batch_mean - mean
    total = count + n
    mean += delta * n / total
    var[...] = (var * count + batch_var * n + delta**2 * count * n / total) / total
    count[...] = total
