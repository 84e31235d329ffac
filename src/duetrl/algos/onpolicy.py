"""What every on-policy actor-critic shares: a policy acting on normalised observations, and a rollout of
``[time, env]`` steps that the algorithm's own ``update`` turns into gradients."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import torch
from torch import Tensor

from duetrl.algos.base import Agent, Decision
from duetrl.buffers import Rollout
from duetrl.errors import UserError
from duetrl.nets import ACTIVATIONS
from duetrl.normalize import RewardScaler, RunningNorm
from duetrl.policy import Policy, space_dims
from duetrl.validate import check_choice, check_widths


def validate_policy_settings(cfg: Any) -> None:
    """Checks of the policy settings every on-policy config shares (see :class:`OnPolicyAgent`)."""
    check_widths("hidden", cfg.hidden)
    check_choice("activation", cfg.activation, tuple(ACTIVATIONS))
    check_choice("squash", cfg.squash, ("clip", "tanh"))
    if cfg.log_std_min > cfg.log_std_max:
        raise UserError(f"log_std_min={cfg.log_std_min} must not exceed log_std_max={cfg.log_std_max}")


class OnPolicyAgent(Agent):
    """Collects ``obs, raw, action, log_prob, reward, terminated, truncated, next_obs`` per step.

    Config fields used: the policy's (``hidden``, ``activation``, ``state_dependent_std``, ``log_std_*``,
    ``squash``, ``ortho_init``, optional ``clip_log_prob``), ``gamma``, ``normalize_obs``, ``normalize_reward``.
    """

    def __init__(self, cfg: Any, obs_space: gym.Space, act_space: gym.Space, num_envs: int, device: torch.device):
        super().__init__(cfg, obs_space, act_space, num_envs, device)
        self.obs_dim, self.act_dim, _ = space_dims(obs_space, act_space)
        self.policy = Policy(
            obs_space,
            act_space,
            cfg.hidden,
            cfg.activation,
            cfg.state_dependent_std,
            cfg.log_std_init,
            cfg.log_std_min,
            cfg.log_std_max,
            cfg.squash,
            getattr(cfg, "clip_log_prob", False),
            cfg.ortho_init,
        ).to(device)
        self.obs_norm = RunningNorm((self.obs_dim,)).to(device)
        self.reward_scaler = RewardScaler(num_envs, cfg.gamma).to(device)
        self.modules = {"policy": self.policy, "obs_norm": self.obs_norm, "reward_scaler": self.reward_scaler}
        self.rollout = Rollout()

    def _normalize(self, obs: Tensor, update: bool = False) -> Tensor:
        if not self.cfg.normalize_obs:
            return obs
        if update:
            self.obs_norm.update(obs)
        return self.obs_norm(obs)

    @torch.no_grad()
    def explore(self, obs: Tensor, env_steps: int) -> Decision:
        obs = self._normalize(obs.to(self.device), update=True)
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
            next_obs=self._normalize(next_obs.to(self.device)),
        )

    def act(self, obs: Tensor, deterministic: bool = False) -> Tensor:
        return self.policy.act(self._normalize(obs.to(self.device)), deterministic)
