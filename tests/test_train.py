"""Tiny end-to-end runs: training writes its run directory, loads back, and is reproducible."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml
from helpers import read_metrics, without_wall_time

import duetrl
from duetrl.api import resolve
from duetrl.loop import Trainer

CHAPTER = dict(preset="chapter", steps=400, eval_every=200, eval_episodes=2, quiet=True)
COLUMNS = [
    "env_steps",
    "wall_time_s",
    "episode_return",
    "actor_loss",
    "critic_loss",
    "policy_std",
    "eval_return_mean",
    "eval_return_std",
]


@pytest.fixture(scope="module")
def pendulum_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("pendulum") / "r"
    result = duetrl.train("Pendulum-v1", "ac", run_dir=run_dir, **CHAPTER)
    return run_dir, result


def test_train_result(pendulum_run):
    run_dir, result = pendulum_run
    assert result.run_dir == run_dir
    assert result.env_steps == 400
    assert result.stopped_early is None
    assert len(result.final_eval.returns) == 2
    assert all(math.isfinite(r) and r < 0 for r in result.final_eval.returns)  # Pendulum's rewards are costs


def test_run_dir_contents(pendulum_run):
    run_dir, _ = pendulum_run
    columns, rows = read_metrics(run_dir)
    for column in COLUMNS:
        assert column in columns, column
    train_rows = [r for r in rows if r["actor_loss"]]
    eval_rows = [r for r in rows if r["eval_return_mean"]]
    assert len(train_rows) == 2  # the chapter updates once per 200-step episode
    assert [int(r["env_steps"]) for r in eval_rows] == [200, 400]  # periodic + final
    for r in train_rows:
        for key in ("episode_return", "actor_loss", "critic_loss", "policy_std"):
            assert math.isfinite(float(r[key])), key

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["env_id"] == "Pendulum-v1" and config["algo"] == "ac" and config["steps"] == 400
    assert config["advantage"] == "mc" and config["bootstrap_truncation"] is False
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert checkpoints == ["best.safetensors", "step_000000000400.safetensors"]


def test_load_act_shapes_and_repeatability(pendulum_run):
    run_dir, _ = pendulum_run
    a, b = duetrl.load(run_dir), duetrl.load(run_dir)
    assert a.env_id == "Pendulum-v1"
    obs = np.random.default_rng(0).uniform(-1, 1, size=(16, 3)).astype(np.float32)
    act_a = a.act(obs, deterministic=True)
    assert isinstance(act_a, np.ndarray) and act_a.shape == (16, 1)
    np.testing.assert_array_equal(act_a, b.act(obs, deterministic=True))
    np.testing.assert_array_equal(act_a, a.act(obs, deterministic=True))
    assert np.all(np.abs(act_a) <= 2.0)
    single = a.act(obs[0], deterministic=True)
    assert single.shape == (1,)
    np.testing.assert_allclose(single, act_a[0], rtol=1e-5, atol=1e-6)  # batch size may change rounding
    # the chapter preset evaluates stochastically: the default action is a sample
    assert not np.array_equal(a.act(obs), a.act(obs))
    # the best checkpoint loads as well
    assert duetrl.load(run_dir, checkpoint="best").act(obs[0], deterministic=True).shape == (1,)


def test_evaluate_a_run_dir(pendulum_run):
    run_dir, _ = pendulum_run
    result = duetrl.evaluate(run_dir, episodes=2, deterministic=True)
    again = duetrl.evaluate(duetrl.load(run_dir), episodes=2, deterministic=True)
    assert len(result.returns) == 2 and result.lengths == [200, 200]
    assert result.returns == again.returns


def test_same_seed_same_metrics_and_loaded_agent_matches_trained(pendulum_run, tmp_path):
    run_dir, _ = pendulum_run
    cfg, _ = resolve("Pendulum-v1", "ac", "chapter", overrides={"steps": 400, "eval_every": 200, "eval_episodes": 2})
    trainer = Trainer(cfg, tmp_path / "again", quiet=True)
    trainer.train()

    columns, rows = read_metrics(run_dir)
    columns2, rows2 = read_metrics(tmp_path / "again")
    assert columns == columns2
    assert without_wall_time(rows) == without_wall_time(rows2)

    obs = torch.as_tensor(np.random.default_rng(1).uniform(-1, 1, size=(8, 3)), dtype=torch.float32)
    trainer.agent.train_mode(False)
    in_memory = trainer.agent.act(obs, deterministic=True).numpy()
    for directory in (tmp_path / "again", run_dir):
        np.testing.assert_array_equal(duetrl.load(directory).act(obs.numpy(), deterministic=True), in_memory)


def test_existing_run_dir_is_refused(pendulum_run):
    run_dir, _ = pendulum_run
    with pytest.raises(duetrl.UserError, match="already holds a run"):
        duetrl.train("Pendulum-v1", "ac", run_dir=run_dir, **CHAPTER)


# ------------------------------------------------------------------------------------------ variants


def _short(tmp_path, env_id, algo, **settings):
    settings = {"steps": 400, "eval_episodes": 2, **settings}
    result = duetrl.train(env_id, algo, preset="none", run_dir=tmp_path / "r", quiet=True, **settings)
    columns, rows = read_metrics(tmp_path / "r")
    train_rows = [r for r in rows if r.get("critic_loss")]
    assert result.env_steps == settings["steps"]
    assert train_rows, "no update was logged"
    assert all(math.isfinite(float(r["critic_loss"])) and math.isfinite(float(r["actor_loss"])) for r in train_rows)
    return result, columns


def test_cartpole_ac_discrete(tmp_path):
    result, columns = _short(tmp_path, "CartPole-v1", "ac")
    assert "policy_std" not in columns  # a categorical policy
    assert result.final_eval.returns == [float(n) for n in result.final_eval.lengths]  # a reward of 1 per step
    agent = duetrl.load(tmp_path / "r")
    obs = np.zeros((5, 4), dtype=np.float32)
    actions = agent.act(obs, deterministic=True)
    assert actions.shape == (5,) and set(actions.tolist()) <= {0, 1}
    assert agent.act(obs[0], deterministic=True).shape == ()


def test_cartpole_a2c_parallel_envs(tmp_path):
    result, _ = _short(tmp_path, "CartPole-v1", "a2c", num_envs=2)
    assert result.env_steps == 400


@pytest.mark.parametrize(
    "env_id, settings",
    [
        ("Pendulum-v1", {"critic": "q", "update_every": 20}),
        ("CartPole-v1", {"critic": "q", "update_every": 20}),
        ("Pendulum-v1", {"advantage": "td", "update_every": 10}),
        ("Pendulum-v1", {"advantage": "nstep", "nstep": 3, "update_every": 16}),
        ("Pendulum-v1", {"advantage": "gae", "update_every": 16, "num_envs": 2}),
        (
            "Pendulum-v1",
            {
                "advantage": "gae",
                "clip_log_prob": True,
                "ortho_init": True,
                "normalize_obs": True,
                "state_dependent_std": False,
                "update_every": 16,
            },
        ),
        ("Pendulum-v1", {"squash": "tanh", "ent_coef": 0.01, "optimizer": "rmsprop", "update_every": 16}),
    ],
)
def test_variants_train(tmp_path, env_id, settings):
    _short(tmp_path, env_id, "ac", steps=200, eval_episodes=1, **settings)


@pytest.mark.parametrize(
    ("algo", "settings"),
    [
        ("ppo", {"num_envs": 8, "num_steps": 32, "minibatch_size": 64, "backend": "torch"}),
        ("sac", {"learning_starts": 100, "batch_size": 32, "actor_hidden": [16], "critic_hidden": [16], "utd": 2}),
    ],
)
def test_same_seed_same_numbers(tmp_path, algo, settings):
    """Reproducible on the same machine: same seed and config give the same metrics (wall time aside)."""
    outputs = []
    for name in ("a", "b"):
        duetrl.train(
            "Pendulum-v1",
            algo,
            preset="none",
            steps=512,
            seed=7,
            eval_every=256,
            eval_episodes=2,
            log_every=0,
            run_dir=tmp_path / name,
            quiet=True,
            **settings,
        )
        _, rows = read_metrics(tmp_path / name)
        outputs.append([{k: v for k, v in r.items() if k != "wall_time_s"} for r in rows])
    assert outputs[0] == outputs[1] and len(outputs[0]) > 2


def test_target_return_stops_early_and_keeps_that_checkpoint(tmp_path):
    run_dir = tmp_path / "r"
    result = duetrl.train(
        "Pendulum-v1",
        "ac",
        preset="chapter",
        steps=4000,
        eval_every=400,
        eval_episodes=2,
        target_return=-5000.0,
        run_dir=run_dir,
        quiet=True,
    )  # any policy beats -5000
    assert result.stopped_early == "target" and result.env_steps == 400
    assert result.final_eval is not None and result.final_eval.mean >= -5000.0
    from duetrl import checkpoint as ckpt

    assert ckpt.latest_checkpoint(run_dir).name == "step_000000000400.safetensors"


# ------------------------------------------------------------------------------------------ the API's own words


def test_python_errors_name_keyword_arguments_not_flags(pendulum_run, tmp_path):
    run_dir, _ = pendulum_run
    cases = [
        (lambda: duetrl.train("Pendulum-v1", "ppo", gama=0.9, run_dir=tmp_path / "a"), "algo='ppo' (from keyword"),
        (lambda: duetrl.train("CartPole-v1", "td3", run_dir=tmp_path / "b"), "algo='td3' needs continuous"),
        (lambda: duetrl.train("Pendulum-v1", "ac", preset="nope"), "with algo='ac'"),
        (lambda: duetrl.train("Pendulum-v1", "ac", run_dir=run_dir, **CHAPTER), f"duetrl.resume('{run_dir}')"),
        (lambda: duetrl.train("Pendulum-v1", "ac", backend="torch", imports=["no_such_module_x"]), "(imports)"),
    ]
    for call, words in cases:
        with pytest.raises(duetrl.UserError) as caught:
            call()
        message = str(caught.value)
        assert words in message and "--" not in message, message


def test_act_on_an_observation_of_the_wrong_shape_names_the_expected_one(pendulum_run):
    agent = duetrl.load(pendulum_run[0])
    for obs in (np.zeros(5), np.zeros((4, 5)), np.zeros((2, 4, 3)), np.float32(1.0)):
        with pytest.raises(duetrl.UserError, match=r"does not fit Pendulum-v1, whose observations have shape \(3,\)"):
            agent.act(obs)
    assert agent.act([0.0, 1.0, 0.0]).shape == (1,) and agent.act(np.zeros((4, 3))).shape == (4, 1)


# ------------------------------------------------------------------------------------------ envs in every form


class Drift(gym.Env):
    """A 1-d point pushed by the action, for 20 steps; ``scale`` multiplies the push."""

    observation_space = gym.spaces.Box(-10.0, 10.0, shape=(1,), dtype=np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)

    def __init__(self, scale: float = 1.0):
        self.scale, self.x, self.t = scale, 0.0, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x, self.t = float(self.np_random.uniform(-1, 1)), 0
        return np.array([self.x], dtype=np.float32), {}

    def step(self, action):
        self.x = float(np.clip(self.x + self.scale * float(action[0]), -10, 10))
        self.t += 1
        return np.array([self.x], dtype=np.float32), -abs(self.x), False, self.t >= 20, {}


SMALL = dict(preset="none", steps=64, update_every=16, eval_every=0, eval_episodes=2, quiet=True)


def test_train_takes_an_env_class_and_records_it_as_module_class(tmp_path):
    result = duetrl.train(Drift, "ac", env_kwargs={"scale": 0.5}, run_dir=tmp_path / "r", **SMALL)
    assert result.env_steps == 64 and result.final_eval.lengths == [20, 20]
    config = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert config["env_id"] == f"{__name__}:Drift" and config["env_kwargs"] == {"scale": 0.5}
    assert duetrl.evaluate(tmp_path / "r", episodes=2).lengths == [20, 20]  # made again from its name


def test_train_takes_a_factory_and_load_asks_for_it_again(tmp_path):
    result = duetrl.train(lambda scale=1.0: Drift(scale), "ac", run_dir=tmp_path / "r", **SMALL)
    assert result.final_eval.lengths == [20, 20]
    with pytest.raises(duetrl.UserError, match=r"given as a Python object.*duetrl.load\(run_dir, env=\.\.\.\)"):
        duetrl.load(tmp_path / "r")
    agent = duetrl.load(tmp_path / "r", env=Drift)
    assert duetrl.evaluate(agent, episodes=2).lengths == [20, 20]


def test_train_takes_a_made_env_and_copies_it_for_the_batch(tmp_path):
    env = gym.make("Pendulum-v1")
    result = duetrl.train(env, "ac", num_envs=2, backend="gymnasium", run_dir=tmp_path / "r", **SMALL)
    assert result.env_steps == 64 and result.final_eval.lengths == [200, 200]
    assert yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["env_id"] == "<instance of Pendulum-v1>"
    with pytest.raises(AttributeError):
        env.unwrapped.state  # noqa: B018 - the original was never reset: copies were stepped, not it
    assert duetrl.load(tmp_path / "r", env=env).act(np.zeros(3)).shape == (1,)

    import threading

    locked = Drift()
    locked.lock = threading.Lock()
    with pytest.raises(duetrl.UserError, match=r"cannot copy the env instance .*deepcopy failed.*pass its class"):
        duetrl.train(locked, "ac", run_dir=tmp_path / "locked", **SMALL)
    assert not (tmp_path / "locked").exists()
    with pytest.raises(duetrl.UserError, match="env_kwargs cannot apply to an env that is already made"):
        duetrl.train(Drift(), "ac", env_kwargs={"scale": 2.0}, run_dir=tmp_path / "kw", **SMALL)


def test_train_returns_the_trained_agent(pendulum_run, tmp_path):
    run_dir, result = pendulum_run
    obs = np.random.default_rng(2).uniform(-1, 1, size=(8, 3)).astype(np.float32)
    assert result.agent.checkpoint == run_dir / "checkpoints" / "step_000000000400.safetensors"
    np.testing.assert_array_equal(result.agent.act(obs, deterministic=True), duetrl.load(run_dir).act(obs, True))
    assert (
        duetrl.evaluate(result.agent, episodes=2, deterministic=True).returns
        == duetrl.evaluate(run_dir, episodes=2, deterministic=True).returns
    )
    # an env given as an object: the agent evaluates on it with nothing more to pass
    drift = duetrl.train(lambda: Drift(), "ac", run_dir=tmp_path / "d", **SMALL)
    assert duetrl.evaluate(drift.agent, episodes=2).lengths == [20, 20]
