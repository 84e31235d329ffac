"""SAC (Haarnoja et al. 2018): the Q critic of the chapter made off-policy and maximum-entropy.

Per gradient step, from a replayed batch:
  critic:  Q_i(s, a) -> r + gamma * (1 - terminated) * (min_i Q_targ_i(s', a') - alpha * log pi(a'|s')), a' ~ pi
  actor:   minimise alpha * log pi(a|s) - min_i Q_i(s, a), a ~ pi (reparameterised, tanh-squashed)
  alpha:   tuned so that the policy's entropy stays near ``target_entropy`` (default -act_dim), optionally moved
           linearly to ``target_entropy_final`` over the run (a near-deterministic policy at the end, as evaluated)
  targets: Polyak averaging with ``tau``.
With ``utd`` > 1 (several gradient steps per env step), LayerNorm/dropout in the critics keep it stable.
Exploration samples the policy with white noise, or with coloured noise (``noise_beta`` > 0, see noise.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import gymnasium as gym
import torch
from torch import Tensor, nn

from duetrl.algos.base import clip_and_step, linear_schedule
from duetrl.algos.offpolicy import OffPolicyAgent, OffPolicyConfig, averaged_tensors, frozen_copy, polyak
from duetrl.errors import UserError
from duetrl.nets import GaussianActor
from duetrl.optim import adam
from duetrl.policy import PolicyConfig, gaussian_actor, gaussian_log_density, tanh_log_det
from duetrl.validate import check_range


@dataclass
class SACConfig(OffPolicyConfig):
    """Hyperparameters of ``sac``: the shared off-policy ones plus the entropy terms."""

    alpha_lr: float = 3e-4
    alpha: float = 0.2  # initial entropy coefficient
    autotune_alpha: bool = True
    target_entropy: float | None = None  # None = -act_dim
    target_entropy_final: float | None = None  # None = constant; else reached linearly at the end of the run
    log_std_min: float = -5.0
    log_std_max: float = 2.0

    def validate(self) -> None:
        super().validate()
        check_range("alpha_lr", self.alpha_lr, 0.0)
        check_range("alpha", self.alpha, 0.0)
        if self.alpha <= 0:
            raise UserError(f"alpha={self.alpha} must be positive (it is learned in log space)")

    def policy_config(self) -> PolicyConfig:
        """The actor's settings: a state-dependent Gaussian, squashed by tanh into the env's bounds."""
        return PolicyConfig(
            hidden=tuple(self.actor_hidden),
            activation=self.activation,
            state_dependent_std=True,
            log_std_min=self.log_std_min,
            log_std_max=self.log_std_max,
            bound_by="tanh",
        )

    def ignored_settings(self) -> dict[str, str]:
        ignored = super().ignored_settings()
        if not self.autotune_alpha:
            why = "it tunes alpha, and autotune_alpha is false (alpha stays at its initial value)"
            for key in ("alpha_lr", "target_entropy", "target_entropy_final"):
                ignored[key] = why
        if self.noise_beta == 0:
            ignored["noise_length"] = "it applies only to coloured exploration noise, and noise_beta=0 (white)"
        return ignored


def squashed_sample(
    actor: GaussianActor, obs: Tensor, deterministic: bool = False, noise: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """(a = tanh(u), log pi(a|s)) with u = mean + std * noise, the noise white unless given (coloured noise for
    exploration): the Gaussian's log-density of u less the tanh squash's change of variables."""
    mean, log_std = actor(obs)
    if deterministic:
        return torch.tanh(mean), torch.zeros(mean.shape[:-1], device=mean.device)
    noise = torch.randn_like(mean) if noise is None else noise
    u = mean + log_std.exp() * noise
    log_prob = gaussian_log_density(noise, log_std).sum(-1) - tanh_log_det(u).sum(-1)
    return torch.tanh(u), log_prob


class SAC(OffPolicyAgent):
    name = "sac"

    def __init__(self, cfg: SACConfig, obs_space: gym.Space, act_space: gym.Space, num_envs: int, device: torch.device):
        super().__init__(cfg, obs_space, act_space, num_envs, device)
        self.actor = gaussian_actor(self.obs_dim, self.act_dim, cfg.policy_config()).to(device)
        self.critic = self.make_critic()
        self.critic_target = frozen_copy(self.critic)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(cfg.alpha), device=device))
        self.initial_target_entropy = -float(self.act_dim) if cfg.target_entropy is None else cfg.target_entropy
        self.target_entropy = self.initial_target_entropy
        self.modules = {
            "actor": self.actor,
            "critic": self.critic,
            "critic_target": self.critic_target,
            "alpha": nn.ParameterList([self.log_alpha]),
        }
        self.actor_params, self.critic_params = list(self.actor.parameters()), list(self.critic.parameters())
        self.actor_alpha_params = [*self.actor_params, self.log_alpha]  # what the actor step's backward reaches
        self.polyak_pairs = averaged_tensors(self.critic_target), averaged_tensors(self.critic)
        if cfg.noise_beta > 0:
            self.noise = self.colored_noise(cfg.noise_beta)
        self.optimizers = {
            "actor": adam(self.actor.parameters(), cfg.actor_lr),
            "critic": adam(self.critic.parameters(), cfg.critic_lr),
            "alpha": adam([self.log_alpha], cfg.alpha_lr),
        }

    def set_progress(self, fraction: float) -> None:
        super().set_progress(fraction)
        if self.cfg.target_entropy_final is not None:
            self.target_entropy = linear_schedule(self.initial_target_entropy, self.cfg.target_entropy_final, fraction)

    def exploration_action(self, obs: Tensor) -> Tensor:
        return squashed_sample(self.actor, obs, noise=None if self.noise is None else self.noise.sample())[0]

    def policy_action(self, obs: Tensor, deterministic: bool) -> Tensor:
        return squashed_sample(self.actor, obs, deterministic)[0]

    def gradient_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        cfg = self.cfg
        alpha = self.log_alpha.exp().detach()

        # Critic: soft Bellman target from the target critics at a fresh action of the current policy.
        with torch.no_grad():
            next_action, next_log_prob = squashed_sample(self.actor, batch["next_obs"])
            next_q = self.critic_target(batch["next_obs"], next_action).min(0).values - alpha * next_log_prob
            target = batch["reward"] + cfg.gamma * (1 - batch["terminated"]) * next_q
        q = self.critic(batch["obs"], batch["action"])  # [E, B]
        critic_loss = 0.5 * (q - target).pow(2).mean(1).sum()
        clip_and_step(self.optimizers["critic"], critic_loss, self.critic_params, cfg.max_grad_norm)
        metrics = {"critic_loss": critic_loss.detach(), "q_mean": q.detach().mean()}

        if self.gradient_steps % cfg.policy_delay == 0:
            # Actor: maximise the soft Q (of the just-updated critic) of its own reparameterised actions.
            action, log_prob = squashed_sample(self.actor, batch["obs"])
            q_pi = self.critic(batch["obs"], action).min(0).values
            loss = actor_loss = (alpha * log_prob - q_pi).mean()
            optimizers, params = [self.optimizers["actor"]], self.actor_params
            if cfg.autotune_alpha:
                # Alpha: keep the policy's entropy near the target. Its loss touches only log_alpha (and the actor
                # loss uses alpha detached), so one backward pass serves both without changing either update.
                loss = loss - (self.log_alpha * (log_prob.detach() + self.target_entropy)).mean()
                optimizers.append(self.optimizers["alpha"])
                params = self.actor_alpha_params
            for optimizer in optimizers:
                optimizer.zero_grad()
            loss.backward(inputs=params)  # the actor and alpha only: the critic's weights get no gradient
            if cfg.max_grad_norm > 0:
                nn.utils.clip_grad_norm_(self.actor_params, cfg.max_grad_norm)
            for optimizer in optimizers:
                optimizer.step()
            metrics.update(actor_loss=actor_loss.detach(), entropy=-log_prob.detach().mean(), alpha=alpha)

        polyak(*self.polyak_pairs, cfg.tau)
        return metrics
