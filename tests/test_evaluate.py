"""Evaluation on held-out episodes and headless video."""

import os

import pytest
from helpers import NEVER_ENDS

import duetrl


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "run"
    duetrl.train(
        "Pendulum-v1", "ac", preset="chapter", steps=200, eval_every=0, eval_episodes=1, run_dir=path, quiet=True
    )
    return path


def test_evaluate_is_reproducible_and_counts_episodes(run_dir):
    agent = duetrl.load(run_dir)
    first = duetrl.evaluate(agent, episodes=7, deterministic=True)
    again = duetrl.evaluate(agent, episodes=7, deterministic=True)
    assert len(first.returns) == 7 and first.returns == again.returns
    assert all(length == 200 for length in first.lengths)


@pytest.mark.parametrize("suffix", [".gif", ".mp4"])
def test_video_is_written_headless(run_dir, tmp_path, suffix):
    pytest.importorskip("imageio")
    out = tmp_path / f"episode{suffix}"
    result = duetrl.evaluate(run_dir, episodes=1, video=out)
    assert len(result.returns) == 1 and out.stat().st_size > 1000
    assert not list(tmp_path.glob(".*tmp*"))  # written under a temporary name, then renamed


def test_video_needs_a_known_format(run_dir, tmp_path):
    with pytest.raises(duetrl.UserError, match="mp4 or .gif"):
        duetrl.evaluate(run_dir, episodes=1, video=tmp_path / "x.avi")


# ------------------------------------------------------------------------------------------ envs without an end


@pytest.fixture
def never_ends(tmp_path, monkeypatch):
    (tmp_path / "duetrl_test_never_ends.py").write_text(NEVER_ENDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "duetrl_test_never_ends:NeverEnds"


def test_an_episode_without_an_end_is_cut_at_the_step_cap(never_ends):
    import torch

    from duetrl.evaluate import evaluate_policy

    act = lambda obs: torch.zeros(len(obs), dtype=torch.long)  # noqa: E731
    result = evaluate_policy(act, never_ends, episodes=3, max_steps=40)
    assert result.lengths == [40, 40, 40] and result.returns == [40.0, 40.0, 40.0]
    assert result.capped == 3 and result.to_dict()["capped_episodes"] == 3
    assert "3 of 3 evaluation episodes" in result.cap_warning(never_ends)
    # an env with its own time limit is cut there, and nothing is said
    limited = evaluate_policy(lambda o: torch.zeros(len(o), 1), "Pendulum-v1", episodes=2, max_steps=40)
    assert limited.lengths == [200, 200] and limited.capped == 0 and limited.cap_warning("Pendulum-v1") is None


def test_the_final_checkpoint_is_written_before_the_final_evaluation(never_ends, tmp_path, monkeypatch):
    """A signal during a long final evaluation stops it, and the run's last step is already saved."""
    from duetrl import checkpoint as ckpt
    from duetrl import loop
    from duetrl.evaluate import EvaluationStopped

    run_dir = tmp_path / "run"
    seen = []

    def interrupted_evaluation(*args, **kwargs):
        seen.append([p.name for p in ckpt.list_checkpoints(run_dir)])
        raise EvaluationStopped  # what a signal during it does

    monkeypatch.setattr(loop, "evaluate_policy", interrupted_evaluation)
    result = duetrl.train(
        never_ends,
        "ppo",
        preset="none",
        steps=64,
        num_steps=32,
        minibatch_size=32,
        eval_every=0,
        run_dir=run_dir,
        quiet=True,
    )
    assert seen == [["step_000000000064.safetensors"]]
    assert result.stopped_early == "interrupted" and result.final_eval is None and result.env_steps == 64


def test_headless_gl_prefers_egl_then_osmesa_and_leaves_a_display_or_a_choice_alone(monkeypatch):
    import ctypes.util

    from duetrl.evaluate import has_display, headless_gl

    for key in ("DISPLAY", "WAYLAND_DISPLAY", "MUJOCO_GL"):
        monkeypatch.setenv(key, "")  # recorded as it was, so that what headless_gl sets is undone too
        monkeypatch.delenv(key)
    libraries = {"EGL": "libEGL.so.1", "OSMesa": "libOSMesa.so.8"}
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: libraries.get(name))
    assert not has_display() and headless_gl() == "egl" and os.environ["MUJOCO_GL"] == "egl"
    assert headless_gl() is None  # already chosen: left alone
    monkeypatch.delenv("MUJOCO_GL")
    del libraries["EGL"]
    assert headless_gl() == "osmesa"
    monkeypatch.delenv("MUJOCO_GL")
    libraries.clear()
    assert headless_gl() is None and "MUJOCO_GL" not in os.environ
    monkeypatch.setenv("DISPLAY", ":0")
    libraries["EGL"] = "libEGL.so.1"
    assert has_display() and headless_gl() is None and "MUJOCO_GL" not in os.environ


def test_a_window_without_a_display_is_a_user_error(run_dir, monkeypatch):
    for key in ("DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(duetrl.UserError, match="needs a display"):
        duetrl.evaluate(run_dir, episodes=1, render="human")


# ------------------------------------------------------------------------------------------ validation and test seeds
SEED_RECORDER = '''
import gymnasium as gym
import numpy as np


class SeedRecorder(gym.Env):
    """Five-step episodes that write down every seed they are reset with."""

    seeds: list = []
    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            SeedRecorder.seeds.append(seed)
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.zeros(2, np.float32), 1.0, self.t >= 5, False, {}
'''


def test_evaluations_inside_training_never_play_the_test_episodes(tmp_path, monkeypatch):
    """The runs' own evaluations (periodic and final), which pick best.safetensors and stop at target_return, play
    validation seeds; duetrl.evaluate plays the test seeds; training's envs play neither."""
    from duetrl.evaluate import EVAL_SEED_BASE, VALIDATION_SEED_BASE

    (tmp_path / "duetrl_test_seeds.py").write_text(SEED_RECORDER)
    monkeypatch.syspath_prepend(str(tmp_path))
    import duetrl_test_seeds

    recorder = duetrl_test_seeds.SeedRecorder
    recorder.seeds.clear()
    env = "duetrl_test_seeds:SeedRecorder"
    run = tmp_path / "run"
    settings = dict(num_envs=2, num_steps=16, minibatch_size=32, eval_every=32, eval_episodes=3)
    duetrl.train(env, "ppo", steps=64, **settings, run_dir=run, quiet=True)
    during = list(recorder.seeds)
    recorder.seeds.clear()
    duetrl.evaluate(run, episodes=4)
    validation = [s for s in during if s >= VALIDATION_SEED_BASE]
    assert sorted(set(validation)) == [VALIDATION_SEED_BASE + k for k in range(3)]
    assert len(validation) == 2 * 3  # the evaluation at 32 steps, and the final one at 64
    assert all(s < 1000 for s in during if s < VALIDATION_SEED_BASE)  # training's envs: seeded from the run's seed
    assert recorder.seeds == [EVAL_SEED_BASE + k for k in range(4)]
