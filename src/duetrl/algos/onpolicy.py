"""What every on-policy actor-critic shares: a policy acting on normalised observations, and a rollout of
``[time, env]`` steps that the algorithm's own ``update`` turns into gradients."""

from __future__ import annotations

from typing import Any, Protocol

import gymnasium as gym
import torch
from torch import Tensor, nn

from duetrl.algos.base import Agent, Decision, Deployable
from duetrl.buffers import Rollout
from duetrl.encoders import EncoderConfig, Obs, make_encoder, make_obs_norm, to_device
from duetrl.errors import UserError
from duetrl.nets import ACTIVATIONS
from duetrl.normalize import RewardScaler
from duetrl.policy import Policy, PolicyConfig, action_dim
from duetrl.validate import check_choice, check_widths


class PolicyKeys(Protocol):
    """The public keys that set the policy of an on-policy config (``ac``, ``a2c``, ``ppo``)."""

    hidden: list[int]
    activation: str
    state_dependent_std: bool
    log_std_init: float
    log_std_min: float
    log_std_max: float
    squash: str
    ortho_init: bool

    def encoder_config(self) -> EncoderConfig: ...


def policy_config_of(cfg: PolicyKeys, *, clip_log_prob: bool = False) -> PolicyConfig:
    """The :class:`PolicyConfig` an on-policy config's keys describe (what its ``policy_config()`` returns)."""
    return PolicyConfig(
        hidden=tuple(cfg.hidden),
        activation=cfg.activation,
        state_dependent_std=cfg.state_dependent_std,
        log_std_init=cfg.log_std_init,
        log_std_min=cfg.log_std_min,
        log_std_max=cfg.log_std_max,
        bound_by=cfg.squash,
        clip_log_prob=clip_log_prob,
        ortho_init=cfg.ortho_init,
        encoder=cfg.encoder_config(),
    )


def validate_policy(policy: PolicyConfig) -> None:
    """Checks of an on-policy config's policy settings, in the words of its public keys."""
    check_widths("hidden", list(policy.hidden))
    check_choice("activation", policy.activation, tuple(ACTIVATIONS))
    check_choice("squash", policy.bound_by, ("clip", "tanh"))
    if policy.log_std_min > policy.log_std_max:
        raise UserError(f"log_std_min={policy.log_std_min} must not exceed log_std_max={policy.log_std_max}")


def ignored_policy_settings(policy: PolicyConfig) -> dict[str, str]:
    """The policy keys that an on-policy config's other policy settings make ignored: key -> why (see
    :func:`duetrl.config.ignored_settings_warnings`)."""
    ignored = {}
    if policy.state_dependent_std:
        ignored["log_std_init"] = "it sets a state-independent std only, and state_dependent_std is true"
    if policy.bound_by != "clip":
        ignored["clip_log_prob"] = f"it corrects the log-prob of clipped actions, and squash={policy.bound_by}"
    return ignored


class DeployedPolicy(Deployable):
    """The on-policy agents' deterministic policy for export: raw observation -> (normaliser, when the run
    normalised observations) -> the policy's mode in env units (argmax, or the mean clipped or squashed)."""

    def __init__(self, policy: Policy, obs_norm: nn.Module | None):
        super().__init__()
        self.policy, self.obs_norm = policy, obs_norm

    def forward(self, obs: Tensor) -> Tensor:
        return self.policy.mode(obs if self.obs_norm is None else self.obs_norm(obs))


class OnPolicyAgent(Agent):
    """Collects ``obs, raw, action, log_prob, reward, terminated, truncated, next_obs`` per step.

    Config fields used: ``policy_config()`` (the policy's settings, passed whole), ``gamma``, ``normalize_obs``,
    ``normalize_reward``.
    """

    def __init__(self, cfg: Any, obs_space: gym.Space, act_space: gym.Space, num_envs: int, device: torch.device):
        super().__init__(cfg, obs_space, act_space, num_envs, device)
        self.act_dim = action_dim(act_space)
        self.policy = Policy(obs_space, act_space, cfg.policy_config()).to(device)
        # Running statistics of the float boxes (per key for Dict observations; none for images or indices).
        norm = make_obs_norm(obs_space)
        self.obs_norm: nn.Module = (nn.Identity() if norm is None else norm).to(device)
        self.normalizes_obs = bool(cfg.normalize_obs) and norm is not None
        self.reward_scaler = RewardScaler(num_envs, cfg.gamma).to(device)
        self.modules = {"policy": self.policy, "obs_norm": self.obs_norm, "reward_scaler": self.reward_scaler}
        self.rollout = Rollout()

    def make_encoder(self) -> nn.Module:
        """A fresh encoder of the observations, for a critic (every network owns its own); its ``features`` is
        the width of what it returns."""
        return make_encoder(self.obs_space, self.cfg.encoder_config())

    def _normalize(self, obs: Obs, update: bool = False) -> Obs:
        if not self.normalizes_obs:
            return obs
        if update:
            self.obs_norm.update(obs)
        return self.obs_norm(obs)

    @torch.no_grad()
    def explore(self, obs: Tensor, env_steps: int) -> Decision:
        obs = self._normalize(to_device(obs, self.device), update=True)
        raw, action, log_prob = self.policy.sample(obs)
        return Decision(env_steps, action, {"obs": obs, "raw": raw, "action": action, "log_prob": log_prob})

    def observe(
        self, decision: Decision, reward: Tensor, terminated: Tensor, truncated: Tensor, next_obs: Tensor
    ) -> None:
        reward, terminated, truncated = (
            reward.to(self.device),
            terminated.to(self.device),
            truncated.to(self.device),
        )
        if self.cfg.normalize_reward:
            reward = self.reward_scaler(reward, terminated | truncated)
        self.rollout.add(
            **decision.record,
            reward=reward,
            terminated=terminated,
            truncated=truncated,
            next_obs=self._normalize(to_device(next_obs, self.device)),
        )

    def act(self, obs: Tensor, deterministic: bool = False) -> Tensor:
        return self.policy.act(self._normalize(to_device(obs, self.device)), deterministic)

    def deployable(self) -> DeployedPolicy:
        return DeployedPolicy(self.policy, self.obs_norm if self.normalizes_obs else None)
