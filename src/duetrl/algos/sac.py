"""SAC (Haarnoja et al. 2018): the Q critic of the chapter made off-policy and maximum-entropy.

Per gradient step, from a replayed batch:
  critic:  Q_i(s, a) -> r + gamma * (1 - terminated) * (min_i Q_targ_i(s', a') - alpha * log pi(a'|s')), a' ~ pi
  actor:   minimise alpha * log pi(a|s) - min_i Q_i(s, a), a ~ pi (reparameterised, tanh-squashed)
  alpha:   tuned so that the policy's entropy stays near ``target_entropy`` (default -act_dim), optionally moved
           linearly to ``target_entropy_final`` over the run (a near-deterministic policy at the end, as evaluated)
  targets: Polyak averaging with ``tau``.
With ``utd`` > 1 (several gradient steps per env step), LayerNorm/dropout in the critics keep it stable.
Exploration samples the policy with white noise, or with coloured noise (``noise_beta`` > 0, see noise.py).

On a ``Discrete`` action space ``--algo sac`` is discrete SAC (Christodoulou 2019; :class:`DiscreteSAC`): a
categorical actor, critics Q(s, .) with one output per action, and every expectation over the actions taken exactly
(the soft target, the actor loss, the entropy), so nothing is sampled or reparameterised in the update. Its entropy
target is ``target_entropy_scale * log|A|`` (0.89, CleanRL's, by default). With few actions that target can sit above
what a good policy keeps, and alpha then keeps growing (CartPole at UTD 1: 0.2 to 41 in 24k steps): its preset fixes
alpha instead (``autotune_alpha=false``; its comments give the figures).

The losses are pure functions (:func:`soft_next_value`, :func:`sac_actor_loss`, :func:`temperature_loss`), so
that the memoryless update, the population's and the recurrent one (``rnn``, see :mod:`duetrl.algos.offpolicy`:
the actor and the twin critics each read a recurrent body's features) run the same math on different inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import gymnasium as gym
import torch
from torch import Tensor, nn

from duetrl.algos.base import Deployable, clip_and_step, linear_schedule
from duetrl.algos.offpolicy import Inputs, OffPolicyAgent, OffPolicyConfig, averaged_tensors, frozen_copy, polyak
from duetrl.errors import UserError
from duetrl.nets import CategoricalActor, EnsembleQValues, GaussianActor
from duetrl.optim import adam
from duetrl.policy import PolicyConfig, action_kind, gaussian_actor, gaussian_log_density, tanh_log_det
from duetrl.validate import check_range


@dataclass
class SACConfig(OffPolicyConfig):
    """Hyperparameters of ``sac``: the shared off-policy ones plus the entropy terms."""

    alpha_lr: float = 3e-4
    alpha: float = 0.2  # initial entropy coefficient
    autotune_alpha: bool = True
    target_entropy: float | None = None  # None = -act_dim (Box), target_entropy_scale * log|A| (Discrete)
    target_entropy_scale: float = 0.89  # Discrete: the entropy target as a fraction of the uniform policy's
    target_entropy_final: float | None = None  # None = constant; else reached linearly at the end of the run
    log_std_min: float = -5.0
    log_std_max: float = 2.0

    def validate(self) -> None:
        super().validate()
        check_range("alpha_lr", self.alpha_lr, 0.0)
        check_range("alpha", self.alpha, 0.0)
        check_range("target_entropy_scale", self.target_entropy_scale, 0.0, 1.0)
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
            encoder=self.encoder_config(),
        )

    def ignored_settings(self) -> dict[str, str]:
        ignored = super().ignored_settings()
        if not self.autotune_alpha:
            why = "it tunes alpha, and autotune_alpha is false (alpha stays at its initial value)"
            for key in ("alpha_lr", "target_entropy", "target_entropy_scale", "target_entropy_final"):
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


def soft_next_value(
    actor: GaussianActor,
    critic_target: nn.Module,
    next_obs: Tensor,
    alpha: Tensor,
    noise: Tensor | None = None,
    next_critic_in: Tensor | None = None,
) -> Tensor:
    """The soft value min_i Q_targ_i(s', a') - alpha * log pi(a'|s') ``[B]`` at a fresh action a' ~ pi(s') (drawn
    with ``noise``, white unless given): what SAC's critic target bootstraps from. With memory the target critic
    reads its own body's features ``next_critic_in`` and the actor ``next_obs``, its body's (both s' without)."""
    next_action, next_log_prob = squashed_sample(actor, next_obs, noise=noise)
    next_critic_in = next_obs if next_critic_in is None else next_critic_in
    return critic_target(next_critic_in, next_action).min(0).values - alpha * next_log_prob


def sac_actor_loss(
    actor: GaussianActor,
    critic: nn.Module,
    alpha: Tensor,
    obs: Tensor,
    noise: Tensor | None = None,
    critic_in: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The actor's loss mean(alpha * log pi(a|s) - min_i Q_i(s, a)) at its reparameterised actions a ~ pi(s), and
    log pi(a|s) ``[B]`` (for the temperature). Only the actor gets a gradient from the optimiser stepped with it.
    With memory the critic reads ``critic_in`` (its body's features) and the actor ``obs`` (its body's).

    Pure functions of the networks and the batch (this, :func:`soft_next_value`, :func:`temperature_loss`): the
    ordinary update calls them, and a population (:mod:`duetrl.population`) calls them under ``torch.func.vmap``."""
    action, log_prob = squashed_sample(actor, obs, noise=noise)
    q_pi = critic(obs if critic_in is None else critic_in, action).min(0).values
    return (alpha * log_prob - q_pi).mean(), log_prob


def temperature_loss(log_alpha: Tensor, log_prob: Tensor, target_entropy: Tensor | float) -> Tensor:
    """-mean(log_alpha * (log pi + target_entropy)): its gradient raises alpha when the policy's entropy (-log pi)
    falls below the target, and lowers it above."""
    return -(log_alpha * (log_prob.detach() + target_entropy)).mean()


class SAC(OffPolicyAgent):
    name = "sac"

    def __init__(self, cfg: SACConfig, obs_space: gym.Space, act_space: gym.Space, num_envs: int, device: torch.device):
        super().__init__(cfg, obs_space, act_space, num_envs, device)
        width, encoder = self.actor_input()
        self.actor = gaussian_actor(width, self.act_dim, cfg.policy_config(), encoder).to(device)
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
        bodies = self.target_bodies("critic_body")  # with memory: [critic_body_target, critic_body]
        self.remember()
        self.actor_params = list(self.actor.parameters()) + self.body_parameters("actor_body")
        self.critic_params = list(self.critic.parameters()) + self.body_parameters("critic_body")
        self.polyak_pairs = (
            averaged_tensors(self.critic_target) + [t for b in bodies[0::2] for t in averaged_tensors(b)],
            averaged_tensors(self.critic) + [t for b in bodies[1::2] for t in averaged_tensors(b)],
        )
        if cfg.noise_beta > 0:
            self.noise = self.colored_noise(cfg.noise_beta)
        self.optimizers = {
            "actor": adam(self.actor_params, cfg.actor_lr),
            "critic": adam(self.critic_params, cfg.critic_lr),
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

    def next_value(self, next_actor_in: Tensor, next_critic_in: Tensor) -> Tensor:
        """The soft value min_i Q_targ_i(s', a') - alpha * log pi(a'|s') at a fresh action a' ~ pi(s')."""
        alpha = self.log_alpha.exp()
        return soft_next_value(self.actor, self.critic_target, next_actor_in, alpha, next_critic_in=next_critic_in)

    def gradient_step(self, batch: dict[str, Tensor], inputs: Inputs | None = None) -> dict[str, Tensor]:
        inputs = Inputs.of_observations(batch) if inputs is None else inputs
        metrics = self.critic_step(batch, inputs)
        if self.gradient_steps % self.cfg.policy_delay == 0:
            metrics.update(self.actor_step(inputs.actor, inputs.critic_for_actor))
        polyak(*self.polyak_pairs, self.cfg.tau)
        return metrics

    def actor_step(self, obs: Tensor, critic_in: Tensor | None = None) -> dict[str, Tensor]:
        """The actor, then the temperature: one plain step each, from one sample of the policy. ``obs`` is what
        the actor reads and ``critic_in`` what the critic reads (both the observations without memory)."""
        cfg = self.cfg
        alpha = self.log_alpha.exp().detach()
        # Actor: maximise the soft Q (of the just-updated critic) of its own reparameterised actions. Only the
        # actor's weights get a gradient, not the critic's.
        actor_loss, log_prob = sac_actor_loss(self.actor, self.critic, alpha, obs, critic_in=critic_in)
        clip_and_step(self.optimizers["actor"], actor_loss, self.actor_params, cfg.max_grad_norm)
        if cfg.autotune_alpha:
            # Alpha: raise it when the policy's entropy (-log_prob) falls below the target, lower it above.
            alpha_loss = temperature_loss(self.log_alpha, log_prob, self.target_entropy)
            clip_and_step(self.optimizers["alpha"], alpha_loss, [self.log_alpha], 0.0)
        return {"actor_loss": actor_loss.detach(), "entropy": -log_prob.detach().mean(), "alpha": alpha}


# ---------------------------------------------------------------------------------------------- discrete SAC
# Christodoulou 2019, "Soft Actor-Critic for Discrete Action Settings" (as CleanRL's sac_atari.py): with a finite
# action set the policy's expectations are sums over the actions, so the actor and the soft target take them exactly
# (no sampled action, no reparameterisation), and the critics output Q(s, .) for every action at once.
#   critic:  Q_i(s, a) -> r + gamma * (1 - terminated) * sum_a' pi(a'|s') (min_i Q_targ_i(s', a') - alpha log pi(a'|s'))
#   actor:   minimise sum_a pi(a|s) (alpha log pi(a|s) - min_i Q_i(s, a))
#   alpha:   tuned so that the policy's entropy H(pi(.|s)) = -sum_a pi log pi stays near
#            ``target_entropy_scale * log|A|`` (or ``target_entropy`` when given).


def discrete_soft_value(q: Tensor, log_probs: Tensor, alpha: Tensor | float) -> Tensor:
    """V(s) = sum_a pi(a|s) (Q(s, a) - alpha log pi(a|s)) ``[B]``, from Q ``[B, A]`` and log pi ``[B, A]``: the
    soft value as an exact expectation over the actions (the soft target's bootstrap, and minus the actor's loss)."""
    return (log_probs.exp() * (q - alpha * log_probs)).sum(-1)


def discrete_actor_loss(q: Tensor, log_probs: Tensor, alpha: Tensor | float) -> Tensor:
    """mean_s sum_a pi(a|s) (alpha log pi(a|s) - Q(s, a)): minus the mean soft value. Pass Q detached, so that only
    the actor learns from it (its gradient reaches the logits through pi and log pi)."""
    return -discrete_soft_value(q, log_probs, alpha).mean()


def categorical_entropy(log_probs: Tensor) -> Tensor:
    """H(pi(.|s)) = -sum_a pi(a|s) log pi(a|s) ``[B]``, exact, from log-probabilities ``[B, A]``."""
    return -(log_probs.exp() * log_probs).sum(-1)


def discrete_temperature_loss(log_alpha: Tensor, entropy: Tensor, target_entropy: float) -> Tensor:
    """log alpha * (H - target), averaged over states: its gradient raises alpha when the policy's entropy ``[B]``
    (detached) falls below the target and lowers it above, as SAC's continuous temperature loss with the exact
    entropy in place of the sampled -log pi(a|s)."""
    return (log_alpha * (entropy.detach() - target_entropy)).mean()


class DeployedCategorical(Deployable):
    """Discrete SAC's deterministic policy for export: raw observation -> the most probable action (+ the space's
    start)."""

    def __init__(self, actor: CategoricalActor, start: int):
        super().__init__()
        self.actor, self.start = actor, start

    def forward(self, obs: Tensor) -> Tensor:
        return self.actor(obs).argmax(-1) + self.start


class DiscreteSAC(SAC):
    """SAC on a ``Discrete`` action space (``--algo sac`` picks it there): a categorical actor and critics with
    one output per action; the replay buffer holds action indices ``[B, 1]``. Every setting of SACConfig applies
    except ``log_std_min``/``log_std_max`` (no Gaussian) and ``noise_beta`` (the policy is sampled as it is);
    ``target_entropy=None`` means ``target_entropy_scale * log|A|``. The critic step, the actor's delay, the
    Polyak averaging, the entropy schedule and the state are SAC's."""

    def __init__(self, cfg: SACConfig, obs_space: gym.Space, act_space: gym.Space, num_envs: int, device: torch.device):
        # SAC's networks are Gaussian: this builds its own, in the same order (actor, critic, target, temperature).
        if cfg.rnn != "none":
            raise UserError(
                f"rnn={cfg.rnn} works with sac on a continuous (Box) action space; discrete SAC has no recurrent "
                "core yet: use rnn=none, or ppo, a2c or ac with rnn"
            )
        OffPolicyAgent.__init__(self, cfg, obs_space, act_space, num_envs, device)
        encoder = self.make_encoder()
        self.actor = CategoricalActor(
            encoder.features, self.act_dim, hidden=cfg.actor_hidden, activation=cfg.activation, encoder=encoder
        ).to(device)
        self.critic = self.make_critic(EnsembleQValues)
        self.critic_target = frozen_copy(self.critic)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(cfg.alpha), device=device))
        default_target = cfg.target_entropy_scale * math.log(self.act_dim)
        self.initial_target_entropy = default_target if cfg.target_entropy is None else cfg.target_entropy
        self.target_entropy = self.initial_target_entropy
        self.modules = {
            "actor": self.actor,
            "critic": self.critic,
            "critic_target": self.critic_target,
            "alpha": nn.ParameterList([self.log_alpha]),
        }
        self.actor_params, self.critic_params = list(self.actor.parameters()), list(self.critic.parameters())
        self.polyak_pairs = averaged_tensors(self.critic_target), averaged_tensors(self.critic)
        self.optimizers = {
            "actor": adam(self.actor.parameters(), cfg.actor_lr),
            "critic": adam(self.critic.parameters(), cfg.critic_lr),
            "alpha": adam([self.log_alpha], cfg.alpha_lr),
        }

    def init_actions(self, act_space: gym.Space) -> int:
        if action_kind(act_space) != "categorical":
            raise UserError(
                f"--algo {self.name} takes a Box or Discrete action space, not {act_space} (ppo, a2c and ac take "
                "MultiDiscrete and MultiBinary)"
            )
        if act_space.n < 2:
            raise UserError(f"--algo {self.name} needs at least 2 discrete actions, not {act_space}")
        self.act_dim, self.act_shape, self.start = int(act_space.n), (), int(act_space.start)
        return 1  # the buffer keeps the action's index

    def random_action(self, n: int) -> Tensor:
        return torch.randint(self.act_dim, (n, 1), device=self.device).float()

    def to_env(self, action: Tensor) -> Tensor:
        """Action indices ``[B, 1]`` as the env takes them: ``[B]`` integers from the space's start."""
        return action.long().squeeze(-1) + self.start

    def log_probs(self, obs: Tensor) -> Tensor:
        """log pi(. | s) ``[B, A]``."""
        return torch.log_softmax(self.actor(obs), -1)

    def exploration_action(self, obs: Tensor) -> Tensor:
        return torch.multinomial(self.log_probs(obs).exp(), 1).float()

    def policy_action(self, obs: Tensor, deterministic: bool) -> Tensor:
        if deterministic:
            return self.actor(obs).argmax(-1, keepdim=True).float()
        return self.exploration_action(obs)

    def next_value(self, next_obs: Tensor, next_critic_in: Tensor | None = None) -> Tensor:
        """The soft value of s' as the exact expectation over a' of min_i Q_targ_i(s', a') - alpha log pi(a'|s').
        (Without memory, so the target critic reads ``next_obs`` too: ``next_critic_in`` is the same.)"""
        q_next = self.critic_target(next_obs).min(0).values  # [B, A]
        return discrete_soft_value(q_next, self.log_probs(next_obs), self.log_alpha.exp())

    def actor_step(self, obs: Tensor, critic_in: Tensor | None = None) -> dict[str, Tensor]:
        """The actor, then the temperature, from the exact expectations over the actions at ``obs``."""
        cfg = self.cfg
        alpha = self.log_alpha.exp().detach()
        log_probs = self.log_probs(obs)  # [B, A]
        with torch.no_grad():
            q = self.critic(obs).min(0).values  # [B, A], of the just-updated critic
        actor_loss = discrete_actor_loss(q, log_probs, alpha)
        clip_and_step(self.optimizers["actor"], actor_loss, self.actor_params, cfg.max_grad_norm)
        entropy = categorical_entropy(log_probs.detach())
        if cfg.autotune_alpha:
            alpha_loss = discrete_temperature_loss(self.log_alpha, entropy, self.target_entropy)
            clip_and_step(self.optimizers["alpha"], alpha_loss, [self.log_alpha], 0.0)
        return {"actor_loss": actor_loss.detach(), "entropy": entropy.mean(), "alpha": alpha}

    def deployable(self) -> DeployedCategorical:
        return DeployedCategorical(self.actor, self.start)
