"""The protocol between the loop and an agent (algos/base.py): explore returns a Decision that observe takes back,
the agent keeps nothing between the two, and the step count is the loop's."""

from __future__ import annotations

import pytest
import torch

from duetrl.algos import ALGOS
from duetrl.algos.base import Decision
from duetrl.envs.native import Pendulum

CPU = torch.device("cpu")
N = 3


OFF_POLICY = ("sac", "td3", "ddpg")


def make_agent(name: str, **overrides):
    torch.manual_seed(0)
    spec = ALGOS[name]
    small = {"actor_hidden": [8], "critic_hidden": [8]} if name in OFF_POLICY else {"hidden": [8]}
    cfg = spec.config_cls(**small, **overrides)
    cfg.validate()
    env = Pendulum(N)
    return spec.agent_cls(cfg, env.single_observation_space, env.single_action_space, N, CPU)


def outcome(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """reward, terminated, truncated, next_obs of one step of N envs."""
    g = torch.Generator().manual_seed(seed)
    running = torch.zeros(N, dtype=torch.bool)
    return torch.randn(N, generator=g), running, running, torch.randn(N, 3, generator=g)


@pytest.mark.parametrize("name", sorted(ALGOS))
def test_observe_stores_the_decision_it_is_handed_not_the_last_one_made(name):
    agent = make_agent(name, **({"learning_starts": 0} if name in OFF_POLICY else {}))
    first = agent.explore(torch.randn(N, 3), env_steps=0)
    agent.explore(torch.randn(N, 3), env_steps=0)  # made and dropped: the agent must not have kept it
    assert isinstance(first, Decision) and first.env_steps == 0 and first.action.shape == (N, 1)
    agent.observe(first, *outcome(0))
    if name in OFF_POLICY:
        stored = {key: agent.buffer.data[key][:N] for key in first.record}  # the buffer's first N rows
    else:
        stored = {key: value[0] for key, value in agent.rollout.stack().items() if key in first.record}
    assert stored.keys() == first.record.keys()
    for key, value in first.record.items():
        torch.testing.assert_close(stored[key], value)


@pytest.mark.parametrize("name", ["sac", "td3", "ddpg"])
def test_learning_starts_follows_the_loops_step_count(name):
    agent = make_agent(name, learning_starts=30, batch_size=4, **({} if name == "sac" else {"exploration_noise": 0.0}))
    obs = torch.randn(N, 3)
    for env_steps in (0, 24):  # steps that end before learning_starts: no update owed
        agent.observe(agent.explore(obs, env_steps), *outcome(env_steps))
    assert agent.updates_owed == 0
    agent.observe(agent.explore(obs, env_steps=27), *outcome(27))  # ends at 30 env steps: learning starts
    assert agent.updates_owed == N  # utd 1: one gradient step per env step from then on
    if name != "sac":  # from learning_starts on the policy acts: TD3/DDPG without noise act as it does
        torch.testing.assert_close(agent.explore(obs, env_steps=30).action, agent.act(obs, deterministic=True))
