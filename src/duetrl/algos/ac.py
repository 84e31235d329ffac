"""The chapter's actor-critic, with its variants as options of one algorithm.

Actor: a Gaussian (or categorical) policy. Critic: V(s) or Q(s, a), trained on squared error to a target.
The actor follows the policy gradient ``-log pi(a|s) * advantage`` where the advantage is the target minus
V(s) (or Q(s, a) itself with a Q critic, as the chapter writes it). Targets:

- ``mc``: the Monte-Carlo return of the episode (the chapter: update per episode, critic as baseline);
- ``td``: r + gamma * V(s') (advantage = the one-step TD error);
- ``nstep``: the n-step return;
- ``gae``: the GAE(lambda) return (advantage = GAE).

``update_every=0`` learns once every env has finished an episode; ``update_every=n`` every n steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from duetrl.algos.base import Decision, anneal_lr, clip_and_step
from duetrl.algos.onpolicy import (
    OnPolicyAgent,
    ignored_policy_settings,
    policy_config_of,
    validate_memory,
    validate_policy,
)
from duetrl.config import RunConfig
from duetrl.encoders import EncoderKeys, Obs
from duetrl.errors import UserError
from duetrl.nets import QCritic, ValueCritic, encode, encoder_or_none, orthogonal_init
from duetrl.optim import adam
from duetrl.policy import Policy, PolicyConfig
from duetrl.returns import discounted_returns, gae, normalize, nstep_targets, td_errors
from duetrl.validate import check_choice, check_range

ADVANTAGES = ("mc", "td", "nstep", "gae")


@dataclass
class ACConfig(EncoderKeys):
    """Hyperparameters of ``ac``. The defaults are the chapter's listing."""

    hidden: list[int] = field(default_factory=lambda: [128, 128])
    activation: str = "relu"
    actor_lr: float = 3e-4
    critic_lr: float = 1e-3
    optimizer: str = "adam"  # adam | rmsprop
    anneal_lr: bool = False  # decay both learning rates linearly to 0 over the run
    gamma: float = 0.99
    critic: str = "v"  # v = V(s), q = Q(s, a)
    advantage: str = "mc"  # mc | td | nstep | gae
    nstep: int = 5
    gae_lambda: float = 0.95
    update_every: int = 0  # 0 = once per episode, else every n steps of each env
    normalize_advantage: bool = True
    max_grad_norm: float = 1.0  # 0 = no clipping
    ent_coef: float = 0.0
    bootstrap_truncation: bool = True  # False = treat a time limit as a terminal state (the listing)
    ortho_init: bool = False  # the listing defines an orthogonal init but never applies it
    state_dependent_std: bool = True
    log_std_init: float = 0.0
    log_std_min: float = -20.0
    log_std_max: float = 2.0
    squash: str = "clip"  # clip | tanh
    clip_log_prob: bool = False  # the listing's log-prob ignores the clipping of the action
    normalize_obs: bool = False
    normalize_reward: bool = False  # divide rewards by the running std of the discounted return
    rnn: str = "none"  # memory: none, lstm or gru (a recurrent core for the actor and one for the critic)
    rnn_hidden: int = 64  # width of each recurrent core (rnn=lstm or gru)
    rnn_input_scale: float = 1.0  # the cores read their input times this: larger steps on small input changes

    def validate(self) -> None:
        check_range("gamma", self.gamma, 0.0, 1.0)
        check_range("gae_lambda", self.gae_lambda, 0.0, 1.0)
        check_range("actor_lr", self.actor_lr, 0.0)
        check_range("critic_lr", self.critic_lr, 0.0)
        check_range("nstep", self.nstep, 1)
        check_range("update_every", self.update_every, 0)
        check_range("max_grad_norm", self.max_grad_norm, 0.0)
        check_range("ent_coef", self.ent_coef, 0.0)
        check_choice("critic", self.critic, ("v", "q"))
        check_choice("advantage", self.advantage, ADVANTAGES)
        check_choice("optimizer", self.optimizer, ("adam", "rmsprop"))
        self.validate_encoder()
        validate_policy(self.policy_config())
        validate_memory(self)
        if self.rnn != "none" and self.critic == "q":
            raise UserError(
                f"rnn={self.rnn} works with critic=v only: a recurrent Q critic is not implemented for ac; "
                "use critic=v, or rnn=none"
            )

    def policy_config(self) -> PolicyConfig:
        """The policy's settings, passed whole to :class:`~duetrl.policy.Policy`."""
        return policy_config_of(self, clip_log_prob=self.clip_log_prob)

    def ignored_settings(self) -> dict[str, str]:
        """Keys that the other settings make ignored: key -> why (see config.ignored_settings_warnings)."""
        ignored = ignored_policy_settings(self.policy_config())
        if self.advantage != "gae":
            ignored["gae_lambda"] = f"it applies only with advantage=gae, and advantage={self.advantage}"
        if self.advantage != "nstep":
            ignored["nstep"] = f"it applies only with advantage=nstep, and advantage={self.advantage}"
        if self.rnn == "none":
            for key in ("rnn_hidden", "rnn_input_scale"):
                ignored[key] = "it applies only with a recurrent core, and rnn=none"
        return ignored

    def budget_warnings(self, run: RunConfig) -> list[str]:
        """No update within the run (see :func:`duetrl.config.budget_warnings`)."""
        if self.update_every <= -(-run.steps // run.num_envs):  # the loop's rounds, each stepping every env
            return []
        return [
            f"{run.algo} updates every update_every={self.update_every} steps of each of num_envs={run.num_envs} "
            f"envs ({self.update_every * run.num_envs} env steps), more than steps={run.steps}: no update ever "
            "happens; raise steps or lower update_every"
        ]


def make_optimizer(name: str, params: Any, lr: float) -> torch.optim.Optimizer:
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=0.99, eps=1e-5)
    return adam(params, lr=lr)


class ActorCritic(OnPolicyAgent):
    """The chapter's actor-critic on a batch of envs."""

    def __init__(self, cfg: ACConfig, obs_space: gym.Space, act_space: gym.Space, num_envs: int, device: torch.device):
        super().__init__(cfg, obs_space, act_space, num_envs, device)
        encoder = self.make_encoder()
        self.critic_encoder: nn.Module | None = None
        if cfg.critic == "q":
            self.critic: nn.Module = QCritic(
                encoder.features, self.act_dim, hidden=cfg.hidden, activation=cfg.activation, encoder=encoder
            ).to(device)
        else:
            # The critic owns its encoder; with rnn its core sits between them, so the encoder stands apart.
            self.critic_encoder = encoder_or_none(encoder) if self.recurrent else None
            width = self.critic_core.out_dim if self.recurrent else encoder.features
            self.critic = ValueCritic(
                width, hidden=cfg.hidden, activation=cfg.activation, encoder=None if self.recurrent else encoder
            ).to(device)
        if cfg.ortho_init:
            orthogonal_init(self.critic, last_gain=1.0)
            if self.critic_encoder is not None:
                orthogonal_init(self.critic_encoder)
        self.modules["critic"] = self.critic
        self.actor_params = list(self.policy.parameters()) + list(self.actor_core.parameters())
        self.critic_params = list(self.critic.parameters()) + list(self.critic_core.parameters())
        if self.critic_encoder is not None:
            self.modules["critic_encoder"] = self.critic_encoder
            self.critic_params += list(self.critic_encoder.parameters())
        self.optimizers = {
            "actor": make_optimizer(cfg.optimizer, self.actor_params, cfg.actor_lr),
            "critic": make_optimizer(cfg.optimizer, self.critic_params, cfg.critic_lr),
        }
        self._episode_ended = torch.zeros(num_envs, dtype=torch.bool, device=device)

    def critic_encode(self, obs: Obs, actor_encoded: Tensor | None = None) -> Tensor:
        """The critic's own encoder's features (what its core reads with rnn)."""
        return encode(self.critic_encoder, obs)

    def set_progress(self, fraction: float) -> None:
        if self.cfg.anneal_lr:
            anneal_lr(self.optimizers, {"actor": self.cfg.actor_lr, "critic": self.cfg.critic_lr}, fraction)

    def observe(
        self, decision: Decision, reward: Tensor, terminated: Tensor, truncated: Tensor, next_obs: Tensor
    ) -> None:
        super().observe(decision, reward, terminated, truncated, next_obs)
        self._episode_ended |= (terminated | truncated).to(self.device)

    def ready(self) -> bool:
        if self.cfg.update_every > 0:
            return len(self.rollout) >= self.cfg.update_every
        return bool(self._episode_ended.all())

    # ------------------------------------------------------------------------------------------ learning
    def update(self) -> dict[str, float]:
        cfg = self.cfg
        batch = self.rollout.stack()  # each [T, N, ...]
        self.rollout.clear()
        self._episode_ended.zero_()
        raw, reward = batch["raw"], batch["reward"]
        terminated, truncated = batch["terminated"], batch["truncated"]
        if not cfg.bootstrap_truncation:
            terminated = terminated | truncated

        # Critic: estimates for each step (with gradient) and for each next state (as a fixed bootstrap).
        values, next_values = self._critic_values(batch)  # [T, N]
        targets = self._targets(reward, values.detach(), next_values, terminated, truncated)  # [T, N]
        actor_loss, critic_loss, entropy, dist = ac_loss(
            self.policy, values, targets, batch["obs"], raw, cfg, self.actor_features(batch)
        )

        actor_grad = clip_and_step(self.optimizers["actor"], actor_loss, self.actor_params, cfg.max_grad_norm)
        critic_grad = clip_and_step(self.optimizers["critic"], critic_loss, self.critic_params, cfg.max_grad_norm)
        metrics = {"actor_loss": actor_loss.item(), "critic_loss": critic_loss.item(), "entropy": entropy.item()}
        if actor_grad is not None and critic_grad is not None:
            metrics.update(actor_grad_norm=actor_grad.item(), critic_grad_norm=critic_grad.item())
        if not self.policy.discrete:
            metrics["policy_std"] = dist.stddev.mean().item()
        return metrics

    def _critic_values(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(V(s_t) or Q(s_t, a_t) with gradient, the same for the next state without)."""
        if self.cfg.critic == "q":
            values = self.critic(batch["obs"], self.policy.one_hot(batch["action"]))
            with torch.no_grad():
                _, next_action, _ = self.policy.sample(batch["next_obs"])
                next_values = self.critic(batch["next_obs"], self.policy.one_hot(next_action))
            return values, next_values
        features, next_features = self.critic_features(batch, with_next=True)  # the observations themselves without rnn
        # (the critic then encodes them itself; with rnn, its encoder and core ran in critic_features)
        values = self.critic(features)
        with torch.no_grad():
            next_values = self.critic(next_features.detach())
        return values, next_values

    def _targets(
        self, reward: Tensor, values: Tensor, next_values: Tensor, terminated: Tensor, truncated: Tensor
    ) -> Tensor:
        return ac_targets(self.cfg, reward, values, next_values, terminated, truncated)


def ac_targets(
    cfg: Any, reward: Tensor, values: Tensor, next_values: Tensor, terminated: Tensor, truncated: Tensor
) -> Tensor:
    """The critic's targets ``[T, N]`` of ``cfg.advantage``: the Monte-Carlo, one-step TD, n-step or GAE(lambda)
    return, from the (detached) values of each step and of each next state (``cfg``: anything with ACConfig's
    ``advantage``, ``gamma``, ``nstep``, ``gae_lambda``)."""
    if cfg.advantage == "mc":
        return discounted_returns(reward, next_values, terminated, truncated, cfg.gamma)
    if cfg.advantage == "td":
        return td_errors(reward, values, next_values, terminated, cfg.gamma) + values
    if cfg.advantage == "nstep":
        return nstep_targets(reward, next_values, terminated, truncated, cfg.gamma, cfg.nstep)
    return gae(reward, values, next_values, terminated, truncated, cfg.gamma, cfg.gae_lambda) + values


def ac_loss(
    policy: Policy,
    values: Tensor,
    targets: Tensor,
    obs: Obs,
    raw: Tensor,
    cfg: Any,
    actor_features: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Distribution]:
    """(actor loss, critic loss, mean entropy, the policy's distribution) of one batch ``[T, N]``: the critic's
    squared error to the targets, and the policy gradient -log pi(a|s) * advantage - ent_coef * entropy, the
    advantage being the target minus V(s) (or Q(s, a) itself with ``cfg.critic == "q"``), normalised if asked.

    A pure function of the policy, the critic's ``values`` (with gradient) and the batch: the ordinary update calls
    it, and a population (:mod:`duetrl.population`) calls it under ``torch.func.vmap`` (``cfg``: anything with
    ACConfig's ``critic``, ``normalize_advantage``, ``ent_coef``; ``ent_coef`` may be a 0-d tensor there)."""
    critic_loss = (values - targets).pow(2).mean()
    # Actor: policy gradient weighted by the advantage.
    advantages = values.detach() if cfg.critic == "q" else targets - values.detach()
    if cfg.normalize_advantage:
        advantages = normalize(advantages)
    log_prob, entropy, dist = policy.evaluate_actions(obs, raw, actor_features)  # [T, N]
    entropy = entropy.mean()
    actor_loss = -(log_prob * advantages).mean() - cfg.ent_coef * entropy
    return actor_loss, critic_loss, entropy, dist
