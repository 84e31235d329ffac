"""A stochastic policy that knows its action space: sampling, log-probabilities and env actions.

Continuous actions: a Gaussian over an unbounded ``raw`` action, mapped to the env's bounds either by clipping
(the chapter) or by a tanh squash (:func:`to_bounds`). The log-probability is always of ``raw``; with clipping it
can optionally account for the clipping (``clip_log_prob``: the probability mass beyond a bound, as in Fujita &
Maeda 2018, "Clipped Action Policy Gradient"), which fixes the chapter's log-prob of an action the env never saw.
Discrete actions: a categorical; ``raw`` is the action index.

Written once here and used by every algorithm: the diagonal Gaussian's log-density (:func:`gaussian_log_density`,
also SAC's), the tanh squash's change of variables (:func:`tanh_log_det`) and the map from the policy's output to
the env's bounds (:func:`to_bounds`, :func:`rescale`; also the off-policy agents').
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import gymnasium as gym
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution, Normal
from torch.special import log_ndtr

from duetrl.errors import UserError
from duetrl.nets import CategoricalActor, GaussianActor, last_linear, orthogonal_init

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
LOG_2 = math.log(2)


def gaussian_log_density(noise: Tensor, log_std: Tensor) -> Tensor:
    """log N(x | mean, std) per dimension ``[..., act_dim]`` at x = mean + std * noise: the diagonal Gaussian's
    log-density, summed over the last dimension by the caller. Taking the standardised ``noise`` rather than x
    makes it exact at sampling, where the noise is known."""
    return -0.5 * noise.pow(2) - log_std - HALF_LOG_2PI


def tanh_log_det(raw: Tensor) -> Tensor:
    """log |d tanh(raw) / d raw| per dimension: the change of variables of the tanh squash, in the numerically
    stable form log(1 - tanh(u)^2) = 2 * (log 2 - u - softplus(-2u))."""
    return 2 * (LOG_2 - raw - F.softplus(-2 * raw))


def rescale(unit: Tensor, low: Tensor, high: Tensor) -> Tensor:
    """Actions in [-1, 1] mapped linearly onto the box [low, high]."""
    return (high + low) / 2 + (high - low) / 2 * unit


def to_bounds(raw: Tensor, low: Tensor, high: Tensor, bound_by: str) -> Tensor:
    """A raw sample as an action in the box [low, high]: clipped (``bound_by="clip"``), or squashed into (-1, 1)
    by tanh and rescaled (``"tanh"``)."""
    if bound_by == "tanh":
        return rescale(torch.tanh(raw), low, high)
    return torch.maximum(torch.minimum(raw, high), low)


class Evaluation(NamedTuple):
    """What the policy says of given raw actions at given observations (see :meth:`Policy.evaluate_actions`)."""

    log_prob: Tensor  # log pi(raw | s), summed over action dimensions: [B]
    entropy: Tensor  # of the distribution over raw actions (before clipping or squashing): [B]
    dist: Distribution  # torch's Normal (per dimension) or Categorical, for its mean, stddev or probs


def space_dims(obs_space: gym.Space, act_space: gym.Space) -> tuple[int, int, bool]:
    """(obs_dim, act_dim, discrete); act_dim is the number of actions for a discrete space."""
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        raise UserError(f"observation space {obs_space} is not supported: duetrl needs a flat Box observation")
    if isinstance(act_space, gym.spaces.Discrete):
        return obs_space.shape[0], int(act_space.n), True
    if isinstance(act_space, gym.spaces.Box) and len(act_space.shape) == 1:
        return obs_space.shape[0], act_space.shape[0], False
    raise UserError(f"action space {act_space} is not supported: use a Discrete or a flat Box action space")


@dataclass(frozen=True, kw_only=True)
class PolicyConfig:
    """The policy's settings, passed whole from an algorithm's config (its ``policy_config()``) to :class:`Policy`
    and :func:`gaussian_actor`. The names are the policy's own; the public config keys that set them may differ
    (``hidden`` or ``actor_hidden`` for ``hidden``, ``squash`` for ``bound_by``)."""

    hidden: tuple[int, ...] = (128, 128)  # widths of the actor's MLP
    activation: str = "relu"
    state_dependent_std: bool = True  # the log-std a head of the trunk, else a free parameter
    log_std_init: float = 0.0  # the free parameter's initial value (state-independent std only)
    log_std_min: float = -20.0
    log_std_max: float = 2.0
    bound_by: str = "clip"  # how a raw Gaussian sample reaches the env's bounds: "clip" or "tanh" (see to_bounds)
    clip_log_prob: bool = False  # with bound_by="clip": the log-prob of a clipped action is the mass beyond the bound
    ortho_init: bool = False


def gaussian_actor(obs_dim: int, act_dim: int, config: PolicyConfig) -> GaussianActor:
    """The Gaussian actor of ``config`` (the on-policy algorithms' and SAC's)."""
    return GaussianActor(
        obs_dim,
        act_dim,
        hidden=config.hidden,
        activation=config.activation,
        state_dependent_std=config.state_dependent_std,
        log_std_init=config.log_std_init,
        log_std_min=config.log_std_min,
        log_std_max=config.log_std_max,
    )


class Policy(nn.Module):
    """The actor, plus the mapping from its samples to env actions.

    Names: ``raw`` is what the actor's distribution is over (a Gaussian sample before it is brought into the env's
    bounds, or a categorical index); ``action`` is what the env receives (``to_env(raw)``)."""

    def __init__(
        self,
        obs_space: gym.Space,
        act_space: gym.Space,
        config: PolicyConfig = PolicyConfig(),
        in_dim: int | None = None,
    ):
        """``in_dim``: the width of the features the actor sees when not the observation's (a recurrent core's)."""
        super().__init__()
        obs_dim, act_dim, self.discrete = space_dims(obs_space, act_space)
        obs_dim = obs_dim if in_dim is None else in_dim
        self.config, self.act_dim = config, act_dim
        if self.discrete:
            self.actor: nn.Module = CategoricalActor(
                obs_dim, act_dim, hidden=config.hidden, activation=config.activation
            )
        else:
            self.actor = gaussian_actor(obs_dim, act_dim, config)
            low = torch.as_tensor(act_space.low, dtype=torch.float32)
            high = torch.as_tensor(act_space.high, dtype=torch.float32)
            if config.bound_by == "tanh" and not (torch.isfinite(low).all() and torch.isfinite(high).all()):
                raise UserError("squash=tanh needs a bounded action space; use squash=clip")
            self.register_buffer("low", low)
            self.register_buffer("high", high)
        if config.ortho_init:
            orthogonal_init(self.actor)
            head = self.actor.mean if not self.discrete else last_linear(self.actor)
            orthogonal_init(head, gain=0.01)

    def distribution(self, obs: Tensor) -> Distribution:
        return self.actor.dist(obs)

    def sample(self, obs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(raw action, env action, log pi(raw | s)) for a batch of observations, without building a
        distribution object (this runs once per env step, where torch's per-call overhead dominates)."""
        if self.discrete:
            log_probs = torch.log_softmax(self.actor(obs), -1)
            flat = log_probs.reshape(-1, self.act_dim)
            raw = torch.multinomial(flat.exp(), 1).view(log_probs.shape[:-1])
            return raw, raw, log_probs.gather(-1, raw.unsqueeze(-1)).squeeze(-1)
        mean, log_std = self.actor(obs)
        noise = torch.randn_like(mean)
        raw = mean + log_std.exp() * noise
        return raw, self.to_env(raw), self._log_prob(mean, log_std, raw, noise)

    def evaluate_actions(self, obs: Tensor, raw: Tensor) -> Evaluation:
        """log pi(raw | s), the entropy and the distribution at ``obs`` for raw actions sampled earlier (by
        :meth:`sample`, perhaps with older weights): what PPO's ratio and the actor-critic's gradient need."""
        if self.discrete:
            dist = self.actor.dist(obs)
            return Evaluation(dist.log_prob(raw), dist.entropy(), dist)
        mean, log_std = self.actor(obs)
        std = log_std.exp()
        dist = Normal(mean, std, validate_args=False)
        log_prob = self._log_prob(mean, log_std, raw, (raw - mean) / std)
        return Evaluation(log_prob, dist.entropy().sum(-1), dist)

    def _log_prob(self, mean: Tensor, log_std: Tensor, raw: Tensor, noise: Tensor) -> Tensor:
        """log pi(raw | s) ``[B]`` of the Gaussian, for raw = mean + std * noise; with ``clip_log_prob``, the
        log of the probability mass beyond a bound for a raw action the clipping moved onto it."""
        log_prob = gaussian_log_density(noise, log_std)  # [B, act_dim]
        if self.config.clip_log_prob and self.config.bound_by == "clip":
            std = log_std.exp()
            below = log_ndtr((self.low - mean) / std)
            above = log_ndtr((mean - self.high) / std)
            log_prob = torch.where(raw <= self.low, below, torch.where(raw >= self.high, above, log_prob))
        return log_prob.sum(-1)

    def to_env(self, raw: Tensor) -> Tensor:
        """The action the environment receives for a raw sample."""
        return raw if self.discrete else to_bounds(raw, self.low, self.high, self.config.bound_by)

    @torch.no_grad()
    def act(self, obs: Tensor, deterministic: bool = False) -> Tensor:
        """Env actions: the mode if deterministic, else a sample."""
        dist = self.distribution(obs)
        if deterministic:
            raw = dist.probs.argmax(-1) if self.discrete else dist.mean
        else:
            raw = dist.sample()
        return self.to_env(raw)

    def one_hot(self, actions: Tensor) -> Tensor:
        """Actions as critic inputs: one-hot for discrete, as-is for continuous."""
        if self.discrete:
            return nn.functional.one_hot(actions.long(), self.act_dim).float()
        return actions
