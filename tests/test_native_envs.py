"""The torch-native Pendulum follows Gymnasium's Pendulum-v1 exactly, ``make`` picks it when asked, and its
Gymnasium twin (for evaluation and video) takes the same arguments."""

import importlib

import gymnasium as gym
import numpy as np
import pytest
import torch

import duetrl
from duetrl.envs import make
from duetrl.envs.classic import Pendulum as GymnasiumPendulum
from duetrl.envs.classic import vector_twin
from duetrl.envs.gymnasium_vec import GymnasiumBatchEnv
from duetrl.envs.make import env_factory
from duetrl.envs.native import NATIVE_ENVS, Pendulum
from duetrl.errors import UserError

ATOL = 1e-6


def gym_pendulum(g=10.0, m=1.0, l=1.0):
    env = gym.make("Pendulum-v1", g=g)
    env.reset(seed=0)
    env.unwrapped.m, env.unwrapped.l = m, l  # Gymnasium takes only g as an argument
    return env


def cases(seed, n=24):
    """States across several turns and up to past the speed limit, actions also outside [-2, 2]."""
    rng = np.random.default_rng(seed)
    states = np.stack([rng.uniform(-3 * np.pi, 3 * np.pi, n), rng.uniform(-9.0, 9.0, n)], axis=1)
    states[:4] = [[0.0, 0.0], [np.pi, 0.0], [-np.pi, 7.9], [2.9, -8.0]]
    actions = rng.uniform(-4.0, 4.0, n).astype(np.float32)
    actions[:4] = [0.0, 2.0, -2.0, 3.5]
    return states, actions


@pytest.mark.parametrize("g, m, l", [(10.0, 1.0, 1.0), (0.0, 1.0, 1.0), (10.0, 1.7, 0.6), (0.0, 0.5, 2.0)])
def test_step_matches_gymnasium(g, m, l):
    states, actions = cases(seed=int(g * 10 + m * 100))
    n = len(states)
    env = Pendulum(n, g=g, m=m, l=l, dtype=torch.float64)
    env.reset(seed=0)
    env.state = torch.tensor(states, dtype=torch.float64)
    obs, reward, terminated, truncated, info = env.step(torch.tensor(actions).reshape(n, 1))
    assert obs.shape == (n, 3) and reward.shape == (n,) and terminated.shape == truncated.shape == (n,)
    assert not terminated.any() and not truncated.any() and "episode_return" not in info
    torch.testing.assert_close(info["final_obs"], obs, rtol=0, atol=0)

    reference = gym_pendulum(g, m, l)
    for i in range(n):
        reference.unwrapped.state = states[i].copy()
        ref_obs, ref_reward, ref_term, ref_trunc, _ = reference.unwrapped.step(actions[i : i + 1])
        np.testing.assert_allclose(obs[i].numpy(), ref_obs, atol=ATOL, err_msg=f"obs, case {i}")
        np.testing.assert_allclose(float(reward[i]), ref_reward, atol=ATOL, err_msg=f"reward, case {i}")
        np.testing.assert_allclose(env.state[i].numpy(), reference.unwrapped.state, atol=ATOL, err_msg=f"state {i}")
        assert bool(terminated[i]) == ref_term and bool(truncated[i]) == ref_trunc
    reference.close()
    # the speed limit and the torque limit both bind in these cases
    assert env.state[:, 1].abs().max() == pytest.approx(8.0)


def test_dtype_float32_stays_close_to_float64():
    states, actions = cases(seed=5)
    n = len(states)
    out = {}
    for dtype in (torch.float32, torch.float64):
        env = Pendulum(n, dtype=dtype)
        env.state = torch.tensor(states, dtype=dtype)
        obs, reward, *_ = env.step(torch.tensor(actions).reshape(n, 1))
        assert obs.dtype == torch.float32 and reward.dtype == torch.float32
        assert env.state.dtype == dtype
        out[dtype] = obs, reward
    torch.testing.assert_close(out[torch.float32][0], out[torch.float64][0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out[torch.float32][1], out[torch.float64][1], atol=1e-4, rtol=1e-4)


def test_episode_truncates_at_200_and_autoresets():
    n = 3
    env = Pendulum(n, dtype=torch.float64)
    obs, _ = env.reset(seed=1)
    reference = gym.make("Pendulum-v1")  # with its TimeLimit(200)
    reference.reset(seed=0)
    reference.unwrapped.state = env.state[0].numpy().copy()
    rng = np.random.default_rng(0)
    total = np.zeros(n)
    ref_total = 0.0
    for t in range(1, 201):
        actions = rng.uniform(-2.0, 2.0, (n, 1)).astype(np.float32)
        state_before = env.state.clone()
        obs, reward, terminated, truncated, info = env.step(torch.from_numpy(actions))
        ref_obs, ref_reward, ref_term, ref_trunc, _ = reference.step(actions[0])
        total += reward.double().numpy()
        ref_total += ref_reward
        assert not terminated.any() and not ref_term
        assert ref_trunc == (t == 200)
        if t < 200:
            assert not truncated.any() and "episode_return" not in info, t
            torch.testing.assert_close(obs, info["final_obs"], rtol=0, atol=0)
            assert env.elapsed.tolist() == [t] * n
    # the 200th step: truncated everywhere, at the same step as Gymnasium's TimeLimit
    assert truncated.all()
    final = info["final_obs"]
    np.testing.assert_allclose(final[0].numpy(), ref_obs, atol=ATOL)
    expected_next, _, _ = env._dynamics(state_before, torch.from_numpy(actions))
    torch.testing.assert_close(final, env._observe(expected_next).float())
    # each row was reset: obs is the first observation of the next episode, not the final one
    assert not torch.allclose(obs, final)
    torch.testing.assert_close(obs, env._observe(env.state).float())
    assert env.state[:, 0].abs().max() <= np.pi and env.state[:, 1].abs().max() <= 1.0  # a fresh start state
    assert env.elapsed.tolist() == [0] * n
    assert info["episode_length"] == [200] * n
    np.testing.assert_allclose(info["episode_return"], total, rtol=1e-6, atol=1e-3)
    assert info["episode_return"][0] == pytest.approx(ref_total, abs=1e-3)
    # the next episode counts from zero
    obs2, reward2, _, truncated2, info2 = env.step(torch.zeros(n, 1))
    assert not truncated2.any() and "episode_return" not in info2
    assert env.elapsed.tolist() == [1] * n and env.episode_return.numpy() == pytest.approx(reward2.double().numpy())
    reference.close()


def test_reset_with_seed_is_reproducible():
    env = Pendulum(5)
    first, _ = env.reset(seed=7)
    state = env.state.clone()
    for _ in range(3):
        env.step(torch.ones(5, 1))
    again, _ = env.reset(seed=7)
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    torch.testing.assert_close(env.state, state, rtol=0, atol=0)
    other_env, _ = Pendulum(5).reset(seed=7)
    torch.testing.assert_close(other_env, first, rtol=0, atol=0)
    different, _ = env.reset(seed=8)
    assert not torch.allclose(different, first)
    unseeded, _ = env.reset()  # continues the generator: a new start
    assert not torch.allclose(unseeded, different)
    # start states lie in Gymnasium's range: theta in [-pi, pi], theta_dot in [-1, 1]
    assert env.state[:, 0].abs().max() <= np.pi and env.state[:, 1].abs().max() <= 1.0
    assert first.shape == (5, 3) and first.dtype == torch.float32


def test_spaces_match_gymnasium():
    env, reference = Pendulum(2), gym.make("Pendulum-v1")
    assert env.single_observation_space == reference.observation_space
    assert env.single_action_space == reference.action_space
    reference.close()


# ------------------------------------------------------------------------------------------ make


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_make_returns_the_native_pendulum(backend):
    env = make("Pendulum-v1", 8, backend=backend)  # auto: native from 8 envs on
    assert isinstance(env, Pendulum) and env.num_envs == 8 and env.backend == "torch"
    obs, _ = env.reset(seed=0)
    assert obs.shape == (8, 3)
    assert make("Pendulum-v1", 8, backend=backend, g=0.0).g == 0.0  # env kwargs reach the native env


def test_make_gymnasium_backend_for_pendulum():
    env = make("Pendulum-v1", 2, backend="gymnasium")
    try:
        assert isinstance(env, GymnasiumBatchEnv)
    finally:
        env.close()


def test_make_torch_backend_for_cartpole():
    if "CartPole-v1" in NATIVE_ENVS:
        env = make("CartPole-v1", 2, backend="torch")
        assert isinstance(env, NATIVE_ENVS["CartPole-v1"])
    else:
        with pytest.raises(UserError, match="no torch-native implementation"):
            make("CartPole-v1", 2, backend="torch")
    env = make("CartPole-v1", 16, backend="auto")
    try:
        expected = NATIVE_ENVS["CartPole-v1"] if "CartPole-v1" in NATIVE_ENVS else GymnasiumBatchEnv
        assert isinstance(env, expected)
    finally:
        env.close()


@pytest.mark.parametrize(
    "env_id, below, native_from",
    [("Pendulum-v1", 4, 8), ("CartPole-v1", 8, 16), ("Acrobot-v1", 16, 17), ("MountainCarContinuous-v0", 8, 16)],
)
def test_auto_picks_the_faster_backend_for_the_batch_size(env_id, below, native_from):
    """Gymnasium for small batches, where stepping envs one by one costs less than the native env's fixed cost per
    batch step; torch-native from the measured crossover on (envs/make.py's NATIVE_MIN_ENVS), and on a GPU."""
    from duetrl.envs.make import auto_backend

    assert auto_backend(env_id, 1) == auto_backend(env_id, below) == "gymnasium"
    assert auto_backend(env_id, native_from) == auto_backend(env_id, 256) == "torch"
    assert auto_backend(env_id, 1, device="cuda") == "torch"
    for n, backend in ((1, "gymnasium"), (native_from, "torch")):
        env = make(env_id, n, backend="auto")
        assert env.backend == backend
        env.close()
    assert auto_backend("Hopper-v5", 64) == auto_backend(gym.Env, 64) == "gymnasium"  # no native env


def test_make_rejects_bad_arguments():
    with pytest.raises(UserError, match="backend"):
        make("Pendulum-v1", 2, backend="jax")
    with pytest.raises(UserError, match="num_envs"):
        make("Pendulum-v1", 0)
    with pytest.raises(UserError, match="rejected its arguments"):
        make("Pendulum-v1", 2, backend="torch", mass=3.0)


def test_user_error_is_exported():
    assert duetrl.UserError is UserError


# ------------------------------------------------------------------------------------------ the other envs


def _other_cases(env_id, rng, n=32):
    """Random states (including near and past the limits) and actions (including out of bounds) per env."""
    if env_id == "CartPole-v1":
        states = rng.uniform([-2.6, -3, -0.25, -3], [2.6, 3, 0.25, 3], (n, 4))
        actions = rng.integers(0, 2, n)
    elif env_id == "MountainCarContinuous-v0":
        states = rng.uniform([-1.2, -0.07], [0.6, 0.07], (n, 2)).astype(np.float32)
        states[:3] = [[-1.2, -0.01], [0.449, 0.005], [0.44, 0.07]]  # wall bounce, just short of / past the goal
        actions = rng.uniform(-3, 3, (n, 1)).astype(np.float32)
    else:  # Acrobot-v1
        states = rng.uniform([-np.pi, -np.pi, -4 * np.pi, -9 * np.pi], [np.pi, np.pi, 4 * np.pi, 9 * np.pi], (n, 4))
        states[:2] = [[np.pi - 0.01, 0.0, 0.0, 0.0], [0.0, 0.0, 4 * np.pi, 9 * np.pi]]
        actions = rng.integers(0, 3, n)
    return states, actions


@pytest.mark.parametrize("env_id", ["CartPole-v1", "MountainCarContinuous-v0", "Acrobot-v1"])
def test_other_native_envs_step_like_gymnasium(env_id):
    rng = np.random.default_rng(7)
    states, actions = _other_cases(env_id, rng)
    n = len(states)
    env = NATIVE_ENVS[env_id](n, dtype=torch.float64)
    env.reset(seed=0)
    env.state = torch.tensor(states, dtype=torch.float64)
    obs, reward, terminated, truncated, info = env.step(torch.as_tensor(actions))
    reference = gym.make(env_id)
    reference.reset(seed=0)
    atol = 1e-5 if env_id == "MountainCarContinuous-v0" else ATOL  # Gymnasium computes that one in float32
    for i in range(n):
        reference.unwrapped.state = states[i].copy()
        if env_id == "CartPole-v1":
            reference.unwrapped.steps_beyond_terminated = None  # each case is a fresh step
        action = actions[i] if actions.ndim == 2 else int(actions[i])
        ref_obs, ref_reward, ref_term, _, _ = reference.unwrapped.step(action)
        np.testing.assert_allclose(info["final_obs"][i].numpy(), ref_obs, atol=atol, err_msg=f"obs {i}")
        np.testing.assert_allclose(float(reward[i]), ref_reward, atol=atol, err_msg=f"reward {i}")
        assert bool(terminated[i]) == ref_term, f"terminated {i}"
    assert not truncated.any()
    assert env.single_observation_space == reference.observation_space
    assert env.single_action_space == reference.action_space
    reference.close()


@pytest.mark.parametrize("env_id", ["CartPole-v1", "MountainCarContinuous-v0", "Acrobot-v1"])
def test_other_native_envs_truncate_like_gymnasium(env_id):
    limit = gym.spec(env_id).max_episode_steps
    env = NATIVE_ENVS[env_id](1, dtype=torch.float64)
    env.reset(seed=0)
    env.elapsed[:] = limit - 1
    _, _, _, truncated, info = env.step(torch.zeros(1, 1) if env_id.startswith("Mountain") else torch.ones(1))
    assert bool(truncated[0]) and info["episode_length"] == [limit]


# ------------------------------------------------------------------------------------------ Gymnasium twins


def test_twin_with_default_arguments_is_gymnasiums_pendulum():
    twin, reference = env_factory("Pendulum-v1")(), gym.make("Pendulum-v1")
    assert isinstance(twin.unwrapped, GymnasiumPendulum) and twin.spec.max_episode_steps == 200
    obs, _ = twin.reset(seed=3)
    ref_obs, _ = reference.reset(seed=3)
    np.testing.assert_array_equal(obs, ref_obs)
    rng = np.random.default_rng(3)
    for t in range(1, 201):
        action = rng.uniform(-2.0, 2.0, 1).astype(np.float32)
        obs, reward, terminated, truncated, _ = twin.step(action)
        ref_obs, ref_reward, ref_terminated, ref_truncated, _ = reference.step(action)
        np.testing.assert_array_equal(obs, ref_obs, err_msg=f"step {t}")
        assert reward == ref_reward and (terminated, truncated) == (ref_terminated, ref_truncated), t
    assert truncated  # Gymnasium's TimeLimit is kept
    twin.close()
    reference.close()


def test_twin_with_other_mass_and_length_steps_like_the_native_pendulum():
    twin = env_factory("Pendulum-v1", m=1.5, l=0.8)()
    native = Pendulum(1, m=1.5, l=0.8, dtype=torch.float64)
    twin.reset(seed=4)
    native.reset(seed=0)
    native.state = torch.tensor(twin.unwrapped.state, dtype=torch.float64)[None]
    rng = np.random.default_rng(4)
    for t in range(1, 201):
        action = rng.uniform(-2.0, 2.0, 1).astype(np.float32)
        obs, reward, _, truncated, _ = twin.step(action)
        _, native_reward, _, native_truncated, info = native.step(torch.from_numpy(action)[None])
        np.testing.assert_allclose(info["final_obs"][0].numpy(), obs, atol=ATOL, err_msg=f"step {t}")
        assert float(native_reward[0]) == pytest.approx(reward, abs=ATOL), t
        assert bool(native_truncated[0]) == truncated == (t == 200)
    twin.close()


def test_twin_rejects_unknown_arguments_and_renders(monkeypatch):
    with pytest.raises(UserError, match="rejected its arguments"):
        env_factory("Pendulum-v1", mass=3.0)
    pytest.importorskip("pygame")
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    env = env_factory("Pendulum-v1", render_mode="rgb_array", m=1.5)()
    env.reset(seed=0)
    assert env.render_mode == "rgb_array" and env.render().shape == (500, 500, 3)
    env.close()


@pytest.mark.parametrize("kwargs", [{}, {"g": 9.81, "m": 1.5, "l": 0.8}])
def test_the_vector_twin_steps_bit_for_bit_as_gymnasiums_envs(kwargs):
    """Evaluation's numpy Pendulum: the same starts for the same seeds, and the same observations, rewards, time
    limit, autoreset and final observations as a SyncVectorEnv of Gymnasium's envs, over two and a half episodes
    of random actions (also outside [-2, 2])."""
    n, seeds = 64, [1_000_000 + i for i in range(64)]
    ref = gym.vector.SyncVectorEnv(
        [env_factory("Pendulum-v1", **kwargs)] * n, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )
    twin = vector_twin("Pendulum-v1", n, kwargs)
    assert twin.single_observation_space == ref.single_observation_space
    assert twin.single_action_space == ref.single_action_space
    (a, _), (b, _) = ref.reset(seed=seeds), twin.reset(seed=seeds)
    assert a.dtype == b.dtype and np.array_equal(a, b)
    rng, ends = np.random.default_rng(0), 0
    for _ in range(450):
        action = rng.uniform(-3.0, 3.0, size=(n, 1)).astype(np.float32)
        ours, theirs = twin.step(action), ref.step(action)
        for x, y in zip(ours[:4], theirs[:4], strict=True):
            assert x.dtype == y.dtype and np.array_equal(x, y)
        if theirs[3].any():
            ends += 1
            assert np.array_equal(ours[4]["_final_obs"], theirs[4]["_final_obs"])
            assert all(np.array_equal(x, y) for x, y in zip(ours[4]["final_obs"], theirs[4]["final_obs"], strict=True))
    assert ends == 2
    ref.close()


def test_only_pendulum_with_its_own_arguments_has_a_vector_twin():
    assert vector_twin("Pendulum-v1", 2, {"g": 0.0}) is not None
    assert vector_twin("CartPole-v1", 2, {}) is None
    assert vector_twin("PendulumNoVel-v1", 2, {}) is None
    assert vector_twin("Pendulum-v1", 2, {"max_episode_steps": 50}) is None


def test_evaluation_on_the_twin_equals_evaluation_on_gymnasiums_envs(monkeypatch):
    """The same held-out episodes either way, to the bit: a policy whose actions depend on every observation."""
    evaluate = importlib.import_module("duetrl.evaluate")  # the package's ``duetrl.evaluate`` is a function

    def act(obs):
        return torch.tanh(obs @ torch.tensor([[1.5], [-0.7], [0.3]])) * 2.5

    fast = evaluate.evaluate_policy(act, "Pendulum-v1", {"g": 10.0}, episodes=7)
    monkeypatch.setattr(evaluate, "vector_twin", lambda *args: None)
    slow = evaluate.evaluate_policy(act, "Pendulum-v1", {"g": 10.0}, episodes=7)
    assert fast.returns == slow.returns and fast.lengths == slow.lengths == [200] * 7


def test_a_pendulum_registered_again_with_other_arguments_has_no_twin():
    """A user module may register Pendulum-v1 anew (other defaults, wrappers): evaluation must then make that env,
    not the twin of Gymnasium's."""
    original = gym.envs.registration.registry["Pendulum-v1"]
    try:
        with pytest.warns(UserWarning, match="Overriding"):
            gym.register("Pendulum-v1", entry_point=original.entry_point, max_episode_steps=200, kwargs={"g": 2.0})
        assert vector_twin("Pendulum-v1", 2, {}) is None
    finally:
        gym.envs.registration.registry["Pendulum-v1"] = original
    assert vector_twin("Pendulum-v1", 2, {}) is not None
