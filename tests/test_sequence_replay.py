"""The replay buffer of sequences (sequence_replay.py): windows of consecutive steps of one env, their stored first
states, the mask after a later episode start, the ring's time order, and bad lengths."""

from __future__ import annotations

import pytest
import torch

from duetrl.errors import UserError
from duetrl.sequence_replay import SequenceReplay


def filled(steps: int, slots: int = 10, episode_starts: dict[int, list[int]] | None = None) -> SequenceReplay:
    """A buffer of 2 envs whose step t of env e has obs (t, e), action t, state 10 * t + e (2 wide), and starts
    an episode at t = 0 and at the steps ``episode_starts[e]``."""
    episode_starts = episode_starts or {}
    buffer = SequenceReplay(2 * slots, 2, act_dim=1, num_envs=2, state_dims={"actor_state": 2}, device="cpu")
    for t in range(steps):
        env = torch.arange(2.0)
        start = torch.tensor([t == 0 or t in episode_starts.get(e, []) for e in range(2)])
        buffer.add(
            obs=torch.stack([torch.full((2,), float(t)), env], 1),
            action=torch.full((2, 1), float(t)),
            reward=-env,
            terminated=torch.zeros(2),
            truncated=torch.zeros(2),
            next_obs=torch.stack([torch.full((2,), t + 1.0), env], 1),
            start=start,
            actor_state=(10 * t + env).unsqueeze(1).expand(2, 2),
        )
    return buffer


def test_windows_are_consecutive_steps_of_one_env_with_their_stored_states():
    buffer = filled(8)
    assert len(buffer) == 16 and buffer.can_sample(8) and not buffer.can_sample(9)
    window = buffer.sample(64, 5, torch.Generator().manual_seed(0))
    assert window["obs"].shape == (5, 64, 2) and window["action"].shape == (5, 64, 1)
    assert window["actor_state"].shape == (5, 64, 2) and window["alive"].shape == (5, 64)
    t, env = window["obs"][..., 0], window["obs"][..., 1]
    assert (env == env[0]).all()  # one env per window
    assert (t.diff(dim=0) == 1).all()  # consecutive steps in time order
    torch.testing.assert_close(window["next_obs"][:-1], window["obs"][1:])
    torch.testing.assert_close(window["actor_state"][..., 0], 10 * t + env)  # the state stored with each step
    assert t[0].min() == 0 and t[0].max() == 3  # every first step that leaves room for 5: 0..3
    assert window["alive"][1:].all() or window["start"][1:].any()


def test_steps_after_a_later_episode_start_are_masked():
    buffer = filled(10, episode_starts={0: [4]})  # env 0: episodes 0-3 and 4-9; env 1: one episode
    window = buffer.sample(256, 4, torch.Generator().manual_seed(1))
    t, env = window["obs"][..., 0], window["obs"][..., 1]
    expected = ~((env == 0) & (t >= 4) & (t[0] < 4))  # env 0 past step 4, in a window begun before it
    assert torch.equal(window["alive"], expected)
    assert window["alive"][0].all()  # a window's first step is always seen, an episode start or not
    assert torch.equal(window["start"], (t == 0) | ((env == 0) & (t == 4)))
    crossing = (env[0] == 0) & (t[0] == 2)  # steps 2, 3 | 4, 5: the last two masked
    assert crossing.any() and window["alive"][:, crossing].T.tolist()[0] == [True, True, False, False]


def test_the_ring_keeps_time_order_across_its_wrap():
    buffer = filled(15)  # 10 slots: steps 5..14 kept, slot 0 holds step 10
    assert len(buffer) == 20
    window = buffer.sample(256, 10, torch.Generator().manual_seed(2))
    t = window["obs"][..., 0]
    assert (t == torch.arange(5.0, 15.0).unsqueeze(1)).all()  # the only window of 10: never newest-to-oldest
    short = buffer.sample(256, 3, torch.Generator().manual_seed(3))["obs"][..., 0]
    assert (short.diff(dim=0) == 1).all() and short.min() == 5 and short.max() == 14


def test_state_dict_round_trip():
    buffer = filled(13)
    copy = SequenceReplay(20, 2, act_dim=1, num_envs=2, state_dims={"actor_state": 2}, device="cpu")
    copy.load_state_dict(buffer.state_dict())
    a = buffer.sample(32, 4, torch.Generator().manual_seed(4))
    b = copy.sample(32, 4, torch.Generator().manual_seed(4))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_window_longer_than_an_envs_share_is_a_user_error():
    buffer = filled(0)
    buffer.check_length(10)
    with pytest.raises(UserError, match="rnn_burn_in \\+ rnn_seq_len = 11 .*buffer_size // num_envs = 10"):
        buffer.check_length(11)
