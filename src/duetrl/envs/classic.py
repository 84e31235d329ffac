"""Gymnasium twins of the torch-native envs: the same constructor arguments, so a run trained on a native env
with ``--env-kwargs`` is evaluated, rendered and recorded on the same physics.

``env_factory`` builds an id listed in :data:`GYMNASIUM_TWINS` from Gymnasium's own registration (time limit
and checks) with the twin as its entry point; with default arguments a twin is Gymnasium's env unchanged.
"""

from __future__ import annotations

import dataclasses

import gymnasium as gym
from gymnasium.envs.classic_control.pendulum import PendulumEnv
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
