"""Gymnasium twins of the torch-native envs: the same constructor arguments, so a run trained on a native env
with ``--env-kwargs`` is evaluated, rendered and recorded on the same physics.

``env_factory`` builds an id listed in :data:`GYMNASIUM_TWINS` from Gymnasium's own registration (time limit
and checks) with the twin as its entry point; with default arguments a twin is Gymnasium's env unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.classic_control.pendulum import PendulumEnv, angle_normalize
from gymnasium.envs.registration import EnvSpec


class Pendulum(PendulumEnv):
    """Gymnasium's Pendulum-v1 that also takes the mass ``m`` and length ``l`` (its ``step`` reads both)."""

    def __init__(self, render_mode: str | None = None, g: float = 10.0, m: float = 1.0, l: float = 1.0):  # noqa: E741
        super().__init__(render_mode=render_mode, g=g)
        self.m, self.l = m, l


GYMNASIUM_TWINS: dict[str, type[gym.Env]] = {"Pendulum-v1": Pendulum}


def twin_spec(env_id: str) -> EnvSpec | None:
    """Gymnasium's registration of ``env_id`` with duetrl's twin as entry point, or None if it has no twin."""
    twin = GYMNASIUM_TWINS.get(env_id)
    return None if twin is None else dataclasses.replace(gym.spec(env_id), entry_point=twin)


class PendulumVector(gym.vector.VectorEnv):
    """``num_envs`` copies of :class:`Pendulum` (Gymnasium's Pendulum-v1 with its 200-step limit) stepped as numpy
    arrays: what evaluation runs instead of a ``SyncVectorEnv`` of Gymnasium's own envs.

    Each copy draws its starts from its own generator, seeded as a single env's (``reset(seed=[...])`` as a
    ``SyncVectorEnv``), and its step repeats ``PendulumEnv.step``'s operations in the same order on the same
    dtypes (a float64 state, the float32 action), so the observations and rewards are Gymnasium's, episode for
    episode (``tests/test_native_envs.py`` checks them against Gymnasium's env). Autoreset is ``SAME_STEP``, as
    evaluation asks of its vector envs. Why hand-written: a 16-member population's evaluation, 16 x 100 episodes of
    200 steps, took 7.4 s in a ``SyncVectorEnv`` of Gymnasium's envs and takes 0.26 s here, 0.035 of the time
    (``benchmarks/eval_envs.py``, best of 3 in one run, load 5)."""

    metadata = {"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(self, num_envs: int, g: float = 10.0, m: float = 1.0, l: float = 1.0):  # noqa: E741
        one = Pendulum(g=g, m=m, l=l)
        self.spec = gym.spec("Pendulum-v1")
        self.num_envs, self.g, self.m, self.l, self.dt = num_envs, one.g, one.m, one.l, one.dt
        self.max_speed, self.max_torque = one.max_speed, one.max_torque
        self.max_episode_steps = int(self.spec.max_episode_steps)
        self.single_observation_space, self.single_action_space = one.observation_space, one.action_space
        self.observation_space = gym.vector.utils.batch_space(one.observation_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(one.action_space, num_envs)
        self.generators = [np.random.default_rng() for _ in range(num_envs)]
        self.state = np.zeros((num_envs, 2))
        self.steps = np.zeros(num_envs, dtype=np.int64)

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict | None = None) -> tuple:
        """Every copy to a new episode; ``seed`` as ``SyncVectorEnv.reset`` takes it (an int seeds copy i with
        seed + i). Reset bounds (``options``) are not supported."""
        if options:
            raise ValueError("PendulumVector.reset takes no options")
        seeds = [seed + i for i in range(self.num_envs)] if isinstance(seed, int) else seed or [None] * self.num_envs
        if len(seeds) != self.num_envs:
            raise ValueError(f"{len(seeds)} seeds for {self.num_envs} envs")
        for i, s in enumerate(seeds):
            if s is not None:
                self.generators[i], _ = gym.utils.seeding.np_random(s)
        self._start(np.ones(self.num_envs, dtype=bool))
        return self._obs(), {}

    def _start(self, which: np.ndarray) -> None:
        """New episodes in the copies ``which``: a start uniform in [-pi, pi] x [-1, 1], as ``PendulumEnv.reset``."""
        high = np.array([np.pi, 1.0])
        for i in np.flatnonzero(which):
            self.state[i] = self.generators[i].uniform(low=-high, high=high)
        self.steps[which] = 0

    def _obs(self) -> np.ndarray:
        th, thdot = self.state[:, 0], self.state[:, 1]
        return np.stack([np.cos(th), np.sin(th), thdot], axis=1).astype(np.float32)

    def step(self, actions: np.ndarray) -> tuple:
        th, thdot = self.state[:, 0], self.state[:, 1]
        u = np.clip(np.asarray(actions), -self.max_torque, self.max_torque)[:, 0]
        costs = _squared(angle_normalize(th)) + 0.1 * _squared(thdot) + 0.001 * _squared(u)
        newthdot = thdot + (3 * self.g / (2 * self.l) * np.sin(th) + 3.0 / (self.m * self.l**2) * u) * self.dt
        newthdot = np.clip(newthdot, -self.max_speed, self.max_speed)
        self.state = np.stack([th + newthdot * self.dt, newthdot], axis=1)
        self.steps += 1
        obs, terminated = self._obs(), np.zeros(self.num_envs, dtype=bool)
        truncated = self.steps >= self.max_episode_steps
        info: dict = {}
        if truncated.any():
            final = np.full(self.num_envs, None, dtype=object)
            for i in np.flatnonzero(truncated):
                final[i] = obs[i]
            info = {"final_obs": final, "_final_obs": truncated.copy()}
            self._start(truncated)
            obs = np.where(truncated[:, None], self._obs(), obs)
        return obs, -costs, terminated, truncated, info


def _squared(x: np.ndarray) -> np.ndarray:
    """``x**2`` element by element as numpy squares one scalar (``pow``): an array's ``x**2`` is ``x * x``, which
    differs from ``pow`` in the last bit for ~0.1% of values on this machine, and ``PendulumEnv.step`` squares
    scalars. About 0.1 ms per 1,000 elements."""
    return np.array([v**2 for v in x], dtype=x.dtype)


def vector_twin(env_id: Any, num_envs: int, env_kwargs: dict[str, Any]) -> gym.vector.VectorEnv | None:
    """A numpy vector env that steps ``num_envs`` copies of ``env_id`` exactly as Gymnasium's env does, or None
    if ``env_id`` has none (only Pendulum-v1 has one)."""
    if env_id != "Pendulum-v1" or set(env_kwargs) - {"g", "m", "l"}:
        return None
    spec = gym.spec(env_id)  # a user may have registered Pendulum-v1 again, with other arguments or wrappers
    if spec.kwargs or spec.additional_wrappers or spec.max_episode_steps != 200:
        return None
    return PendulumVector(num_envs, **env_kwargs)
