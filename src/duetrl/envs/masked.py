"""Velocity-masked environments: partially observable versions of classic tasks, as rl-baselines3-zoo has them.

``PendulumNoVel-v1`` is ``Pendulum-v1`` whose observation has its velocity entries zeroed (the zoo's
``MaskVelocityWrapper``: same indices, same zeroing, the observation space unchanged). Without memory an agent
cannot tell how fast the pendulum turns; with a recurrent core (``rnn=lstm``) it can infer it from the angles it
saw. Registered with Gymnasium on ``import duetrl``; the torch-native backend serves them too (``native.py``), and
evaluation, which makes its envs from the same id, sees the same masking.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import gymnasium as gym
import numpy as np

# masked id -> (the env it masks, the observation entries that are velocities); the zoo's table.
VELOCITY_INDICES: dict[str, tuple[str, tuple[int, ...]]] = {
    "PendulumNoVel-v1": ("Pendulum-v1", (2,)),  # cos, sin, [angular velocity]
    "CartPoleNoVel-v1": ("CartPole-v1", (1, 3)),  # x, [x_dot], theta, [theta_dot]
    "MountainCarContinuousNoVel-v0": ("MountainCarContinuous-v0", (1,)),  # position, [velocity]
    "LunarLanderNoVel-v3": ("LunarLander-v3", (2, 3, 5)),  # x, y, [vx, vy], angle, [angular velocity], legs
    "LunarLanderContinuousNoVel-v3": ("LunarLanderContinuous-v3", (2, 3, 5)),
}


def velocity_mask(env_id: str, obs_dim: int) -> np.ndarray:
    """1 where ``env_id``'s observation is kept, 0 where it is a velocity: ``[obs_dim]`` float32."""
    mask = np.ones(obs_dim, dtype=np.float32)
    mask[list(VELOCITY_INDICES[env_id][1])] = 0.0
    return mask


def make_masked(masked_id: str, **kwargs: Any) -> gym.Env:
    """The base env (its bare class: the masked id's registration adds the time limit) with velocities zeroed."""
    from duetrl.envs.classic import GYMNASIUM_TWINS

    base_id = VELOCITY_INDICES[masked_id][0]
    entry = GYMNASIUM_TWINS.get(base_id) or gym.envs.registration.load_env_creator(gym.spec(base_id).entry_point)
    env = entry(**{**gym.spec(base_id).kwargs, **kwargs})
    mask = velocity_mask(masked_id, env.observation_space.shape[0])
    return gym.wrappers.TransformObservation(env, partial(np.multiply, mask), env.observation_space)


def register_masked_envs() -> None:
    """Register every masked id whose base env Gymnasium knows (LunarLander's only where Box2D is installed)."""
    for masked_id, (base_id, _) in VELOCITY_INDICES.items():
        if masked_id in gym.registry or base_id not in gym.registry:
            continue
        base = gym.spec(base_id)
        gym.register(
            masked_id,
            entry_point=partial(make_masked, masked_id),
            reward_threshold=base.reward_threshold,
            max_episode_steps=base.max_episode_steps,
        )
