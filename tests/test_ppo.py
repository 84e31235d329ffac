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
