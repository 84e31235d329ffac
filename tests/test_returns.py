"""The return/advantage math against numbers worked out by hand (gamma = 0.5).

Batch used throughout: T = 4 steps, N = 2 envs.

- env 0 terminates at t=1 (no bootstrap), a new episode runs t=2..3 and is cut by the batch end.
- env 1 is truncated at t=2 (bootstrap from the final observation's value 7), a new episode is at t=3.

``values`` are consistent with ``next_values`` inside an episode (next_values[t] == values[t+1]) so that
GAE(lambda=1) + V equals the Monte-Carlo return.
"""

import pytest
import torch

from duetrl.returns import discounted_returns, gae, normalize, nstep_targets, td_errors, td_targets

G = 0.5


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


REWARDS = t([[1, 2], [2, -1], [3, 0], [4, 6]])
VALUES = t([[1, 0.5], [2, 1], [3, 1.5], [4, 2]])
NEXT_VALUES = t([[2, 1], [20, 1.5], [4, 7], [40, 8]])
TERMINATED = torch.tensor([[0, 0], [1, 0], [0, 0], [0, 0]], dtype=torch.bool)
TRUNCATED = torch.tensor([[0, 0], [0, 0], [0, 1], [0, 0]], dtype=torch.bool)

# env0: G3 = 4 + .5*40 = 24, G2 = 3 + .5*24 = 15, G1 = 2 (terminal), G0 = 1 + .5*2 = 2
# env1: G3 = 6 + .5*8 = 10, G2 = 0 + .5*7 = 3.5 (truncated), G1 = -1 + .5*3.5 = .75, G0 = 2 + .5*.75 = 2.375
MC = t([[2, 2.375], [2, 0.75], [15, 3.5], [24, 10]])
# delta = r + .5 * (1 - term) * nv - v
TD = t([[1, 2], [0, -1.25], [2, 2], [20, 8]])
# gamma * lambda = .25; the running sum restarts where an episode ended (t=1 env0, t=2 env1)
GAE_HALF = t([[1, 1.8125], [0, -0.75], [7, 2], [20, 8]])
# 2-step: r_t + .5 r_{t+1} + .25 V(s_{t+2}), cut at the episode or batch end
NSTEP2 = t([[2, 1.875], [2, 0.75], [15, 3.5], [24, 10]])


def close(a, b):
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


# -------------------------------------------------------------------------------------- discounted returns


def test_discounted_returns_hand_computed():
    out = discounted_returns(REWARDS, NEXT_VALUES, TERMINATED, TRUNCATED, G)
    assert out.shape == (4, 2)
    close(out, MC)


def test_termination_does_not_bootstrap_and_nothing_leaks_back():
    # Huge values everywhere after the terminal step must not reach t <= 1 of env 0.
    nv = NEXT_VALUES.clone()
    nv[1, 0] = 1e6  # the (meaningless) value of the terminal observation
    rewards = REWARDS.clone()
    rewards[2:, 0] = 1e6  # the next episode's rewards
    out = discounted_returns(rewards, nv, TERMINATED, TRUNCATED, G)
    close(out[:2, 0], t([2, 2]))


def test_truncation_bootstraps_from_final_observation_value():
    nv = NEXT_VALUES.clone()
    nv[2, 1] = 100.0  # value of the final (pre-reset) observation of the truncated episode
    out = discounted_returns(REWARDS, nv, TERMINATED, TRUNCATED, G)
    # G2 = 0 + .5*100 = 50, G1 = -1 + 25 = 24, G0 = 2 + 12 = 14; the new episode at t=3 is untouched
    close(out[:, 1], t([14, 24, 50, 10]))


def test_batch_end_bootstraps_and_ends_at_last_step():
    rewards = t([[1, 1], [1, 1]])
    nv = t([[3, 3], [100, 100]])
    terminated = torch.tensor([[0, 0], [1, 0]], dtype=torch.bool)
    truncated = torch.tensor([[0, 0], [0, 1]], dtype=torch.bool)
    out = discounted_returns(rewards, nv, terminated, truncated, G)
    # env0 terminates at the last step: 1, 1 + .5; env1 truncated there: 1 + 50, 1 + .5*51
    close(out, t([[1.5, 26.5], [1, 51]]))
    # no episode end at all: plain bootstrap from the last next value
    none = torch.zeros(2, 2, dtype=torch.bool)
    close(discounted_returns(rewards, nv, none, none, G), t([[26.5, 26.5], [51, 51]]))


# ------------------------------------------------------------------------------------------ TD


def test_td_errors_hand_computed():
    close(td_errors(REWARDS, VALUES, NEXT_VALUES, TERMINATED, G), TD)


def test_td_targets_hand_computed():
    # the TD error's target part: r + gamma * V(s') where the episode goes on, r alone where it terminated
    close(td_targets(REWARDS, NEXT_VALUES, TERMINATED, G), TD + VALUES)
    assert td_targets(torch.tensor([1.0]), torch.tensor([5.0]), torch.tensor([1.0]), 0.9).item() == 1.0
    assert td_targets(torch.tensor([1.0]), torch.tensor([5.0]), torch.tensor([0.0]), 0.9).item() == 5.5


# ------------------------------------------------------------------------------------------ GAE


def test_gae_hand_computed():
    close(gae(REWARDS, VALUES, NEXT_VALUES, TERMINATED, TRUNCATED, G, 0.5), GAE_HALF)


def test_gae_with_gradient_takes_the_torch_path_and_agrees():
    values = VALUES.clone().requires_grad_()
    out = gae(REWARDS, values, NEXT_VALUES, TERMINATED, TRUNCATED, G, 0.5)
    close(out.detach(), GAE_HALF)
    out.sum().backward()
    # d(sum_t A_t)/dV_s = -sum over steps t <= s of s's episode of (gamma * lambda)^(s - t), with gamma * lambda = .25
    close(values.grad, t([[-1, -1], [-1.25, -1.25], [-1, -1.3125], [-1.25, -1]]))


def test_gae_lambda_zero_is_td_error():
    close(gae(REWARDS, VALUES, NEXT_VALUES, TERMINATED, TRUNCATED, G, 0.0), TD)


def test_gae_lambda_one_plus_values_is_discounted_return():
    out = gae(REWARDS, VALUES, NEXT_VALUES, TERMINATED, TRUNCATED, G, 1.0) + VALUES
    close(out, MC)
    close(out, discounted_returns(REWARDS, NEXT_VALUES, TERMINATED, TRUNCATED, G))


# ------------------------------------------------------------------------------------------ n-step


def test_nstep_hand_computed():
    close(nstep_targets(REWARDS, NEXT_VALUES, TERMINATED, TRUNCATED, G, 2), NSTEP2)


def test_nstep_one_is_td_target():
    out = nstep_targets(REWARDS, NEXT_VALUES, TERMINATED, TRUNCATED, G, 1)
    close(out, t([[2, 2.5], [2, -0.25], [5, 3.5], [24, 10]]))
    close(out, TD + VALUES)


@pytest.mark.parametrize("n", [4, 5, 100])
def test_nstep_beyond_batch_is_discounted_return(n):
    close(nstep_targets(REWARDS, NEXT_VALUES, TERMINATED, TRUNCATED, G, n), MC)


def test_nstep_rejects_n_below_one():
    with pytest.raises(ValueError):
        nstep_targets(REWARDS, NEXT_VALUES, TERMINATED, TRUNCATED, G, 0)


# ------------------------------------------------------------------------------------------ normalize


def test_normalize_hand_computed():
    # mean 2.5, unbiased std sqrt(5/3)
    out = normalize(t([1, 2, 3, 4]))
    close(out, t([-1.161895, -0.387298, 0.387298, 1.161895]))


def test_normalize_keeps_shape_and_standardizes():
    x = t([[1, 10], [3, -4], [8, 0]])
    out = normalize(x)
    assert out.shape == x.shape
    assert abs(out.mean().item()) < 1e-6
    assert abs(out.std().item() - 1.0) < 1e-5


def test_normalize_single_element_is_zero():
    close(normalize(t([5.0])), t([0.0]))
