"""Gymnasium's sync/async vector envs behind the :class:`BatchEnv` interface."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv
from torch import Tensor

from duetrl.envs.base import BatchEnv


class GymnasiumBatchEnv(BatchEnv):
    """Wraps a Gymnasium vector env in same-step autoreset mode and converts to and from torch."""

    def __init__(
        self,
        env_fn: Callable[[], gym.Env],
        num_envs: int,
        vector: str = "sync",
        device: torch.device | str = "cpu",
    ):
        cls = AsyncVectorEnv if vector == "async" and num_envs > 1 else SyncVectorEnv
        self.vec = cls([env_fn] * num_envs, autoreset_mode=AutoresetMode.SAME_STEP)
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.single_observation_space = self.vec.single_observation_space
        self.single_action_space = self.vec.single_action_space
        self._discrete = isinstance(self.single_action_space, gym.spaces.Discrete)
        self._returns = np.zeros(num_envs, dtype=np.float64)
        self._lengths = np.zeros(num_envs, dtype=np.int64)

    def _tensor(self, array: np.ndarray) -> Tensor:
        return torch.as_tensor(np.asarray(array, dtype=np.float32), device=self.device)

    def reset(self, seed: int | None = None) -> tuple[Tensor, dict[str, Any]]:
        obs, info = self.vec.reset(seed=seed)
        self._returns[:] = 0.0
        self._lengths[:] = 0
        return self._tensor(obs), info

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Any]]:
        actions_np = actions.detach().cpu().numpy()
        if self._discrete:
            actions_np = actions_np.astype(np.int64).reshape(self.num_envs)
        obs, reward, terminated, truncated, info = self.vec.step(actions_np)
        self._returns += reward
        self._lengths += 1
        done = terminated | truncated
        final_obs = obs
        out_info: dict[str, Any] = {}
        if done.any():
            final_obs = np.array(obs, copy=True)
            for i in np.flatnonzero(done):
                final_obs[i] = info["final_obs"][i]
            out_info["episode_return"] = self._returns[done].tolist()
            out_info["episode_length"] = self._lengths[done].tolist()
            self._returns[done] = 0.0
            self._lengths[done] = 0
        out_info["final_obs"] = self._tensor(final_obs)
        return (
            self._tensor(obs),
            self._tensor(reward),
            torch.as_tensor(terminated, device=self.device),
            torch.as_tensor(truncated, device=self.device),
            out_info,
        )

    def render(self) -> Any:
        return self.vec.render()

    def close(self) -> None:
        self.vec.close()
