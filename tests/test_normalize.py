"""Running observation statistics and the reward scaler, against statistics of all the data at once."""

import numpy as np
import pytest
import torch

from duetrl.normalize import RewardScaler, RunningNorm, pool


def test_running_norm_pools_batches_into_the_statistics_of_all_data():
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=(n, 4)) for n in (1, 5, 1, 17, 2)]
    norm = RunningNorm((4,))
    for batch in batches:
        norm.update(torch.as_tensor(batch, dtype=torch.float32))
    data = np.concatenate([b.astype(np.float32).astype(np.float64) for b in batches])
    # The prior (mean 0, var 1, count 1e-4) weighs 1e-4 samples: negligible at this tolerance.
    np.testing.assert_allclose(norm.mean.numpy(), data.mean(0), rtol=1e-5)
    np.testing.assert_allclose(norm.var.numpy(), data.var(0), rtol=1e-5)
    assert norm.count.item() == pytest.approx(len(data), abs=1e-3)
    x = torch.as_tensor(data[:3], dtype=torch.float32)
    expected = (data[:3] - data.mean(0)) / np.sqrt(data.var(0) + 1e-8)
    np.testing.assert_allclose(norm(x).numpy(), expected, rtol=1e-4, atol=1e-5)


def test_pool_gives_the_same_numbers_on_tensors_as_on_arrays():
    # update() pools with numpy on CPU and with torch elsewhere (CUDA): the one pool() must agree bit for bit.
    rng = np.random.default_rng(1)
    state = [rng.normal(size=3), rng.uniform(0.5, 2, size=3), np.array(7.0)]
    tensors = [torch.as_tensor(a.copy()) for a in state]
    batch = rng.normal(size=(4, 3))
    pool(*state, batch.mean(0), batch.var(0), 4)
    t_batch = torch.as_tensor(batch)
    pool(*tensors, t_batch.mean(0), t_batch.var(0, unbiased=False), 4)
    for a, t in zip(state, tensors, strict=True):
        np.testing.assert_allclose(t.numpy(), a, rtol=1e-15, atol=0)
    assert state[2] == 11.0


def test_clip_bounds_the_normalised_value():
    norm = RunningNorm((2,), clip=5.0)
    norm.update(torch.zeros(10, 2))
    assert norm(torch.tensor([[1e6, -1e6]])).tolist() == [[5.0, -5.0]]


def test_loading_a_state_dict_refreshes_the_cached_shift_and_scale():
    trained = RunningNorm((3,))
    trained.update(torch.randn(50, 3) * 4 + 2)
    fresh = RunningNorm((3,))
    fresh.load_state_dict(trained.state_dict())
    assert set(trained.state_dict()) == {"mean", "var", "count"}  # the float32 cache is derived, never saved
    x = torch.randn(6, 3)
    torch.testing.assert_close(fresh(x), trained(x))


def test_reward_scaler_divides_by_the_std_of_the_discounted_return_and_resets_it_at_episode_ends():
    scaler = RewardScaler(num_envs=2, gamma=0.5)
    rewards = [torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0])]
    done = [torch.tensor([False, True]), torch.tensor([False, False]), torch.tensor([False, False])]
    returns_seen = []
    ret = np.zeros(2)
    for r, d in zip(rewards, done, strict=True):
        ret = 0.5 * ret + r.numpy()
        returns_seen.append(ret.copy())
        out = scaler(r, d)
        ret[d.numpy()] = 0.0
        std = np.sqrt(np.concatenate(returns_seen).var() + 1e-8)
        np.testing.assert_allclose(out.numpy(), r.numpy() / std, rtol=1e-3)  # the 1e-4-sample prior: ~3e-4
    np.testing.assert_allclose(scaler.returns.numpy(), ret)
