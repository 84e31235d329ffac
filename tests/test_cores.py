"""Recurrent cores (cores.py) and the on-policy agents with memory: shapes, resets at episode starts, the update
replaying exactly what the rollout computed, a memory task only a recurrent agent solves, loading and bad input."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from helpers import assert_user_error, run

import duetrl
from duetrl.algos import ALGOS
from duetrl.algos.ppo import ppo_loss
from duetrl.cores import Core, chunk, reset
from duetrl.envs import make

# ------------------------------------------------------------------------------------------ the core


@pytest.mark.parametrize("kind, state_dim", [("none", 0), ("gru", 8), ("lstm", 16)])
def test_core_shapes(kind, state_dim):
    torch.manual_seed(0)
    core = Core(kind, in_dim=3, hidden=8)
    assert core.state_dim == state_dim and core.out_dim == (3 if kind == "none" else 8)
    state = core.initial_state(5)
    assert state.shape == (5, state_dim) and not state.any()
    features, next_state = core.step(torch.randn(5, 3), state)
    assert features.shape == (5, core.out_dim) and next_state.shape == (5, state_dim)
    outputs, after = core.sequence(torch.randn(7, 5, 3), state, torch.zeros(7, 5, dtype=torch.bool))
    assert outputs.shape == (7, 5, core.out_dim) and after.shape == (7, 5, state_dim)
    if kind != "none":  # gradients reach the cell's weights through every step
        outputs.sum().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in core.parameters())


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_sequence_is_the_steps_with_resets_at_episode_starts(kind):
    torch.manual_seed(0)
    core = Core(kind, in_dim=2, hidden=4)
    x, state = torch.randn(6, 3, 2), torch.randn(3, core.state_dim)
    starts = torch.zeros(6, 3, dtype=torch.bool)
    starts[2, 0] = starts[4, 1] = True
    outputs, after = core.sequence(x, state, starts)
    torch.testing.assert_close(core.replay(x, state, starts), outputs, rtol=0, atol=1e-6)
    expected = state
    for t in range(6):
        expected = torch.where(starts[t, :, None], torch.zeros(()), expected)
        out, expected = core.step(x[t], expected)
        # 1e-6, not 0: the fused layer projects the inputs of all steps in one matrix product, the step one at a time
        torch.testing.assert_close(outputs[t], out, rtol=0, atol=1e-6)
        torch.testing.assert_close(after[t], expected, rtol=0, atol=1e-6)
    # after a reset, env 0 computes what a fresh episode from a zero state computes
    fresh, _ = core.sequence(x[2:, :1], core.initial_state(1), torch.zeros(4, 1, dtype=torch.bool))
    torch.testing.assert_close(outputs[2:, :1], fresh, rtol=0, atol=1e-6)
    assert not torch.allclose(outputs[2:, 1:2], core.sequence(x[2:, 1:2], core.initial_state(1), starts[2:, 1:2])[0])


def step_by_step(core, x, state, starts):
    outputs = []
    for t in range(len(x)):
        out, state = core.step(x[t], reset(state, starts[t]))
        outputs.append(out)
    return torch.stack(outputs)


@pytest.mark.parametrize("kind", ["gru", "lstm"])
@pytest.mark.parametrize("pattern", ["none", "first", "late", "every", "random"])  # as is, padded x2, packed
def test_fused_replay_is_the_steps_and_their_gradients(kind, pattern):
    """The fused replay (segments split at episode starts, padded or packed) computes the outputs of stepping one
    cell at a time with resets, and the same gradients for the weights, the inputs and the first states."""
    torch.manual_seed(1)
    core = Core(kind, in_dim=3, hidden=5)
    steps, sequences = 9, 6
    starts = {
        "none": torch.zeros(steps, sequences, dtype=torch.bool),
        "first": torch.zeros(steps, sequences, dtype=torch.bool).index_fill_(0, torch.tensor([0]), True),
        "random": torch.rand(steps, sequences) < 0.3,
        "late": torch.zeros(steps, sequences, dtype=torch.bool).index_fill_(0, torch.tensor([3]), True),
        "every": torch.ones(steps, sequences, dtype=torch.bool),
    }[pattern]
    if pattern == "random":
        starts[:, 0] = False  # one sequence without a reset, one with a reset at its last step only
        starts[-1, 1], starts[:-1, 1] = True, False
        assert starts[1:].any()
    x = torch.randn(steps, sequences, 3, requires_grad=True)
    state = torch.randn(sequences, core.state_dim, requires_grad=True)
    weights = torch.randn(steps, sequences, 5)

    def gradients(replay):
        core.zero_grad()
        x.grad = state.grad = None
        outputs = replay(core, x, state, starts)
        (outputs * weights).sum().backward()
        return outputs.detach(), [x.grad, state.grad] + [p.grad for p in core.parameters()]

    fused, fused_grads = gradients(Core.replay)
    stepped, stepped_grads = gradients(step_by_step)
    torch.testing.assert_close(fused, stepped, rtol=0, atol=1e-6)
    for fused_grad, stepped_grad in zip(fused_grads, stepped_grads, strict=True):
        torch.testing.assert_close(fused_grad, stepped_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_input_scale_is_input_weights_that_many_times_larger(kind):
    """A core that reads its input times k computes what the same core with k times its input weights computes,
    stepping and in the fused replay with resets; the gradient of those weights is k times the unscaled core's,
    so one Adam step (which normalises the gradient's size) moves W * k by k times more than W."""
    torch.manual_seed(0)
    scaled = Core(kind, in_dim=3, hidden=4, input_scale=5.0)
    plain = Core(kind, in_dim=3, hidden=4)
    plain.load_state_dict(scaled.state_dict())
    with torch.no_grad():
        plain.cell.weight_ih_l0.mul_(5.0)
    x, state = torch.randn(6, 2, 3), torch.randn(2, scaled.state_dim)
    starts = torch.zeros(6, 2, dtype=torch.bool)
    starts[3, 1] = True
    for method in ("sequence", "replay"):
        expected = getattr(plain, method)(x, state, starts)
        torch.testing.assert_close(getattr(scaled, method)(x, state, starts), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(scaled.step(x[0], state), plain.step(x[0], state), rtol=0, atol=1e-6)
    assert not torch.allclose(Core(kind, 3, 4).step(x[0], state)[0], plain.step(x[0], state)[0])
    scaled.replay(x, state, starts).sum().backward()
    plain.replay(x, state, starts).sum().backward()
    torch.testing.assert_close(scaled.cell.weight_ih_l0.grad, 5.0 * plain.cell.weight_ih_l0.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("algo", ["ppo", "a2c", "sac"])
def test_agents_pass_rnn_input_scale_to_every_core(algo):
    cfg, _ = duetrl.resolve("PendulumNoVel-v1", algo, preset="none", overrides={"rnn": "gru", "rnn_input_scale": 3})
    env = make("PendulumNoVel-v1", 2, backend="torch")
    agent = ALGOS[algo].agent_cls(cfg.algo, env.single_observation_space, env.single_action_space, 2, "cpu")
    modules = [module for network in agent.modules.values() for module in network.modules()]
    cores = [module for module in modules if isinstance(module, Core)]
    assert len(cores) >= 2 and all(core.input_scale == 3.0 for core in cores)


@pytest.mark.parametrize("kind, cell", [("gru", torch.nn.GRUCell), ("lstm", torch.nn.LSTMCell)])
def test_cores_load_the_weights_of_the_earlier_cells(kind, cell):
    """Checkpoints of the cores that held an nn.GRUCell/nn.LSTMCell load into the fused layer, and it steps as that
    cell did; a core draws the same initial weights as the cell did."""
    torch.manual_seed(0)
    old = cell(3, 4)
    torch.manual_seed(0)
    core = Core(kind, in_dim=3, hidden=4)
    for old_p, new_p in zip(old.parameters(), core.parameters(), strict=True):
        assert torch.equal(old_p, new_p)
    torch.manual_seed(1)
    old = cell(3, 4)
    core.load_state_dict({f"cell.{k}": v for k, v in old.state_dict().items()})
    x, state = torch.randn(5, 3), torch.randn(5, core.state_dim)
    expected = old(x, state) if kind == "gru" else torch.cat(old(x, tuple(state.chunk(2, dim=-1))), dim=-1)
    torch.testing.assert_close(core.step(x, state)[1], expected, rtol=0, atol=1e-6)


def test_reset_and_chunk():
    state = torch.ones(3, 2)
    assert reset(state, torch.tensor([False, True, False])).tolist() == [[1, 1], [0, 0], [1, 1]]
    rollout = torch.arange(8).reshape(4, 2)  # [T=4, N=2]: value = 2 * t + env
    # sequences of 2 steps: env 0 steps 0-1, env 1 steps 0-1, env 0 steps 2-3, env 1 steps 2-3
    assert chunk(rollout, 2).T.tolist() == [[0, 2], [1, 3], [4, 6], [5, 7]]


# ------------------------------------------------------------------------------------------ the agents


def agent_and_env(algo="ppo", env_id="CartPoleNoVel-v1", num_envs=4, **settings):
    cfg, _ = duetrl.resolve(env_id, algo, preset="none", overrides=settings)
    env = make(env_id, num_envs, backend="torch")
    torch.manual_seed(0)
    agent = ALGOS[algo].agent_cls(cfg.algo, env.single_observation_space, env.single_action_space, num_envs, "cpu")
    return agent, env


def collect(agent, env, steps, after_reset=lambda env: None):
    obs, _ = env.reset(seed=0)
    after_reset(env)
    for t in range(steps):
        decision = agent.explore(obs, t)
        obs, reward, terminated, truncated, info = env.step(decision.action)
        agent.observe(decision, reward, terminated, truncated, info["final_obs"])


@pytest.mark.parametrize("rnn, prev_action", [("lstm", False), ("gru", False), ("lstm", True), ("gru", True)])
def test_ppo_first_epoch_replays_the_rollouts_log_probs(rnn, prev_action):
    agent, env = agent_and_env(
        rnn=rnn, rnn_hidden=16, num_steps=64, rnn_seq_len=16, minibatch_size=32, rnn_prev_action=prev_action
    )
    collect(agent, env, 64)
    batch = agent.rollout.stack()
    assert batch["start"][1:].any()  # CartPole episodes end inside the rollout: the replay must reset there
    values, advantages, returns = agent._advantages(batch)
    samples = agent._samples(batch, values, advantages, returns)
    seen = 0
    for mb in agent._minibatches(samples):
        assert mb["obs"].shape[:2] == (16, 2)  # whole sequences: 2 of 16 steps per minibatch of 32
        flat, actor_features, critic_features = agent._replayed(mb)  # what ppo_loss is given
        log_prob, _, _ = agent.policy.evaluate_actions(None, flat["raw"], actor_features)
        value = agent.critic(critic_features)
        torch.testing.assert_close(log_prob, flat["log_prob"], rtol=0, atol=1e-5)
        torch.testing.assert_close(value, flat["values"], rtol=0, atol=1e-5)
        _, terms, _ = ppo_loss(agent.policy, agent.critic, flat, agent.cfg, actor_features, critic_features)
        assert terms["approx_kl"].abs() < 1e-6 and terms["clip_fraction"] == 0  # the one loss sees the rollout's
        seen += len(log_prob)
    assert seen == 64 * 4


def test_states_reset_at_episode_starts_for_terminations_and_truncations():
    agent, env = agent_and_env(algo="a2c", env_id="PendulumNoVel-v1", num_envs=2, rnn="lstm", update_every=300)
    collect(agent, env, 60, lambda env: env.elapsed.__setitem__(1, 150))  # env 1 is truncated at step 49
    batch = agent.rollout.stack()
    starts = batch["start"]
    assert batch["truncated"][49, 1] and not batch["terminated"].any()
    assert starts[0].all() and starts[50, 1] and not starts[50, 0] and starts[1:].sum() == 1
    for key in ("actor_state", "critic_state"):
        assert not batch[key][starts].any()  # zero where an episode starts
        assert batch[key][~starts].abs().sum(-1).min() > 0  # carried everywhere else
    # The bootstrap at the truncation sees the final observation with the episode's own memory, not a fresh one.
    features, next_features = agent.critic_features(batch, with_next=True)
    torch.testing.assert_close(next_features[:49], features[1:50], rtol=0, atol=1e-6)  # continuing: next = t+1
    assert not torch.allclose(next_features[49, 1], features[50, 1], atol=1e-3)  # env 1's next episode starts fresh
    torch.testing.assert_close(next_features[49, 0], features[50, 0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("env_id, width", [("CartPoleNoVel-v1", 2), ("PendulumNoVel-v1", 1)])
def test_prev_action_is_what_the_cores_read_beside_the_features(env_id, width):
    """rnn_prev_action: the cores read the previous action (one-hot for a Discrete), zeros where an episode
    starts; the rollout records it, and act_step carries it at the end of the state."""
    agent, env = agent_and_env(env_id=env_id, rnn="gru", rnn_hidden=8, num_steps=300, rnn_prev_action=True)
    plain, _ = agent_and_env(env_id=env_id, rnn="gru", rnn_hidden=8, num_steps=300)
    assert agent.prev_action_dim == width
    assert agent.actor_core.cell.input_size == plain.actor_core.cell.input_size + width
    collect(agent, env, 60, lambda env: env.elapsed.__setitem__(1, 470 if width == 2 else 170))
    batch = agent.rollout.stack()
    starts, prev_action = batch["start"], batch["prev_action"]  # [T, N], [T, N, A]
    assert starts[1:].any()  # an episode ends inside (env 1's time limit at least)
    assert not prev_action[starts].any()
    previous = agent.policy.one_hot(batch["action"][:-1])  # [T - 1, N, A]
    torch.testing.assert_close(prev_action[1:][~starts[1:]], previous[~starts[1:]], rtol=0, atol=0)
    assert prev_action[1:][~starts[1:]].abs().sum() > 0

    obs = env.reset(seed=1)[0][:3]
    state = agent.initial_state(3)
    assert state.shape == (3, agent.actor_core.state_dim + width) and not state.any()
    action, next_state = agent.act_step(obs, state, deterministic=True)
    torch.testing.assert_close(next_state[:, -width:], agent.policy.one_hot(action), rtol=0, atol=0)
    # The same observation and memory after another action (the other category; a push 1 - a): another input,
    # so another next state.
    other = next_state.clone()
    other[:, -width:] = 1 - other[:, -width:]
    after = agent.act_step(obs, next_state, deterministic=True)[1][:, :-width]
    assert not torch.allclose(after, agent.act_step(obs, other, deterministic=True)[1][:, :-width], atol=1e-4)


# ------------------------------------------------------------------------------------------ a memory task


class Cue(gym.Env):
    """A cue (+1 or -1) shown at the first step only; at the third and last step the action must name it
    (reward +1, else -1). The observation after the cue is the same whatever it was, so without memory the
    best expected return is 0."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.cue, self.t = int(self.np_random.integers(2)), 0
        return np.array([2 * self.cue - 1, 0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        done = self.t == 3
        reward = (1.0 if int(action) == self.cue else -1.0) if done else 0.0
        return np.array([0.0, 1.0], np.float32), reward, done, False, {}


MEMORY_SETTINGS = {
    "ppo": dict(num_envs=8, num_steps=12, minibatch_size=48, epochs=4, lr=3e-3, hidden=[32], rnn_hidden=32),
    "a2c": dict(
        num_envs=8, update_every=6, optimizer="adam", actor_lr=3e-3, critic_lr=3e-3, hidden=[32], rnn_hidden=32
    ),
    "ac": dict(num_envs=8, advantage="gae", actor_lr=3e-3, critic_lr=3e-3, hidden=[32], rnn_hidden=32),
}


@pytest.mark.parametrize(
    "algo, rnn, solved", [("ppo", "gru", True), ("ppo", "none", False), ("a2c", "lstm", True), ("ac", "gru", True)]
)
def test_memory_task_needs_a_recurrent_core(tmp_path, algo, rnn, solved):
    result = duetrl.train(
        Cue, algo, preset="none", steps=6000, rnn=rnn, eval_every=0, eval_episodes=100, run_dir=tmp_path / rnn,
        quiet=True, **MEMORY_SETTINGS[algo],
    )  # fmt: skip
    if solved:
        assert result.final_eval.mean >= 0.9, result.final_eval.mean
    else:
        assert abs(result.final_eval.mean) <= 0.4, result.final_eval.mean  # a coin toss on 100 episodes


# ------------------------------------------------------------------------------------------ acting and loading


def test_loaded_recurrent_policy_acts_with_its_state(tmp_path):
    duetrl.train("PendulumNoVel-v1", "ppo", preset="none", steps=256, num_steps=64, num_envs=2, rnn="gru",
                 rnn_hidden=8, eval_every=0, eval_episodes=1, run_dir=tmp_path / "r", quiet=True)  # fmt: skip
    agent = duetrl.load(tmp_path / "r")
    assert agent.recurrent
    obs = np.array([1.0, 0.0, 0.0], np.float32)
    state = agent.initial_state()
    assert state.shape == (8,) and not state.any()
    action, state1 = agent.act(obs, state, deterministic=True)
    assert action.shape == (1,) and state1.shape == (8,) and state1.any()
    action2, _ = agent.act(obs, state1, deterministic=True)
    assert not np.array_equal(action, action2)  # the same observation, another memory: another action
    batch = agent.initial_state(3)
    actions, batch = agent.act(np.stack([obs] * 3), batch, deterministic=True)
    assert actions.shape == (3, 1) and batch.shape == (3, 8)
    assert not agent.reset_state(batch, [True, False, True])[[0, 2]].any()
    with pytest.raises(duetrl.UserError, match="recurrent"):
        agent.act(obs)
    # evaluation carries the state too: the same numbers as stepping by hand
    result = duetrl.evaluate(agent, episodes=1, deterministic=True)
    env, total, state = gym.make("PendulumNoVel-v1"), 0.0, agent.initial_state()
    obs, _ = env.reset(seed=1_000_000)
    for _ in range(200):
        action, state = agent.act(obs, state, deterministic=True)
        obs, reward, *_ = env.step(action)
        total += reward
    assert result.returns[0] == pytest.approx(total, rel=1e-5)


def test_memoryless_policy_takes_an_empty_state(tmp_path):
    duetrl.train("Pendulum-v1", "ppo", preset="none", steps=128, num_steps=64, num_envs=2, eval_every=0,
                 eval_episodes=1, run_dir=tmp_path / "r", quiet=True)  # fmt: skip
    agent = duetrl.load(tmp_path / "r")
    obs = np.zeros(3, np.float32)
    action, state = agent.act(obs, agent.initial_state(), deterministic=True)
    assert state.shape == (0,) and np.array_equal(action, agent.act(obs, deterministic=True))


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--algo", "ppo", "--set", "rnn=rnn"], "rnn"),
        (["--algo", "ppo", "--set", "rnn=lstm", "rnn_hidden=0"], "rnn_hidden"),
        (["--algo", "ppo", "--set", "rnn=lstm", "num_steps=64", "rnn_seq_len=24"], "rnn_seq_len=24 does not divide"),
        (["--algo", "ac", "--set", "rnn=gru", "critic=q"], "critic=v only"),
        (["--algo", "sac", "--set", "rnn=lstm", "rnn_hidden=0"], "rnn_hidden"),
        (["--algo", "ppo", "--set", "rnn=lstm", "rnn_input_scale=0"], "rnn_input_scale"),
        (["--algo", "sac", "--set", "rnn=gru", "rnn_input_scale=-1"], "rnn_input_scale"),
    ],
)
def test_bad_recurrent_settings_are_one_line(capsys, tmp_path, argv, match):
    code, out, err = run(capsys, "train", "PendulumNoVel-v1", *argv, "--steps", 64, "--run-dir", tmp_path / "r")
    assert_user_error(code, out, err, match)


def test_resume_with_another_rnn_is_refused_naming_both(capsys, tmp_path):
    run_dir = tmp_path / "r"
    argv = ["PendulumNoVel-v1", "--algo", "ppo", "--preset", "none", "--steps", 128, "--quiet", "--run-dir", run_dir]
    code, _, err = run(capsys, "train", *argv, "--set", "num_steps=64", "rnn=lstm", "eval_episodes=1")
    assert code == 0, err
    code, out, err = run(capsys, "train", "--resume", run_dir, "--steps", 256, "--set", "rnn=gru")
    assert_user_error(code, out, err, "rnn 'lstm' -> 'gru'")
