"""A stochastic policy that knows its action space: sampling, log-probabilities and env actions.

Continuous actions: a Gaussian over an unbounded ``raw`` action, mapped to the env's bounds either by clipping
(the chapter) or by a tanh squash (:func:`to_bounds`). The log-probability is always of ``raw``; with clipping it
can optionally account for the clipping (``clip_log_prob``: the probability mass beyond a bound, as in Fujita &
Maeda 2018, "Clipped Action Policy Gradient"), which fixes the chapter's log-prob of an action the env never saw.
Discrete actions: a categorical; ``raw`` is the action index. ``MultiDiscrete``: independent categoricals, one per
entry (``raw`` the indices); ``MultiBinary``: independent Bernoullis (``raw`` the bits); the log-probability and
entropy of either are summed over the entries. A ``Box`` of any shape is a flat Gaussian reshaped for the env.
Observations reach the actor through the policy's encoder (:mod:`duetrl.encoders`): features, never raw spaces.
:meth:`Policy.encode` gives them, so that a critic can read the same features (PPO's does, as SB3's and CleanRL's:
one CNN trained by both losses) without encoding twice.

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
from torch.distributions import Bernoulli, Categorical, Distribution, Independent, Normal
from torch.special import log_ndtr

from duetrl.encoders import EncoderConfig, Obs, make_encoder
from duetrl.errors import UserError
from duetrl.nets import CategoricalActor, GaussianActor, encode, encoder_or_none, last_linear, orthogonal_init

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


SUPPORTED_ACTIONS = "Box (any shape), Discrete, MultiDiscrete or MultiBinary"


def action_kind(act_space: gym.Space) -> str:
    """The distribution an action space takes: ``gaussian`` (Box), ``categorical`` (Discrete),
    ``multi_categorical`` (MultiDiscrete) or ``bernoulli`` (MultiBinary); a UserError for any other space."""
    if isinstance(act_space, gym.spaces.Box):
        return "gaussian"
    if isinstance(act_space, gym.spaces.Discrete):
        return "categorical"
    if isinstance(act_space, gym.spaces.MultiDiscrete):
        return "multi_categorical"
    if isinstance(act_space, gym.spaces.MultiBinary):
        return "bernoulli"
    raise UserError(f"action space {act_space} is not supported: duetrl takes {SUPPORTED_ACTIONS}")


def action_dim(act_space: gym.Space) -> int:
    """The actor's output width: actions of a Box (flattened), of a Discrete, categories summed over a
    MultiDiscrete's entries, bits of a MultiBinary."""
    kind = action_kind(act_space)
    if kind == "categorical":
        return int(act_space.n)
    if kind == "multi_categorical":
        return int(act_space.nvec.sum())
    return int(math.prod(act_space.shape))


def padded_logits(logits: Tensor, nvec: Tensor) -> Tensor:
    """The concatenated logits ``[..., sum(nvec)]`` of a MultiDiscrete's categoricals as ``[..., entries,
    max(nvec)]``, the missing categories at the lowest float (probability 0): one batched Categorical for all."""
    entries, widest = len(nvec), int(nvec.max())
    index = torch.arange(widest, device=logits.device)
    mask = index < nvec[:, None]  # [entries, widest]
    out = logits.new_full((*logits.shape[:-1], entries, widest), torch.finfo(logits.dtype).min)
    out[..., mask] = logits
    return out


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
    encoder: EncoderConfig = EncoderConfig()  # how observations become the actor's features


def gaussian_actor(obs_dim: int, act_dim: int, config: PolicyConfig, encoder: nn.Module | None = None) -> GaussianActor:
    """The Gaussian actor of ``config`` (the on-policy algorithms' and SAC's); ``encoder`` maps observations to
    its ``obs_dim`` features."""
    return GaussianActor(
        obs_dim,
        act_dim,
        encoder=encoder,
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
    bounds, a categorical index, the indices of a MultiDiscrete, the bits of a MultiBinary); ``action`` is what the
    env receives (``to_env(raw)``)."""

    def __init__(
        self,
        obs_space: gym.Space,
        act_space: gym.Space,
        config: PolicyConfig = PolicyConfig(),
        in_dim: int | None = None,
    ):
        """``in_dim``: the width of what the heads read when it is not the encoder's (a recurrent core's output);
        the agent then passes those ``features`` to the methods below, which otherwise encode ``obs`` themselves."""
        super().__init__()
        self.kind = action_kind(act_space)
        self.discrete = self.kind != "gaussian"
        self.config, self.act_dim = config, action_dim(act_space)
        encoder = make_encoder(obs_space, config.encoder)
        self.features = encoder.features  # the width of what encode() returns
        self.encoder = encoder_or_none(encoder)  # registered first: it draws its initial weights before the actor
        head_in = self.features if in_dim is None else in_dim  # a recurrent core sits between encoder and heads
        if self.discrete:
            self.actor: nn.Module = CategoricalActor(
                head_in, self.act_dim, hidden=config.hidden, activation=config.activation
            )
            self.start = int(act_space.start) if self.kind == "categorical" else 0  # Discrete(n, start)
            if self.kind == "multi_categorical":
                self.register_buffer("nvec", torch.as_tensor(act_space.nvec.reshape(-1), dtype=torch.int64), False)
                self.register_buffer("starts", torch.as_tensor(act_space.start.reshape(-1), dtype=torch.int64), False)
        else:
            self.actor = gaussian_actor(head_in, self.act_dim, config)
            low = torch.as_tensor(act_space.low, dtype=torch.float32).reshape(-1)
            high = torch.as_tensor(act_space.high, dtype=torch.float32).reshape(-1)
            if config.bound_by == "tanh" and not (torch.isfinite(low).all() and torch.isfinite(high).all()):
                raise UserError("squash=tanh needs a bounded action space; use squash=clip")
            self.register_buffer("low", low)
            self.register_buffer("high", high)
        self.act_shape = tuple(act_space.shape)  # what to_env reshapes a flat sample to
        if config.ortho_init:
            orthogonal_init(self.actor)
            head = self.actor.mean if not self.discrete else last_linear(self.actor)
            orthogonal_init(head, gain=0.01)
            if self.encoder is not None:
                orthogonal_init(self.encoder)  # convolutions too, as SB3's ortho_init and CleanRL's Atari PPO

    def encode(self, obs: Obs) -> Tensor:
        """Features ``[..., features]`` of observations of the policy's space (the observations themselves for a
        flat box)."""
        return encode(self.encoder, obs)

    def distribution(self, obs: Obs, features: Tensor | None = None) -> Distribution:
        """pi(. | obs): a Normal per dimension, a Categorical, or (MultiDiscrete, MultiBinary) an Independent whose
        log-prob and entropy are summed over the entries. ``features``: ``encode(obs)``, when already computed."""
        features = self.encode(obs) if features is None else features
        if self.kind == "multi_categorical":
            logits = padded_logits(self.actor(features), self.nvec)  # [B, entries, widest]
            return Independent(Categorical(logits=logits, validate_args=False), 1, validate_args=False)
        if self.kind == "bernoulli":
            return Independent(Bernoulli(logits=self.actor(features), validate_args=False), 1, validate_args=False)
        return self.actor.dist(features)

    def sample(self, obs: Obs, features: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(raw action, env action, log pi(raw | s)) for a batch of observations, without building a
        distribution object where it can (this runs once per env step, where torch's per-call overhead
        dominates). ``features``: what the heads read, when already computed (a recurrent core's output)."""
        features = self.encode(obs) if features is None else features
        if self.kind == "categorical":
            log_probs = torch.log_softmax(self.actor(features), -1)
            flat = log_probs.reshape(-1, self.act_dim)
            raw = torch.multinomial(flat.exp(), 1).view(log_probs.shape[:-1])
            return raw, self.to_env(raw), log_probs.gather(-1, raw.unsqueeze(-1)).squeeze(-1)
        if self.discrete:
            dist = self.distribution(obs, features)
            raw = dist.sample()
            return raw, self.to_env(raw), dist.log_prob(raw)
        mean, log_std = self.actor(features)
        noise = torch.randn_like(mean)
        raw = mean + log_std.exp() * noise
        return raw, self.to_env(raw), self._log_prob(mean, log_std, raw, noise)

    def evaluate_actions(self, obs: Obs, raw: Tensor, features: Tensor | None = None) -> Evaluation:
        """log pi(raw | s), the entropy and the distribution at ``obs`` for raw actions sampled earlier (by
        :meth:`sample`, perhaps with older weights): what PPO's ratio and the actor-critic's gradient need.
        ``features``: ``encode(obs)``, when already computed (for a critic that reads them too)."""
        features = self.encode(obs) if features is None else features
        if self.discrete:
            dist = self.distribution(obs, features)
            return Evaluation(dist.log_prob(raw), dist.entropy(), dist)
        mean, log_std = self.actor(features)
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
        """The action the environment receives for a raw sample (in the action space's shape)."""
        if self.kind == "categorical":
            return raw + self.start if self.start else raw
        if self.kind == "multi_categorical":
            return (raw + self.starts).reshape(*raw.shape[:-1], *self.act_shape)
        if self.kind == "bernoulli":
            return raw.reshape(*raw.shape[:-1], *self.act_shape)
        action = to_bounds(raw, self.low, self.high, self.config.bound_by)
        return action if len(self.act_shape) == 1 else action.reshape(*raw.shape[:-1], *self.act_shape)

    def mode(self, obs: Obs, features: Tensor | None = None) -> Tensor:
        """The env action of the distribution's mode: the most probable index (per entry for a MultiDiscrete), the
        likelier value of each bit, or the Gaussian's mean brought into the bounds. Plain tensor operations, so
        ``torch.export`` traces it for ``duetrl export``."""
        out = self.actor(self.encode(obs) if features is None else features)
        if self.kind == "categorical":
            raw = out.argmax(-1)
        elif self.kind == "multi_categorical":
            raw = padded_logits(out, self.nvec).argmax(-1)
        elif self.kind == "bernoulli":
            raw = (out > 0).float()
        else:
            raw = out[0]  # the Gaussian actor's (mean, log_std)
        return self.to_env(raw)

    @torch.no_grad()
    def act(self, obs: Obs, deterministic: bool = False, features: Tensor | None = None) -> Tensor:
        """Env actions: the mode if deterministic, else a sample (``features`` as in :meth:`sample`)."""
        if deterministic:
            return self.mode(obs, features)
        return self.to_env(self.distribution(obs, features).sample())

    def one_hot(self, actions: Tensor) -> Tensor:
        """Env actions as critic inputs ``[B, act_dim]``: one-hot for a Discrete (per entry, concatenated, for a
        MultiDiscrete), the bits of a MultiBinary, a continuous action flattened."""
        if self.kind == "categorical":
            return nn.functional.one_hot(actions.long() - self.start, self.act_dim).float()
        if self.kind == "gaussian" and len(self.act_shape) == 1:
            return actions
        flat = actions.reshape(*actions.shape[: actions.dim() - len(self.act_shape)], -1)  # [..., entries]
        if self.kind == "multi_categorical":
            flat = flat.long() - self.starts
            return torch.cat([nn.functional.one_hot(flat[..., i], int(n)) for i, n in enumerate(self.nvec)], -1).float()
        return flat.float()
