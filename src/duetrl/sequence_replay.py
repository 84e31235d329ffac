"""A replay buffer of sequences for off-policy agents with memory (the R2D2 recipe, Kapturowski et al. 2019).

Each env's steps are kept in time order (``[slots, num_envs, ...]`` ring storage), with what the update needs to
replay the recurrent cores: every step's observation, action, reward, terminated, truncated, next observation,
whether it starts an episode, and each core's state *before* the step (what acting computed, zeros at an episode
start). A sample is ``B`` windows of ``burn_in + seq_len`` consecutive steps of one env each: the update starts
each core from the stored state of the window's first step, runs the ``burn_in`` steps without gradient to refresh
that (possibly stale) state, and learns from the remaining ``seq_len`` steps.

Episode boundaries: a window may start anywhere (the stored state is right there, zeros at an episode start), but
every step after a later episode start in the window is masked out of the loss (``alive``), and the cores reset
to zeros there (:meth:`duetrl.cores.Core.sequence`), so a loss never sees memory carried from one episode into
the next. Why mask rather than keep those steps (their reset state is exact): sampling stays one uniform draw over
windows with no variable lengths, and every learned step has had its burn-in or starts from a true episode
start; the price is the masked steps of windows that cross an episode end, about (burn_in + seq_len) / 2 steps
per episode (a few percent of 200-step Pendulum episodes).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch

from duetrl.encoders import Obs, tree_map, zeros
from duetrl.errors import UserError


class SequenceReplay:
    """Per-env ring storage of steps, sampled as windows of consecutive steps (see the module docstring).

    ``capacity`` counts transitions over all envs (``buffer_size``): each env keeps ``capacity // num_envs``
    steps. ``state_dims`` names each core's state width (e.g. ``{"actor_state": 128, "critic_state": 128}``)."""

    def __init__(
        self,
        capacity: int,
        obs_space: gym.Space | int,
        act_dim: int,
        num_envs: int,
        state_dims: dict[str, int],
        device: torch.device | str,
    ):
        if isinstance(obs_space, int):
            obs_space = gym.spaces.Box(-np.inf, np.inf, (obs_space,), np.float32)
        self.slots, self.num_envs, self.device = capacity // num_envs, num_envs, device
        shape = (self.slots, num_envs)
        self.data: dict[str, Obs] = {
            "obs": zeros(obs_space, shape, device),
            "action": torch.zeros(*shape, act_dim, device=device),
            "reward": torch.zeros(shape, device=device),
            "terminated": torch.zeros(shape, device=device),
            "truncated": torch.zeros(shape, device=device),
            "next_obs": zeros(obs_space, shape, device),
            "start": torch.zeros(shape, dtype=torch.bool, device=device),
            **{name: torch.zeros(*shape, dim, device=device) for name, dim in state_dims.items()},
        }
        self.position = 0  # the next slot to write
        self.steps = 0  # slots filled (the same for every env)

    def __len__(self) -> int:
        """Transitions stored, over all envs."""
        return self.steps * self.num_envs

    def check_length(self, length: int) -> None:
        """A window of ``length`` steps must fit in one env's share of the buffer."""
        if length > self.slots:
            raise UserError(
                f"rnn_burn_in + rnn_seq_len = {length} steps is longer than the replay buffer keeps per env "
                f"(buffer_size // num_envs = {self.slots}); raise buffer_size or shorten the sequences"
            )

    def add(self, **step: Obs) -> None:
        """Append one step of every env (``[num_envs, ...]`` each), with every key of the storage."""

        def write(store: torch.Tensor, value: torch.Tensor) -> None:
            store[self.position].copy_(value.to(store.device, store.dtype).reshape(store.shape[1:]))

        for key, store in self.data.items():
            tree_map(write, store, step[key])
        self.position = (self.position + 1) % self.slots
        self.steps = min(self.steps + 1, self.slots)

    def can_sample(self, length: int) -> bool:
        return self.steps >= length

    def sample(self, batch: int, length: int, generator: torch.Generator | None = None) -> dict[str, Any]:
        """``batch`` windows of ``length`` consecutive steps, each of one env, drawn uniformly over every window
        the buffer holds: each key ``[length, batch, ...]``, plus ``alive [length, batch]`` (bool), false at every
        step after an episode start later than the window's first step (the steps a loss must not see)."""
        oldest = (self.position - self.steps) % self.slots  # the first slot in time order
        first = torch.randint(0, self.steps - length + 1, (batch,), device=self.device, generator=generator)
        env = torch.randint(0, self.num_envs, (batch,), device=self.device, generator=generator)
        slots = (oldest + first + torch.arange(length, device=self.device).unsqueeze(1)) % self.slots  # [L, B]
        window = {key: tree_map(lambda v: v[slots, env], value) for key, value in self.data.items()}
        later_start = window["start"].clone()
        later_start[0] = False
        window["alive"] = ~later_start.cumsum(0).bool()
        return window

    def state_dict(self) -> dict:
        """The filled slots only."""
        return {
            "position": self.position,
            "steps": self.steps,
            **{k: tree_map(lambda v: v[: self.steps], v) for k, v in self.data.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.position, self.steps = int(state["position"]), int(state["steps"])
        for key, value in self.data.items():
            tree_map(lambda store, saved: store[: self.steps].copy_(saved), value, state[key])
