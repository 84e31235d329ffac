"""What SAC, TD3 and DDPG share: a replay buffer, random actions until ``learning_starts``, actions in
[-1, 1] scaled to the env's bounds, an update-to-data ratio, and Polyak-averaged target networks."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import gymnasium as gym
import torch
from torch import Tensor, nn

from duetrl.algos.base import Agent, Decision, Deployable, anneal_lr, clip_and_step
from duetrl.buffers import ReplayBuffer
from duetrl.config import RunConfig
from duetrl.encoders import EncoderKeys, Obs, batch_size, make_encoder, to_device
from duetrl.errors import UserError
from duetrl.nets import ACTIVATIONS, EnsembleQ
from duetrl.noise import ColoredNoise, OrnsteinUhlenbeckNoise
from duetrl.policy import action_dim, action_kind, rescale
from duetrl.returns import td_targets
from duetrl.validate import check_choice, check_range, check_widths


class DeployedActor(Deployable):
    """The off-policy agents' deterministic policy for export: raw observation -> the actor's deterministic action
    in [-1, 1] (SAC's tanh of the mean, TD3's and DDPG's mu) -> rescaled onto the env's bounds."""

    def __init__(self, actor: nn.Module, unit_action: Any, low: Tensor, high: Tensor):
        super().__init__()
        self.actor, self.unit_action = actor, unit_action  # unit_action(obs): the agent's, through this actor
        self.register_buffer("low", low.clone())
        self.register_buffer("high", high.clone())

    def forward(self, obs: Tensor) -> Tensor:
        return rescale(self.unit_action(obs), self.low, self.high)


@dataclass
class OffPolicyConfig(EncoderKeys):
    """Settings every off-policy actor-critic shares (defaults: the SAC/TD3 papers', as in SB3/CleanRL)."""

    # The papers' warm-up of random actions (SAC 5,000 here; TD3/DDPG 25,000 in td3.py): what learning_starts=None
    # gives on a long run. A shorter run starts after a tenth of its steps, so a 10,000-step run still learns.
    PAPER_LEARNING_STARTS: ClassVar[int] = 5_000

    actor_hidden: list[int] = field(default_factory=lambda: [256, 256])
    critic_hidden: list[int] = field(default_factory=lambda: [256, 256])
    activation: str = "relu"
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    gamma: float = 0.99
    tau: float = 0.005  # Polyak rate of the target networks
    batch_size: int = 256
    buffer_size: int = 1_000_000
    learning_starts: int | None = None  # env steps of uniform random actions first; None = auto (resolve_auto)
    utd: float = 1.0  # gradient steps per env step
    policy_delay: int = 1  # actor update every n critic updates
    n_critics: int = 2
    critic_layer_norm: bool = False
    critic_dropout: float = 0.0
    max_grad_norm: float = 0.0  # 0 = no clipping
    noise_beta: float = 0.0  # colour of SAC's sampling / TD3's "colored" noise: 0 white, 1 pink (see noise.py)
    noise_length: int = 1000  # steps per noise sequence (an episode's length, or more)
    save_buffer: bool = False  # keep the replay buffer in checkpoints (exact resume)
    anneal_lr: bool = False  # actor and critic learning rates fall linearly to 0 over the run

    def validate(self) -> None:
        for key in ("actor_lr", "critic_lr", "utd", "max_grad_norm"):
            check_range(key, getattr(self, key), 0.0)
        check_range("gamma", self.gamma, 0.0, 1.0)
        check_range("tau", self.tau, 0.0, 1.0)
        check_range("critic_dropout", self.critic_dropout, 0.0, 0.99)
        for key in ("batch_size", "buffer_size", "policy_delay", "n_critics"):
            check_range(key, getattr(self, key), 1)
        if self.learning_starts is not None:
            check_range("learning_starts", self.learning_starts, 0)
        check_range("noise_beta", self.noise_beta, 0.0, 3.0)
        check_range("noise_length", self.noise_length, 2)
        check_choice("activation", self.activation, tuple(ACTIVATIONS))
        check_widths("actor_hidden", self.actor_hidden)
        check_widths("critic_hidden", self.critic_hidden)
        self.validate_encoder()
        if self.buffer_size < self.batch_size:
            raise UserError(f"buffer_size={self.buffer_size} must be at least batch_size={self.batch_size}")

    def resolve_auto(self, steps: int) -> None:
        """Fill learning_starts=None from the run's budget: min(the paper's, max(batch_size, steps // 10))."""
        if self.learning_starts is None:
            self.learning_starts = min(self.PAPER_LEARNING_STARTS, max(self.batch_size, steps // 10))

    def ignored_settings(self) -> dict[str, str]:
        """Keys that the other settings make ignored: key -> why (see config.ignored_settings_warnings); each
        algorithm adds its own."""
        return {}

    def budget_warnings(self, run: RunConfig) -> list[str]:
        """A run that ends before the first update (see :func:`duetrl.config.budget_warnings`)."""
        # Unresolved (no budget known), the agent falls back on the paper's warm-up: so does this check.
        starts = self.PAPER_LEARNING_STARTS if self.learning_starts is None else self.learning_starts
        key, value = ("learning_starts", starts) if starts >= self.batch_size else ("batch_size", self.batch_size)
        if run.steps > value:
            return []
        return [
            f"steps={run.steps} is not more than {key}={value}: the agent acts at random for the whole run and "
            f"learns nothing; raise steps or lower {key}"
        ]


def averaged_tensors(module: nn.Module) -> list[Tensor]:
    """What Polyak averaging moves: the parameters and the floating-point buffers (not counters)."""
    return list(module.parameters()) + [b for b in module.buffers() if b.is_floating_point()]


def polyak(target: list[Tensor], source: list[Tensor], tau: float) -> None:
    """target <- (1 - tau) * target + tau * source, in one foreach op over :func:`averaged_tensors` lists
    (gathered once by the caller: walking the modules every step costs more than the update).

    ``torch._foreach_lerp_`` is private (in torch since 2.0, pytorch/pytorch#87562): without it, one ``lerp_``
    per tensor, which is what the foreach op itself does on CPU."""
    with torch.no_grad():
        if hasattr(torch, "_foreach_lerp_"):
            torch._foreach_lerp_(target, source, tau)
        else:
            for t, s in zip(target, source, strict=True):
                t.lerp_(s, tau)


def critic_loss(critic: nn.Module, obs: Tensor, action: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Every Q critic's squared error to the Bellman target ``[B]``: (0.5 * sum_i mean_b (Q_i - target)^2, mean Q).

    A pure function of the critic and the batch: :meth:`OffPolicyAgent.critic_step` calls it, and a population
    (:mod:`duetrl.population`) calls it under ``torch.func.vmap`` with each member's weights."""
    q = critic(obs, action)  # [E, B]
    return 0.5 * (q - target).pow(2).mean(1).sum(), q.detach().mean()


def frozen_copy(module: nn.Module) -> nn.Module:
    """A target network: a copy that no optimiser touches."""
    import copy

    target = copy.deepcopy(module)
    target.requires_grad_(False)
    return target


class OffPolicyAgent(Agent):
    """Config fields used: ``buffer_size``, ``batch_size``, ``learning_starts``, ``utd`` (gradient steps per env
    step), ``save_buffer``, and the critic's (``critic_*``, ``n_critics``, ``gamma``, ``max_grad_norm``).

    An algorithm builds its actor, then its critic with :meth:`make_critic` (in that order: the initial weights
    follow the seed), and supplies the critic's bootstrap (:meth:`next_value`) and its ``gradient_step``, which
    starts with the shared :meth:`critic_step`. Actions here are in [-1, 1] (the buffer's ``action``, the critics'
    input); the env receives them rescaled to its bounds."""

    name = "off-policy"
    critic: EnsembleQ  # Q_i(s, a) of every member: [E, B]
    critic_params: list[Tensor]  # what the critic's optimizer (``optimizers["critic"]``) steps

    def __init__(self, cfg: Any, obs_space: gym.Space, act_space: gym.Space, num_envs: int, device: torch.device):
        super().__init__(cfg, obs_space, act_space, num_envs, device)
        self.buffer = ReplayBuffer(cfg.buffer_size, obs_space, self.init_actions(act_space), device)
        # A config that never went through config.resolve (no budget known) keeps the paper's warm-up.
        self.learning_starts = cfg.PAPER_LEARNING_STARTS if cfg.learning_starts is None else cfg.learning_starts
        self.updates_owed = 0.0
        self.gradient_steps = 0
        # Exploration noise with memory, when the algorithm uses it: restarted as episodes end (``observe``) and
        # kept in checkpoints.
        self.noise: ColoredNoise | OrnsteinUhlenbeckNoise | None = None

    def init_actions(self, act_space: gym.Space) -> int:
        """Check the action space and keep what acting in it needs (``act_dim``, ``act_shape``, the bounds);
        returns the width of a replayed action. Here a bounded Box of any shape, flattened: [-1, 1]^act_dim."""
        if action_kind(act_space) != "gaussian":
            raise UserError(f"--algo {self.name} needs a continuous (Box) action space, not {act_space}")
        self.act_dim = action_dim(act_space)
        self.act_shape = tuple(act_space.shape)
        self.low = torch.as_tensor(act_space.low, dtype=torch.float32, device=self.device).reshape(-1)
        self.high = torch.as_tensor(act_space.high, dtype=torch.float32, device=self.device).reshape(-1)
        if not (torch.isfinite(self.low).all() and torch.isfinite(self.high).all()):
            raise UserError(f"--algo {self.name} needs a bounded action space, not {act_space}")
        return self.act_dim

    def random_action(self, n: int) -> Tensor:
        """What the agent does before ``learning_starts``: uniform random actions ``[n, act_dim]`` in [-1, 1]."""
        return torch.rand(n, self.act_dim, device=self.device) * 2 - 1

    def make_encoder(self) -> nn.Module:
        """A fresh encoder of the observations (every network owns its own; the critic's members share one)."""
        return make_encoder(self.obs_space, self.cfg.encoder_config())

    def to_env(self, action: Tensor) -> Tensor:
        """Actions in [-1, 1] ``[B, act_dim]`` as the env takes them: rescaled to its bounds, in its shape."""
        action = rescale(action, self.low, self.high)
        return action if len(self.act_shape) == 1 else action.reshape(-1, *self.act_shape)

    def colored_noise(self, beta: float, scale: float = 1.0) -> ColoredNoise:
        """Per-env noise sequences of colour ``beta``."""
        return ColoredNoise(beta, self.num_envs, self.act_dim, self.cfg.noise_length, self.device, scale)

    def make_critic(self) -> EnsembleQ:
        """The ensemble of Q critics every off-policy algorithm here trains (twin by default)."""
        cfg = self.cfg
        encoder = self.make_encoder()
        return EnsembleQ(
            encoder.features,
            self.act_dim,
            encoder=encoder,
            hidden=cfg.critic_hidden,
            ensemble=cfg.n_critics,
            activation=cfg.activation,
            layer_norm=cfg.critic_layer_norm,
            dropout=cfg.critic_dropout,
        ).to(self.device)

    # ------------------------------------------------------------------------------------------ acting
    @abstractmethod
    def exploration_action(self, obs: Tensor) -> Tensor:
        """Actions in [-1, 1] for collecting data (with the algorithm's exploration)."""

    @abstractmethod
    def policy_action(self, obs: Tensor, deterministic: bool) -> Tensor:
        """Actions in [-1, 1] of the learned policy."""

    @torch.no_grad()
    def explore(self, obs: Obs, env_steps: int) -> Decision:
        obs = to_device(obs, self.device)
        if env_steps < self.learning_starts:
            action = self.random_action(batch_size(obs))
        else:
            action = self.exploration_action(obs)
        return Decision(env_steps, self.to_env(action), {"obs": obs, "action": action})

    def observe(
        self, decision: Decision, reward: Tensor, terminated: Tensor, truncated: Tensor, next_obs: Tensor
    ) -> None:
        self.buffer.add(**decision.record, reward=reward, terminated=terminated, next_obs=next_obs)
        if self.noise is not None:
            self.noise.restart((terminated | truncated).to(self.device))
        if decision.env_steps + self.num_envs >= max(self.learning_starts, self.cfg.batch_size):
            self.updates_owed += self.cfg.utd * self.num_envs

    def set_progress(self, fraction: float) -> None:
        if self.cfg.anneal_lr:  # the actor and critic only: alpha keeps its rate, so the entropy target holds
            anneal_lr(self.optimizers, {"actor": self.cfg.actor_lr, "critic": self.cfg.critic_lr}, fraction)

    def ready(self) -> bool:
        return self.updates_owed >= 1 and len(self.buffer) >= self.cfg.batch_size

    def act(self, obs: Obs, deterministic: bool = False) -> Tensor:
        with torch.no_grad():
            return self.to_env(self.policy_action(to_device(obs, self.device), deterministic))

    def deployable(self) -> DeployedActor:
        # Every off-policy agent keeps its policy in ``self.actor``; its weights are the module's, so torch.export
        # sees them as parameters while policy_action reads them.
        return DeployedActor(self.actor, lambda obs: self.policy_action(obs, True), self.low, self.high)

    # ------------------------------------------------------------------------------------------ learning
    @abstractmethod
    def next_value(self, next_obs: Tensor) -> Tensor:
        """The value of the next states ``[B]`` that the critic's target bootstraps from, from the target networks
        (called without gradient)."""

    def critic_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """One gradient step of every Q critic towards the Bellman target r + gamma * (1 - terminated) * V(s'),
        with V(s') from :meth:`next_value`; returns the critic's metrics as 0-d tensors."""
        with torch.no_grad():
            next_value = self.next_value(batch["next_obs"])
            target = td_targets(batch["reward"], next_value, batch["terminated"], self.cfg.gamma)  # [B]
        loss, q_mean = critic_loss(self.critic, batch["obs"], batch["action"], target)
        clip_and_step(self.optimizers["critic"], loss, self.critic_params, self.cfg.max_grad_norm)
        return {"critic_loss": loss.detach(), "q_mean": q_mean}

    @abstractmethod
    def gradient_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """One update of every network from one sampled batch (the critic's by :meth:`critic_step`, then the
        algorithm's own); returns metrics as 0-d tensors."""

    def update(self) -> dict[str, float]:
        steps = int(self.updates_owed)
        self.updates_owed -= steps
        totals: dict[str, list[Tensor]] = {}
        for _ in range(steps):
            for key, value in self.gradient_step(self.buffer.sample(self.cfg.batch_size)).items():
                totals.setdefault(key, []).append(value)
            self.gradient_steps += 1
        return {key: torch.stack(values).mean().item() for key, values in totals.items()}

    # ------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["counters"] = {
            "updates_owed": self.updates_owed,
            "gradient_steps": self.gradient_steps,
        }
        if self.cfg.save_buffer:
            state["buffer"] = self.buffer.state_dict()
        if self.noise is not None:
            state["noise"] = self.noise.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any], weights_only: bool = False) -> None:
        super().load_state_dict(state, weights_only)
        if weights_only:
            return
        counters = state.get("counters", {})
        self.updates_owed = float(counters.get("updates_owed", 0.0))
        self.gradient_steps = int(counters.get("gradient_steps", 0))
        if "buffer" in state:
            self.buffer.load_state_dict(state["buffer"])
        if self.noise is not None and "noise" in state:
            self.noise.load_state_dict(state["noise"])
