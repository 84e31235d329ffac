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

    backend = "torch"
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
        truncated = self.elapsed >= self.max_episode_steps  # as Gymnasium's TimeLimit: may coincide with terminated
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


class CartPole(TorchBatchEnv):
    """CartPole-v1 (Euler integration); state [x, x_dot, theta, theta_dot]; actions 0 (push left) or 1."""

    max_episode_steps = 500
    gravity, masscart, masspole, length, force_mag, tau = 9.8, 1.0, 0.1, 0.5, 10.0, 0.02
    theta_threshold, x_threshold = 12 * 2 * math.pi / 360, 2.4

    def __init__(self, num_envs: int, device: Any = "cpu", dtype: torch.dtype = torch.float32):
        high = np.array([self.x_threshold * 2, np.inf, self.theta_threshold * 2, np.inf], dtype=np.float32)
        self.single_observation_space = gym.spaces.Box(-high, high, dtype=np.float32)
        self.single_action_space = gym.spaces.Discrete(2)
        super().__init__(num_envs, device, dtype)

    def _initial_state(self, n: int) -> Tensor:
        return self._uniform(n, -0.05, 0.05, 4)

    def _observe(self, state: Tensor) -> Tensor:
        return state

    def _dynamics(self, state: Tensor, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x, x_dot, theta, theta_dot = state.unbind(-1)
        force = torch.where(actions.reshape(len(state)) == 1, self.force_mag, -self.force_mag).to(state.dtype)
        total_mass = self.masscart + self.masspole
        polemass_length = self.masspole * self.length
        cos, sin = torch.cos(theta), torch.sin(theta)
        temp = (force + polemass_length * theta_dot**2 * sin) / total_mass
        theta_acc = (self.gravity * sin - cos * temp) / (
            self.length * (4.0 / 3.0 - self.masspole * cos**2 / total_mass)
        )
        x_acc = temp - polemass_length * theta_acc * cos / total_mass
        x, x_dot = x + self.tau * x_dot, x_dot + self.tau * x_acc
        theta, theta_dot = theta + self.tau * theta_dot, theta_dot + self.tau * theta_acc
        terminated = (x.abs() > self.x_threshold) | (theta.abs() > self.theta_threshold)
        reward = torch.ones(len(state), dtype=state.dtype, device=self.device)  # 1 on the last step too
        return torch.stack([x, x_dot, theta, theta_dot], dim=-1), reward, terminated


class MountainCarContinuous(TorchBatchEnv):
    """MountainCarContinuous-v0; state [position, velocity]."""

    max_episode_steps = 999
    min_position, max_position, max_speed, goal_position, power = -1.2, 0.6, 0.07, 0.45, 0.0015

    def __init__(
        self, num_envs: int, device: Any = "cpu", goal_velocity: float = 0.0, dtype: torch.dtype = torch.float32
    ):
        self.goal_velocity = float(goal_velocity)
        low = np.array([self.min_position, -self.max_speed], dtype=np.float32)
        high = np.array([self.max_position, self.max_speed], dtype=np.float32)
        self.single_observation_space = gym.spaces.Box(low, high, dtype=np.float32)
        self.single_action_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        super().__init__(num_envs, device, dtype)

    def _initial_state(self, n: int) -> Tensor:
        position = self._uniform(n, -0.6, -0.4, 1)
        return torch.cat([position, torch.zeros_like(position)], dim=-1)

    def _observe(self, state: Tensor) -> Tensor:
        return state

    def _dynamics(self, state: Tensor, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        position, velocity = state.unbind(-1)
        action = actions.reshape(len(state)).to(state.dtype)
        force = action.clamp(-1.0, 1.0)
        velocity = (velocity + force * self.power - 0.0025 * torch.cos(3 * position)).clamp(
            -self.max_speed, self.max_speed
        )
        position = (position + velocity).clamp(self.min_position, self.max_position)
        velocity = torch.where((position == self.min_position) & (velocity < 0), 0.0, velocity)
        terminated = (position >= self.goal_position) & (velocity >= self.goal_velocity)
        reward = 100.0 * terminated.to(state.dtype) - 0.1 * action**2  # the unclipped action is penalised
        return torch.stack([position, velocity], dim=-1), reward, terminated


class Acrobot(TorchBatchEnv):
    """Acrobot-v1 ("book" dynamics, RK4 over dt=0.2); state [theta1, theta2, dtheta1, dtheta2]; actions 0, 1, 2
    apply torque -1, 0, +1."""

    max_episode_steps = 500
    dt, m1, m2, l1, lc1, lc2, moi = 0.2, 1.0, 1.0, 1.0, 0.5, 0.5, 1.0
    max_vel_1, max_vel_2 = 4 * math.pi, 9 * math.pi

    def __init__(self, num_envs: int, device: Any = "cpu", dtype: torch.dtype = torch.float32):
        high = np.array([1.0, 1.0, 1.0, 1.0, self.max_vel_1, self.max_vel_2], dtype=np.float32)
        self.single_observation_space = gym.spaces.Box(-high, high, dtype=np.float32)
        self.single_action_space = gym.spaces.Discrete(3)
        super().__init__(num_envs, device, dtype)

    def _initial_state(self, n: int) -> Tensor:
        return self._uniform(n, -0.1, 0.1, 4)

    def _observe(self, state: Tensor) -> Tensor:
        t1, t2, d1, d2 = state.unbind(-1)
        return torch.stack([torch.cos(t1), torch.sin(t1), torch.cos(t2), torch.sin(t2), d1, d2], dim=-1)

    def _derivatives(self, s: Tensor, torque: Tensor) -> Tensor:
        m1, m2, l1, lc1, lc2, moi, g = self.m1, self.m2, self.l1, self.lc1, self.lc2, self.moi, 9.8
        theta1, theta2, dtheta1, dtheta2 = s.unbind(-1)
        d1 = m1 * lc1**2 + m2 * (l1**2 + lc2**2 + 2 * l1 * lc2 * torch.cos(theta2)) + 2 * moi
        d2 = m2 * (lc2**2 + l1 * lc2 * torch.cos(theta2)) + moi
        phi2 = m2 * lc2 * g * torch.cos(theta1 + theta2 - math.pi / 2.0)
        phi1 = (
            -m2 * l1 * lc2 * dtheta2**2 * torch.sin(theta2)
            - 2 * m2 * l1 * lc2 * dtheta2 * dtheta1 * torch.sin(theta2)
            + (m1 * lc1 + m2 * l1) * g * torch.cos(theta1 - math.pi / 2)
            + phi2
        )
        ddtheta2 = (torque + d2 / d1 * phi1 - m2 * l1 * lc2 * dtheta1**2 * torch.sin(theta2) - phi2) / (
            m2 * lc2**2 + moi - d2**2 / d1
        )
        ddtheta1 = -(d2 * ddtheta2 + phi1) / d1
        return torch.stack([dtheta1, dtheta2, ddtheta1, ddtheta2], dim=-1)

    def _dynamics(self, state: Tensor, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        torque = actions.reshape(len(state)).to(state.dtype) - 1.0
        dt = self.dt
        k1 = self._derivatives(state, torque)
        k2 = self._derivatives(state + dt / 2 * k1, torque)
        k3 = self._derivatives(state + dt / 2 * k2, torque)
        k4 = self._derivatives(state + dt * k3, torque)
        ns = state + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
        t1, t2 = _wrap(ns[:, 0], -math.pi, math.pi), _wrap(ns[:, 1], -math.pi, math.pi)
        d1, d2 = ns[:, 2].clamp(-self.max_vel_1, self.max_vel_1), ns[:, 3].clamp(-self.max_vel_2, self.max_vel_2)
        terminated = -torch.cos(t1) - torch.cos(t2 + t1) > 1.0
        reward = torch.where(terminated, 0.0, -1.0).to(state.dtype)
        return torch.stack([t1, t2, d1, d2], dim=-1), reward, terminated


def _wrap(x: Tensor, low: float, high: float) -> Tensor:
    """Gymnasium's wrap(): shift by whole periods into [low, high] (values already inside stay unchanged)."""
    period = high - low
    x = torch.where(x > high, x - period * torch.ceil((x - high) / period), x)
    return torch.where(x < low, x + period * torch.ceil((low - x) / period), x)


def velocity_masked(base: type[TorchBatchEnv], masked_id: str) -> type[TorchBatchEnv]:
    """``base`` whose observations have their velocity entries zeroed, as Gymnasium's ``masked_id`` (envs/masked.py)."""
    from duetrl.envs.masked import VELOCITY_INDICES

    velocities = list(VELOCITY_INDICES[masked_id][1])

    def _observe(self: TorchBatchEnv, state: Tensor) -> Tensor:
        obs = base._observe(self, state).clone()
        obs[:, velocities] = 0.0
        return obs

    name = masked_id.rsplit("-v", 1)[0]
    return type(name, (base,), {"_observe": _observe, "__doc__": f"{masked_id}: {base.__name__}, velocities zeroed."})


NATIVE_ENVS: dict[str, type[TorchBatchEnv]] = {
    "Pendulum-v1": Pendulum,
    "CartPole-v1": CartPole,
    "MountainCarContinuous-v0": MountainCarContinuous,
    "Acrobot-v1": Acrobot,
}
NATIVE_ENVS.update(
    {
        "PendulumNoVel-v1": velocity_masked(Pendulum, "PendulumNoVel-v1"),
        "CartPoleNoVel-v1": velocity_masked(CartPole, "CartPoleNoVel-v1"),
        "MountainCarContinuousNoVel-v0": velocity_masked(MountainCarContinuous, "MountainCarContinuousNoVel-v0"),
    }
)


def make_native(env_id: str, num_envs: int, device: Any = "cpu", **env_kwargs: Any) -> TorchBatchEnv | None:
    """The torch-native version of ``env_id``, or None if there is none."""
    cls = NATIVE_ENVS.get(env_id)
    if cls is None:
        return None
    try:
        return cls(num_envs, device=device, **env_kwargs)
    except TypeError as e:
        from duetrl.errors import UserError

        raise UserError(f"environment {env_id!r} rejected its arguments: {e}") from None
