"""TD3 (Fujimoto et al. 2018): a deterministic actor and the chapter's Q critic, off-policy.

Per gradient step, from a replayed batch:
  critic:  Q_i(s, a) -> r + gamma * (1 - terminated) * min_i Q_targ_i(s', clip(mu_targ(s') + clip(noise)))
  actor:   every ``policy_delay`` steps, maximise Q_1(s, mu(s)); then Polyak-average both target networks.
Exploration adds Gaussian, Ornstein-Uhlenbeck or coloured (pink unless ``noise_beta`` says otherwise) noise
to mu(s). DDPG is the case of one critic, no delay and no target smoothing (see ddpg.py).
With memory (``rnn``, see :mod:`duetrl.algos.offpolicy`) the actor and the twin critics each read a recurrent
body's features, and the target actor's copy of the actor's body is unrolled over the same sequences to pick the
smoothed target action a' at each step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import gymnasium as gym
import torch
from torch import Tensor, nn

from duetrl.algos.base import clip_and_step
from duetrl.algos.offpolicy import Inputs, OffPolicyAgent, OffPolicyConfig, averaged_tensors, frozen_copy, polyak
from duetrl.encoders import batch_size
from duetrl.nets import DeterministicActor
from duetrl.noise import OrnsteinUhlenbeckNoise
from duetrl.optim import adam
from duetrl.validate import check_choice, check_range


@dataclass
class TD3Config(OffPolicyConfig):
    """Hyperparameters of ``td3``: the shared off-policy ones plus exploration and target smoothing."""

    PAPER_LEARNING_STARTS: ClassVar[int] = 25_000  # Fujimoto et al. 2018's warm-up (see OffPolicyConfig)
    policy_delay: int = 2
    exploration_noise: float = 0.1  # std of the noise, in units of half the action range
    noise_type: str = "gaussian"  # gaussian | ou | colored (of colour noise_beta)
    ou_theta: float = 0.15
    target_noise: float = 0.2  # target policy smoothing (0 = off)
    target_noise_clip: float = 0.5
    # Where tanh saturates, the critic's gradient through it is tiny and its sign arbitrary; the penalty pulls the
    # pre-tanh output u (a = tanh(u)) back to where the critic steers the action.
    preact_penalty: float = 0.0  # weight of mean(u^2) on the actor's pre-tanh output; 0 = the paper's actor

    def validate(self) -> None:
        super().validate()
        for key in ("exploration_noise", "target_noise", "target_noise_clip", "ou_theta", "preact_penalty"):
            check_range(key, getattr(self, key), 0.0)
        check_choice("noise_type", self.noise_type, ("gaussian", "ou", "colored"))

    def ignored_settings(self) -> dict[str, str]:
        ignored = super().ignored_settings()
        if self.noise_type != "colored":
            why = f"it applies only with noise_type=colored, and noise_type={self.noise_type}"
            ignored["noise_beta"] = ignored["noise_length"] = why
        if self.noise_type != "ou":
            ignored["ou_theta"] = f"it applies only with noise_type=ou, and noise_type={self.noise_type}"
        if self.target_noise == 0:
            ignored["target_noise_clip"] = "it clips the target policy smoothing, and target_noise=0 (none)"
        return ignored


def smoothed_target_action(action: Tensor, noise: Tensor, target_noise: float, noise_clip: float) -> Tensor:
    """Target policy smoothing: a' = clip(mu_targ(s') + clip(target_noise * noise, +-noise_clip), -1, 1), with
    white ``noise`` of the action's shape."""
    smoothing = (noise * target_noise).clamp(-noise_clip, noise_clip)
    return (action + smoothing).clamp(-1.0, 1.0)


def td3_actor_loss(
    actor: DeterministicActor, critic: nn.Module, obs: Tensor, preact_penalty: float, critic_in: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """(the loss to step, the reported actor loss -mean Q_1(s, mu(s))): the first critic's Q at the actor's own
    action, plus ``preact_penalty`` * mean(u^2) on its pre-tanh output u when positive. With memory the critic
    reads ``critic_in`` (its body's features) and the actor ``obs`` (its body's).

    Pure functions of the networks and the batch (this, :func:`smoothed_target_action`): the ordinary update calls
    them, and a population (:mod:`duetrl.population`) calls them under ``torch.func.vmap``."""
    preact = actor.pre_tanh(obs)  # u, the action before the squash: a = tanh(u)
    actor_loss = -critic(obs if critic_in is None else critic_in, torch.tanh(preact))[0].mean()
    loss = actor_loss + preact_penalty * preact.pow(2).mean() if preact_penalty > 0 else actor_loss
    return loss, actor_loss.detach()


class TD3(OffPolicyAgent):
    name = "td3"

    def __init__(self, cfg: TD3Config, obs_space: gym.Space, act_space: gym.Space, num_envs: int, device: torch.device):
        super().__init__(cfg, obs_space, act_space, num_envs, device)
        width, encoder = self.actor_input()
        self.actor = DeterministicActor(
            width, self.act_dim, hidden=cfg.actor_hidden, activation=cfg.activation, encoder=encoder
        ).to(device)
        self.critic = self.make_critic()
        self.actor_target, self.critic_target = frozen_copy(self.actor), frozen_copy(self.critic)
        self.modules = {
            "actor": self.actor,
            "critic": self.critic,
            "actor_target": self.actor_target,
            "critic_target": self.critic_target,
        }
        bodies = self.target_bodies("actor_body", "critic_body")  # with memory: [target, source] of each
        self.next_actor_body = "actor_body_target"  # a' comes from the target actor
        self.remember()
        self.actor_params = list(self.actor.parameters()) + self.body_parameters("actor_body")
        self.critic_params = list(self.critic.parameters()) + self.body_parameters("critic_body")
        self.optimizers = {
            "actor": adam(self.actor_params, cfg.actor_lr),
            "critic": adam(self.critic_params, cfg.critic_lr),
        }
        if cfg.noise_type == "ou":
            self.noise = OrnsteinUhlenbeckNoise(cfg.ou_theta, num_envs, self.act_dim, device, cfg.exploration_noise)
        elif cfg.noise_type == "colored":
            self.noise = self.colored_noise(cfg.noise_beta or 1.0, cfg.exploration_noise)  # pink unless told otherwise
        # The actor's pair moves with the actor (every policy_delay steps), as the critic's: bodies with their nets.
        actor_nets = ([self.actor_target, *bodies[0:1]], [self.actor, *bodies[1:2]])
        critic_nets = ([self.critic_target, *bodies[2:3]], [self.critic, *bodies[3:4]])
        self.polyak_pairs = [
            ([t for m in targets for t in averaged_tensors(m)], [t for m in sources for t in averaged_tensors(m)])
            for targets, sources in (actor_nets, critic_nets)
        ]

    def exploration_action(self, obs: Tensor) -> Tensor:
        if self.noise is not None:  # OU or coloured: per-env noise with memory
            noise = self.noise.sample()
        else:
            noise = torch.randn(batch_size(obs), self.act_dim, device=self.device) * self.cfg.exploration_noise
        return (self.actor(obs) + noise).clamp(-1.0, 1.0)

    def policy_action(self, obs: Tensor, deterministic: bool) -> Tensor:
        """mu(s), or mu(s) plus independent Gaussian noise (the training envs' noise state stays untouched)."""
        action = self.actor(obs)
        if deterministic:
            return action
        return (action + torch.randn_like(action) * self.cfg.exploration_noise).clamp(-1.0, 1.0)

    def next_value(self, next_actor_in: Tensor, next_critic_in: Tensor) -> Tensor:
        """Clipped double-Q: min_i Q_targ_i(s', a') at the target policy's action a', smoothed by clipped noise."""
        cfg = self.cfg
        next_action = self.actor_target(next_actor_in)
        if cfg.target_noise > 0:
            noise = torch.randn_like(next_action)
            next_action = smoothed_target_action(next_action, noise, cfg.target_noise, cfg.target_noise_clip)
        return self.critic_target(next_critic_in, next_action).min(0).values

    def gradient_step(self, batch: dict[str, Tensor], inputs: Inputs | None = None) -> dict[str, Tensor]:
        cfg = self.cfg
        inputs = Inputs.of_observations(batch) if inputs is None else inputs
        metrics = self.critic_step(batch, inputs)
        # Actor (delayed): ascend the first critic's Q at its own action; then move the targets.
        if self.gradient_steps % cfg.policy_delay == 0:
            loss, actor_loss = td3_actor_loss(
                self.actor, self.critic, inputs.actor, cfg.preact_penalty, critic_in=inputs.critic_for_actor
            )
            clip_and_step(self.optimizers["actor"], loss, self.actor_params, cfg.max_grad_norm)
            metrics["actor_loss"] = actor_loss
            for target, source in self.polyak_pairs:
                polyak(target, source, cfg.tau)
        return metrics
