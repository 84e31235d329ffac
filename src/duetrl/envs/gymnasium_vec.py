"""Gymnasium's sync/async vector envs behind the :class:`BatchEnv` interface.

Observations of any supported space come out in their storage form (:func:`duetrl.encoders.to_tensor`: uint8
images, dicts of tensors), checked against their declared box every step (NaN or out of bounds: an
:class:`~duetrl.encoders.ObservationError` naming the key)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv
from torch import Tensor

from duetrl.encoders import check_space, check_values, to_tensor
from duetrl.envs.base import BatchEnv, env_actions


class GymnasiumBatchEnv(BatchEnv):
    """Wraps a Gymnasium vector env in same-step autoreset mode and converts to and from torch."""

    backend = "gymnasium"

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
        try:
            check_space(self.single_observation_space)
        except BaseException:
            self.vec.close()
            raise
        self._returns = np.zeros(num_envs, dtype=np.float64)
        self._lengths = np.zeros(num_envs, dtype=np.int64)

    def _tensor(self, array: np.ndarray) -> Tensor:
        return torch.as_tensor(np.asarray(array, dtype=np.float32), device=self.device)

    def _obs(self, obs: Any) -> Any:
        return to_tensor(self.single_observation_space, obs, self.device)

    def reset(self, seed: int | None = None) -> tuple[Tensor, dict[str, Any]]:
        obs, info = self.vec.reset(seed=seed)
        check_values(self.single_observation_space, obs)
        self._returns[:] = 0.0
        self._lengths[:] = 0
        return self._obs(obs), info

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Any]]:
        actions_np = env_actions(self.single_action_space, actions.detach().cpu().numpy(), self.num_envs)
        obs, reward, terminated, truncated, info = self.vec.step(actions_np)
        check_values(self.single_observation_space, obs)
        self._returns += reward
        self._lengths += 1
        done = terminated | truncated
        final_obs = obs
        out_info: dict[str, Any] = {}
        if done.any():
            final_obs = _with_finals(obs, info["final_obs"], np.flatnonzero(done))
            check_values(self.single_observation_space, final_obs)
            out_info["episode_return"] = self._returns[done].tolist()
            out_info["episode_length"] = self._lengths[done].tolist()
            self._returns[done] = 0.0
            self._lengths[done] = 0
        obs_tensor = self._obs(obs)
        # Where no episode ended the final observations are the observations: one tensor (as the native envs do),
        # not a second copy of every image.
        out_info["final_obs"] = obs_tensor if final_obs is obs else self._obs(final_obs)
        return (
            obs_tensor,
            self._tensor(reward),
            torch.as_tensor(terminated, device=self.device),
            torch.as_tensor(truncated, device=self.device),
            out_info,
        )

    def get_state(self) -> dict[str, Any] | None:
        if not isinstance(self.vec, SyncVectorEnv):
            return None  # sub-envs live in other processes
        envs = []
        for env in self.vec.envs:
            captured = _capture(env)
            if captured is None:
                return None
            envs.append(captured)
        return {"envs": envs, "returns": self._returns.copy(), "lengths": self._lengths.copy()}

    def set_state(self, state: dict[str, Any]) -> None:
        self.vec.reset()  # Gymnasium refuses to step an env that was never reset; then overwrite what it drew
        for env, saved in zip(self.vec.envs, state["envs"], strict=True):
            _restore(env, saved)
        self._returns[:] = state["returns"]
        self._lengths[:] = state["lengths"]

    def render(self) -> Any:
        return self.vec.render()

    def close(self) -> None:
        self.vec.close()


def _with_finals(obs: Any, finals: np.ndarray, done: np.ndarray) -> Any:
    """The batch ``obs`` with row i replaced by the final observation ``finals[i]`` of each finished env i (per key
    for Dict and Tuple observations)."""
    if isinstance(obs, dict):
        return {
            k: _with_finals(v, np.array([f[k] if f is not None else None for f in finals], dtype=object), done)
            for k, v in obs.items()
        }
    if isinstance(obs, tuple):
        return tuple(
            _with_finals(v, np.array([f[j] if f is not None else None for f in finals], dtype=object), done)
            for j, v in enumerate(obs)
        )
    out = np.array(obs, copy=True)
    for i in done:
        out[i] = finals[i]
    return out


def _time_limit(env: gym.Env) -> gym.wrappers.TimeLimit | None:
    while isinstance(env, gym.Wrapper):
        if isinstance(env, gym.wrappers.TimeLimit):
            return env
        env = env.env
    return None


def _capture(env: gym.Env) -> dict[str, Any] | None:
    """The physical state of one env: ``unwrapped.state`` (classic control) or MuJoCo's qpos/qvel."""
    unwrapped = env.unwrapped
    captured: dict[str, Any] = {"rng": unwrapped.np_random.bit_generator.state}
    if isinstance(getattr(unwrapped, "state", None), np.ndarray):
        captured["state"] = unwrapped.state.copy()
    elif hasattr(unwrapped, "set_state") and hasattr(unwrapped, "data"):
        captured["qpos"], captured["qvel"] = unwrapped.data.qpos.copy(), unwrapped.data.qvel.copy()
    else:
        return None
    if hasattr(unwrapped, "steps_beyond_terminated"):
        captured["steps_beyond_terminated"] = unwrapped.steps_beyond_terminated
    limit = _time_limit(env)
    if limit is not None:
        captured["elapsed"] = limit._elapsed_steps
    return captured


def _restore(env: gym.Env, saved: dict[str, Any]) -> None:
    unwrapped = env.unwrapped
    unwrapped.np_random.bit_generator.state = saved["rng"]
    if "state" in saved:
        unwrapped.state = np.array(saved["state"], copy=True)
    else:
        unwrapped.set_state(saved["qpos"], saved["qvel"])
    if "steps_beyond_terminated" in saved:
        unwrapped.steps_beyond_terminated = saved["steps_beyond_terminated"]
    limit = _time_limit(env)
    if limit is not None and "elapsed" in saved:
        limit._elapsed_steps = saved["elapsed"]
