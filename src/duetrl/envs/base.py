"""The batched-environment interface every backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor


class BatchEnv(ABC):
    """``num_envs`` copies of one environment stepped together, speaking torch tensors on ``device``.

    ``step`` resets finished copies by itself (same step): the returned ``obs`` row of a finished copy is the
    first observation of its next episode, and ``info["final_obs"]`` holds, for every row, the observation
    that the action led to (the final one where an episode ended). ``info["episode_return"]``
    and ``info["episode_length"]`` list the undiscounted return and length of each episode that ended.
    """

    backend: str  # "torch" or "gymnasium": what steps the envs
    num_envs: int
    device: torch.device
    single_observation_space: gym.Space
    single_action_space: gym.Space

    @abstractmethod
    def reset(self, seed: int | None = None) -> tuple[Tensor, dict[str, Any]]:
        """Reset every copy; ``seed`` seeds copy i with ``seed + i``."""

    @abstractmethod
    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Any]]:
        """(obs, reward, terminated, truncated, info), each with a leading ``num_envs`` dimension."""

    def close(self) -> None:
        pass

    def get_state(self) -> dict[str, Any] | None:
        """Everything needed to continue exactly from here (physical state, time limits, RNGs), as tensors and
        plain data; None when the backend cannot capture it (a resumed run then restarts its episodes)."""
        return None

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`get_state` returned."""
        raise ValueError(f"{type(self).__name__} cannot restore a saved state")

    def __enter__(self) -> BatchEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def env_actions(space: gym.Space, actions: np.ndarray, num_envs: int) -> np.ndarray:
    """A batch of actions as a Gymnasium vector env takes them: integer indices for Discrete and MultiDiscrete,
    int8 bits for MultiBinary, the space's own shape and dtype for a Box."""
    if isinstance(space, gym.spaces.Discrete):
        return actions.astype(np.int64).reshape(num_envs)
    if isinstance(space, (gym.spaces.MultiDiscrete, gym.spaces.MultiBinary)):
        return actions.astype(space.dtype).reshape(num_envs, *space.shape)
    if isinstance(space, gym.spaces.Box) and len(space.shape) != 1:
        return actions.astype(space.dtype).reshape(num_envs, *space.shape)
    return actions
