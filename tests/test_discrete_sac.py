"""Discrete SAC (algos/sac.py): the exact expectations over actions against hand-computed numbers, where the
gradients go, acting in a Discrete space, and the CLI and API on CartPole."""

import math
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from helpers import assert_user_error, changed, snapshot
from torch import nn

import duetrl
from duetrl import checkpoint as ckpt
from duetrl.algos import get_algo
from duetrl.algos.sac import (
    DiscreteSAC,
    SACConfig,
    categorical_entropy,
    discrete_actor_loss,
    discrete_soft_value,
    discrete_temperature_loss,
)
from duetrl.cli import main
from duetrl.errors import UserError
from duetrl.nets import EnsembleQValues

CPU = torch.device("cpu")
SMALL = dict(actor_hidden=[16], critic_hidden=[16], batch_size=8, buffer_size=64)

# The 2-action example: pi = (0.25, 0.75), Q = (1, 3), alpha = 0.5.
PI = torch.tensor([[0.25, 0.75]])
Q = torch.tensor([[1.0, 3.0]])
ALPHA = 0.5
# By hand: H = -(0.25 ln 0.25 + 0.75 ln 0.75) = 0.5623351; V = E_pi[Q] + alpha H = 2.5 + 0.2811676 = 2.7811676.
ENTROPY = 0.5623351446
SOFT_VALUE = 2.7811675723


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def make_agent(num_envs=1, n=3, start=0, **overrides):
    cfg = SACConfig(**{**SMALL, **overrides})
    cfg.validate()
    obs_space = gym.spaces.Box(-1, 1, (4,), np.float32)
    return DiscreteSAC(cfg, obs_space, gym.spaces.Discrete(n, start=start), num_envs, CPU)


def random_batch(n=8, obs_dim=4, actions=3):
    return {
        "obs": torch.randn(n, obs_dim),
        "action": torch.randint(actions, (n, 1)).float(),
        "reward": torch.randn(n),
        "next_obs": torch.randn(n, obs_dim),
        "terminated": (torch.rand(n) < 0.2).float(),
    }


class Fixed(nn.Module):
    """A network that answers the same tensor whatever the observation (Q values or logits by hand)."""

    def __init__(self, out: torch.Tensor):
        super().__init__()
        self.out = out

    def forward(self, obs, action=None):
        assert action is None
        return self.out


# ------------------------------------------------------------------------------------------ the math by hand


def test_soft_value_entropy_and_actor_loss_of_the_two_action_example():
    log_pi = PI.log()
    assert categorical_entropy(log_pi).item() == pytest.approx(ENTROPY, abs=1e-6)
    assert discrete_soft_value(Q, log_pi, ALPHA).item() == pytest.approx(SOFT_VALUE, abs=1e-6)
    assert discrete_actor_loss(Q, log_pi, ALPHA).item() == pytest.approx(-SOFT_VALUE, abs=1e-6)
    # alpha = 0: the plain expectation 0.25 * 1 + 0.75 * 3; a uniform policy: the mean Q plus alpha log 2.
    assert discrete_soft_value(Q, log_pi, 0.0).item() == pytest.approx(2.5)
    uniform = torch.full((1, 2), 0.5).log()
    assert discrete_soft_value(Q, uniform, ALPHA).item() == pytest.approx(2.0 + ALPHA * math.log(2))


def test_actor_loss_gradient_through_the_logits_is_the_hand_derived_one():
    # d/dz_j of -sum_a pi_a (q_a - alpha log pi_a) = -pi_j (g_j - V) with g = q - alpha log pi, V = E_pi[g]:
    # g = (1.6931472, 3.1438410), V = 2.7811676, so the gradient is (+0.2720051, -0.2720051): towards action 1.
    logits = PI.log().clone().requires_grad_(True)  # softmax(log pi) = pi
    discrete_actor_loss(Q, torch.log_softmax(logits, -1), ALPHA).backward()
    assert logits.grad.tolist()[0] == pytest.approx([0.2720051, -0.2720051], abs=1e-6)


def test_temperature_loss_raises_alpha_below_the_target_entropy_and_lowers_it_above():
    entropy = torch.tensor([ENTROPY])
    for target, sign in ((0.89 * math.log(2), -1.0), (0.3, 1.0)):  # H below the target: descent raises log alpha
        log_alpha = torch.zeros((), requires_grad=True)
        discrete_temperature_loss(log_alpha, entropy, target).backward()
        assert log_alpha.grad.item() == pytest.approx(ENTROPY - target, abs=1e-6)
        assert math.copysign(1.0, log_alpha.grad.item()) == sign


def test_ensemble_q_values_gives_every_action_and_gathers_the_taken_one():
    critic = EnsembleQValues(4, 3, hidden=[8], ensemble=2)
    obs = torch.randn(5, 4)
    q = critic(obs)
    assert q.shape == (2, 5, 3)
    assert not torch.allclose(q[0], q[1])  # independent members
    action = torch.tensor([[0.0], [2.0], [1.0], [1.0], [0.0]])
    taken = critic(obs, action)
    assert taken.shape == (2, 5)
    assert torch.equal(taken, q.gather(-1, action.long().view(1, 5, 1).expand(2, 5, 1)).squeeze(-1))


def test_next_value_is_the_exact_soft_value_under_the_min_of_the_target_critics():
    agent = make_agent(n=2, alpha=ALPHA)
    # Member 0 says Q = (1, 3), member 1 says (2, 2): the min is (1, 2); pi = (0.25, 0.75).
    agent.critic_target = Fixed(torch.tensor([[[1.0, 3.0]], [[2.0, 2.0]]]))
    agent.actor = Fixed(PI.log())
    expected = 0.25 * (1 - ALPHA * math.log(0.25)) + 0.75 * (2 - ALPHA * math.log(0.75))
    assert agent.next_value(torch.zeros(1, 4)).item() == pytest.approx(expected, abs=1e-6)


def test_critic_step_regresses_the_taken_action_on_the_soft_bellman_target():
    agent = make_agent(n=2, alpha=ALPHA, gamma=0.9)
    agent.critic_target = Fixed(Q.unsqueeze(0).expand(2, 1, 2))
    agent.actor = Fixed(PI.log())
    batch = {
        "obs": torch.zeros(1, 4),
        "action": torch.tensor([[1.0]]),
        "reward": torch.tensor([1.0]),
        "next_obs": torch.zeros(1, 4),
        "terminated": torch.tensor([0.0]),
    }
    q_taken = agent.critic(batch["obs"], batch["action"]).detach()  # [2, 1]
    target = 1.0 + 0.9 * SOFT_VALUE
    metrics = agent.critic_step(batch)
    assert metrics["critic_loss"].item() == pytest.approx(0.5 * (q_taken - target).pow(2).sum().item(), rel=1e-5)
    batch["terminated"] = torch.tensor([1.0])  # terminal: no bootstrap
    q_taken = agent.critic(batch["obs"], batch["action"]).detach()
    assert agent.critic_step(batch)["critic_loss"].item() == pytest.approx(
        0.5 * (q_taken - 1.0).pow(2).sum().item(), rel=1e-5
    )


# ------------------------------------------------------------------------------------------ gradients


def test_gradient_step_moves_critic_actor_alpha_and_target():
    agent = make_agent(learning_starts=0)
    before = {name: snapshot(m) for name, m in agent.modules.items()}
    metrics = agent.gradient_step(random_batch())
    for name, module in agent.modules.items():
        assert changed(module, before[name]), name
    assert set(metrics) >= {"critic_loss", "q_mean", "actor_loss", "entropy", "alpha"}
    assert 0.0 < metrics["entropy"].item() <= math.log(3) + 1e-6


def test_actor_step_leaves_the_critic_alone_and_reaches_every_actor_weight():
    agent = make_agent()
    critic_before = snapshot(agent.critic)
    agent.optimizers["actor"].zero_grad()
    agent.actor_step(random_batch()["obs"])
    assert not changed(agent.critic, critic_before)
    assert all(p.grad is None or not p.grad.abs().sum() for p in agent.critic.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in agent.actor.parameters())
    assert agent.log_alpha.grad is not None and agent.log_alpha.grad.abs() > 0


def test_critic_step_gradients_reach_every_critic_weight_but_not_the_actor():
    agent = make_agent()
    actor_before = snapshot(agent.actor)
    agent.critic_step(random_batch())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in agent.critic.parameters())
    assert not changed(agent.actor, actor_before)


def test_target_entropy_defaults_to_a_fraction_of_log_the_number_of_actions():
    assert make_agent(n=6).target_entropy == pytest.approx(0.89 * math.log(6))
    assert make_agent(n=6, target_entropy_scale=0.5).target_entropy == pytest.approx(0.5 * math.log(6))
    assert make_agent(n=6, target_entropy=0.1).target_entropy == 0.1
    with pytest.raises(UserError, match="target_entropy_scale"):
        SACConfig(target_entropy_scale=1.5).validate()


# ------------------------------------------------------------------------------------------ acting


def test_actions_are_integers_of_the_space_from_its_start():
    agent = make_agent(num_envs=256, n=3, start=-1, learning_starts=10)
    obs = torch.randn(256, 4)
    for steps in (0, 10):  # uniform random, then the policy's samples
        decision = agent.explore(obs, env_steps=steps)
        assert decision.action.dtype == torch.int64 and decision.action.shape == (256,)
        assert set(decision.action.tolist()) == {-1, 0, 1}
        assert decision.record["action"].shape == (256, 1)  # the index, as the buffer keeps it
    greedy = agent.act(obs, deterministic=True)
    assert torch.equal(greedy, agent.actor(obs).argmax(-1) - 1)
    assert torch.equal(agent.deployable()(obs), greedy)


# ------------------------------------------------------------------------------------------ runs


def test_sac_trains_on_cartpole_and_its_checkpoint_acts(tmp_path):
    run_dir = tmp_path / "run"
    settings = dict(steps=400, learning_starts=200, actor_hidden=[16], critic_hidden=[16], batch_size=32)
    result = duetrl.train(
        "CartPole-v1", "sac", run_dir=run_dir, preset="none", eval_every=0, eval_episodes=1, quiet=True, **settings
    )
    assert result.env_steps == 400 and math.isfinite(result.final_eval.mean)
    state = ckpt.load(ckpt.latest_checkpoint(run_dir))
    assert state["agent"]["counters"]["gradient_steps"] == 201
    action = duetrl.load(run_dir).act([0.0, 0.0, 0.0, 0.0], deterministic=True)
    assert action.shape == () and int(action) in (0, 1)  # one observation, one action (as ppo's)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_multi_discrete_and_multi_binary_are_refused_with_one_line(capsys, tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    for extra, space in (([], "MultiDiscrete"), (["--env-kwargs", "binary=True"], "MultiBinary")):
        argv = ["train", "spaces_envs:PickBits", "--algo", "sac", *extra, "--run-dir", tmp_path / space]
        code, out, err = run(capsys, *argv)
        assert_user_error(code, out, err, rf"--algo sac takes a Box or Discrete action space, not {space}")


def test_td3_and_ddpg_still_refuse_discrete_actions():
    for name in ("td3", "ddpg"):
        assert not get_algo(name).discrete
    assert get_algo("sac").discrete and get_algo("sac").continuous


def test_a_population_of_discrete_sac_is_refused_in_one_line(capsys, tmp_path):
    argv = ["train", "CartPole-v1", "--algo", "sac", "--seeds", "0", "1", "--steps", "64", "--quiet"]
    out = assert_user_error(*run(capsys, *argv, "--run-dir", tmp_path / "bad"), match="population trains sac on Box")
    assert "duetrl sweep" in out
    assert not (tmp_path / "bad").exists()
