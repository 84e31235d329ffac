"""Networks: an MLP trunk, actor heads (Gaussian, categorical) and critics (V, Q).

Each network takes an optional ``encoder`` (see :mod:`duetrl.encoders`) that it applies to observations first, so
its trunk sees features of width ``obs_dim``. Without one (or with a parameterless one, such as a flat box's), the
state dict and the initial weights are what they were before encoders existed."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Normal

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "gelu": nn.GELU, "silu": nn.SiLU}


def mlp(in_dim: int, hidden: Sequence[int], activation: str = "relu", out_dim: int | None = None) -> nn.Sequential:
    """Linear layers with an activation after each hidden layer (and none after the optional output)."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), ACTIVATIONS[activation]()]
        in_dim = width
    if out_dim is not None:
        layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


def orthogonal_init(module: nn.Module, gain: float = math.sqrt(2), last_gain: float | None = None) -> None:
    """The chapter's intended (and never applied) init: orthogonal weights, zero biases.

    ``last_gain`` overrides the gain of the final Linear (or Conv2d) layer (0.01 for a policy head is common)."""
    linears = [m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]  # convolutions: encoders
    for i, layer in enumerate(linears):
        g = last_gain if (last_gain is not None and i == len(linears) - 1) else gain
        nn.init.orthogonal_(layer.weight, gain=g)
        nn.init.zeros_(layer.bias)


def encoder_or_none(encoder: nn.Module | None) -> nn.Module | None:
    """The network's encoder (registered first, so that it draws its initial weights before the trunk), or None
    for none or the identity (a flat float box's): no call at all on the hot path of vector observations."""
    return None if encoder is None or getattr(encoder, "identity", False) else encoder


def encode(encoder: nn.Module | None, obs: Tensor) -> Tensor:
    return obs if encoder is None else encoder(obs)


def last_linear(module: nn.Module) -> nn.Linear:
    return [m for m in module.modules() if isinstance(m, nn.Linear)][-1]


class GaussianActor(nn.Module):
    """Diagonal Gaussian policy: a mean head and a clamped log-std, either a head of the trunk (the chapter's
    state-dependent std) or a free parameter (state-independent, as PPO usually does)."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        *,
        hidden: Sequence[int] = (128, 128),
        activation: str = "relu",
        state_dependent_std: bool = True,
        log_std_init: float = 0.0,
        log_std_min: float = -20.0,
        log_std_max: float = 2.0,
        encoder: nn.Module | None = None,
    ):
        super().__init__()
        self.encoder = encoder_or_none(encoder)
        self.trunk = mlp(obs_dim, hidden, activation)
        width = hidden[-1] if hidden else obs_dim
        self.mean = nn.Linear(width, act_dim)
        self.state_dependent_std = state_dependent_std
        if state_dependent_std:
            self.log_std = nn.Linear(width, act_dim)
        else:
            self.log_std_param = nn.Parameter(torch.full((act_dim,), float(log_std_init)))
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, log_std), the log-std clamped to [log_std_min, log_std_max]."""
        features = self.trunk(encode(self.encoder, obs))
        mean = self.mean(features)
        log_std = self.log_std(features) if self.state_dependent_std else self.log_std_param.expand_as(mean)
        return mean, log_std.clamp(self.log_std_min, self.log_std_max)

    def dist(self, obs: Tensor) -> Normal:
        mean, log_std = self(obs)
        return Normal(mean, log_std.exp(), validate_args=False)


class CategoricalActor(nn.Module):
    """Categorical policy over a discrete action space."""

    def __init__(
        self,
        obs_dim: int,
        num_actions: int,
        *,
        hidden: Sequence[int] = (128, 128),
        activation: str = "relu",
        encoder: nn.Module | None = None,
    ):
        super().__init__()
        self.encoder = encoder_or_none(encoder)
        self.net = mlp(obs_dim, hidden, activation, out_dim=num_actions)

    def forward(self, obs: Tensor) -> Tensor:
        return self.net(encode(self.encoder, obs))

    def dist(self, obs: Tensor) -> Categorical:
        return Categorical(logits=self(obs), validate_args=False)


class ValueCritic(nn.Module):
    """V(s)."""

    def __init__(
        self,
        obs_dim: int,
        *,
        hidden: Sequence[int] = (128, 128),
        activation: str = "relu",
        encoder: nn.Module | None = None,
    ):
        super().__init__()
        self.encoder = encoder_or_none(encoder)
        self.net = mlp(obs_dim, hidden, activation, out_dim=1)

    def forward(self, obs: Tensor) -> Tensor:
        return self.net(encode(self.encoder, obs)).squeeze(-1)


class QCritic(nn.Module):
    """Q(s, a): the action is concatenated to the observation (one-hot for discrete actions)."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        *,
        hidden: Sequence[int] = (128, 128),
        activation: str = "relu",
        encoder: nn.Module | None = None,
    ):
        super().__init__()
        self.encoder = encoder_or_none(encoder)
        self.net = mlp(obs_dim + act_dim, hidden, activation, out_dim=1)

    def forward(self, obs: Tensor, action: Tensor) -> Tensor:
        return self.net(torch.cat([encode(self.encoder, obs), action], dim=-1)).squeeze(-1)


class EnsembleLinear(nn.Module):
    """``E`` independent linear layers applied in one batched matmul: ``[E, B, in] -> [E, B, out]``."""

    def __init__(self, ensemble: int, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(ensemble, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(ensemble, 1, out_dim))
        bound = 1.0 / math.sqrt(in_dim)  # PyTorch's default Linear init, per member
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


def ensemble_mlp(
    ensemble: int,
    in_dim: int,
    hidden: Sequence[int],
    out_dim: int,
    activation: str = "relu",
    layer_norm: bool = False,
    dropout: float = 0.0,
) -> nn.Sequential:
    """``ensemble`` independent MLPs ``[E, B, in_dim] -> [E, B, out_dim]`` (dropout, then LayerNorm, then the
    activation after each hidden layer): the trunk of :class:`EnsembleQ` and :class:`EnsembleQValues`."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers.append(EnsembleLinear(ensemble, in_dim, width))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        if layer_norm:
            layers.append(nn.LayerNorm(width))
        layers.append(ACTIVATIONS[activation]())
        in_dim = width
    layers.append(EnsembleLinear(ensemble, in_dim, out_dim))
    return nn.Sequential(*layers)


class _EnsembleCritic(nn.Module):
    """What :class:`EnsembleQ` and :class:`EnsembleQValues` share: one encoder for every member (as SB3's critics
    share theirs) and an :func:`ensemble_mlp` trunk ``in_dim -> out_dim``."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        *,
        hidden: Sequence[int],
        ensemble: int,
        activation: str,
        layer_norm: bool,
        dropout: float,
        encoder: nn.Module | None,
    ):
        super().__init__()
        self.encoder = encoder_or_none(encoder)
        self.ensemble = ensemble
        self.net = ensemble_mlp(ensemble, in_dim, hidden, out_dim, activation, layer_norm, dropout)

    def _members(self, x: Tensor) -> Tensor:
        """``[B, in]`` -> ``[E, B, in]`` (the same input for every member); ``[E, B, in]`` as it is."""
        return x.unsqueeze(0).expand(self.ensemble, *x.shape) if x.dim() == 2 else x


class EnsembleQ(_EnsembleCritic):
    """``ensemble`` Q(s, a) networks evaluated together (twin critics in one pass): returns ``[E, B]``.

    ``layer_norm`` and ``dropout`` after each hidden layer keep Q estimates stable at high update-to-data
    ratios (Hiraoka et al. 2022, "Dropout Q-Functions"; Ball et al. 2023)."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        *,
        hidden: Sequence[int] = (256, 256),
        ensemble: int = 2,
        activation: str = "relu",
        layer_norm: bool = False,
        dropout: float = 0.0,
        encoder: nn.Module | None = None,
    ):
        super().__init__(
            obs_dim + act_dim, 1, hidden=hidden, ensemble=ensemble, activation=activation,
            layer_norm=layer_norm, dropout=dropout, encoder=encoder,
        )  # fmt: skip

    def forward(self, obs: Tensor, action: Tensor) -> Tensor:
        x = torch.cat([encode(self.encoder, obs), action], dim=-1)
        return self.net(self._members(x)).squeeze(-1)


class EnsembleQValues(_EnsembleCritic):
    """``ensemble`` critics Q(s, .) with one output per discrete action (discrete SAC's), evaluated together:
    ``[E, B, A]``. Given action indices ``[B, 1]`` (as the replay buffer stores them), the Q of those actions
    ``[E, B]``, so that :meth:`duetrl.algos.offpolicy.OffPolicyAgent.critic_step` reads it as an :class:`EnsembleQ`."""

    def __init__(
        self,
        obs_dim: int,
        num_actions: int,
        *,
        hidden: Sequence[int] = (256, 256),
        ensemble: int = 2,
        activation: str = "relu",
        layer_norm: bool = False,
        dropout: float = 0.0,
        encoder: nn.Module | None = None,
    ):
        super().__init__(
            obs_dim, num_actions, hidden=hidden, ensemble=ensemble, activation=activation,
            layer_norm=layer_norm, dropout=dropout, encoder=encoder,
        )  # fmt: skip

    def forward(self, obs: Tensor, action: Tensor | None = None) -> Tensor:
        q = self.net(self._members(encode(self.encoder, obs)))  # [E, B, A]
        if action is None:
            return q
        index = action.long().reshape(1, -1, 1).expand(self.ensemble, -1, 1)  # [E, B, 1]
        return q.gather(-1, index).squeeze(-1)


class DeterministicActor(nn.Module):
    """a = tanh(MLP(s)), in [-1, 1] (scaled to the env's bounds outside): TD3 and DDPG."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        *,
        hidden: Sequence[int] = (256, 256),
        activation: str = "relu",
        encoder: nn.Module | None = None,
    ):
        super().__init__()
        self.encoder = encoder_or_none(encoder)
        self.net = mlp(obs_dim, hidden, activation, out_dim=act_dim)

    def pre_tanh(self, obs: Tensor) -> Tensor:
        """The output before the squash, u with a = tanh(u): what ``preact_penalty`` keeps out of saturation."""
        return self.net(encode(self.encoder, obs))

    def forward(self, obs: Tensor) -> Tensor:
        return torch.tanh(self.pre_tanh(obs))
