"""The chapter's math as small pure functions on ``[time, env]`` tensors.

Conventions shared by every function here (all tensors are ``[T, N]``):

- ``rewards[t]``: reward received after acting at step ``t``.
- ``values[t]``: the critic's estimate for step ``t`` (V(s_t), or Q(s_t, a_t)).
- ``next_values[t]``: the critic's estimate of the state reached after step ``t``. When an episode ended at
  ``t`` this is the value of the *final* observation (before the automatic reset), so a time limit can be
  bootstrapped. At the last step of a batch it bootstraps the unfinished episode.
- ``terminated[t]``: the episode reached a terminal state: nothing follows, the future is worth 0.
- ``truncated[t]``: the episode was cut (time limit): the future still has value, bootstrap it.

Either way the episode ends at ``t``, so no return flows back from ``t + 1`` (a different episode).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def _masks(terminated: Tensor, truncated: Tensor) -> tuple[Tensor, Tensor]:
    """(1 - terminated, 1 - episode_ended) as floats."""
    not_terminal = 1.0 - terminated.float()
    not_ended = 1.0 - torch.maximum(terminated.float(), truncated.float())
    return not_terminal, not_ended


def discounted_returns(
    rewards: Tensor, next_values: Tensor, terminated: Tensor, truncated: Tensor, gamma: float
) -> Tensor:
    """Monte-Carlo returns G_t = r_t + gamma * G_{t+1}, bootstrapped from the critic only where the data
    stops but the episode does not: on truncation and at the end of the batch."""
    not_terminal, not_ended = _masks(terminated, truncated)
    returns = torch.empty_like(rewards)
    future = next_values[-1]
    for t in range(rewards.shape[0] - 1, -1, -1):
        # Where the episode ended at t, the future is the bootstrap value of its final observation.
        future = torch.where(not_ended[t].bool(), future, next_values[t])
        returns[t] = rewards[t] + gamma * not_terminal[t] * future
        future = returns[t]
    return returns


def td_targets(rewards: Tensor, next_values: Tensor, terminated: Tensor, gamma: float) -> Tensor:
    """One-step Bellman targets r_t + gamma * V(s_{t+1}) * (1 - terminated_t), of any shape (the off-policy critics'
    target, on a replayed batch ``[B]``)."""
    return rewards + gamma * (1.0 - terminated.float()) * next_values


def td_errors(rewards: Tensor, values: Tensor, next_values: Tensor, terminated: Tensor, gamma: float) -> Tensor:
    """One-step TD errors delta_t = r_t + gamma * V(s_{t+1}) * (1 - terminated_t) - V(s_t)."""
    return td_targets(rewards, next_values, terminated, gamma) - values


def nstep_targets(
    rewards: Tensor,
    next_values: Tensor,
    terminated: Tensor,
    truncated: Tensor,
    gamma: float,
    n: int,
) -> Tensor:
    """n-step targets sum_{k<n} gamma^k r_{t+k} + gamma^n V(s_{t+n}), cut short (and bootstrapped from the
    critic, unless terminal) where the episode or the batch ends first."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    num_steps = rewards.shape[0]
    not_terminal, not_ended = _masks(terminated, truncated)
    targets = torch.empty_like(rewards)
    for t in range(num_steps):
        total = torch.zeros_like(rewards[t])
        discount = torch.ones_like(rewards[t])
        alive = torch.ones_like(rewards[t])  # 1 while still inside the episode that started at t
        bootstrap = torch.zeros_like(rewards[t])
        for k in range(n):
            i = t + k
            if i >= num_steps:
                break
            total = total + alive * discount * rewards[i]
            discount = discount * gamma
            last = (k == n - 1) or (i == num_steps - 1)
            # The target stops at i if the episode ends there or we ran out of steps.
            stop_here = alive * (1.0 - not_ended[i]) if not last else alive
            bootstrap = bootstrap + stop_here * discount * not_terminal[i] * next_values[i]
            alive = alive * not_ended[i]
        targets[t] = total + bootstrap
    return targets


def gae(
    rewards: Tensor,
    values: Tensor,
    next_values: Tensor,
    terminated: Tensor,
    truncated: Tensor,
    gamma: float,
    lam: float,
) -> Tensor:
    """Generalised advantage estimates A_t = sum_k (gamma * lam)^k delta_{t+k}, within one episode.

    lam=0 gives the TD error, lam=1 the Monte-Carlo return minus V(s_t)."""
    deltas = td_errors(rewards, values, next_values, terminated, gamma)
    _, not_ended = _masks(terminated, truncated)
    decay = gamma * lam * not_ended
    if deltas.device.type == "cpu" and not deltas.requires_grad:
        # Same float32 arithmetic in numpy, whose per-operation cost on these [N] rows is a fraction of torch's
        # (PPO with recompute_advantages runs this loop every epoch).
        return torch.from_numpy(_discounted_cumsum(deltas.numpy(), decay.numpy()))
    return _discounted_cumsum(deltas, decay)


def _discounted_cumsum(x: np.ndarray | Tensor, decay: np.ndarray | Tensor) -> np.ndarray | Tensor:
    """y_t = x_t + decay_t * y_{t+1} over ``[T, N]`` arrays or tensors, from the last step back."""
    out = x.copy() if isinstance(x, np.ndarray) else x.clone()
    for t in range(x.shape[0] - 2, -1, -1):
        out[t] = x[t] + decay[t] * out[t + 1]
    return out


def normalize(x: Tensor, eps: float = 1e-8) -> Tensor:
    """Zero-mean, unit-std (unbiased std, as the chapter's listing); a single element stays as centred 0."""
    if x.numel() < 2:
        return x - x.mean()
    return (x - x.mean()) / (x.std() + eps)
