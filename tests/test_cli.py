"""The ``duetrl`` command: listings, user errors as one line with exit code 2, and train -> eval."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import NEVER_ENDS, assert_user_error, run

from duetrl import checkpoint as ckpt
from duetrl.cli import build_parser

CRASH_ENV = '''
import gymnasium as gym
import numpy as np


class CrashEnv(gym.Env):
    """Raises on its 31st step."""

    observation_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, dtype=np.float32), {}

    def step(self, action):
        self.t += 1
        if self.t > 30:
            raise RuntimeError("boom")
        return np.zeros(2, dtype=np.float32), 1.0, False, False, {}
'''


def assert_no_checkpoint(run_dir):
    assert ckpt.list_checkpoints(run_dir) == []
    assert not (run_dir / "checkpoints" / "best.safetensors").exists()


# ------------------------------------------------------------------------------------------ listings


def test_presets(capsys):
    code, out, _ = run(capsys, "presets")
    assert code == 0
    assert any("ac" in line and "chapter" in line for line in out.splitlines())


def test_params(capsys):
    code, out, _ = run(capsys, "params", "--algo", "ac")
    assert code == 0
    names = {line.split()[0] for line in out.splitlines() if line and not line.startswith("#")}
    assert {"gamma", "actor_lr", "critic_lr", "advantage", "steps", "seed", "eval_every"} <= names
    assert any(line.split()[:1] == ["gamma"] and "0.99" in line for line in out.splitlines())


def test_params_unknown_algo(capsys):
    assert_user_error(*run(capsys, "params", "--algo", "nope"), match="unknown algorithm")


# ------------------------------------------------------------------------------------------ user errors


@pytest.mark.parametrize(
    "argv, match",
    [
        (["NoSuchEnv-v0"], "unknown or unusable environment 'NoSuchEnv-v0'"),
        (["Pendulum-v1", "--algo", "nope"], "unknown algorithm 'nope'"),
        (["Pendulum-v1", "--set", "gama=0.9"], "did you mean 'gamma'"),
        (["Pendulum-v1", "--algo", "ppo", "--set", "gama=0.9"], r"for --algo ppo \(from flags\)"),
        (["Pendulum-v1", "--set", "gamma=2"], "gamma=2"),
        (["Pendulum-v1", "--set", "gamma=abc"], "gamma='abc'"),
        (["Pendulum-v1", "--preset", "nope"], "unknown preset 'nope'"),
        (["Pendulum-v1", "--set", "gamma"], "key=value"),
        (["Pendulum-v1", "--bogus-flag"], "unrecognized arguments"),
        (["Pendulum-v1", "--env-kwargs", "nope=1"], "rejected its arguments"),
    ],
)
def test_train_user_errors(capsys, tmp_path, argv, match):
    run_dir = tmp_path / "run"
    result = run(capsys, "train", *argv, "--steps", 50, "--run-dir", run_dir, "--quiet")
    assert_user_error(*result, match=match)
    assert_no_checkpoint(run_dir)


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_before_or_after_the_subcommand_shows_the_traceback(capsys, tmp_path, where):
    argv = ["train", "NoSuchEnv-v0", "--steps", 50, "--run-dir", tmp_path / "run", "--quiet"]
    code, out, err = run(capsys, *(["--debug", *argv] if where == "before" else [*argv, "--debug"]))
    assert code == 2 and "Traceback" in err, err
    assert err.strip().splitlines()[-1].startswith("duetrl: error: unknown or unusable environment")


@pytest.mark.parametrize(
    "command", [["train"], ["eval", "R"], ["sweep"], ["plot", "R"], ["bench"], ["presets"], ["params"]]
)
def test_every_subcommand_takes_debug_in_either_place(command):
    parser = build_parser()
    assert parser.parse_args([*command, "--debug"]).debug is True
    assert parser.parse_args(["--debug", *command]).debug is True  # not overwritten by the subcommand's default
    assert parser.parse_args(command).debug is False


def test_negative_steps(capsys, tmp_path):
    result = run(capsys, "train", "Pendulum-v1", "--steps", -5, "--run-dir", tmp_path / "run", "--quiet")
    assert_user_error(*result, match="steps=-5")
    assert_no_checkpoint(tmp_path / "run")


def test_malformed_config_file(capsys, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("gamma: [0.9\n")
    assert_user_error(
        *run(capsys, "train", "Pendulum-v1", "--config", config, "--run-dir", tmp_path / "run", "--quiet"),
        match="malformed YAML",
    )
    assert_no_checkpoint(tmp_path / "run")


def test_eval_missing_run_dir(capsys, tmp_path):
    assert_user_error(*run(capsys, "eval", tmp_path / "missing"), match="run directory not found")


def test_eval_corrupt_checkpoint(capsys, tmp_path):
    path = tmp_path / "run" / "checkpoints" / "step_000000000100.safetensors"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x00\x01not a checkpoint" * 10)
    assert_user_error(*run(capsys, "eval", tmp_path / "run", "--json"), match="truncated or corrupt")


def test_crash_mid_training_exits_1_and_writes_no_checkpoint(capsys, tmp_path, monkeypatch):
    (tmp_path / "duetrl_test_crash_env.py").write_text(CRASH_ENV)
    monkeypatch.syspath_prepend(str(tmp_path))
    run_dir = tmp_path / "run"
    code, out, err = run(
        capsys,
        "train",
        "duetrl_test_crash_env:CrashEnv",
        "--steps",
        1000,
        "--set",
        "update_every=5",
        "eval_episodes=1",
        "eval_every=0",
        "--run-dir",
        run_dir,
        "--quiet",
    )
    assert code == 1
    lines = [line for line in err.strip().splitlines() if not line.startswith("duetrl: training crash")]
    assert len(lines) == 2 and lines[0].startswith("duetrl: training ")  # the start notice, then the one error
    assert lines[1].startswith("duetrl: training stopped:") and "boom" in lines[1]
    assert "Traceback" not in err
    assert_no_checkpoint(run_dir)


# ------------------------------------------------------------------------------------------ train -> eval


def test_train_then_eval(capsys, tmp_path):
    run_dir = tmp_path / "X"
    code, out, err = run(
        capsys,
        "train",
        "Pendulum-v1",
        "--preset",
        "chapter",
        "--steps",
        400,
        "--set",
        "eval_every=200",
        "eval_episodes=2",
        "--run-dir",
        run_dir,
        "--quiet",
    )
    assert code == 0, err
    assert "any/ac/chapter" in err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["env_steps"] == 400 and summary["episodes"] == 2
    assert summary["run_dir"] == str(run_dir)
    assert ckpt.list_checkpoints(run_dir)[-1].name == "step_000000000400.safetensors"

    code, out, err = run(capsys, "eval", run_dir, "--episodes", 3, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["episodes"] == 3
    assert isinstance(result["mean_return"], float) and isinstance(result["std_return"], float)
    assert result["std_return"] >= 0 and result["mean_return"] < 0
    assert len(result["returns"]) == 3 and result["median_return"] == sorted(result["returns"])[1]
    assert abs(sum(result["returns"]) / 3 - result["mean_return"]) < 1e-9

    code, out, err = run(capsys, "eval", run_dir, "--episodes", 2, "--deterministic")
    assert code == 0, err
    assert "Pendulum-v1: mean return" in out and "over 2 episodes" in out

    # a second train into the same directory is refused, and the run is left intact
    assert_user_error(
        *run(capsys, "train", "Pendulum-v1", "--steps", 50, "--run-dir", run_dir, "--quiet"),
        match="already holds a run",
    )
    assert ckpt.list_checkpoints(run_dir)[-1].name == "step_000000000400.safetensors"


def test_budget_warning_is_printed_once_before_training(capsys, tmp_path):
    run_dir = tmp_path / "run"
    argv = ["train", "Pendulum-v1", "--preset", "chapter", "--steps", 200, "--set", "eval_episodes=1"]
    code, out, err = run(capsys, *argv, "eval_every=400", "--run-dir", run_dir, "--quiet")
    assert code == 0, err
    lines = err.strip().splitlines()
    assert lines[0].startswith("duetrl: training ")
    assert lines[1].startswith("duetrl: warning: eval_every=400 is more than steps=200"), err
    assert sum(line.startswith("duetrl: warning:") for line in lines) == 1 and "Traceback" not in err
    assert json.loads(out.strip().splitlines()[-1])["env_steps"] == 200  # a warning, not an error: the run ran


def cli_process(cwd, *argv, env=None):
    """``python -m duetrl.cli ARGV`` as a child process, as a user runs it: (exit code, stdout, stderr)."""
    argv = [sys.executable, "-m", "duetrl.cli", *map(str, argv)]
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
    return done.returncode, done.stdout, done.stderr


def test_env_kwargs_hold_from_training_to_evaluation_and_video(tmp_path):
    """Trained on the torch-native Pendulum with m and l, evaluated and recorded on its Gymnasium twin."""
    run_dir = tmp_path / "D"
    code, out, err = cli_process(
        tmp_path,
        *("train", "Pendulum-v1", "--algo", "ppo", "--preset", "none", "--steps", 256, "--run-dir", run_dir),
        *("--set", "num_steps=128", "eval_every=0", "eval_episodes=2", "--env-kwargs", "m=1.5", "l=0.8", "--quiet"),
    )
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["episodes"] == 2  # the final evaluation ran
    code, out, err = cli_process(tmp_path, "eval", run_dir, "--episodes", 2, "--json")
    assert code == 0, err
    returns = json.loads(out)["returns"]
    code, out, err = cli_process(tmp_path, "eval", run_dir, "--episodes", 2, "--json", "--env-kwargs", "m=1", "l=1")
    assert code == 0, err
    assert json.loads(out)["returns"] != returns  # the run's m and l were in force, not Gymnasium's defaults
    if importlib.util.find_spec("imageio") is not None:
        code, out, err = cli_process(tmp_path, "eval", run_dir, "--episodes", 1, "--video", "x.gif")
        assert code == 0, err
        assert (tmp_path / "x.gif").stat().st_size > 1000


def test_a_mistake_leaves_no_run_directory(capsys, tmp_path):
    for argv in (["train", "NoSuchEnv-v9"], ["train", "CartPole-v1", "--algo", "td3"]):
        code, _, err = run(capsys, *argv, "--run-dir", tmp_path / "new", "--quiet")
        assert code == 2 and "duetrl: error:" in err
        assert not (tmp_path / "new").exists()


def test_evaluation_of_an_env_without_an_end_stops_at_the_step_cap_and_says_so(tmp_path):
    (tmp_path / "never_ends.py").write_text(NEVER_ENDS)
    argv = ["train", "never_ends:NeverEnds", "--algo", "ppo", "--preset", "none", "--steps", 64, "--quiet"]
    settings = ["--set", "num_steps=32", "minibatch_size=32", "eval_every=0", "eval_episodes=2", "eval_max_steps=50"]
    code, out, err = cli_process(tmp_path, *argv, *settings, "--run-dir", tmp_path / "R")
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["mean_length"] == 50 and summary["capped_episodes"] == 2
    warnings = [line for line in err.splitlines() if line.startswith("duetrl: warning:")]
    assert len(warnings) == 1 and "2 of 2 evaluation episodes" in warnings[0] and "50 steps" in warnings[0], err
    assert "Traceback" not in err


def test_a_runs_own_config_file_can_be_fed_back_and_tweaked(tmp_path):
    code, _, err = cli_process(
        tmp_path, "train", "CartPole-v1", "--algo", "ppo", "--steps", 512, "--set", "eval_every=0", "eval_episodes=1",
        "--run-dir", tmp_path / "A", "--quiet",
    )  # fmt: skip
    assert code == 0, err
    first = yaml.safe_load((tmp_path / "A" / "config.yaml").read_text())
    assert first["preset"] == "CartPole-v1/ppo/default"
    code, _, err = cli_process(
        tmp_path,
        "train",
        "--config",
        tmp_path / "A" / "config.yaml",
        "--seed",
        1,
        "--run-dir",
        tmp_path / "B",
        "--quiet",
    )
    assert code == 0, err
    assert "with preset CartPole-v1/ppo/default" in err
    second = yaml.safe_load((tmp_path / "B" / "config.yaml").read_text())
    assert second == {**first, "seed": 1}


PICKY_ENV = """
import gymnasium as gym
import numpy as np


class Picky(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, size=3):
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        self.size = size
"""


@pytest.mark.parametrize(
    "argv, match",
    [
        (["Pendulum-v1", "--backend", "torch", "--env-kwargs", "g=abc"], r"g='abc' should be a number"),
        (["Pendulum-v1", "--backend", "gymnasium", "--env-kwargs", "g=abc"], r"g='abc' should be a number"),
        (["Pendulum-v1", "--backend", "torch", "--env-kwargs", "G=1"], r"no argument 'G' \(it takes g, m, l\)"),
        (["CartPole-v1", "--env-kwargs", "sutton_barto_reward=maybe"], r"sutton_barto_reward='maybe' should be true"),
        (["picky_env:Picky", "--env-kwargs", "size=-1"], r"rejected its arguments: size must be positive, got -1"),
        (["picky_env:Picky", "--env-kwargs", "size=abc"], r"rejected its arguments: size='abc' should be a number"),
    ],
)
def test_bad_environment_arguments_are_one_line_before_anything_is_written(tmp_path, argv, match):
    (tmp_path / "picky_env.py").write_text(PICKY_ENV)
    code, out, err = cli_process(tmp_path, "train", *argv, "--steps", 64, "--run-dir", tmp_path / "R", "--quiet")
    line = assert_user_error(code, out, err, match=match)
    assert "environment" in line and "--env-kwargs" not in line
    assert not (tmp_path / "R").exists()


def test_mujoco_video_without_a_display_picks_a_headless_gl_and_a_window_fails_clearly(tmp_path):
    pytest.importorskip("mujoco")
    pytest.importorskip("imageio")
    from duetrl.evaluate import offscreen_gl

    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "MUJOCO_GL")}
    run_dir = tmp_path / "H"
    argv = ["train", "Hopper-v5", "--algo", "ppo", "--preset", "none", "--steps", 64, "--run-dir", run_dir, "--quiet"]
    settings = ["--set", "num_steps=32", "minibatch_size=32", "eval_every=0", "eval_episodes=1"]
    code, _, err = cli_process(tmp_path, *argv, *settings, env=env)
    assert code == 0, err

    code, out, err = cli_process(tmp_path, "eval", run_dir, "--episodes", 1, "--render", "human", env=env)
    line = assert_user_error(code, out, err, match="needs a display")
    assert "--video" in line

    code, out, err = cli_process(tmp_path, "eval", run_dir, "--episodes", 1, "--video", "hop.mp4", env=env)
    if offscreen_gl() is None:  # what the child could choose: EGL, else OSMesa, else nothing
        assert_user_error(code, out, err, match="neither EGL nor OSMesa")
    else:
        assert code == 0, err
        assert (tmp_path / "hop.mp4").stat().st_size > 1000 and "FatalError" not in err


def test_eval_takes_a_checkpoint_file_in_place_of_the_run_directory(tmp_path):
    run_dir = tmp_path / "P"
    argv = ["train", "Pendulum-v1", "--preset", "chapter", "--steps", 200, "--set", "eval_episodes=1", "eval_every=0"]
    code, _, err = cli_process(tmp_path, *argv, "--run-dir", run_dir, "--quiet")
    assert code == 0, err
    best = run_dir / "checkpoints" / "best.safetensors"
    code, out, err = cli_process(tmp_path, "eval", best, "--episodes", 2, "--deterministic", "--json")
    assert code == 0, err
    by_file = json.loads(out)
    code, out, err = cli_process(
        tmp_path, "eval", run_dir, "--checkpoint", "best", "--episodes", 2, "--deterministic", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["returns"] == by_file["returns"] and by_file["episodes"] == 2
    code, out, err = cli_process(tmp_path, "eval", run_dir / "checkpoints" / "nope.safetensors")
    assert_user_error(code, out, err, match="checkpoint not found")


MY_ENVS = """
import gymnasium as gym
from gymnasium.envs.classic_control.pendulum import PendulumEnv


class LightPendulum(PendulumEnv):
    def __init__(self, render_mode=None):
        super().__init__(render_mode=render_mode, g=5.0)


gym.register("LightPendulum-v0", entry_point=LightPendulum, max_episode_steps=50)
"""


@pytest.mark.parametrize("how", ["--import", "module:Class"])
def test_the_duetrl_command_finds_user_modules_in_the_current_directory(tmp_path, how):
    """As ``python -m`` does: the installed ``duetrl`` script, run next to my_envs.py, imports it."""
    (tmp_path / "my_envs.py").write_text(MY_ENVS)
    command = Path(sys.executable).parent / "duetrl"
    env = ["LightPendulum-v0", "--import", "my_envs"] if how == "--import" else ["my_envs:LightPendulum"]
    argv = [*env, "--preset", "none", "--steps", 64, "--set", "update_every=16", "eval_every=0", "eval_episodes=1"]
    argv += ["eval_max_steps=100"]
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [command, "train", *map(str, argv), "--run-dir", "R", "--quiet"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=clean,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lengths = 50 if how == "--import" else 100  # the registration's time limit; a bare class has none
    assert json.loads(done.stdout.strip().splitlines()[-1])["mean_length"] == lengths


def test_eval_of_a_run_trained_on_an_env_object_says_what_to_do(capsys, tmp_path):
    import gymnasium as gym

    import duetrl

    settings = dict(preset="none", steps=32, update_every=16, eval_every=0, eval_episodes=1, quiet=True)
    duetrl.train(gym.make("Pendulum-v1"), "ac", run_dir=tmp_path / "R", **settings)
    capsys.readouterr()
    line = assert_user_error(*run(capsys, "eval", tmp_path / "R"), match="given as a Python object")
    assert "duetrl.load(RUN, env=...)" in line and "--import" in line


@pytest.mark.parametrize("command", [["train"], ["train", "--steps", "100"], ["sweep", "--run-dir", "S"]])
def test_a_bare_train_or_sweep_prints_usage_and_starts_nothing(tmp_path, command):
    code, out, err = cli_process(tmp_path, *command)
    assert code == 2 and out == ""
    assert err.startswith(f"usage: duetrl {command[0]}") and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"duetrl: error: {command[0]} needs an environment")
    assert list(tmp_path.iterdir()) == []  # no runs/ directory, no sweep


def test_train_without_an_environment_from_python_is_a_user_error(tmp_path):
    import duetrl

    with pytest.raises(duetrl.UserError, match=r"no environment to train on.*duetrl.train\('Pendulum-v1'"):
        duetrl.train(algo="ppo", steps=100)
    config = tmp_path / "c.yaml"
    config.write_text("env_id: Pendulum-v1\nsteps: 64\nupdate_every: 16\neval_episodes: 1\n")
    assert duetrl.train(config=config, preset="none", run_dir=tmp_path / "r", quiet=True).env_steps == 64


@pytest.mark.parametrize("num_envs, backend", [(1, "gymnasium"), (32, "torch")])
def test_the_training_line_says_which_backend_auto_picked(tmp_path, num_envs, backend):
    argv = ["train", "Acrobot-v1", "--algo", "ppo", "--preset", "none", "--num-envs", num_envs, "--steps", 64]
    settings = ["--set", "num_steps=2", "minibatch_size=64", "eval_every=0", "eval_episodes=1", "eval_max_steps=5"]
    code, out, err = cli_process(tmp_path, *argv, *settings, "--run-dir", tmp_path / "R", "--quiet")
    assert code == 0, err
    plural = "s" if num_envs > 1 else ""
    assert err.splitlines()[0].startswith(
        f"duetrl: training ppo on Acrobot-v1 ({num_envs} env{plural}, {backend} backend)"
    )


def test_evaluation_output_names_its_mode(tmp_path):
    """The chapter preset evaluates with sampled actions; eval --deterministic with the policy's mode: each says so."""
    argv = ["train", "Pendulum-v1", "--preset", "chapter", "--steps", 200, "--set", "eval_episodes=1", "eval_every=0"]
    code, out, err = cli_process(tmp_path, *argv, "--run-dir", tmp_path / "P", "--quiet")
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["mode"] == "sampled"
    code, out, err = cli_process(tmp_path, "eval", tmp_path / "P", "--episodes", 1)
    assert code == 0 and "over 1 episodes, sampled actions (" in out, err
    code, out, err = cli_process(tmp_path, "eval", tmp_path / "P", "--episodes", 1, "--deterministic", "--json")
    assert code == 0 and json.loads(out)["mode"] == "deterministic", err


# ------------------------------------------------------------------------------------------ smaller conventions


def test_algo_names_ignore_case_and_a_list_needs_no_brackets(tmp_path):
    argv = ["train", "Pendulum-v1", "--algo", "PPO", "--preset", "none", "--steps", 64, "--run-dir", tmp_path / "R"]
    settings = ["--set", "hidden=16,16", "num_steps=32", "minibatch_size=32", "eval_every=0", "eval_episodes=1"]
    code, _, err = cli_process(tmp_path, *argv, *settings, "--quiet")
    assert code == 0, err
    config = yaml.safe_load((tmp_path / "R" / "config.yaml").read_text())
    assert config["algo"] == "ppo" and config["hidden"] == [16, 16]


def test_a_sweeps_list_setting_takes_bracketed_values_and_a_bare_list_is_one_value():
    from duetrl.cli import _grid_values

    assert _grid_values("hidden", "[64,64],[256,256]") == [[64, 64], [256, 256]]
    assert _grid_values("hidden", "64,64") is None  # one list: resolve reads it as [64, 64]
    assert _grid_values("gamma", "0.9,0.99") == [0.9, 0.99]
    assert _grid_values("gamma", "0.9") is None and _grid_values("env_kwargs", "a,b") is None


def test_mujocos_compiler_warning_is_said_once_on_stderr_not_per_env_on_stdout(tmp_path):
    pytest.importorskip("mujoco")
    argv = ["train", "HalfCheetah-v5", "--algo", "ppo", "--preset", "none", "--num-envs", 4, "--steps", 32]
    settings = ["--set", "num_steps=8", "minibatch_size=32", "eval_every=0", "eval_episodes=1"]
    code, out, err = cli_process(tmp_path, *argv, *settings, "--run-dir", tmp_path / "R", "--quiet")
    assert code == 0, err
    json.loads(out)  # stdout is the summary alone
    notes = [line for line in err.splitlines() if "settotalmass" in line]
    assert len(notes) == 1 and notes[0].startswith("duetrl: note: MuJoCo: compiler attribute 'settotalmass'"), err
