"""SAC, TD3 and DDPG: target networks, ensembles, the squashed Gaussian, update schedules, and short runs."""

import copy
import math

import pytest
import torch
from helpers import changed, read_metrics, snapshot
from torch import nn
from torch.distributions import Normal, TanhTransform, TransformedDistribution

import duetrl
from duetrl import checkpoint as ckpt
from duetrl.algos import ALGOS, get_algo
from duetrl.algos.ddpg import DDPG, DDPGConfig
from duetrl.algos.offpolicy import averaged_tensors, frozen_copy, polyak
from duetrl.algos.sac import SAC, SACConfig, squashed_sample
from duetrl.algos.td3 import TD3, TD3Config
from duetrl.envs.native import Pendulum
from duetrl.errors import UserError
from duetrl.nets import EnsembleLinear, EnsembleQ, GaussianActor

CPU = torch.device("cpu")
SMALL = dict(actor_hidden=[16], critic_hidden=[16], batch_size=8, buffer_size=64)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pendulum_spaces():
    env = Pendulum(1)
    return env.single_observation_space, env.single_action_space  # obs dim 3, actions in [-2, 2]


def make_agent(cls, cfg_cls, num_envs=1, **overrides):
    cfg = cfg_cls(**{**SMALL, **overrides})
    cfg.validate()
    return cls(cfg, *pendulum_spaces(), num_envs, CPU)


def random_batch(n=8, obs_dim=3, act_dim=1):
    return {
        "obs": torch.randn(n, obs_dim),
        "action": torch.rand(n, act_dim) * 2 - 1,
        "reward": torch.randn(n),
        "next_obs": torch.randn(n, obs_dim),
        "terminated": (torch.rand(n) < 0.2).float(),
    }


# ------------------------------------------------------------------------------------------ target networks


def tiny_module():
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))  # parameters and float/int buffers


def test_polyak_midpoint_and_copy():
    source, target = tiny_module(), tiny_module()
    with torch.no_grad():
        for p in source.parameters():
            p.fill_(2.0)
        for p in target.parameters():
            p.fill_(-4.0)
        source[1].running_mean.fill_(1.0)
        target[1].running_mean.fill_(3.0)
        source[1].num_batches_tracked.fill_(7)
    src = {k: v.clone() for k, v in source.state_dict().items()}

    polyak(averaged_tensors(target), averaged_tensors(source), 0.5)
    for p in target.parameters():
        torch.testing.assert_close(p, torch.full_like(p, -1.0))  # (2 + -4) / 2
    torch.testing.assert_close(target[1].running_mean, torch.full((2,), 2.0))
    assert target[1].num_batches_tracked.item() == 0  # integer buffers are not averaged
    for key, value in source.state_dict().items():  # the source is untouched
        torch.testing.assert_close(value, src[key])

    # general tau: target <- (1 - tau) * target + tau * source
    polyak(averaged_tensors(target), averaged_tensors(source), 0.25)
    for p in target.parameters():
        torch.testing.assert_close(p, torch.full_like(p, 0.75 * -1.0 + 0.25 * 2.0))

    polyak(averaged_tensors(target), averaged_tensors(source), 1.0)
    for p, q in zip(target.parameters(), source.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    torch.testing.assert_close(target[1].running_mean, source[1].running_mean)


def test_polyak_with_random_weights():
    source, target = nn.Linear(4, 3), nn.Linear(4, 3)
    expected = [(t + s) / 2 for t, s in zip(snapshot(target), snapshot(source), strict=True)]
    polyak(averaged_tensors(target), averaged_tensors(source), 0.5)
    for p, e in zip(target.parameters(), expected, strict=True):
        torch.testing.assert_close(p, e)


def test_polyak_without_the_foreach_kernel_gives_the_same_numbers(monkeypatch):
    torch.manual_seed(0)
    source, target = nn.Linear(4, 3), nn.Linear(4, 3)
    fast, plain = copy.deepcopy(target), copy.deepcopy(target)
    polyak(averaged_tensors(fast), averaged_tensors(source), 0.005)
    monkeypatch.delattr(torch, "_foreach_lerp_")  # a torch without the private op
    polyak(averaged_tensors(plain), averaged_tensors(source), 0.005)
    for a, b in zip(plain.parameters(), fast.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    assert not torch.equal(plain.weight, target.weight)  # it moved


def test_frozen_copy():
    source = tiny_module()
    target = frozen_copy(source)
    assert all(not p.requires_grad for p in target.parameters())
    assert all(p.requires_grad for p in source.parameters())  # the source still learns
    for p, q in zip(target.parameters(), source.parameters(), strict=True):
        torch.testing.assert_close(p, q)
        assert p.data_ptr() != q.data_ptr()  # a copy, not shared storage
    with torch.no_grad():
        next(source.parameters()).add_(1.0)
    assert not torch.equal(next(source.parameters()), next(target.parameters()))


# ------------------------------------------------------------------------------------------ ensembles


def test_ensemble_q_shape_and_members_differ():
    q = EnsembleQ(obs_dim=3, act_dim=2, hidden=[8, 8], ensemble=3)
    out = q(torch.randn(5, 3), torch.randn(5, 2))
    assert out.shape == (3, 5)
    assert not torch.allclose(out[0], out[1]) and not torch.allclose(out[1], out[2])
    # an [E, B, in] input (one batch per member) gives the same shape
    assert q(torch.randn(3, 5, 3), torch.randn(3, 5, 2)).shape == (3, 5)


def test_ensemble_q_member_inputs_are_independent():
    q = EnsembleQ(obs_dim=3, act_dim=1, hidden=[8], ensemble=2)
    obs, act = torch.randn(4, 3), torch.randn(4, 1)
    shared = q(obs, act)
    per_member = q(torch.stack([obs, torch.randn(4, 3)]), torch.stack([act, torch.randn(4, 1)]))
    torch.testing.assert_close(per_member[0], shared[0])  # member 0 saw the same input


def test_ensemble_linear_equals_separate_matmuls():
    layer = EnsembleLinear(ensemble=4, in_dim=5, out_dim=3)
    assert layer.weight.shape == (4, 5, 3) and layer.bias.shape == (4, 1, 3)
    x = torch.randn(4, 6, 5)
    out = layer(x)
    assert out.shape == (4, 6, 3)
    for e in range(4):
        torch.testing.assert_close(out[e], x[e] @ layer.weight[e] + layer.bias[e, 0])
    # members are initialised independently
    assert not torch.equal(layer.weight[0], layer.weight[1])


# ------------------------------------------------------------------------------------------ SAC


def test_squashed_sample_log_prob_matches_torch_distributions():
    actor = GaussianActor(3, 2, hidden=[16], log_std_min=-5.0, log_std_max=2.0)
    with torch.no_grad():
        actor.log_std.bias.fill_(0.5)  # wide enough that many samples land near the bounds
    obs = torch.randn(64, 3) * 2
    torch.manual_seed(1)
    action, log_prob = squashed_sample(actor, obs)
    assert action.shape == (64, 2) and log_prob.shape == (64,)
    assert action.abs().max() <= 1.0
    assert action.abs().max() > 0.9  # the test covers the saturated part of tanh

    # the same draw again, through torch.distributions
    torch.manual_seed(1)
    with torch.no_grad():
        mean, log_std = actor(obs)
    u = mean + log_std.exp() * torch.randn_like(mean)
    dist = TransformedDistribution(Normal(mean, log_std.exp()), [TanhTransform(cache_size=1)])
    a_ref = dist.transforms[0](u)  # cached, so log_prob inverts exactly to u
    expected = dist.log_prob(a_ref).sum(-1)
    torch.testing.assert_close(action.detach(), a_ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(log_prob.detach(), expected, atol=1e-4, rtol=0)

    det_action, det_log_prob = squashed_sample(actor, obs, deterministic=True)
    torch.testing.assert_close(det_action.detach(), torch.tanh(mean))
    assert det_log_prob.shape == (64,)


def test_squashed_sample_is_differentiable():
    actor = GaussianActor(3, 1, hidden=[8])
    action, log_prob = squashed_sample(actor, torch.randn(4, 3))
    (action.sum() + log_prob.sum()).backward()
    assert all(p.grad is not None for p in actor.parameters())


def test_sac_gradient_step_moves_critic_actor_and_target():
    agent = make_agent(SAC, SACConfig, tau=0.5)
    critic_before, actor_before = snapshot(agent.critic), snapshot(agent.actor)
    target_before = snapshot(agent.critic_target)
    log_alpha_before = agent.log_alpha.item()
    metrics = agent.gradient_step(random_batch())
    assert {"critic_loss", "actor_loss", "alpha", "entropy", "q_mean"} <= set(metrics)
    assert all(v.dim() == 0 and math.isfinite(v.item()) for v in metrics.values())
    assert changed(agent.critic, critic_before)
    assert changed(agent.actor, actor_before)
    assert agent.log_alpha.item() != log_alpha_before  # autotuned
    # target <- target + tau * (critic - target), with the critic after its step
    for t, t0, c in zip(agent.critic_target.parameters(), target_before, agent.critic.parameters(), strict=True):
        torch.testing.assert_close(t, t0 + 0.5 * (c.detach() - t0))
        assert not t.requires_grad


def test_sac_fixed_alpha_stays_fixed():
    agent = make_agent(SAC, SACConfig, autotune_alpha=False, critic_lr=0.0)  # lr 0: the critic cannot move
    critic_before = snapshot(agent.critic)
    agent.gradient_step(random_batch())
    assert not changed(agent.critic, critic_before)
    assert agent.log_alpha.item() == pytest.approx(math.log(0.2))


def test_sac_actor_and_alpha_steps_equal_one_combined_backward():
    # The plain steps (actor, then alpha, each its own backward) give, bit for bit, the weights that one backward pass
    # of the summed losses gave: alpha's loss reaches only log_alpha, and the actor's uses alpha detached.
    agent = make_agent(SAC, SACConfig, max_grad_norm=0.5)
    combined = copy.deepcopy(agent)
    obs = torch.randn(8, 3)
    torch.manual_seed(3)
    agent.actor_step(obs)
    torch.manual_seed(3)
    alpha = combined.log_alpha.exp().detach()
    action, log_prob = squashed_sample(combined.actor, obs)
    actor_loss = (alpha * log_prob - combined.critic(obs, action).min(0).values).mean()
    loss = actor_loss - (combined.log_alpha * (log_prob.detach() + combined.target_entropy)).mean()
    for name in ("actor", "alpha"):
        combined.optimizers[name].zero_grad()
    loss.backward(inputs=[*combined.actor.parameters(), combined.log_alpha])
    nn.utils.clip_grad_norm_(list(combined.actor.parameters()), 0.5)
    for name in ("actor", "alpha"):
        combined.optimizers[name].step()
    for got, want in zip(agent.actor.parameters(), combined.actor.parameters(), strict=True):
        assert torch.equal(got, want)
    assert torch.equal(agent.log_alpha, combined.log_alpha)
    assert agent.log_alpha.item() != math.log(0.2)


@pytest.mark.parametrize("cls,cfg_cls", [(SAC, SACConfig), (TD3, TD3Config), (DDPG, DDPGConfig)])
def test_critic_step_regresses_on_the_bellman_target_of_next_value(cls, cfg_cls):
    agent = make_agent(cls, cfg_cls, gamma=0.9)
    batch = random_batch()
    next_value = torch.randn(8)
    agent.next_value = lambda next_actor_in, next_critic_in: next_value  # what each algorithm supplies
    q = agent.critic(batch["obs"], batch["action"]).detach()  # [E, B]
    target = batch["reward"] + 0.9 * (1 - batch["terminated"]) * next_value
    critic_before, actor_before = snapshot(agent.critic), snapshot(agent.actor)
    metrics = agent.critic_step(batch)
    torch.testing.assert_close(metrics["critic_loss"], 0.5 * (q - target).pow(2).mean(1).sum())
    torch.testing.assert_close(metrics["q_mean"], q.mean())
    assert changed(agent.critic, critic_before) and not changed(agent.actor, actor_before)
    after = agent.critic(batch["obs"], batch["action"]).detach()
    assert (after - target).pow(2).mean() < (q - target).pow(2).mean()  # a step towards the target


def test_sac_next_value_is_the_soft_value_at_a_fresh_action():
    agent = make_agent(SAC, SACConfig, alpha=0.5)
    next_obs = torch.randn(8, 3)
    torch.manual_seed(5)
    got = agent.next_value(next_obs, next_obs)
    torch.manual_seed(5)
    action, log_prob = squashed_sample(agent.actor, next_obs)
    want = agent.critic_target(next_obs, action).min(0).values - 0.5 * log_prob
    torch.testing.assert_close(got, want)


def test_td3_next_value_is_the_clipped_double_q_at_the_target_action():
    agent = make_agent(TD3, TD3Config, target_noise=0.0)
    next_obs = torch.randn(8, 3)
    q = agent.critic_target(next_obs, agent.actor_target(next_obs))  # [2, B]
    torch.testing.assert_close(agent.next_value(next_obs, next_obs), torch.minimum(q[0], q[1]))
    smoothed = make_agent(TD3, TD3Config, target_noise=0.2, target_noise_clip=0.05)
    smoothed.load_state_dict(agent.state_dict())
    diff = smoothed.next_value(next_obs, next_obs) - agent.next_value(next_obs, next_obs)
    assert diff.abs().max() > 0  # smoothing moves the target action ...
    assert diff.abs().max() < 1.0  # ... by at most the clip, so the value moves a little


@pytest.mark.parametrize("cls,cfg_cls", [(SAC, SACConfig), (TD3, TD3Config)])
def test_anneal_lr_scales_actor_and_critic_but_not_alpha(cls, cfg_cls):
    agent = make_agent(cls, cfg_cls, anneal_lr=True, actor_lr=1e-3, critic_lr=2e-3)
    agent.set_progress(0.75)
    assert agent.optimizers["actor"].param_groups[0]["lr"] == pytest.approx(2.5e-4)
    assert agent.optimizers["critic"].param_groups[0]["lr"] == pytest.approx(5e-4)
    if "alpha" in agent.optimizers:
        assert agent.optimizers["alpha"].param_groups[0]["lr"] == pytest.approx(SACConfig.alpha_lr)
    steady = make_agent(cls, cfg_cls, actor_lr=1e-3)
    steady.set_progress(0.75)
    assert steady.optimizers["actor"].param_groups[0]["lr"] == pytest.approx(1e-3)


# ------------------------------------------------------------------------------------------ TD3 / DDPG


def fill(agent, n=16):
    batch = random_batch(n)
    agent.buffer.add(**batch)


def test_td3_policy_delay_updates_actor_on_even_gradient_steps():
    agent = make_agent(TD3, TD3Config, policy_delay=2, learning_starts=0)
    fill(agent)
    for i in range(5):
        actor, actor_target = snapshot(agent.actor), snapshot(agent.actor_target)
        critic, critic_target = snapshot(agent.critic), snapshot(agent.critic_target)
        assert agent.gradient_steps == i
        agent.updates_owed = 1.0
        assert agent.ready()
        metrics = agent.update()
        assert agent.gradient_steps == i + 1 and agent.updates_owed == 0.0
        even = i % 2 == 0
        assert changed(agent.critic, critic)  # the critic learns every step
        assert changed(agent.actor, actor) == even, i
        assert ("actor_loss" in metrics) == even, i
        assert changed(agent.actor_target, actor_target) == even, i  # targets move with the actor
        assert changed(agent.critic_target, critic_target) == even, i


def test_update_runs_as_many_gradient_steps_as_owed():
    agent = make_agent(TD3, TD3Config, policy_delay=2, learning_starts=0)
    fill(agent)
    agent.updates_owed = 3.5
    metrics = agent.update()
    assert agent.gradient_steps == 3 and agent.updates_owed == pytest.approx(0.5)
    assert "actor_loss" in metrics and "critic_loss" in metrics


def test_ddpg_config_and_agent():
    agent = make_agent(DDPG, DDPGConfig, learning_starts=0)
    assert agent.critic.ensemble == 1
    fill(agent)
    for _ in range(2):  # no delay: the actor learns at every gradient step
        before = snapshot(agent.actor)
        agent.updates_owed = 1.0
        assert "actor_loss" in agent.update()
        assert changed(agent.actor, before)


def test_td3_and_ddpg_are_continuous_only_and_sac_takes_both():
    for name in ("td3", "ddpg"):
        assert ALGOS[name].continuous and not ALGOS[name].discrete
    assert ALGOS["sac"].continuous and ALGOS["sac"].discrete  # DiscreteSAC on a Discrete space (test_discrete_sac)


@pytest.mark.parametrize("algo", ["sac", "td3", "ddpg"])
def test_exploration_before_learning_starts_is_uniform_in_env_bounds(algo):
    spec = get_algo(algo)
    agent = make_agent(spec.agent_cls, spec.config_cls, num_envs=512, learning_starts=10_000)
    obs = torch.zeros(512, 3)  # one observation: any spread comes from the random actions
    actions = agent.explore(obs, env_steps=0).action
    assert actions.shape == (512, 1)
    assert actions.min() >= -2.0 and actions.max() <= 2.0
    assert actions.min() < -1.5 and actions.max() > 1.5  # scaled to [-2, 2], not left in [-1, 1]
    assert actions.std() > 0.9  # uniform on [-2, 2]: std 1.15 (the fresh policy alone would be near-constant)
    assert torch.unique(actions).numel() > 500


def test_exploration_after_learning_starts_uses_the_policy():
    agent = make_agent(TD3, TD3Config, num_envs=4, learning_starts=4, batch_size=4, exploration_noise=0.0)
    obs = torch.randn(4, 3)
    decision = agent.explore(obs, env_steps=0)  # the loop's count: learning starts after this step
    agent.observe(decision, torch.zeros(4), torch.zeros(4, dtype=torch.bool), torch.zeros(4, dtype=torch.bool), obs)
    assert agent.updates_owed == 4.0
    torch.testing.assert_close(agent.explore(obs, env_steps=4).action, agent.act(obs, deterministic=True))


def test_td3_ou_stochastic_act_on_another_batch_size():
    agent = make_agent(TD3, TD3Config, num_envs=1, noise_type="ou")
    ou_before = agent.noise.state.clone()
    actions = agent.act(torch.randn(4, 3), deterministic=False)
    assert actions.shape == (4, 1)
    torch.testing.assert_close(agent.noise.state, ou_before)  # acting must not advance the training noise


# ------------------------------------------------------------------------------------------ runs


@pytest.mark.parametrize("algo", ["td3", "ddpg"])
def test_discrete_env_is_refused(tmp_path, algo):
    with pytest.raises(UserError, match="continuous"):
        duetrl.train("CartPole-v1", algo, run_dir=tmp_path / algo, steps=100, quiet=True)


RUN = dict(
    steps=600,
    learning_starts=200,
    actor_hidden=[32, 32],
    critic_hidden=[32, 32],
    batch_size=64,
    eval_every=0,
    eval_episodes=1,
    quiet=True,
    preset="none",
)


@pytest.mark.parametrize(
    "algo, settings",
    [("sac", {}), ("td3", {}), ("td3", {"noise_type": "ou"}), ("ddpg", {})],
    ids=["sac", "td3", "td3-ou", "ddpg"],
)
def test_short_training_runs(tmp_path, algo, settings):
    run_dir = tmp_path / "run"
    result = duetrl.train("Pendulum-v1", algo, run_dir=run_dir, **RUN, **settings)
    assert result.env_steps == 600 and result.stopped_early is None
    assert len(result.final_eval.returns) == 1 and math.isfinite(result.final_eval.mean)

    columns, rows = read_metrics(run_dir)
    assert "critic_loss" in columns and "actor_loss" in columns
    train_rows = [r for r in rows if r["critic_loss"]]
    assert train_rows and int(train_rows[0]["env_steps"]) >= 200  # nothing learned before learning_starts
    assert all(math.isfinite(float(r["critic_loss"])) for r in train_rows)
    actor_rows = [r for r in train_rows if r["actor_loss"]]
    assert actor_rows and all(math.isfinite(float(r["actor_loss"])) for r in actor_rows)

    state = ckpt.load(ckpt.latest_checkpoint(run_dir))
    assert state["config"]["algo"] == algo and state["config"]["save_buffer"] is False
    assert "buffer" not in state["agent"]  # the default keeps checkpoints small
    assert state["counters"]["env_steps"] == 600  # the loop's count, the only one
    assert state["agent"]["counters"]["gradient_steps"] == 401  # utd 1 from step 200 on
    assert duetrl.load(run_dir).act([0.0, 1.0, 0.0]).shape == (1,)


def test_save_buffer_puts_the_buffer_in_the_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    duetrl.train("Pendulum-v1", "ddpg", run_dir=run_dir, save_buffer=True, **RUN)
    state = ckpt.load(ckpt.latest_checkpoint(run_dir))
    buffer = state["agent"]["buffer"]
    assert buffer["size"] == 600 and buffer["position"] == 600
    assert buffer["obs"].shape == (600, 3) and buffer["action"].shape == (600, 1)
    assert buffer["reward"].shape == (600,) and bool((buffer["reward"] <= 0).all())  # Pendulum's costs
    assert buffer["action"].abs().max() <= 1.0  # stored in the agent's [-1, 1] units


def test_sac_target_entropy_moves_linearly_to_its_final_value():
    agent = make_agent(SAC, SACConfig, target_entropy=-1.0, target_entropy_final=-5.0)
    for fraction, expected in [(0.0, -1.0), (0.25, -2.0), (1.0, -5.0), (1.5, -5.0)]:
        agent.set_progress(fraction)
        assert agent.target_entropy == pytest.approx(expected)
    steady = make_agent(SAC, SACConfig)
    steady.set_progress(0.5)
    assert steady.target_entropy == -steady.act_dim


def _preact_fall(seed: int, penalty: float) -> float:
    """How far 20 actor steps move the mean pre-tanh output of an actor saturated at u ~ 8 (tanh(u) = 1 - 2e-7)."""
    torch.manual_seed(seed)
    agent = make_agent(TD3, TD3Config, learning_starts=0, policy_delay=1, actor_lr=1e-2, preact_penalty=penalty)
    fill(agent)
    with torch.no_grad():
        agent.actor.net[-1].bias.fill_(8.0)
    obs = random_batch(16)["obs"]
    before = agent.actor.pre_tanh(obs).mean().item()
    for _ in range(20):
        agent.gradient_step(agent.buffer.sample(8))
    return before - agent.actor.pre_tanh(obs).mean().item()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_td3_preact_penalty_pulls_a_saturated_actor_back(seed):
    """Through a saturated tanh the critic's gradient is tiny and its sign arbitrary (Adam still steps on it); the
    penalty gives u a consistent pull towards 0, so it falls further than without."""
    with_penalty, without = _preact_fall(seed, 1.0), _preact_fall(seed, 0.0)
    assert with_penalty > 1.0
    assert with_penalty > without + 0.1
