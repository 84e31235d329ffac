"""Tiny environments with the spaces that flat-Box tests never see: Dict observations (with or without an image),
MultiDiscrete, MultiBinary and matrix-shaped Box actions. Fast to step, easy to learn, importable by name
(``spaces_envs:GoalReach``) from the tests directory."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class GoalReach(gym.Env):
    """Move a point to a goal in the unit square: ``{"position": [2], "goal": [2]}`` (and with ``image=True`` a
    ``"view"``, an 8x8 uint8 picture of the goal), 2-d moves of at most 0.2, reward ``-distance``, 25 steps a
    episode (truncated, never terminated: the final observation matters)."""

    def __init__(self, image: bool = False, length: int = 25):
        parts = {"position": spaces.Box(-1, 1, (2,), np.float32), "goal": spaces.Box(-1, 1, (2,), np.float32)}
        if image:
            parts["view"] = spaces.Box(0, 255, (8, 8, 1), np.uint8)
        self.observation_space = spaces.Dict(parts)
        self.action_space = spaces.Box(-1, 1, (2,), np.float32)
        self.image, self.length = image, length

    def _obs(self) -> dict:
        obs = {"position": self.position.copy(), "goal": self.goal.copy()}
        if self.image:
            view = np.zeros((8, 8, 1), np.uint8)
            row, col = ((self.goal + 1) / 2 * 7.999).astype(int)
            view[row, col, 0] = 255
            obs["view"] = view
        return obs

    @property
    def state(self) -> np.ndarray:
        """Everything that moves, as one array: what duetrl's checkpoints capture for an exact resume."""
        return np.concatenate([self.position, self.goal, [self.t]]).astype(np.float64)

    @state.setter
    def state(self, value: np.ndarray) -> None:
        self.position, self.goal = value[:2].astype(np.float32), value[2:4].astype(np.float32)
        self.t = int(value[4])

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.position = self.np_random.uniform(-1, 1, 2).astype(np.float32)
        self.goal = self.np_random.uniform(-1, 1, 2).astype(np.float32)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.position = np.clip(self.position + 0.2 * np.clip(action, -1, 1), -1, 1).astype(np.float32)
        self.t += 1
        reward = -float(np.linalg.norm(self.position - self.goal))
        return self._obs(), reward, False, self.t >= self.length, {}


class PickBits(gym.Env):
    """Copy a random target into the action: ``MultiDiscrete([3, 2, 4])`` (or ``MultiBinary(4)`` with
    ``binary=True``); the observation is the target, one-hot (MultiDiscrete) or as bits; reward = entries right."""

    def __init__(self, binary: bool = False):
        self.binary = binary
        self.action_space = spaces.MultiBinary(4) if binary else spaces.MultiDiscrete([3, 2, 4])
        width = 4 if binary else 9
        self.observation_space = spaces.Box(0, 1, (width,), np.float32)

    def _obs(self) -> np.ndarray:
        if self.binary:
            return self.target.astype(np.float32)
        return np.concatenate([np.eye(n)[k] for n, k in zip([3, 2, 4], self.target, strict=True)]).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.target, self.t = self.action_space.sample(), 0
        self.action_space.seed(int(self.np_random.integers(2**31)))
        return self._obs(), {}

    def step(self, action):
        reward = float((np.asarray(action) == self.target).sum())
        self.target, self.t = self.action_space.sample(), self.t + 1
        return self._obs(), reward, False, self.t >= 10, {}


class MatrixAction(gym.Env):
    """A ``Box(-1, 1, (2, 2))`` action; reward = minus its squared distance to a fixed matrix."""

    observation_space = spaces.Box(-1, 1, (3,), np.float32)
    action_space = spaces.Box(-1, 1, (2, 2), np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(3, np.float32), {}

    def step(self, action):
        assert np.shape(action) == (2, 2), np.shape(action)
        self.t += 1
        target = np.array([[0.5, -0.5], [0.0, 0.25]])
        return np.zeros(3, np.float32), -float(((action - target) ** 2).sum()), False, self.t >= 10, {}


class Pixels(gym.Env):
    """A 10x10x3 uint8 image (HWC) with one lit pixel; the action says whether it is in the left half."""

    observation_space = spaces.Box(0, 255, (10, 10, 3), np.uint8)
    action_space = spaces.Discrete(2)

    def _obs(self) -> np.ndarray:
        image = np.zeros((10, 10, 3), np.uint8)
        image[self.row, self.col] = 255
        return image

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.row, self.col, self.t = *self.np_random.integers(0, 10, 2), 0
        return self._obs(), {}

    def step(self, action):
        reward = float(int(action) == int(self.col < 5))
        self.row, self.col = self.np_random.integers(0, 10, 2)
        self.t += 1
        return self._obs(), reward, False, self.t >= 20, {}


class NaNAfter(gym.Env):
    """A Box observation that holds NaN from step ``at`` on (the bad-input test)."""

    observation_space = spaces.Box(-1, 1, (2,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self, at: int = 5, outside: bool = False):
        self.at, self.outside = at, outside

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.t += 1
        obs = np.zeros(2, np.float32)
        if self.t >= self.at:
            obs[1] = 3.0 if self.outside else np.nan
        return obs, 0.0, False, self.t >= 100, {}


class TextObs(gym.Env):
    """An observation space duetrl does not take."""

    observation_space = spaces.Text(5)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        return "a", {}

    def step(self, action):
        return "a", 0.0, False, True, {}


class NestedReach(GoalReach):
    """GoalReach observed as a Tuple with a Dict inside, ``(position, {"goal": goal, "steps": Discrete(26)})``: the
    export test's nested key paths (``obs.0``, ``obs.1.goal``) and an index leaf."""

    def __init__(self, length: int = 25):
        super().__init__(length=length)
        self.observation_space = spaces.Tuple(
            (
                spaces.Box(-1, 1, (2,), np.float32),
                spaces.Dict({"goal": spaces.Box(-1, 1, (2,), np.float32), "steps": spaces.Discrete(length + 1)}),
            )
        )

    def _obs(self) -> tuple:
        return (self.position.copy(), {"goal": self.goal.copy(), "steps": self.t})
