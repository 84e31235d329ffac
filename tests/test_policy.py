"""The policy on every action space: MultiDiscrete and MultiBinary log-probabilities and entropies against
hand-computed values, env actions in the space's shape, and one clear line for the spaces duetrl does not take."""

import math

import numpy as np
import pytest
import torch
from gymnasium import spaces

from duetrl.errors import UserError
from duetrl.policy import Policy, PolicyConfig

OBS = spaces.Box(-1, 1, (2,), np.float32)


def policy_with_logits(act_space, logits: list[float]) -> Policy:
    """A policy whose actor outputs ``logits`` whatever the observation (no hidden layer, zero weights)."""
    policy = Policy(OBS, act_space, PolicyConfig(hidden=()))
    layer = policy.actor.net[0]
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.copy_(torch.tensor(logits))
    return policy


def test_multidiscrete_log_prob_and_entropy_are_sums_over_entries():
    policy = policy_with_logits(spaces.MultiDiscrete([3, 2]), [0.0, 1.0, 2.0, 0.0, math.log(3)])
    obs = torch.zeros(1, 2)
    first = [1 / (1 + math.e + math.e**2), math.e / (1 + math.e + math.e**2), math.e**2 / (1 + math.e + math.e**2)]
    second = [0.25, 0.75]
    log_prob, entropy, _ = policy.evaluate_actions(obs, torch.tensor([[2, 0]]))
    assert log_prob.item() == pytest.approx(math.log(first[2]) + math.log(second[0]), abs=1e-6)
    by_hand = -sum(p * math.log(p) for p in first) - sum(p * math.log(p) for p in second)
    assert entropy.item() == pytest.approx(by_hand, abs=1e-6)
    # deterministic: the most likely index of each entry; sampled: indices within each entry's range
    assert policy.act(obs, deterministic=True).tolist() == [[2, 1]]
    raw, action, sampled_log_prob = policy.sample(torch.zeros(500, 2))
    assert raw.shape == (500, 2) and action.shape == (500, 2)
    assert raw[:, 0].max() == 2 and raw[:, 1].max() == 1 and raw.min() == 0
    torch.testing.assert_close(sampled_log_prob, policy.evaluate_actions(torch.zeros(500, 2), raw).log_prob)


def test_multidiscrete_starts_shift_the_env_action_and_one_hot_for_a_q_critic():
    policy = policy_with_logits(spaces.MultiDiscrete([3, 2], start=[1, -1]), [0.0, 0.0, 9.0, 9.0, 0.0])
    action = policy.act(torch.zeros(1, 2), deterministic=True)
    assert action.tolist() == [[3, -1]]
    assert policy.one_hot(action).tolist() == [[0, 0, 1, 1, 0]]


def test_multibinary_log_prob_and_entropy_by_hand():
    policy = policy_with_logits(spaces.MultiBinary(2), [0.0, math.log(3)])  # p(1) = 0.5, 0.75
    obs = torch.zeros(1, 2)
    log_prob, entropy, _ = policy.evaluate_actions(obs, torch.tensor([[1.0, 0.0]]))
    assert log_prob.item() == pytest.approx(math.log(0.5) + math.log(0.25), abs=1e-6)
    assert entropy.item() == pytest.approx(math.log(2) - (0.75 * math.log(0.75) + 0.25 * math.log(0.25)), abs=1e-6)
    assert policy.act(obs, deterministic=True).tolist() == [[0.0, 1.0]]  # p = 0.5 is not above one half


def test_box_of_any_shape_is_a_flat_gaussian_reshaped_for_the_env():
    policy = Policy(OBS, spaces.Box(-1, 1, (2, 3), np.float32), PolicyConfig(hidden=(8,)))
    raw, action, log_prob = policy.sample(torch.zeros(4, 2))
    assert raw.shape == (4, 6) and action.shape == (4, 2, 3) and log_prob.shape == (4,)
    assert action.abs().max() <= 1
    assert policy.act(torch.zeros(4, 2)).shape == (4, 2, 3)


def test_unbounded_box_with_clip_leaves_actions_alone():
    policy = Policy(OBS, spaces.Box(-np.inf, np.inf, (2,), np.float32), PolicyConfig(hidden=(8,)))
    raw, action, _ = policy.sample(torch.zeros(4, 2))
    assert torch.equal(raw, action)
    with pytest.raises(UserError, match="squash=tanh needs a bounded action space"):
        Policy(OBS, spaces.Box(-np.inf, np.inf, (2,), np.float32), PolicyConfig(bound_by="tanh"))


@pytest.mark.parametrize(
    "space", [spaces.Text(4), spaces.Sequence(spaces.Discrete(2)), spaces.Graph(spaces.Discrete(2), None)]
)
def test_other_action_spaces_get_one_line_naming_what_is_supported(space):
    with pytest.raises(
        UserError, match=r"is not supported: duetrl takes Box \(any shape\), Discrete, MultiDiscrete or MultiBinary"
    ):
        Policy(OBS, space)


def test_a_policy_on_dict_observations_sees_features():
    space = spaces.Dict({"img": spaces.Box(0, 255, (10, 10, 2), np.uint8), "pos": OBS})
    policy = Policy(space, spaces.Discrete(3), PolicyConfig(hidden=(16,)))
    obs = {"img": torch.zeros(5, 10, 10, 2, dtype=torch.uint8), "pos": torch.zeros(5, 2)}
    raw, action, log_prob = policy.sample(obs)
    assert raw.shape == action.shape == log_prob.shape == (5,)
    assert "encoder.parts.0.conv.0.weight" in policy.state_dict()  # the policy's own, a critic may read it
