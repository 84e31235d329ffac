"""Rollout storage (on-policy) and a replay buffer (off-policy).

Observations of any space are stored as :mod:`duetrl.encoders` says (uint8 images, dicts of tensors for Dict
observations) and stay so until the encoder: a 84x84x4 frame stack takes 28 KB per step, not 113 KB in float32.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from duetrl.encoders import Obs, batch_size, has_images, leaves, select, stack, tree_map, zeros


class Rollout:
    """Steps of a batch of envs appended one at a time, stacked to ``[T, N, ...]`` tensors (or trees of them, for
    Dict observations) for the update."""

    def __init__(self) -> None:
        self.steps: list[dict[str, Obs]] = []

    def add(self, **tensors: Obs) -> None:
        self.steps.append(tensors)

    def __len__(self) -> int:
        return len(self.steps)

    def stack(self) -> dict[str, Obs]:
        return {key: stack([s[key] for s in self.steps]) for key in self.steps[0]}

    def clear(self) -> None:
        self.steps.clear()


def _write(store: Tensor, rows: Tensor, value: Tensor) -> None:
    store[rows] = value.to(store.device, store.dtype).reshape(len(rows), *store.shape[1:])


class ReplayBuffer:
    """A ring buffer of transitions in preallocated tensors, sampled uniformly.

    ``obs_space`` is an observation space (or, for vectors, their width). Where observations hold an image, each
    observation is stored once (``compact``): the next observation of the transition in row r is the observation
    stored one add later for the same env, in row ``(r + num_envs) % capacity``. That is exact only where it is
    the same observation, so the buffer checks it, value for value, when the next add comes: where it differs (an
    episode ended, so the next row holds the reset observation; or the envs were reset in between, as on resume)
    the true next observation is kept aside (``finals``, one per such row), and the newest rows, whose successor is
    not written yet, read theirs from ``pending``. SB3's ``optimize_memory_usage`` instead loses the final
    observation of a truncated episode. Vector observations keep a ``next_obs`` row of their own."""

    def __init__(self, capacity: int, obs_space: gym.Space | int, act_dim: int, device: torch.device):
        if isinstance(obs_space, int):
            obs_space = gym.spaces.Box(-np.inf, np.inf, (obs_space,), np.float32)
        self.capacity, self.device = capacity, device
        self.compact = has_images(obs_space)
        self.data: dict[str, Obs] = {
            "obs": zeros(obs_space, (capacity,), device),
            "action": torch.zeros(capacity, act_dim, device=device),
            "reward": torch.zeros(capacity, device=device),
            "next_obs": zeros(obs_space, (capacity,), device),
            "terminated": torch.zeros(capacity, device=device),
        }
        if self.compact:
            del self.data["next_obs"]
            self.has_final = torch.zeros(capacity, dtype=torch.bool, device=device)
            self.finals: dict[int, Obs] = {}  # row -> its next observation, where the successor row does not hold it
            self.pending: Obs | None = None  # the next observations of the last add's rows: [num_envs, ...]
            self.last_position = 0  # the first row of the last add
            self.num_envs = 0
        self.position = 0  # next row to write
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, **batch: Obs) -> None:
        """Append a batch of transitions ``[N, ...]`` (one per env)."""
        n = batch_size(batch["obs"])
        rows = (self.position + torch.arange(n, device=self.device)) % self.capacity
        if self.compact:
            self._settle(batch["obs"], n)
            next_obs = batch.pop("next_obs")
            overwritten = rows[self.has_final[rows]].tolist()
            for row in overwritten:
                del self.finals[row]
            self.has_final[rows] = False
        for key, value in batch.items():
            tree_map(lambda store, v: _write(store, rows, v), self.data[key], value)
        if self.compact:
            self.pending = tree_map(lambda v, store: v.to(self.device, store.dtype).clone(), next_obs, self.data["obs"])
            self.last_position, self.num_envs = self.position, n
        self.position = (self.position + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def _settle(self, obs: Obs, n: int) -> None:
        """Before rows are added for observations ``obs``: keep aside the next observation of each of the last
        add's rows whose successor (this add's row for the same env) will not hold it."""
        if self.pending is None:
            return
        if n != self.num_envs:
            raise ValueError(f"a compact replay buffer takes batches of one size ({self.num_envs}), not {n}")
        same = torch.ones(n, dtype=torch.bool, device=self.device)
        for stored, new in zip(leaves(self.pending), leaves(obs), strict=True):
            same &= (stored == new.to(self.device, stored.dtype)).reshape(n, -1).all(1)
        for env in (~same).nonzero().flatten().tolist():
            row = (self.last_position + env) % self.capacity
            self.finals[row] = tree_map(torch.clone, select(self.pending, env))
            self.has_final[row] = True

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> dict[str, Obs]:
        index = torch.randint(0, self.size, (batch_size,), device=self.device, generator=generator)
        batch = {key: select(value, index) for key, value in self.data.items()}
        if self.compact:
            batch["next_obs"] = self._next_obs(index)
        return batch

    def _next_obs(self, index: Tensor) -> Obs:
        """The next observations of rows ``index``: the successor rows', the pending ones for the newest rows, the
        kept-aside ones where an episode ended."""
        next_obs = select(self.data["obs"], (index + self.num_envs) % self.capacity)
        env = (index - self.last_position) % self.capacity
        newest = env < self.num_envs
        if newest.any():
            picked = newest.nonzero().flatten()
            tree_map(lambda out, p: out.__setitem__(picked, p[env[picked]]), next_obs, self.pending)
        for i in self.has_final[index].nonzero().flatten().tolist():
            tree_map(lambda out, final, i=i: out.__setitem__(i, final), next_obs, self.finals[int(index[i])])
        return next_obs

    def bytes_per_transition(self) -> float:
        """Memory of the preallocated rows per transition (the kept-aside final observations aside)."""
        total = sum(t.numel() * t.element_size() for value in self.data.values() for t in leaves(value))
        return total / self.capacity

    def state_dict(self) -> dict:
        """The filled part only, so a checkpoint holds what was collected, not the whole capacity."""
        state = {
            "position": self.position,
            "size": self.size,
            **{k: tree_map(lambda v: v[: self.size], v) for k, v in self.data.items()},
        }
        if self.compact:
            state["compact"] = {
                "has_final": self.has_final[: self.size],
                "finals": dict(self.finals),
                "pending": self.pending,
                "last_position": self.last_position,
                "num_envs": self.num_envs,
            }
        return state

    def load_state_dict(self, state: dict) -> None:
        self.position, self.size = int(state["position"]), int(state["size"])
        for key, value in self.data.items():
            tree_map(lambda store, saved: store[: self.size].copy_(saved.to(store.device)), value, state[key])
        if self.compact and "compact" in state:
            extra = state["compact"]
            self.has_final[: self.size] = extra["has_final"].to(self.device)
            self.finals = {int(k): tree_map(lambda v: v.to(self.device), v) for k, v in extra["finals"].items()}
            pending = extra["pending"]
            self.pending = None if pending is None else tree_map(lambda v: v.to(self.device), pending)
            self.last_position, self.num_envs = int(extra["last_position"]), int(extra["num_envs"])
