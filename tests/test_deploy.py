"""duetrl export: the exported file acts as the torch policy does, runs without torch, and refuses bad input."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_user_error, run

import duetrl
from duetrl import deploy as exporting
from duetrl.errors import UserError

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "onnx_policy.py"
EPISODES = 3

# Tiny runs: what matters is that the exported file and the torch policy agree, not that they are good. PPO's
# normaliser has statistics far from (0, 1) after its first rollout, so a file that forgot it would act otherwise.
RUNS = {
    "ppo-normalised": ("Pendulum-v1", "ppo", {"steps": 2048, "normalize_obs": True, "num_envs": 8}),
    "sac-tanh": ("Pendulum-v1", "sac", {"steps": 400, "learning_starts": 200, "batch_size": 64}),
    "cartpole-discrete": ("CartPole-v1", "ppo", {"steps": 1024, "num_envs": 8}),
    "td3-deterministic": ("Pendulum-v1", "td3", {"steps": 300, "learning_starts": 100, "batch_size": 64}),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    made = {}
    for name, (env_id, algo, settings) in RUNS.items():
        made[name] = root / name
        duetrl.train(env_id, algo, run_dir=made[name], quiet=True, eval_every=0, eval_episodes=1, **settings)
    return made


def _without_torch(*argv: str) -> dict:
    """The example script's JSON, run in a fresh interpreter where ``import torch`` fails."""
    prelude = (
        "import sys, runpy; sys.modules['torch'] = None; "
        f"sys.argv = {[str(EXAMPLE), *argv]!r}; runpy.run_path({str(EXAMPLE)!r}, run_name='__main__')"
    )
    done = subprocess.run([sys.executable, "-c", prelude], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("name", ["ppo-normalised", "sac-tanh", "cartpole-discrete"])
def test_the_exported_file_without_torch_scores_as_duetrl_eval(runs, name, tmp_path, capsys):
    policy = tmp_path / "policy.onnx"
    code, out, err = run(capsys, "export", runs[name], "-o", policy)
    assert code == 0, err
    assert json.loads(out)["max_error"] <= exporting.PARITY_TOLERANCE
    info = json.loads((tmp_path / "policy.onnx.json").read_text())
    assert info["env_id"] == RUNS[name][0] and info["algo"] == RUNS[name][1]
    assert info["inputs"][0]["shape"][0] == "batch"

    code, out, err = run(capsys, "eval", runs[name], "--deterministic", "--json", "--episodes", EPISODES)
    assert code == 0, err
    expected = json.loads(out)["returns"]
    got = _without_torch(str(policy), "--episodes", str(EPISODES))["returns"]
    np.testing.assert_allclose(got, expected, atol=1e-3, rtol=0)

    code, out, err = run(capsys, "eval", policy, "--json", "--episodes", EPISODES)  # the same JSON as a run's
    assert code == 0, err
    result = json.loads(out)
    assert result["mode"] == "deterministic"
    np.testing.assert_allclose(result["returns"], expected, atol=1e-3, rtol=0)


def test_the_normaliser_is_inside_the_file(runs, tmp_path):
    """The run's normaliser has moved away from (0, 1), and the file's actions are the agent's on raw observations."""
    loaded = duetrl.load(runs["ppo-normalised"])
    assert loaded.agent.obs_norm.mean.abs().max() > 0.1
    result = duetrl.export(runs["ppo-normalised"], tmp_path / "p.onnx")
    policy = exporting.ExportedPolicy(result.path)
    obs = np.array([[1.0, 0.0, 0.0], [-0.5, 0.8, 3.0], [0.1, -0.99, -7.0]], dtype=np.float32)
    np.testing.assert_allclose(policy.act(obs), loaded.act(obs, deterministic=True), atol=1e-5)
    np.testing.assert_allclose(policy.act(obs[0]), loaded.act(obs[0], deterministic=True), atol=1e-5)  # batch of 1


@pytest.mark.parametrize("name", ["sac-tanh", "cartpole-discrete"])
def test_pt2_evaluates_as_the_run(runs, name, tmp_path):
    result = duetrl.export(runs[name], tmp_path / "policy.pt2")
    assert result.format == "pt2" and result.max_error <= exporting.PARITY_TOLERANCE
    from_file = duetrl.evaluate(result.path, episodes=2)
    from_run = duetrl.evaluate(runs[name], episodes=2, deterministic=True)
    np.testing.assert_allclose(from_file.returns, from_run.returns, atol=1e-3)


def test_td3s_deterministic_actor_exports_as_the_run(runs, tmp_path):
    result = duetrl.export(runs["td3-deterministic"], tmp_path / "policy.onnx")
    from_file = duetrl.evaluate(result.path, episodes=2)
    from_run = duetrl.evaluate(runs["td3-deterministic"], episodes=2, deterministic=True)
    np.testing.assert_allclose(from_file.returns, from_run.returns, atol=1e-3)


def test_a_file_that_differs_from_the_torch_policy_is_refused_and_not_written(runs, tmp_path, monkeypatch, capsys):
    real = exporting.open_runtime

    def off_by_a_little(*args):
        runtime = real(*args)
        return lambda *inputs: [out + 1e-3 for out in runtime(*inputs)]

    monkeypatch.setattr(exporting, "open_runtime", off_by_a_little)
    code, out, err = run(capsys, "export", runs["sac-tanh"], "-o", tmp_path / "p.onnx")
    assert_user_error(code, out, err, r"differs from the torch policy by 0\.001")
    assert list(tmp_path.iterdir()) == []


def test_a_run_without_checkpoint_or_a_corrupt_one_is_one_line(runs, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert_user_error(*run(capsys, "export", tmp_path / "empty"), "no checkpoint")
    copy = tmp_path / "run" / "checkpoints"
    copy.mkdir(parents=True)
    (copy / "step_000000000010.safetensors").write_bytes(b"\x00garbage")
    assert_user_error(*run(capsys, "export", tmp_path / "run"), "corrupt")


def test_a_recurrent_run_is_refused_in_one_line_and_nothing_is_written(tmp_path, capsys):
    run_dir = tmp_path / "gru"
    settings = {"rnn": "gru", "rnn_hidden": 8, "num_envs": 4, "num_steps": 16, "minibatch_size": 32}
    duetrl.train("PendulumNoVel-v1", "ppo", run_dir=run_dir, quiet=True, steps=64, eval_every=0, **settings)
    capsys.readouterr()  # the training's own line
    line = assert_user_error(*run(capsys, "export", run_dir), "export of recurrent policies is not supported yet")
    assert "rnn=gru" in line
    assert not list(run_dir.glob("policy*"))
    with pytest.raises(UserError, match="export of recurrent policies is not supported yet"):
        duetrl.load(run_dir).agent.deployable()


def test_a_missing_exporter_names_the_extra(runs, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert_user_error(*run(capsys, "export", runs["sac-tanh"]), r"onnxruntime.*duetrl\[export\]")


def test_wrong_shaped_observations_are_a_clear_error(runs, tmp_path, capsys):
    policy = duetrl.export(runs["sac-tanh"], tmp_path / "p.onnx").path
    line = assert_user_error(*run(capsys, "eval", policy, "--env", "CartPole-v1"), r"shape \(3,\)")
    assert "(4,)" in line
    with pytest.raises(UserError, match=r"shape \(5,\) does not fit"):
        exporting.ExportedPolicy(policy).act(np.zeros(5))
    assert_user_error(*run(capsys, "eval", policy, "--stochastic"), "deterministic policy")


def test_an_image_policy_exports_and_scores_as_the_run(tmp_path, capsys):
    """An image policy (uint8 pixels, CNN encoder, issue 19): the file takes the pixels as float32 and scales them
    inside, as the agent does, so it scores as the run on the same held-out episodes."""
    sys.path.insert(0, str(Path(__file__).parent))  # spaces_envs, by name, as the run's config.yaml records it
    run_dir = tmp_path / "pixels"
    duetrl.train("spaces_envs:Pixels", "ppo", run_dir=run_dir, quiet=True, steps=1024, num_envs=4, eval_every=0)
    result = duetrl.export(run_dir, tmp_path / "policy.onnx")
    assert result.max_error <= exporting.PARITY_TOLERANCE
    from_file = duetrl.evaluate(result.path, episodes=EPISODES)
    from_run = duetrl.evaluate(run_dir, episodes=EPISODES, deterministic=True)
    np.testing.assert_allclose(from_file.returns, from_run.returns, atol=1e-3)


def test_a_dict_observation_policy_is_refused_in_one_line(tmp_path, capsys):
    sys.path.insert(0, str(Path(__file__).parent))
    run_dir = tmp_path / "goal"
    duetrl.train("spaces_envs:GoalReach", "ppo", run_dir=run_dir, quiet=True, steps=256, num_envs=2, eval_every=0)
    capsys.readouterr()  # the training's own lines
    assert_user_error(*run(capsys, "export", run_dir), match="observations are Dict is not supported yet")
    assert not (run_dir / "policy.onnx").exists()
