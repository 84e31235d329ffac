"""Every algorithm on the spaces beyond flat boxes, end to end and fast: Dict observations (with an image) for PPO
and SAC, MultiDiscrete and MultiBinary actions, matrix-shaped actions, exact resume with a Dict env, acting on a
Dict and an image observation, and one clear line for each kind of bad input."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import duetrl
from duetrl import checkpoint as ckpt
from duetrl.encoders import CNN

sys.path.insert(0, str(Path(__file__).parent))  # spaces_envs, by name, for the runs' config.yaml
import spaces_envs  # noqa: E402
from helpers import assert_user_error, read_metrics, run, without_wall_time  # noqa: E402

QUICK = {"eval_every": 0, "eval_episodes": 2, "quiet": True}
SMALL_SAC = {"learning_starts": 64, "batch_size": 32, "actor_hidden": [32], "critic_hidden": [32]}
SMALL_PPO = {"num_steps": 32, "minibatch_size": 32, "epochs": 2, "hidden": [32]}


def test_ppo_on_a_dict_observation_with_an_image(tmp_path):
    result = duetrl.train(
        "spaces_envs:GoalReach",
        "ppo",
        steps=128,
        num_envs=2,
        env_kwargs={"image": True},
        normalize_obs=True,
        run_dir=tmp_path / "ppo",
        **SMALL_PPO,
        **QUICK,
    )
    agent = result.agent.agent
    assert isinstance(agent.policy.encoder.parts[2], CNN)  # the "view" key got a CNN
    # one CNN, read by the critic too: no encoder of its own, no parameter twice in the optimiser
    assert agent.critic.encoder is None
    params = agent.optimizers["ppo"].param_groups[0]["params"]
    assert (
        len({id(p) for p in params})
        == len(params)
        == len(list(agent.policy.parameters())) + len(list(agent.critic.parameters()))
    )
    assert list(agent.obs_norm.parts) == ["goal", "position"]  # per key (sorted, as Gymnasium's Dict), not the image
    assert agent.obs_norm.parts["goal"].count > 100
    env = spaces_envs.GoalReach(image=True)
    obs, _ = env.reset(seed=3)
    loaded = duetrl.load(tmp_path / "ppo")
    assert loaded.act(obs).shape == (2,)  # one Dict observation
    batch = {k: np.stack([v, v, v]) for k, v in obs.items()}
    assert loaded.act(batch).shape == (3, 2)  # a batch of them
    assert np.allclose(loaded.act(obs, deterministic=True), loaded.act(batch, deterministic=True)[0], atol=1e-5)


def test_sac_on_a_dict_observation_stores_the_image_as_uint8_once(tmp_path):
    result = duetrl.train(
        "spaces_envs:GoalReach",
        "sac",
        steps=160,
        num_envs=2,
        env_kwargs={"image": True},
        run_dir=tmp_path / "sac",
        **SMALL_SAC,
        **QUICK,
    )
    buffer = result.agent.agent.buffer
    assert buffer.compact and "next_obs" not in buffer.data
    assert buffer.data["obs"]["view"].dtype == torch.uint8 and buffer.data["obs"]["goal"].dtype == torch.float32
    # every sampled next observation is the true one: the goal of an episode never changes within it, so a
    # transition's next goal equals its goal unless it ended one (25-step episodes, truncated)
    batch = buffer.sample(256, generator=torch.Generator().manual_seed(0))
    assert torch.equal(batch["next_obs"]["goal"], batch["obs"]["goal"])
    assert result.final_eval is not None and len(result.final_eval.returns) == 2


def test_ppo_and_a2c_on_multidiscrete_and_multibinary_actions(tmp_path):
    for algo, kwargs in (("ppo", {}), ("a2c", {"binary": True})):
        settings = SMALL_PPO if algo == "ppo" else {"hidden": [32]}
        result = duetrl.train(
            "spaces_envs:PickBits", algo, steps=128, env_kwargs=kwargs, run_dir=tmp_path / algo, **settings, **QUICK
        )
        assert result.env_steps == 128 and result.final_eval.lengths == [10, 10]


def test_matrix_shaped_box_actions_for_ppo_and_td3(tmp_path):
    # MatrixAction asserts that it receives (2, 2) actions
    duetrl.train("spaces_envs:MatrixAction", "ppo", steps=64, run_dir=tmp_path / "ppo", **SMALL_PPO, **QUICK)
    duetrl.train("spaces_envs:MatrixAction", "td3", steps=96, run_dir=tmp_path / "td3", **SMALL_SAC, **QUICK)


def test_act_on_an_image_observation(tmp_path):
    duetrl.train("spaces_envs:Pixels", "ppo", steps=64, run_dir=tmp_path / "px", **SMALL_PPO, **QUICK)
    loaded = duetrl.load(tmp_path / "px")
    obs, _ = spaces_envs.Pixels().reset(seed=0)
    assert loaded.act(obs) in (0, 1) and loaded.act(np.stack([obs] * 4)).shape == (4,)
    assert isinstance(loaded.agent.policy.encoder, CNN)


def test_resume_with_a_dict_env_matches_the_uninterrupted_run(tmp_path):
    settings = {"env_kwargs": {"image": True}, "num_envs": 2, "save_buffer": True, "log_every": 0, **SMALL_SAC}
    settings.update(eval_every=0, eval_episodes=1, quiet=True)
    whole = duetrl.train("spaces_envs:GoalReach", "sac", steps=192, run_dir=tmp_path / "whole", **settings)
    duetrl.train("spaces_envs:GoalReach", "sac", steps=96, run_dir=tmp_path / "split", **settings)
    saved = ckpt.load(ckpt.list_checkpoints(tmp_path / "split")[-1])
    assert set(saved["obs"]) == {"position", "goal", "view"}  # the envs' current Dict observation
    assert "compact" in saved["agent"]["buffer"]  # the replay buffer with its kept-aside final observations
    duetrl.resume(tmp_path / "split", steps=192, quiet=True)

    def training_rows(run_dir: Path) -> list[dict[str, str]]:
        return [r for r in without_wall_time(read_metrics(run_dir)[1]) if not r.get("eval_return_mean")]

    assert training_rows(tmp_path / "split") == training_rows(whole.run_dir)


def test_frame_stack_and_a_wrapper_apply_at_training_and_evaluation(tmp_path):
    result = duetrl.train(
        "spaces_envs:Pixels",
        "ppo",
        steps=64,
        frame_stack=3,
        wrappers=["gymnasium.wrappers:GrayscaleObservation"],
        run_dir=tmp_path / "fs",
        **SMALL_PPO,
        **QUICK,
    )
    assert result.agent.agent.obs_space.shape == (3, 10, 10)  # grayscale, then 3 frames stacked
    assert duetrl.evaluate(tmp_path / "fs", episodes=1).lengths == [20]  # evaluation wraps its env the same way


def test_bad_input_is_one_clear_line(capsys, tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    code, out, err = run(capsys, "train", "spaces_envs:Pixels", "--algo", "ppo", "--wrap", "no_such_module:Wrapper")
    assert_user_error(code, out, err, r"cannot import wrapper 'no_such_module:Wrapper' \(--wrap\)")
    code, out, err = run(capsys, "train", "spaces_envs:TextObs", "--algo", "ppo", "--run-dir", tmp_path / "t")
    assert_user_error(code, out, err, r"observation space Text.* is not supported: duetrl takes Box, Discrete")
    code, out, err = run(capsys, "train", "spaces_envs:PickBits", "--algo", "td3", "--run-dir", tmp_path / "td3")
    assert_user_error(code, out, err, r"needs continuous actions")
    code, out, err = run(capsys, "train", "spaces_envs:Pixels", "--algo", "ppo", "--set", "encoder=nature_cnn")
    assert_user_error(code, out, err, r"encoder=nature_cnn needs images of at least 36x36, not 10x10")


@pytest.mark.parametrize("outside, words", [(False, "holds NaN"), (True, "left its Box: 3.0 is outside [-1.0, 1.0]")])
def test_a_bad_observation_stops_training_naming_the_step(capsys, tmp_path, outside, words):
    code, out, err = run(
        capsys,
        "train",
        "spaces_envs:NaNAfter",
        "--algo",
        "ppo",
        "--env-kwargs",
        f"outside={outside}",
        "--set",
        "num_steps=4",
        "--steps",
        64,
        "--quiet",
        "--run-dir",
        tmp_path / "nan",
    )
    assert code == 1, err
    assert f"duetrl: training stopped: the observation {words} at env step 5;" in err  # NaNAfter's 5th step
    assert "Traceback" not in err


@pytest.mark.skipif(importlib.util.find_spec("minatar") is None, reason="needs MinAtar (pip install 'duetrl[minatar]')")
def test_minatar_registers_and_an_image_env_refuses_the_torch_backend(capsys, tmp_path):
    code, out, err = run(capsys, "train", "MinAtar/Breakout-v1", "--algo", "ppo", "--backend", "torch")
    assert_user_error(code, out, err, r"'MinAtar/Breakout-v1' has image observations.*--backend gymnasium")
    cfg, preset = duetrl.resolve("MinAtar/Breakout-v1", "ppo")
    assert preset == "MinAtar/Breakout-v1/ppo/default" and cfg.algo.encoder == "small_cnn"
    env = gym.make("MinAtar/Breakout-v1")
    assert env.observation_space.shape == (10, 10, 4)
    env.close()


def test_float_frames_become_uint8_video_frames():
    # MinAtar renders its 10x10 picture as floats in [0, 1]; a video writer takes uint8
    from duetrl.evaluate import _render

    class FloatFrames(spaces_envs.Pixels):
        render_mode = "rgb_array"

        def render(self):
            return np.full((10, 10, 3), 0.5)

    frame = _render(FloatFrames())
    assert frame.dtype == np.uint8 and frame.max() == 128


@pytest.mark.parametrize("algo", ["ppo", "a2c"])
def test_a_recurrent_core_sits_between_the_encoder_and_the_heads(algo, tmp_path):
    """Encoder, then core, then heads: the cores read the encoder's features (a CNN for the image key), the
    rollout is replayed exactly through both, and a loaded policy acts on a Dict observation with its state."""
    settings = dict(SMALL_PPO) if algo == "ppo" else {"update_every": 16, "hidden": [32]}
    result = duetrl.train(
        "spaces_envs:GoalReach",
        algo,
        steps=128,
        num_envs=2,
        env_kwargs={"image": True},
        rnn="gru",
        rnn_hidden=16,
        run_dir=tmp_path / algo,
        **settings,
        **QUICK,
    )
    agent = result.agent.agent
    assert isinstance(agent.policy.encoder.parts[2], CNN)
    assert agent.actor_core.cell.input_size == agent.policy.features == agent.critic_core.cell.input_size
    if algo == "ppo":  # the critic reads the policy's encoder through its own core
        assert agent.critic.encoder is None
    else:  # the critic's own encoder, then its core
        assert isinstance(agent.critic_encoder.parts[2], CNN) and agent.critic.encoder is None
    env = spaces_envs.GoalReach(image=True)
    obs, _ = env.reset(seed=3)
    loaded = duetrl.load(tmp_path / algo)
    action, state = loaded.act(obs, loaded.initial_state(), deterministic=True)
    assert action.shape == (2,) and state.shape == (16,)
    batch = {k: np.stack([v, v]) for k, v in obs.items()}
    actions, states = loaded.act(batch, loaded.initial_state(2), deterministic=True)
    assert np.allclose(actions[0], action, atol=1e-5) and np.allclose(states[1], state, atol=1e-5)
    assert np.isfinite(duetrl.evaluate(loaded, episodes=2).mean)
