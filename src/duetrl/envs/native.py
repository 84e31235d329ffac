"""Torch-native batched environments: thousands of copies stepped in a few tensor operations.

Each follows Gymnasium's own dynamics (same observations, rewards, termination and truncation from the same
state under the same actions) and exposes its physical state as ``env.state`` in the layout of Gymnasium's
``unwrapped.state``, one row per copy.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from duetrl.envs.base import BatchEnv


class TorchBatchEnv(BatchEnv):
    """Shared bookkeeping: time limit, same-step autoreset, episode statistics, seeding."""

    max_episode_steps: int = 0

    def __init__(self, num_envs: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.dtype = dtype
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(0)
        self.elapsed = torch.zeros(num_envs, dtype=torch.long, device=self.device)
        self.episode_return = torch.zeros(num_envs, dtype=torch.float64, device=self.device)
        self.state = self._initial_state(num_envs)

    @abstractmethod
    def _initial_state(self, n: int) -> Tensor:
        """[n, state_dim] start states, sampled with ``self.generator``."""

    @abstractmethod
    def _observe(self, state: Tensor) -> Tensor:
        """Observations of the given states."""

    @abstractmethod
    def _dynamics(self, state: Tensor, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(next_state, reward, terminated) for one step of every row."""

    def _uniform(self, n: int, low: Tensor | float, high: Tensor | float, dim: int) -> Tensor:
        u = torch.rand(n, dim, generator=self.generator, device=self.device, dtype=torch.float64)
        return (low + (high - low) * u).to(self.dtype)

    def reset(self, seed: int | None = None) -> tuple[Tensor, dict[str, Any]]:
        if seed is not None:
            self.generator.manual_seed(int(seed))
        self.state = self._initial_state(self.num_envs)
        self.elapsed.zero_()
        self.episode_return.zero_()
        return self._observe(self.state).float(), {}

    def get_state(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "elapsed": self.elapsed,
            "episode_return": self.episode_return,
            "generator": self.generator.get_state(),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self.state = state["state"].to(self.device)
        self.elapsed = state["elapsed"].to(self.device)
        self.episode_return = state["episode_return"].to(self.device)
        self.generator.set_state(state["generator"])

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Any]]:
        actions = actions.to(self.device)
        self.state, reward, terminated = self._dynamics(self.state, actions)
        self.elapsed += 1
        truncated = (self.elapsed >= self.max_episode_steps) & ~terminated
        self.episode_return += reward.double()
        final_obs = self._observe(self.state).float()
        info: dict[str, Any] = {"final_obs": final_obs}
        done = terminated | truncated
        obs = final_obs
        if bool(done.any()):
            idx = done.nonzero().squeeze(-1)
            info["episode_return"] = self.episode_return[idx].tolist()
            info["episode_length"] = self.elapsed[idx].tolist()
            self.state = self.state.clone()
            self.state[idx] = self._initial_state(len(idx))
            self.elapsed[idx] = 0
            self.episode_return[idx] = 0.0
            obs = final_obs.clone()
            obs[idx] = self._observe(self.state[idx]).float()
        return obs, reward.float(), terminated, truncated, info


def angle_normalize(x: Tensor) -> Tensor:
    return ((x + math.pi) % (2 * math.pi)) - math.pi


class Pendulum(TorchBatchEnv):
    """Pendulum-v1 (any g, m, l); state [theta, theta_dot]."""

    max_episode_steps = 200
    max_speed, max_torque, dt = 8.0, 2.0, 0.05

    def __init__(
        self,
        num_envs: int,
        device: Any = "cpu",
        g: float = 10.0,
        m: float = 1.0,
        l: float = 1.0,
        dtype: torch.dtype = torch.float32,
    ):  # noqa: E741
        self.g, self.m, self.l = float(g), float(m), float(l)
        high = np.array([1.0, 1.0, self.max_speed], dtype=np.float32)
        self.single_observation_space = gym.spaces.Box(-high, high, dtype=np.float32)
        self.single_action_space = gym.spaces.Box(-self.max_torque, self.max_torque, shape=(1,), dtype=np.float32)
        super().__init__(num_envs, device, dtype)

    def _initial_state(self, n: int) -> Tensor:
        high = torch.tensor([math.pi, 1.0], dtype=torch.float64, device=self.device)
        return self._uniform(n, -high, high, 2)

    def _observe(self, state: Tensor) -> Tensor:
        th, thdot = state[:, 0], state[:, 1]
        return torch.stack([torch.cos(th), torch.sin(th), thdot], dim=-1)

    def _dynamics(self, state: Tensor, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        th, thdot = state[:, 0], state[:, 1]
        u = actions.reshape(len(state)).to(state.dtype).clamp(-self.max_torque, self.max_torque)
        costs = angle_normalize(th) ** 2 + 0.1 * thdot**2 + 0.001 * u**2
        g, m, l, dt = self.g, self.m, self.l, self.dt  # noqa: E741
        new_thdot = thdot + (3 * g / (2 * l) * torch.sin(th) + 3.0 / (m * l**2) * u) * dt
        new_thdot = new_thdot.clamp(-self.max_speed, self.max_speed)
        new_th = th + new_thdot * dt
        terminated = torch.zeros(len(state), dtype=torch.bool, device=self.device)
        return torch.stack([new_th, new_thdot], dim=-1), -costs, terminated


NATIVE_ENVS: dict[str, type[TorchBatchEnv]] = {"Pendulum-v1": Pendulum}


def make_native(env_id: str, num_envs: int, device: Any = "cpu", **env_kwargs: Any) -> TorchBatchEnv | None:
    """The torch-native version of ``env_id``, or None if there is none."""
    cls = NATIVE_ENVS.get(env_id)
    if cls is None:
        return None
    try:
        return cls(num_envs, device=device, **env_kwargs)
    except TypeError as e:
        from duetrl.errors import UserError

        raise UserError(f"environment {env_id!r} rejected its arguments (--env-kwargs): {e}") from None
