"""The replay buffer (ring storage, uniform sampling, checkpoint round-trip) and the on-policy rollout."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from duetrl.buffers import ReplayBuffer, Rollout

CPU = torch.device("cpu")
OBS_DIM, ACT_DIM = 3, 2


def transitions(first: int, n: int) -> dict[str, torch.Tensor]:
    """``n`` transitions numbered ``first, first+1, ...``: every field of transition k is derived from k,
    so a stored row says which transition it holds."""
    ids = torch.arange(first, first + n, dtype=torch.float32)
    return {
        "obs": ids[:, None].expand(n, OBS_DIM).clone(),
        "action": -ids[:, None].expand(n, ACT_DIM).clone(),
        "reward": ids * 10,
        "next_obs": (ids + 0.5)[:, None].expand(n, OBS_DIM).clone(),
        "terminated": (ids.long() % 2 == 0),  # a bool tensor, as environments return it
    }


def stored_ids(buffer: ReplayBuffer) -> list[int]:
    return buffer.data["obs"][:, 0].long().tolist()


def filled(capacity: int, total: int, batch: int = 2) -> ReplayBuffer:
    buffer = ReplayBuffer(capacity, OBS_DIM, ACT_DIM, CPU)
    for first in range(1, total + 1, batch):
        buffer.add(**transitions(first, min(batch, total + 1 - first)))
    return buffer


def test_add_batches_fills_rows_in_order():
    buffer = ReplayBuffer(8, OBS_DIM, ACT_DIM, CPU)
    assert len(buffer) == 0 and buffer.position == 0
    buffer.add(**transitions(1, 3))
    buffer.add(**transitions(4, 2))
    assert len(buffer) == buffer.size == 5 and buffer.position == 5
    assert stored_ids(buffer) == [1, 2, 3, 4, 5, 0, 0, 0]
    torch.testing.assert_close(buffer.data["reward"][:5], torch.tensor([10.0, 20, 30, 40, 50]))
    torch.testing.assert_close(buffer.data["action"][:5], -buffer.data["obs"][:5, :ACT_DIM])
    torch.testing.assert_close(buffer.data["next_obs"][:5], buffer.data["obs"][:5] + 0.5)
    # bool terminations are stored as float 0/1
    assert buffer.data["terminated"].dtype == torch.float32
    assert buffer.data["terminated"][:5].tolist() == [0.0, 1.0, 0.0, 1.0, 0.0]


def test_wrap_around_overwrites_oldest_rows_and_size_caps():
    buffer = ReplayBuffer(5, OBS_DIM, ACT_DIM, CPU)
    buffer.add(**transitions(1, 2))
    buffer.add(**transitions(3, 2))
    assert len(buffer) == 4 and buffer.position == 4
    buffer.add(**transitions(5, 2))  # rows 4 and 0: transition 1 (the oldest) is overwritten
    assert len(buffer) == 5 and buffer.position == 1
    assert stored_ids(buffer) == [6, 2, 3, 4, 5]
    buffer.add(**transitions(7, 3))  # rows 1, 2, 3
    assert len(buffer) == 5 and buffer.position == 4
    assert stored_ids(buffer) == [6, 7, 8, 9, 5]
    # every field of a row belongs to the same transition
    ids = buffer.data["obs"][:, 0]
    torch.testing.assert_close(buffer.data["reward"], ids * 10)
    torch.testing.assert_close(buffer.data["next_obs"][:, 0], ids + 0.5)
    assert buffer.data["terminated"].tolist() == [float(int(i) % 2 == 0) for i in ids]


def test_size_never_exceeds_capacity():
    buffer = ReplayBuffer(4, OBS_DIM, ACT_DIM, CPU)
    for k in range(10):
        buffer.add(**transitions(3 * k + 1, 3))
        assert len(buffer) == min(3 * (k + 1), 4)
        assert buffer.position == 3 * (k + 1) % 4
    assert buffer.data["obs"].shape == (4, OBS_DIM)


def test_sample_shapes_and_dtypes():
    buffer = filled(16, 10)
    gen = torch.Generator().manual_seed(0)
    batch = buffer.sample(7, generator=gen)
    assert set(batch) == {"obs", "action", "reward", "next_obs", "terminated"}
    assert batch["obs"].shape == (7, OBS_DIM) and batch["next_obs"].shape == (7, OBS_DIM)
    assert batch["action"].shape == (7, ACT_DIM)
    assert batch["reward"].shape == (7,) and batch["terminated"].shape == (7,)
    assert all(v.dtype == torch.float32 for v in batch.values())
    # rows stay whole: the fields of a sampled row belong to one transition
    torch.testing.assert_close(batch["reward"], batch["obs"][:, 0] * 10)
    torch.testing.assert_close(batch["action"], -batch["obs"][:, :ACT_DIM])


def test_sample_returns_only_filled_rows():
    buffer = ReplayBuffer(100, OBS_DIM, ACT_DIM, CPU)
    buffer.add(**transitions(1, 3))
    gen = torch.Generator().manual_seed(0)
    ids = buffer.sample(300, generator=gen)["obs"][:, 0]
    assert set(ids.long().tolist()) == {1, 2, 3}  # never an empty (zero) row, and every filled row is drawn


def test_sample_with_a_generator_is_reproducible():
    buffer = filled(32, 20)
    a = buffer.sample(10, generator=torch.Generator().manual_seed(3))
    b = buffer.sample(10, generator=torch.Generator().manual_seed(3))
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def assert_same_buffer(a: ReplayBuffer, b: ReplayBuffer) -> None:
    assert (a.position, a.size, a.capacity) == (b.position, b.size, b.capacity)
    for key in a.data:
        torch.testing.assert_close(a.data[key][: a.size], b.data[key][: b.size], rtol=0, atol=0)


@pytest.mark.parametrize("total", [0, 3, 6, 8, 13], ids=["empty", "partial", "partial-2", "exactly-full", "wrapped"])
def test_state_dict_round_trip(total):
    capacity = 8
    source = filled(capacity, total, batch=3)
    state = source.state_dict()
    assert state["size"] == min(total, capacity) and state["position"] == total % capacity
    assert state["obs"].shape == (state["size"], OBS_DIM)  # only the filled part is kept
    restored = ReplayBuffer(capacity, OBS_DIM, ACT_DIM, CPU)
    restored.load_state_dict(state)
    assert_same_buffer(source, restored)
    # and both go on identically: the next writes land on the same rows
    for buffer in (source, restored):
        buffer.add(**transitions(100, 3))
    assert_same_buffer(source, restored)
    if total >= capacity:
        assert stored_ids(restored) == stored_ids(source)


def test_state_dict_after_wrap_keeps_ring_order():
    source = filled(5, 7, batch=1)  # transitions 1..7 in a ring of 5: rows hold 6, 7, 3, 4, 5
    assert stored_ids(source) == [6, 7, 3, 4, 5] and source.position == 2
    restored = ReplayBuffer(5, OBS_DIM, ACT_DIM, CPU)
    restored.load_state_dict(source.state_dict())
    restored.add(**transitions(8, 1))  # overwrites the oldest (3), not the newest
    assert stored_ids(restored) == [6, 7, 8, 4, 5]


def test_rollout_stack_shapes():
    rollout = Rollout()
    n_envs, steps = 3, 4
    for t in range(steps):
        rollout.add(
            obs=torch.full((n_envs, OBS_DIM), float(t)),
            action=torch.zeros(n_envs, ACT_DIM),
            reward=torch.full((n_envs,), float(t)),
            done=torch.zeros(n_envs, dtype=torch.bool),
        )
    assert len(rollout) == steps
    stacked = rollout.stack()
    assert stacked["obs"].shape == (steps, n_envs, OBS_DIM)
    assert stacked["action"].shape == (steps, n_envs, ACT_DIM)
    assert stacked["reward"].shape == (steps, n_envs)
    assert stacked["done"].shape == (steps, n_envs) and stacked["done"].dtype == torch.bool
    assert stacked["reward"][:, 0].tolist() == [0.0, 1.0, 2.0, 3.0]  # time is the leading axis
    rollout.clear()
    assert len(rollout) == 0


# ---------------------------------------------------------------------------------------------- image observations

IMAGE = gym.spaces.Box(0, 255, (2, 2, 1), np.uint8)  # an image: stored once, as uint8


def frames(values: list[int]) -> torch.Tensor:
    """One tiny image per env, every pixel ``value``: ``[N, 2, 2, 1]`` uint8."""
    return torch.tensor(values, dtype=torch.uint8)[:, None, None, None].expand(-1, 2, 2, 1).clone()


def true_next_obs(buffer: ReplayBuffer, truth: dict[int, int]) -> None:
    """Every stored row's next observation (all of them sampled at once) is the one recorded as true."""
    index = torch.arange(buffer.size)
    next_obs = buffer._next_obs(index)[:, 0, 0, 0].tolist()
    obs = buffer.data["obs"][: buffer.size, 0, 0, 0].tolist()
    assert {o: n for o, n in zip(obs, next_obs, strict=True)} == {o: truth[o] for o in obs}


def test_image_observations_are_stored_once_and_next_obs_is_exact_across_episode_ends_resets_and_wraps():
    buffer = ReplayBuffer(7, IMAGE, 1, CPU)  # 7 rows, 2 envs: the ring wraps mid-batch
    assert buffer.compact and "next_obs" not in buffer.data and buffer.data["obs"].dtype == torch.uint8
    truth: dict[int, int] = {}  # obs value -> its true next obs value (values never repeat)
    obs = [10, 20]
    for step in range(1, 12):
        nxt = [10 + step, 20 + step]
        final = list(nxt)
        if step % 4 == 0:  # env 0's episode ends: the final obs is not the next row's (a reset) obs
            final[0], nxt[0] = 100 + step, 10 + step
        if step == 6:  # env 1 is reset between adds (as a resumed run that could not restore its envs)
            nxt[1] = 200
        for o, f in zip(obs, final, strict=True):
            truth[o] = f
        action = torch.zeros(2, 1)
        buffer.add(
            obs=frames(obs), action=action, reward=torch.zeros(2), next_obs=frames(final), terminated=torch.zeros(2)
        )
        true_next_obs(buffer, truth)
        obs = nxt
    assert len(buffer.finals) <= buffer.size  # kept aside only where needed, and dropped with their rows
    restored = ReplayBuffer(7, IMAGE, 1, CPU)
    restored.load_state_dict(ckpt_round_trip(buffer.state_dict()))
    true_next_obs(restored, truth)


def ckpt_round_trip(state: dict) -> dict:
    from duetrl.checkpoint import pack, unpack

    tensors: dict[str, torch.Tensor] = {}
    return unpack(pack(state, tensors), tensors)


def test_bytes_per_transition_of_84x84x4_frames():
    space = gym.spaces.Box(0, 255, (84, 84, 4), np.uint8)
    compact = ReplayBuffer(100, space, 6, CPU)
    # one uint8 frame stack (28,224 bytes) plus action, reward and termination: no second copy for next_obs
    assert compact.bytes_per_transition() == 84 * 84 * 4 + 4 * 6 + 4 + 4
