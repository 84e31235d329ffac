"""The velocity-masked envs (envs/masked.py): registered on import, velocities zeroed as rl-baselines3-zoo does,
the rest of the observation, rewards and time limits those of the base env, on both backends."""

import gymnasium as gym
import numpy as np
import pytest
import torch

import duetrl  # noqa: F401 - registers the masked ids
from duetrl.envs import make
from duetrl.envs.masked import VELOCITY_INDICES

NATIVE = ["PendulumNoVel-v1", "CartPoleNoVel-v1", "MountainCarContinuousNoVel-v0"]


@pytest.mark.parametrize("masked_id", list(VELOCITY_INDICES))
def test_masked_env_is_its_base_with_velocities_zeroed(masked_id):
    base_id, velocities = VELOCITY_INDICES[masked_id]
    if base_id.startswith("LunarLander"):  # Box2D is the optional box2d extra, not installed by setup
        pytest.importorskip("Box2D", reason="LunarLander needs Box2D: pip install 'duetrl[box2d]'")
    masked, base = gym.make(masked_id), gym.make(base_id)
    assert masked.spec.max_episode_steps == base.spec.max_episode_steps
    assert masked.observation_space == base.observation_space and masked.action_space == base.action_space
    obs, _ = masked.reset(seed=3)
    ref, _ = base.reset(seed=3)
    for step in range(30):
        kept = [i for i in range(len(ref)) if i not in velocities]
        np.testing.assert_array_equal(obs[list(velocities)], 0.0)
        np.testing.assert_array_equal(obs[kept], ref[kept])
        if step > 0:
            assert np.any(ref[list(velocities)] != 0.0)  # there was something to hide
        action = base.action_space.sample() if step % 2 else base.action_space.sample() * 0
        obs, reward, terminated, truncated, _ = masked.step(action)
        ref, ref_reward, ref_terminated, ref_truncated, _ = base.step(action)
        assert (reward, terminated, truncated) == (ref_reward, ref_terminated, ref_truncated)
        if terminated or truncated:
            break


@pytest.mark.parametrize("masked_id", NATIVE)
def test_native_backend_serves_masked_envs(masked_id):
    _, velocities = VELOCITY_INDICES[masked_id]
    env = make(masked_id, 4, backend="torch")
    assert env.backend == "torch"
    obs, _ = env.reset(seed=0)
    action = torch.as_tensor(np.stack([env.single_action_space.sample() for _ in range(4)]))
    for _ in range(5):
        obs, _, _, _, info = env.step(action)
        assert torch.all(obs[:, list(velocities)] == 0) and torch.all(info["final_obs"][:, list(velocities)] == 0)
    assert torch.any(env.state != 0)  # the physical state still has its velocities
    assert make(masked_id, 64).backend == "torch"  # auto picks the native env for large batches, as for its base
