"""PPO's update: advantages from the critic, recomputed per epoch when asked."""

import pytest
import torch

import duetrl.algos.ppo as ppo_module
from duetrl.algos.ppo import PPO, PPOConfig
from duetrl.envs.native import Pendulum

CPU = torch.device("cpu")


def filled_agent(seed: int = 0, **overrides) -> PPO:
    """A small PPO agent with one full rollout of 2 Pendulum envs x 16 steps, made the same way for every seed."""
    torch.manual_seed(seed)
    env = Pendulum(2)
    cfg = PPOConfig(hidden=[16], num_steps=16, minibatch_size=8, **overrides)
    cfg.validate()
    agent = PPO(cfg, env.single_observation_space, env.single_action_space, 2, CPU)
    obs = torch.randn(2, 3)
    for t in range(16):
        decision = agent.explore(obs, env_steps=2 * t)
        next_obs = torch.randn(2, 3)
        truncated = torch.tensor([t == 9, False])
        agent.observe(decision, torch.randn(2), torch.zeros(2, dtype=torch.bool), truncated, next_obs)
        obs = next_obs
    return agent


def params(agent: PPO) -> list[torch.Tensor]:
    return [p.detach().clone() for p in [*agent.policy.parameters(), *agent.critic.parameters()]]


def test_recompute_with_one_epoch_changes_nothing():
    a, b = filled_agent(epochs=1), filled_agent(epochs=1, recompute_advantages=True)
    torch.manual_seed(1)
    a.update()
    torch.manual_seed(1)
    b.update()
    assert all(torch.equal(x, y) for x, y in zip(params(a), params(b), strict=True))


@pytest.mark.parametrize("recompute", [False, True])
def test_each_epoch_uses_the_current_critic_only_when_recomputing(monkeypatch, recompute):
    seen: list[torch.Tensor] = []
    real_gae = ppo_module.gae

    def spy(rewards, values, *args):
        seen.append(values.clone())
        return real_gae(rewards, values, *args)

    monkeypatch.setattr(ppo_module, "gae", spy)
    agent = filled_agent(epochs=3, recompute_advantages=recompute)
    batch = {k: v.clone() for k, v in agent.rollout.stack().items()}
    with torch.no_grad():
        before = agent.critic(batch["obs"])
    agent.update()
    assert len(seen) == (3 if recompute else 1)
    assert torch.equal(seen[0], before)  # the first epoch uses the critic as it was during the rollout
    for later in seen[1:]:
        assert not torch.equal(later, seen[0])  # the critic has moved between epochs
    if recompute:  # the last recomputation saw the critic after epoch 2, which epoch 3 then trained further
        with torch.no_grad():
            assert not torch.allclose(seen[-1], agent.critic(batch["obs"]))


def test_recompute_changes_the_result_with_several_epochs():
    a, b = filled_agent(epochs=4), filled_agent(epochs=4, recompute_advantages=True)
    torch.manual_seed(1)
    a.update()
    torch.manual_seed(1)
    b.update()
    assert any(not torch.equal(x, y) for x, y in zip(params(a), params(b), strict=True))


@pytest.mark.parametrize("image", [True, False], ids=["pixels", "vector"])
def test_next_values_read_from_the_next_step_equal_a_second_encoding(image):
    """Where an episode went on, V(s'_t) is V(s_{t+1}) of the same pass; only the last step and the ended episodes'
    final observations are encoded again. Same values as encoding every next observation (up to float rounding)."""
    import gymnasium as gym
    import numpy as np

    torch.manual_seed(0)
    space = gym.spaces.Box(0, 255, (10, 10, 3), np.uint8) if image else gym.spaces.Box(-1, 1, (3,), np.float32)
    cfg = PPOConfig(hidden=[16], num_steps=8, minibatch_size=8)
    cfg.validate()
    agent = PPO(cfg, space, gym.spaces.Discrete(2), 2, CPU)

    def draw():
        return torch.randint(0, 256, (2, 10, 10, 3), dtype=torch.uint8) if image else torch.rand(2, 3) * 2 - 1

    obs = draw()
    for t in range(8):
        decision = agent.explore(obs, env_steps=2 * t)
        terminated, truncated = torch.tensor([t == 2, False]), torch.tensor([False, t == 5])
        following = draw()  # s_{t+1}: the reset observation where an episode ended
        final = torch.where((terminated | truncated).view(-1, *[1] * (obs.dim() - 1)), draw(), following)
        agent.observe(decision, torch.randn(2), terminated, truncated, final)
        obs = following
    batch = agent.rollout.stack()
    values, next_values = agent._values_and_next(batch)
    features, next_features = agent.critic_features(batch, with_next=True)
    torch.testing.assert_close(values, agent.critic(features), rtol=0, atol=1e-6)
    torch.testing.assert_close(next_values, agent.critic(next_features), rtol=0, atol=1e-6)
    assert not torch.equal(next_values[2, 0], values[3, 0])  # an ended episode: its own final observation's value
