"""Actor and critic networks, and the Policy around the actor."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import Normal

from duetrl.algos.ac import ACConfig, ActorCritic
from duetrl.algos.sac import SAC, SACConfig
from duetrl.errors import UserError
from duetrl.nets import CategoricalActor, GaussianActor, QCritic, ValueCritic
from duetrl.policy import Policy, PolicyConfig, rescale

OBS = gym.spaces.Box(-np.inf, np.inf, shape=(3,), dtype=np.float32)
ACT = gym.spaces.Box(np.array([-1.0, 0.0], dtype=np.float32), np.array([1.0, 2.0], dtype=np.float32))
HIDDEN = [16, 16]


def make_policy(act_space=ACT, **settings):
    return Policy(OBS, act_space, PolicyConfig(hidden=tuple(HIDDEN), **settings))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def linears(module):
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


# ------------------------------------------------------------------------------------------ actors / critics


def test_gaussian_actor_shapes():
    actor = GaussianActor(3, 2, hidden=HIDDEN)
    mean, log_std = actor(torch.randn(5, 3))
    assert mean.shape == log_std.shape == (5, 2)
    mean, log_std = actor(torch.randn(4, 6, 3))  # [T, N, obs]
    assert mean.shape == log_std.shape == (4, 6, 2)
    dist = actor.dist(torch.randn(5, 3))
    assert dist.sample().shape == (5, 2)


@pytest.mark.parametrize("bias, expected", [(100.0, 2.0), (-100.0, -20.0)])
def test_gaussian_log_std_is_clamped(bias, expected):
    actor = GaussianActor(3, 2, hidden=HIDDEN)
    with torch.no_grad():
        actor.log_std.weight.zero_()
        actor.log_std.bias.fill_(bias)
    _, log_std = actor(torch.randn(7, 3))
    assert torch.all(log_std == expected)
    torch.testing.assert_close(actor.dist(torch.randn(7, 3)).stddev, torch.full((7, 2), math.exp(expected)))


def test_state_independent_std():
    actor = GaussianActor(3, 2, hidden=HIDDEN, state_dependent_std=False, log_std_init=-0.5)
    assert not hasattr(actor, "log_std")
    _, log_std = actor(torch.randn(6, 3) * 10)
    assert log_std.shape == (6, 2)
    assert torch.all(log_std == -0.5)
    with torch.no_grad():
        actor.log_std_param.fill_(50.0)
    assert torch.all(actor(torch.randn(2, 3))[1] == 2.0)  # the clamp applies here too


def test_categorical_actor():
    actor = CategoricalActor(4, 3, hidden=HIDDEN)
    obs = torch.randn(5, 4)
    logits = actor(obs)
    assert logits.shape == (5, 3)
    dist = actor.dist(obs)
    torch.testing.assert_close(dist.probs.sum(-1), torch.ones(5))
    torch.testing.assert_close(dist.probs, torch.softmax(logits, -1))


def test_critic_shapes():
    v = ValueCritic(3, hidden=HIDDEN)
    assert v(torch.randn(5, 3)).shape == (5,)
    assert v(torch.randn(4, 2, 3)).shape == (4, 2)
    q = QCritic(3, 2, hidden=HIDDEN)
    assert q(torch.randn(5, 3), torch.randn(5, 2)).shape == (5,)
    assert q(torch.randn(4, 2, 3), torch.randn(4, 2, 2)).shape == (4, 2)


# ------------------------------------------------------------------------------------------ policy: actions


def test_clip_mapping_clamps_to_bounds():
    policy = make_policy(bound_by="clip")
    raw = torch.tensor([[-100.0, -100.0], [0.5, 1.5], [100.0, 100.0]])
    env = policy.to_env(raw)
    torch.testing.assert_close(env, torch.tensor([[-1.0, 0.0], [0.5, 1.5], [1.0, 2.0]]))


def test_tanh_mapping_stays_inside_bounds():
    policy = make_policy(bound_by="tanh")
    raw = torch.linspace(-50, 50, 101)[:, None].expand(101, 2)
    env = policy.to_env(raw)
    assert torch.all(env >= policy.low) and torch.all(env <= policy.high)
    # the centre of the Gaussian maps to the centre of the box, and the map is increasing
    torch.testing.assert_close(policy.to_env(torch.zeros(1, 2)), torch.tensor([[0.0, 1.0]]))
    assert torch.all(env[1:] >= env[:-1])
    torch.testing.assert_close(
        policy.to_env(torch.tensor([[0.5, 0.5]])), torch.tensor([[math.tanh(0.5), 1 + math.tanh(0.5)]])
    )


def test_rescale_maps_the_unit_box_onto_the_bounds():
    low, high = torch.tensor([-1.0, 0.0]), torch.tensor([1.0, 2.0])
    unit = torch.tensor([[-1.0, -1.0], [0.0, 0.0], [1.0, 1.0], [0.5, -0.5]])
    expected = torch.tensor([[-1.0, 0.0], [0.0, 1.0], [1.0, 2.0], [0.5, 0.5]])
    torch.testing.assert_close(rescale(unit, low, high), expected)


def test_the_tanh_policy_and_sac_map_actions_the_same_way():
    # One mapping: SAC's tanh(u) in [-1, 1] is rescaled by the same function as the tanh policy's raw sample.
    policy = make_policy(bound_by="tanh")
    sac = SAC(SACConfig(actor_hidden=HIDDEN, buffer_size=256), OBS, ACT, 1, torch.device("cpu"))
    sac.actor.load_state_dict(policy.actor.state_dict())
    obs = torch.randn(16, 3)
    assert torch.equal(policy.act(obs, deterministic=True), sac.act(obs, deterministic=True))


@pytest.mark.parametrize("bound_by", ["clip", "tanh"])
def test_sampled_actions_stay_inside_bounds(bound_by):
    policy = make_policy(bound_by=bound_by)
    with torch.no_grad():
        policy.actor.log_std.bias.fill_(2.0)  # std e^2: most samples fall outside the box
    obs = torch.randn(500, 3)
    for action in (policy.act(obs), policy.sample(obs)[1], policy.act(obs, deterministic=True)):
        assert action.shape == (500, 2)
        assert torch.all(action >= policy.low) and torch.all(action <= policy.high)


def test_tanh_needs_bounded_space():
    unbounded = gym.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
    with pytest.raises(UserError):
        make_policy(unbounded, bound_by="tanh")


def test_deterministic_act_is_the_mean():
    policy = make_policy()
    obs = torch.randn(4, 3)
    mean, _ = policy.actor(obs)
    torch.testing.assert_close(policy.act(obs, deterministic=True), policy.to_env(mean))


# ------------------------------------------------------------------------------------------ policy: log-probs


def test_log_prob_and_entropy_shapes():
    policy = make_policy()
    obs = torch.randn(6, 3)
    raw = policy.distribution(obs).sample()
    log_prob, entropy, dist = policy.evaluate_actions(obs, raw)
    assert log_prob.shape == entropy.shape == (6,)
    torch.testing.assert_close(log_prob, Normal(dist.mean, dist.stddev).log_prob(raw).sum(-1))
    torch.testing.assert_close(entropy, Normal(dist.mean, dist.stddev).entropy().sum(-1))

    discrete = make_policy(gym.spaces.Discrete(4))
    raw = discrete.distribution(obs).sample()
    assert raw.shape == (6,)
    log_prob, entropy, dist = discrete.evaluate_actions(obs, raw)
    assert log_prob.shape == entropy.shape == (6,)
    torch.testing.assert_close(log_prob, dist.logits.gather(-1, raw[:, None])[:, 0])
    action = discrete.act(obs, deterministic=True)
    torch.testing.assert_close(action, discrete.actor(obs).argmax(-1))


@pytest.mark.parametrize(
    "act_space, kwargs",
    [
        (ACT, {"bound_by": "clip"}),
        (ACT, {"bound_by": "clip", "clip_log_prob": True}),
        (ACT, {"bound_by": "tanh"}),
        (ACT, {"bound_by": "clip", "state_dependent_std": False, "log_std_init": 1.0}),
        (gym.spaces.Discrete(4), {}),
    ],
    ids=["clip", "clip-clip_log_prob", "tanh", "clip-state-independent-std", "categorical"],
)
def test_log_prob_at_sampling_equals_evaluate_actions(act_space, kwargs):
    # PPO's ratio divides the policy's probability of a stored raw action by the one recorded when it was sampled:
    # with unchanged weights the two must agree, or the first ratio is not 1.
    policy = make_policy(act_space, **kwargs)
    if "state_dependent_std" not in kwargs and not policy.discrete:
        with torch.no_grad():
            policy.actor.log_std.bias.fill_(1.0)  # std e: many samples fall beyond the bounds
    obs = torch.randn(512, 3)
    raw, action, sampled = policy.sample(obs)
    evaluated, _, _ = policy.evaluate_actions(obs, raw)
    assert sampled.shape == evaluated.shape == (512,)
    torch.testing.assert_close(sampled, evaluated, rtol=1e-5, atol=1e-5)
    if kwargs.get("clip_log_prob"):  # the case covers clipped actions, which take the mass beyond the bound
        clipped = ((raw <= policy.low) | (raw >= policy.high)).any(-1)
        assert 0 < clipped.sum() < 512
    if not policy.discrete:
        torch.testing.assert_close(action, policy.to_env(raw))


def _fixed_policy(**kwargs):
    """A policy whose Gaussian has mean [0.3, 1.5] and std [0.5, 2.0] at every observation, and a float64
    reference Normal of the same."""
    policy = make_policy(**kwargs)
    mean, std = torch.tensor([0.3, 1.5]), torch.tensor([0.5, 2.0])
    with torch.no_grad():
        for head, bias in ((policy.actor.mean, mean), (policy.actor.log_std, std.log())):
            head.weight.zero_()
            head.bias.copy_(bias)
    return policy, Normal(mean.double(), std.double())


def _log_prob(policy, raw):
    return policy.evaluate_actions(torch.zeros(1, 3), torch.tensor([raw])).log_prob


def test_clip_log_prob_uses_cdf_mass_at_the_bounds():
    policy, ref = _fixed_policy(bound_by="clip", clip_log_prob=True)
    low, high = torch.tensor([-1.0, 0.0]).double(), torch.tensor([1.0, 2.0]).double()
    below = ref.cdf(low).log()  # log P(raw <= low)
    above = (1 - ref.cdf(high)).log()  # log P(raw >= high)
    density = lambda raw: ref.log_prob(torch.tensor(raw).double())  # noqa: E731
    cases = [
        ([-3.0, 5.0], below[0] + above[1]),  # below in dim 0, above in dim 1
        ([0.2, 0.0], density([0.2, 0.0])[0] + below[1]),  # inside; exactly at low
        ([1.0, 1.0], above[0] + density([1.0, 1.0])[1]),  # exactly at high; inside
        ([0.0, 1.0], density([0.0, 1.0]).sum()),  # all inside: the plain density
    ]
    for raw, expected in cases:
        got = _log_prob(policy, raw)
        assert got.shape == (1,)
        assert got.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-5), raw


@pytest.mark.parametrize(
    "kwargs", [{"bound_by": "clip", "clip_log_prob": False}, {"bound_by": "tanh", "clip_log_prob": True}]
)
def test_without_clip_log_prob_the_density_is_used_beyond_bounds(kwargs):
    policy, ref = _fixed_policy(**kwargs)
    raw = [-3.0, 5.0]
    expected = ref.log_prob(torch.tensor(raw).double()).sum().item()
    assert _log_prob(policy, raw).item() == pytest.approx(expected, rel=1e-5)


def test_clip_log_prob_has_gradient_to_mean_and_std():
    policy = make_policy(clip_log_prob=True)
    obs = torch.randn(8, 3)
    raw = torch.full((8, 2), 10.0)  # every action clipped at the upper bound
    policy.evaluate_actions(obs, raw).log_prob.sum().backward()
    assert policy.actor.mean.weight.grad.abs().sum() > 0
    assert policy.actor.log_std.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------ gradients


def _agent(act_space=ACT, **overrides):
    cfg = ACConfig(hidden=HIDDEN, **overrides)
    return ActorCritic(cfg, OBS, act_space, 2, torch.device("cpu"))


@pytest.mark.parametrize("state_dependent_std", [True, False])
def test_log_prob_gradients_reach_actor_not_critic(state_dependent_std):
    agent = _agent(state_dependent_std=state_dependent_std)
    obs = torch.randn(10, 3)
    raw = agent.policy.distribution(obs).sample()
    agent.policy.evaluate_actions(obs, raw).log_prob.mean().backward()
    for name, p in agent.policy.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    for name, p in agent.critic.named_parameters():
        assert p.grad is None, name


def _params(module):
    return [p.detach().clone() for p in module.parameters()]


def _run_update(agent, steps=6):
    obs = torch.randn(2, 3)
    for i in range(steps):
        decision = agent.explore(obs, env_steps=2 * i)
        next_obs = torch.randn(2, 3)
        agent.observe(decision, torch.randn(2), torch.tensor([False, i == 2]), torch.tensor([False, False]), next_obs)
        obs = next_obs
    assert agent.ready()
    return agent.update()


@pytest.mark.parametrize("critic", ["v", "q"])
def test_update_changes_only_what_each_loss_should(critic):
    # With a zero actor learning rate the policy must not move, and the critic must; and vice versa.
    agent = _agent(critic=critic, actor_lr=0.0, update_every=6, advantage="td")
    policy_before, critic_before = _params(agent.policy), _params(agent.critic)
    metrics = _run_update(agent)
    assert all(torch.equal(a, b) for a, b in zip(policy_before, _params(agent.policy), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(critic_before, _params(agent.critic), strict=True))
    assert math.isfinite(metrics["actor_loss"]) and math.isfinite(metrics["critic_loss"])

    agent = _agent(critic=critic, critic_lr=0.0, update_every=6, advantage="td")
    policy_before, critic_before = _params(agent.policy), _params(agent.critic)
    _run_update(agent)
    assert any(not torch.equal(a, b) for a, b in zip(policy_before, _params(agent.policy), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(critic_before, _params(agent.critic), strict=True))


# ------------------------------------------------------------------------------------------ init


def _is_orthogonal(weight, gain):
    w = weight.detach().double()
    gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    return torch.allclose(gram, gain**2 * torch.eye(gram.shape[0], dtype=torch.float64), atol=1e-5)


def test_orthogonal_init_option():
    plain = make_policy(ortho_init=False)
    ortho = make_policy(ortho_init=True)
    trunk = linears(ortho.actor.trunk)
    assert len(trunk) == 2
    for layer in trunk:
        assert _is_orthogonal(layer.weight, math.sqrt(2))
        assert torch.all(layer.bias == 0)
    assert _is_orthogonal(ortho.actor.mean.weight, 0.01)  # small policy head
    assert torch.all(ortho.actor.mean.bias == 0)
    # the default (PyTorch's) init is not orthogonal and has non-zero biases
    assert not any(_is_orthogonal(layer.weight, math.sqrt(2)) for layer in linears(plain.actor.trunk))
    assert any(layer.bias.abs().sum() > 0 for layer in linears(plain.actor))

    discrete = make_policy(gym.spaces.Discrete(4), ortho_init=True)
    layers = linears(discrete.actor)
    assert all(_is_orthogonal(layer.weight, math.sqrt(2)) for layer in layers[:-1])
    assert _is_orthogonal(layers[-1].weight, 0.01)


def test_orthogonal_init_of_the_critic():
    agent = _agent(ortho_init=True)
    layers = linears(agent.critic)
    assert all(_is_orthogonal(layer.weight, math.sqrt(2)) for layer in layers[:-1])
    assert _is_orthogonal(layers[-1].weight, 1.0)
    assert all(torch.all(layer.bias == 0) for layer in layers)
