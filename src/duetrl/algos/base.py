"""What the training loop drives: an :class:`Agent` that acts on batches, learns, and saves its state."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class AlgoSpec:
    """An algorithm as the registry knows it."""

    name: str
    config_cls: type
    agent_cls: type[Agent]
    description: str
    discrete: bool = True
    continuous: bool = True
    discrete_agent_cls: type[Agent] | None = None  # the agent on discrete actions, when not agent_cls (sac's)

    def agent_class(self, discrete: bool) -> type[Agent]:
        """The agent that acts in a discrete (or continuous) action space."""
        return self.discrete_agent_cls if discrete and self.discrete_agent_cls is not None else self.agent_cls


@dataclass
class Decision:
    """What ``explore`` returns for one env step: the env actions, and what ``observe`` needs back with the step's
    outcome. The loop hands it back unchanged; only the agent that made it reads ``record``."""

    env_steps: int  # env steps the run had taken before this step (the loop's count, as told to explore)
    action: Tensor  # the env actions, what env.step takes: [N, act_dim] (continuous) or [N] (discrete)
    record: dict[str, Tensor]  # what the agent stores with the outcome, e.g. obs, raw action, log-prob: [N, ...]


class Agent(ABC):
    """One algorithm, driven by the loop (``loop.Trainer``) on a batch of ``num_envs`` envs.

    The protocol, for each round of the loop (every env steps once):

    1. ``decision = explore(obs, env_steps)``: actions for the envs' observations ``[N, ...]`` (a tensor, or a dict
       or tuple of them for a Dict or Tuple space, in the storage form of :mod:`duetrl.encoders`), told the run's
       env steps so far. Returns a :class:`Decision`; the agent keeps nothing of it.
    2. The loop steps the envs with ``decision.action``.
    3. ``observe(decision, reward, terminated, truncated, next_obs)``: the outcome, ``[N]`` each, with ``next_obs``
       the final observation where an episode ended (a time limit is ``truncated``, not ``terminated``).
    4. If ``ready()``: ``set_progress(env_steps / steps)`` then ``metrics = update()``, which learns from what was
       observed and returns floats by name (the loop logs them and stops on a non-finite one).

    The loop owns the step count (``env_steps``, saved in its checkpoints) and passes it in; an agent counts no
    env steps of its own. ``act(obs, deterministic)`` is the trained policy for evaluation and deployment: it
    learns and records nothing. ``state_dict`` / ``load_state_dict`` hold everything an exact resume needs."""

    def __init__(self, cfg: Any, obs_space: gym.Space, act_space: gym.Space, num_envs: int, device: torch.device):
        self.cfg, self.obs_space, self.act_space = cfg, obs_space, act_space
        self.num_envs, self.device = num_envs, device
        self.modules: dict[str, nn.Module] = {}
        self.optimizers: dict[str, Any] = {}  # torch.optim optimisers or duetrl.optim.FusedAdam

    @abstractmethod
    def explore(self, obs: Tensor, env_steps: int) -> Decision:
        """Env actions for a batch of observations ``[N, ...]`` with exploration, and what observe needs."""

    @abstractmethod
    def observe(
        self, decision: Decision, reward: Tensor, terminated: Tensor, truncated: Tensor, next_obs: Tensor
    ) -> None:
        """The outcome of ``decision``; ``next_obs`` is the final observation where an episode ended."""

    @abstractmethod
    def ready(self) -> bool:
        """True when enough has been observed for ``update``."""

    @abstractmethod
    def update(self) -> dict[str, float]:
        """Learn from what was observed; returns metrics by name."""

    @abstractmethod
    def act(self, obs: Tensor, deterministic: bool = False) -> Tensor:
        """Env actions of the current policy (no learning, no bookkeeping)."""

    def deployable(self) -> Deployable:
        """The trained policy as one self-contained deterministic module (see :class:`Deployable`): what
        ``duetrl export`` writes to ONNX or pt2. Its output equals ``act(obs, deterministic=True)``."""
        raise NotImplementedError(f"{type(self).__name__} has no deployable policy")

    def set_progress(self, fraction: float) -> None:
        """Told before each update how much of the run is done (0..1), for schedules such as lr annealing."""

    def state_dict(self) -> dict[str, Any]:
        return {
            "modules": {name: m.state_dict() for name, m in self.modules.items()},
            "optimizers": {name: o.state_dict() for name, o in self.optimizers.items()},
        }

    def load_state_dict(self, state: dict[str, Any], weights_only: bool = False) -> None:
        for name, module in self.modules.items():
            module.load_state_dict(state["modules"][name])
        if not weights_only:
            for name, optimizer in self.optimizers.items():
                optimizer.load_state_dict(state["optimizers"][name])

    def train_mode(self, training: bool) -> None:
        for module in self.modules.values():
            module.train(training)


class Deployable(nn.Module):
    """A trained policy as one deterministic module, raw env observations in and env actions out, with everything
    between bundled inside (observation normaliser, encoder, action scaling, clipping or tanh squash, argmax): what
    ``duetrl export`` traces with ``torch.export``. Each agent family gives one (:meth:`Agent.deployable`).

    ``forward(obs)`` takes a batch of observations in their storage form (a tensor ``[B, ...]``, or a dict or
    tuple of them for a Dict or Tuple space) and returns the env actions ``[B, ...]``. A policy with memory has
    ``state_dim > 0`` and is ``forward(obs, state) -> (action, next_state)``, ``state [B, state_dim]`` the flat
    per-env state of :mod:`duetrl.cores` (zeros at an episode start). The exporter (:mod:`duetrl.deploy`) names
    the file's inputs and outputs: one per observation leaf, then the state."""

    state_dim: int = 0  # the width of the carried state; 0 for a memoryless policy

    def state_parts(self) -> list[tuple[str, int]]:
        """What the flat state holds, in order, as (name, width) pairs summing to ``state_dim`` (the sidecar of an
        exported file lists them); empty for a memoryless policy."""
        return [("state", self.state_dim)] if self.state_dim else []


def linear_schedule(start: float, end: float, fraction: float) -> float:
    """The value ``fraction`` (clamped to 0..1) of the way from ``start`` to ``end``: every schedule here."""
    fraction = min(max(fraction, 0.0), 1.0)
    return start * (1.0 - fraction) + end * fraction


def anneal_lr(optimizers: dict[str, Any], base_lrs: dict[str, float], fraction: float) -> None:
    """Linear learning-rate annealing: each named optimizer's rate falls from its base rate to 0 over the run."""
    for name, base in base_lrs.items():
        for group in optimizers[name].param_groups:
            group["lr"] = linear_schedule(base, 0.0, fraction)


def clip_and_step(optimizer: Any, loss: Tensor, params: list[Tensor], max_grad_norm: float) -> Tensor | None:
    """zero_grad, backward into ``params`` only, grad-norm clip (when ``max_grad_norm`` > 0), step.

    Only ``params`` receive gradients: an actor's loss through a critic leaves the critic's weights alone (and
    autograd skips computing their gradients). Returns the gradient norm before clipping when clipping (as a
    tensor: no device sync here), else None."""
    optimizer.zero_grad()
    loss.backward(inputs=params)
    norm = nn.utils.clip_grad_norm_(params, max_grad_norm) if max_grad_norm > 0 else None
    optimizer.step()
    return norm
