"""Stopping and resuming runs: SIGKILL, SIGTERM/SIGINT, --resume, checkpoint pruning, and the run-directory
errors around them (non-finite losses, checkpoints of other spaces, unwritable or occupied run dirs).

The interrupted runs are real ``duetrl`` child processes, held at a known step (``helpers.spawn_paused``) until
the test kills or signals them there, so no test races the run's end. The reference and resumed runs go through
``duetrl.cli.main`` in this process, which gives the same numbers (every RNG is seeded, torch uses one thread)
at less start-up cost.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from helpers import assert_user_error, read_metrics, run, spawn_paused, wait_paused, without_wall_time

import duetrl
from duetrl import checkpoint as ckpt
from duetrl.errors import UserError

# ------------------------------------------------------------------------------------------ helpers


def env_steps(rows) -> list[int]:
    return [int(float(r["env_steps"])) for r in rows]


def assert_consistent_log(rows) -> None:
    """env_steps never goes back, and no row appears twice (a resume rewrote nothing)."""
    steps = env_steps(rows)
    assert steps == sorted(steps), steps
    keys = [tuple(sorted(r.items())) for r in without_wall_time(rows)]
    assert len(keys) == len(set(keys)), "duplicated metrics rows"


def step_of(path: Path) -> int:
    return int(ckpt.STEP_FILE.match(path.name).group(1))


def step_name(step: int) -> str:
    return f"step_{step:012d}.safetensors"


def tensors_in(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from tensors_in(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from tensors_in(value)


# ------------------------------------------------------------------------------------------ 1. SIGKILL


COMMON = ["--preset", "none", "--num-envs", 2, "--seed", 3, "--quiet"]
SCHEDULE = ["checkpoint_every=512", "eval_every=1024", "eval_episodes=2", "log_every=0"]
PPO = ["num_steps=64", "minibatch_size=64", "epochs=2"]
SAC = ["learning_starts=300", "batch_size=64", "actor_hidden=[32,32]", "critic_hidden=[32,32]", "save_buffer=true"]

# Fewer steps than a hand check would use (3072 on-policy, 1280 for SAC, not 8192 / 3000) to keep the file
# fast; the kill still lands just past 1024 with checkpoints, evaluations (on-policy) and, for SAC, a few hundred
# gradient steps on the restored replay buffer to go.
KILL_CASES = {
    "ppo-gymnasium": ("Pendulum-v1", ["--algo", "ppo", "--backend", "gymnasium", "--steps", 3072], PPO),
    "ppo-torch": ("Pendulum-v1", ["--algo", "ppo", "--backend", "torch", "--steps", 3072], PPO),
    "ac": ("Pendulum-v1", ["--algo", "ac", "--backend", "gymnasium", "--steps", 3072], ["update_every=16"]),
    "sac-saved-buffer": ("Pendulum-v1", ["--algo", "sac", "--backend", "gymnasium", "--steps", 1280], SAC),
    "sac-discrete": ("CartPole-v1", ["--algo", "sac", "--backend", "gymnasium", "--steps", 1280], SAC),  # issue 19
    # Exploration with memory: the pink noise sequences and TD3's OU state must come back too.
    "sac-pink-noise": ("Pendulum-v1", ["--algo", "sac", "--backend", "torch", "--steps", 1280], [*SAC, "noise_beta=1"]),
    "td3-ou-noise": ("Pendulum-v1", ["--algo", "td3", "--backend", "torch", "--steps", 1280], [*SAC, "noise_type=ou"]),
    # Memory: the cores' carried states and episode starts come back (issue 20), on both backends; with
    # rnn_prev_action also the last action each env's cores read.
    "ppo-lstm": (
        "PendulumNoVel-v1",
        ["--algo", "ppo", "--backend", "torch", "--steps", 3072],
        [*PPO, "rnn=lstm", "rnn_hidden=16", "rnn_seq_len=16", "rnn_prev_action=true"],
    ),
    "a2c-gru": (
        "CartPoleNoVel-v1",
        ["--algo", "a2c", "--backend", "gymnasium", "--steps", 3072],
        ["rnn=gru", "update_every=16"],
    ),
    # Off-policy memory: the carried states and the buffer of sequences with its stored states come back.
    "sac-gru": (
        "PendulumNoVel-v1",
        ["--algo", "sac", "--backend", "torch", "--steps", 1280],
        [*SAC, "rnn=gru", "rnn_hidden=16", "rnn_seq_len=4", "rnn_burn_in=2", "buffer_size=2000"],
    ),
    # MuJoCo state (qpos, qvel, time limits, RNG) captured from the envs; Hopper also terminates early.
    "ppo-mujoco": ("Hopper-v5", ["--algo", "ppo", "--backend", "gymnasium", "--steps", 3072], PPO),
}


@pytest.mark.parametrize("case", list(KILL_CASES))
def test_sigkill_then_resume_matches_uninterrupted_run(capsys, tmp_path, case):
    env_id, flags, settings = KILL_CASES[case]
    if env_id.startswith("Hopper"):
        pytest.importorskip("mujoco", reason="gymnasium[mujoco] is not installed (pip install 'duetrl[mujoco]')")
    argv = [env_id, *COMMON, *flags, "--set", *settings, *SCHEDULE]
    total = int(flags[flags.index("--steps") + 1])
    a, b = tmp_path / "A", tmp_path / "B"

    # B: a real process, killed without warning at its first metrics row past its checkpoint at 1024 steps
    proc, flags = spawn_paused(tmp_path, "B", 1024, "train", *argv, "--run-dir", b)
    paused_at = wait_paused(proc, flags)
    proc.kill()
    assert proc.wait() == -signal.SIGKILL
    assert step_of(ckpt.list_checkpoints(b)[-1]) == 1024
    _, killed_rows = read_metrics(b)
    assert max(env_steps(killed_rows)) == paused_at > 1024  # a row the resumed run must drop and write again

    # A: the same run, never stopped
    code, _, err = run(capsys, "train", *argv, "--run-dir", a)
    assert code == 0, err

    code, out, err = run(capsys, "train", "--resume", b, "--quiet")
    assert code == 0, err
    assert "Traceback" not in err
    assert json.loads(out.strip().splitlines()[-1])["env_steps"] == total

    columns_a, rows_a = read_metrics(a)
    columns_b, rows_b = read_metrics(b)
    assert set(columns_a) == set(columns_b)
    assert len(rows_a) == len(rows_b)
    assert without_wall_time(rows_a) == without_wall_time(rows_b)
    assert_consistent_log(rows_b)
    assert env_steps(rows_b)[-1] == total
    assert ckpt.list_checkpoints(b)[-1].name == ckpt.list_checkpoints(a)[-1].name == step_name(total)


# ------------------------------------------------------------------------------------------ 2. --steps


SMALL_AC = [
    "Pendulum-v1",
    "--algo",
    "ac",
    "--preset",
    "none",
    "--num-envs",
    2,
    "--backend",
    "gymnasium",
    "--seed",
    1,
    "--quiet",
    "--set",
    "update_every=16",
    "checkpoint_every=512",
    "eval_episodes=1",
    "log_every=0",
]


def test_resume_with_more_steps_continues_to_the_new_total(capsys, tmp_path):
    run_dir = tmp_path / "B"
    code, _, err = run(capsys, "train", *SMALL_AC, "eval_every=512", "--steps", 1024, "--run-dir", run_dir)
    assert code == 0, err
    _, before = read_metrics(run_dir)
    assert env_steps(before)[-1] == 1024

    code, out, err = run(capsys, "train", "--resume", run_dir, "--steps", 2048, "--quiet")
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["env_steps"] == 2048
    _, after = read_metrics(run_dir)
    assert env_steps(after)[-1] == 2048
    assert after[: len(before)] == before  # the first session's rows are kept as they were
    assert_consistent_log(after)
    assert ckpt.list_checkpoints(run_dir)[-1].name == step_name(2048)
    assert ckpt.load(ckpt.list_checkpoints(run_dir)[-1])["config"]["steps"] == 2048


def eval_steps(run_dir: Path) -> list[int]:
    return [int(r["env_steps"]) for r in read_metrics(run_dir)[1] if r["eval_return_mean"]]


@pytest.mark.parametrize("every, expected", [(0, [64, 80]), (32, [32, 64, 80])], ids=["eval_every=0", "eval_every=32"])
def test_resume_with_more_steps_keeps_the_eval_schedule(capsys, tmp_path, every, expected):
    run_dir = tmp_path / "B"
    code, _, err = run(capsys, "train", *SMALL_AC, f"eval_every={every}", "--steps", 64, "--run-dir", run_dir)
    assert code == 0, err
    assert eval_steps(run_dir) == expected[:-1]
    code, _, err = run(capsys, "train", "--resume", run_dir, "--steps", 80, "--quiet")
    assert code == 0, err
    assert eval_steps(run_dir) == expected


def test_resume_keeps_the_runs_preset(capsys, tmp_path):
    run_dir = tmp_path / "B"
    code, _, err = run(capsys, "train", *SMALL_AC, "eval_every=0", "--steps", 64, "--run-dir", run_dir)
    assert code == 0, err
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["preset"] is None
    code, _, err = run(capsys, "train", "--resume", run_dir, "--steps", 96, "--quiet")
    assert code == 0, err
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["preset"] is None
    assert "with preset" not in err


# ------------------------------------------------------------------------------------------ 3. SIGTERM / SIGINT


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_cleanly_with_a_checkpoint_then_resumes(capsys, tmp_path, sig):
    run_dir = tmp_path / "B"
    total = 2048
    argv = [*SMALL_AC, "eval_every=1024", "--steps", total, "--run-dir", run_dir]
    # the signal arrives while the run is held at its first row past its checkpoint at 512 steps
    proc, flags = spawn_paused(tmp_path, "B", 512, "train", *argv)
    paused_at = wait_paused(proc, flags)
    proc.send_signal(sig)
    (flags / "go").touch()
    try:
        code = proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        code = None
    err = (tmp_path / "B.err").read_text()
    assert code == 130, f"{sig.name} gave exit code {code}; stderr:\n{err}"
    assert "Traceback" not in err
    summary = json.loads((tmp_path / "B.out").read_text().strip().splitlines()[-1])
    assert summary["stopped"] == "interrupted"

    stopped_at = step_of(ckpt.list_checkpoints(run_dir)[-1])
    assert stopped_at == summary["env_steps"] == paused_at  # it stopped at the step it was asked to
    _, rows = read_metrics(run_dir)
    assert rows and max(env_steps(rows)) <= stopped_at
    assert_consistent_log(rows)

    code, out, err = run(capsys, "eval", run_dir, "--episodes", 2, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["episodes"] == 2 and isinstance(result["mean_return"], float)

    code, out, err = run(capsys, "train", "--resume", run_dir, "--quiet")
    assert code == 0, err
    _, rows = read_metrics(run_dir)
    assert env_steps(rows)[-1] == total
    assert_consistent_log(rows)
    assert ckpt.list_checkpoints(run_dir)[-1].name == step_name(total)


# ------------------------------------------------------------------------------------------ 4. pruning


def test_keeps_only_the_last_checkpoints_and_best(capsys, tmp_path):
    run_dir = tmp_path / "B"
    code, _, err = run(
        capsys, "train", *SMALL_AC, "keep_checkpoints=2", "eval_every=1000", "--steps", 2000, "--run-dir", run_dir
    )
    assert code == 0, err
    names = sorted(p.name for p in ckpt.checkpoint_dir(run_dir).iterdir())
    assert names == sorted([step_name(1536), step_name(2000), "best.safetensors"])
    assert not list(run_dir.rglob("*.tmp"))


# ------------------------------------------------------------------------------------------ 5. non-finite loss


NAN_ENV = '''
import gymnasium as gym
import numpy as np


class NanRewardEnv(gym.Env):
    """Finite rewards for its first 45 steps in all, NaN after; episodes are cut at 50 steps."""

    observation_space = gym.spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)

    def __init__(self):
        self.total = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.np_random.uniform(-1, 1, 3).astype(np.float32), {}

    def step(self, action):
        self.t += 1
        self.total += 1
        reward = float("nan") if self.total > 45 else -float(np.square(action).sum())
        obs = self.np_random.uniform(-1, 1, 3).astype(np.float32)
        return obs, reward, False, self.t >= 50, {}
'''


def test_non_finite_loss_stops_with_exit_1_and_keeps_finite_checkpoints(capsys, tmp_path, monkeypatch):
    (tmp_path / "duetrl_test_nan_env.py").write_text(NAN_ENV)
    monkeypatch.syspath_prepend(str(tmp_path))
    run_dir = tmp_path / "run"
    code, out, err = run(
        capsys,
        "train",
        "duetrl_test_nan_env:NanRewardEnv",
        "--algo",
        "ac",
        "--preset",
        "none",
        "--steps",
        500,
        "--set",
        "update_every=10",
        "checkpoint_every=20",
        "log_every=0",
        "eval_every=0",
        "eval_episodes=1",
        "hidden=[16,16]",
        "--run-dir",
        run_dir,
        "--quiet",
    )
    assert code == 1, err
    assert "Traceback" not in err and "Traceback" not in out
    last = err.strip().splitlines()[-1]
    assert last.startswith("duetrl: training stopped:"), err
    assert re.search(r"\b(nan|-?inf)\b", last, re.IGNORECASE), last

    saved = ckpt.list_checkpoints(run_dir)
    assert saved, "the checkpoints before the NaN should be kept"
    files = sorted(ckpt.checkpoint_dir(run_dir).glob("*.safetensors"))
    for path in files:
        state = ckpt.load(path)
        tensors = [t for t in tensors_in(state["agent"]["modules"]) if t.is_floating_point()]
        assert tensors
        assert all(torch.isfinite(t).all() for t in tensors), f"non-finite weights in {path.name}"
    assert all(step_of(p) <= 50 for p in saved)


# ------------------------------------------------------------------------------------------ 6. other spaces


@pytest.fixture
def mountain_car_run(capsys, tmp_path):
    run_dir = tmp_path / "mc"
    code, _, err = run(
        capsys,
        "train",
        "MountainCarContinuous-v0",
        "--algo",
        "ac",
        "--preset",
        "none",
        "--steps",
        200,
        "--set",
        "update_every=10",
        "eval_every=0",
        "eval_episodes=1",
        "hidden=[16,16]",
        "--run-dir",
        run_dir,
        "--quiet",
    )
    assert code == 0, err
    return run_dir


@pytest.mark.parametrize("keep_spaces", [True, False], ids=["spaces-recorded", "spaces-missing"])
def test_checkpoint_of_other_spaces_is_a_user_error(capsys, mountain_car_run, keep_spaces):
    run_dir = mountain_car_run
    path = ckpt.list_checkpoints(run_dir)[-1]
    state = ckpt.load(path)
    state["config"]["env_id"] = "Pendulum-v1"  # same agent tensors, now claiming Pendulum's (3,) observations
    if not keep_spaces:
        del state["spaces"]  # as if written before spaces were recorded: only the tensor shapes can tell
    ckpt.save(path, state)
    match = "other spaces" if keep_spaces else "other shapes"

    with pytest.raises(UserError, match=match):
        duetrl.load(run_dir)
    assert_user_error(*run(capsys, "eval", run_dir, "--episodes", 1), match=match)
    assert_user_error(*run(capsys, "train", "--resume", run_dir, "--quiet"), match=match)
    assert ckpt.list_checkpoints(run_dir) == [path]  # a refused resume leaves the run alone


# ------------------------------------------------------------------------------------------ 7. unwritable run dir


def test_run_dir_under_a_file_is_a_user_error(capsys, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    before = sorted(p.name for p in tmp_path.iterdir())
    line = assert_user_error(
        *run(capsys, "train", "Pendulum-v1", "--steps", 50, "--run-dir", blocker / "run", "--quiet"),
        match="cannot write to run directory",
    )
    assert "--run-dir" in line
    assert blocker.read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # cwd is tmp_path: no runs/ either


@pytest.mark.parametrize("inside", [True, False], ids=["inside-read-only-dir", "read-only-run-dir"])
def test_read_only_run_dir_is_a_user_error(capsys, tmp_path, inside):
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions (the file-parent case covers this as root)")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        run_dir = locked / "run" if inside else locked
        assert_user_error(
            *run(capsys, "train", "Pendulum-v1", "--steps", 50, "--run-dir", run_dir, "--quiet"),
            match="cannot write to run directory",
        )
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


# ------------------------------------------------------------------------------------------ 8. occupied run dir


def test_existing_run_without_resume_is_refused_with_a_hint(capsys, tmp_path):
    run_dir = tmp_path / "B"
    code, _, err = run(capsys, "train", *SMALL_AC, "eval_every=0", "--steps", 64, "--run-dir", run_dir)
    assert code == 0, err
    snapshot = {p: p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file() and "tb" not in p.parts}

    line = assert_user_error(
        *run(capsys, "train", *SMALL_AC, "eval_every=0", "--steps", 128, "--run-dir", run_dir),
        match="already holds a run",
    )
    assert f"--resume {run_dir}" in line
    assert {p: p.read_bytes() for p in snapshot} == snapshot


# ------------------------------------------------------------------------------------------ 9. settings on resume


def cli_process(cwd, *argv):
    """``python -m duetrl.cli ARGV`` as a child process, as a user runs it: (exit code, stdout, stderr)."""
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "duetrl.cli", *map(str, argv)], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    return done.returncode, done.stdout, done.stderr


def files_of(run_dir: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file() and "tb" not in p.parts}


def test_resume_applies_the_safe_settings_and_refuses_the_others_by_name(tmp_path):
    run_dir = tmp_path / "R"
    code, _, err = cli_process(tmp_path, "train", *SMALL_AC, "eval_every=0", "--steps", 64, "--run-dir", run_dir)
    assert code == 0, err
    before = files_of(run_dir)

    for argv, names in (
        (["--set", "lr=0.1", "--algo", "sac"], "algo, lr"),
        (["--seed", "5", "--set", "actor_lr=0.1", "eval_every=32"], "seed, actor_lr"),
        (["CartPole-v1", "--num-envs", "4"], "env_id, num_envs"),
    ):
        code, out, err = cli_process(tmp_path, "train", "--resume", run_dir, *argv, "--quiet")
        assert code == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("duetrl: error:") and "Traceback" not in err, err
        assert f"cannot change {names}:" in lines[0], lines[0]
        assert files_of(run_dir) == before  # nothing written

    # the same values as saved are no change; the resumable ones apply, and the resume says so
    argv = ["--algo", "ac", "--seed", "1", "--steps", 96, "--set", "eval_every=32", "log_every=16"]
    code, out, err = cli_process(tmp_path, "train", "--resume", run_dir, *argv, "--quiet")
    assert code == 0, err
    lines = err.strip().splitlines()
    assert (
        lines[1]
        == "duetrl: resuming from step 64 of 96 (changed: steps 64 -> 96, eval_every 0 -> 32, log_every 0 -> 16)"
    )
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["eval_every"] == 32
    assert eval_steps(run_dir) == [64, 96]  # the final evaluation at 64, then the new schedule's (32 divides 96)


CLASSIC_ENV = '''
import gymnasium as gym
import numpy as np


class Drift(gym.Env):
    """A 1-d point pushed by the action; its state lives in a private attribute, which duetrl cannot capture."""

    observation_space = gym.spaces.Box(-10.0, 10.0, shape=(1,), dtype=np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._x, self._t = 0.0, 0
        return np.array([self._x], dtype=np.float32), {}

    def step(self, action):
        self._x = float(np.clip(self._x + float(action[0]), -10, 10))
        self._t += 1
        return np.array([self._x], dtype=np.float32), -abs(self._x), False, self._t >= 20, {}
'''


def test_resume_says_in_one_line_what_it_cannot_restore(tmp_path):
    """An off-policy run without its replay buffer, on a user env whose state cannot be captured: one note each,
    no raw UserWarning."""
    (tmp_path / "drift_env.py").write_text(CLASSIC_ENV)
    run_dir = tmp_path / "R"
    settings = ["learning_starts=32", "batch_size=16", "actor_hidden=[8]", "critic_hidden=[8]", "eval_episodes=1"]
    argv = ["train", "drift_env:Drift", "--algo", "sac", "--preset", "none", "--steps", 64, "--set", *settings]
    code, _, err = cli_process(tmp_path, *argv, "eval_every=0", "--run-dir", run_dir, "--quiet")
    assert code == 0, err
    code, out, err = cli_process(tmp_path, "train", "--resume", run_dir, "--steps", 96, "--quiet")
    assert code == 0, err
    assert "Warning" not in err and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines[1] == "duetrl: resuming from step 64 of 96 (changed: steps 64 -> 96)"
    notes = [line for line in lines if line.startswith("duetrl: note:")]
    assert len(notes) == 2, err
    assert "replay buffer was not saved" in notes[0] and "batch_size=16" in notes[0]
    assert "environment's state could not be saved" in notes[1]


# ------------------------------------------------------------------------------------------ 10. the backend


@pytest.mark.parametrize("recorded", [True, False], ids=["backend-recorded", "backend-inferred"])
def test_a_resumed_run_keeps_its_backend_whatever_auto_would_pick_now(tmp_path, monkeypatch, capsys, recorded):
    """A run made when auto picked the native env (here: a threshold of 1) resumes on it when auto would now pick
    Gymnasium, from the checkpoint's record, or, in a checkpoint written before it was recorded, its env state."""
    from duetrl.envs.make import NATIVE_MIN_ENVS

    run_dir = tmp_path / "R"
    settings = dict(preset="none", update_every=16, eval_every=0, eval_episodes=1, log_every=0, quiet=True)
    monkeypatch.setitem(NATIVE_MIN_ENVS, "Pendulum-v1", 1)
    duetrl.train("Pendulum-v1", "ac", steps=64, run_dir=run_dir, checkpoint_every=32, **settings)
    monkeypatch.undo()
    path = ckpt.list_checkpoints(run_dir)[-1]
    state = ckpt.load(path)
    assert state["backend"] == "torch"
    if not recorded:
        del state["backend"]
        ckpt.save(path, state)
    capsys.readouterr()
    result = duetrl.resume(run_dir, steps=96, quiet=True)
    assert result.env_steps == 96
    assert "(1 env, torch backend)" in capsys.readouterr().err
