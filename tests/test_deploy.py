"""duetrl export: the exported file acts as the torch policy does, runs without torch, and refuses bad input."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_user_error, run, state_layout, steps_side_by_side

import duetrl
from duetrl import deploy as exporting
from duetrl.errors import UserError

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "onnx_policy.py"
TESTS = Path(__file__).resolve().parent  # spaces_envs, importable by name in the child as in this process
EPISODES = 3

# Tiny runs: what matters is that the exported file and the torch policy agree, not that they are good. PPO's
# normaliser has statistics far from (0, 1) after its first rollout, so a file that forgot it would act otherwise.
RUNS = {
    "ppo-normalised": ("Pendulum-v1", "ppo", {"steps": 2048, "normalize_obs": True, "num_envs": 8}),
    "sac-tanh": ("Pendulum-v1", "sac", {"steps": 400, "learning_starts": 200, "batch_size": 64}),
    "cartpole-discrete": ("CartPole-v1", "ppo", {"steps": 1024, "num_envs": 8}),
    "td3-deterministic": ("Pendulum-v1", "td3", {"steps": 300, "learning_starts": 100, "batch_size": 64}),
    # The file takes the wrapped, stacked observations [2, 4]: its sidecar says how to wrap the env to get them.
    "wrapped-stacked": (
        "Pendulum-v1",
        "ppo",
        {"steps": 512, "num_envs": 4, "wrappers": ["gymnasium.wrappers:TimeAwareObservation"], "frame_stack": 2},
    ),
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
    """The example script's JSON, run in a fresh interpreter where ``import torch`` fails (and the tests' envs
    import by name)."""
    prelude = (
        f"import sys, runpy; sys.modules['torch'] = None; sys.path.insert(0, {str(TESTS)!r}); "
        f"sys.argv = {[str(EXAMPLE), *argv]!r}; runpy.run_path({str(EXAMPLE)!r}, run_name='__main__')"
    )
    done = subprocess.run([sys.executable, "-c", prelude], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("name", ["ppo-normalised", "sac-tanh", "cartpole-discrete", "wrapped-stacked"])
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


RECURRENT = {"steps": 256, "num_steps": 64, "num_envs": 2, "minibatch_size": 64, "rnn_hidden": 8, "eval_every": 0}


@pytest.fixture(scope="module")
def recurrent(tmp_path_factory):
    """Tiny recurrent PPO runs with an observation normaliser, by rnn: the GRU's or LSTM's state decides their
    actions (continuous ones, so a state carried wrongly shows in the returns). Pendulum-v1 rather than a
    velocity-masked id, which only ``import duetrl`` registers: the example script runs without duetrl."""
    root = tmp_path_factory.mktemp("recurrent")
    for rnn, scale in (("gru", 1.0), ("lstm", 5.0)):  # the LSTM's core reads its input times 5 (rnn_input_scale)
        duetrl.train("Pendulum-v1", "ppo", run_dir=root / rnn, quiet=True, rnn=rnn, normalize_obs=True,
                     rnn_input_scale=scale, **RECURRENT)  # fmt: skip
    # The core also reads the previous action, which the state carries after h and c.
    duetrl.train("Pendulum-v1", "ppo", run_dir=root / "prev", quiet=True, rnn="lstm", rnn_prev_action=True, **RECURRENT)
    return {name: root / name for name in ("gru", "lstm", "prev")}


def test_a_recurrent_policy_carries_its_state_without_torch_and_scores_as_duetrl_eval(recurrent, tmp_path, capsys):
    """``(obs, state) -> (action, next_state)``: the example script (no torch) carries the state through each
    episode and zeroes it at the next, and scores as ``duetrl eval --deterministic`` of the run."""
    run_dir = recurrent["gru"]
    capsys.readouterr()
    policy = tmp_path / "policy.onnx"
    code, out, err = run(capsys, "export", run_dir, "-o", policy)
    assert code == 0, err
    info = json.loads((tmp_path / "policy.onnx.json").read_text())
    assert [(i["name"], i["shape"]) for i in info["inputs"]] == [("obs", ["batch", 3]), ("state", ["batch", 8])]
    assert [(o["name"], o["shape"]) for o in info["outputs"]] == [
        ("action", ["batch", 1]),
        ("next_state", ["batch", 8]),
    ]
    assert info["state"] == {**info["state"], "input": "state", "output": "next_state", "size": 8, "initial": "zeros"}
    assert "truncation" in info["state"]["reset"]

    code, out, err = run(capsys, "eval", run_dir, "--deterministic", "--json", "--episodes", EPISODES)
    assert code == 0, err
    expected = json.loads(out)["returns"]
    got = _without_torch(str(policy), "--episodes", str(EPISODES))["returns"]
    np.testing.assert_allclose(got, expected, atol=1e-3, rtol=0)
    code, out, err = run(capsys, "eval", policy, "--json", "--episodes", EPISODES)
    assert code == 0, err
    np.testing.assert_allclose(json.loads(out)["returns"], expected, atol=1e-3, rtol=0)


def test_an_lstms_state_is_h_and_c_side_by_side_and_acts_as_the_loaded_agent(recurrent, tmp_path):
    run_dir = recurrent["lstm"]
    loaded = duetrl.load(run_dir)
    policy = exporting.ExportedPolicy(duetrl.export(run_dir, tmp_path / "p.onnx").path)
    assert policy.state_dim == 16 and policy.initial_state().shape == (16,)
    obs = np.array([[1.0, 0.0, 0.0], [-0.5, 0.8, 3.0]], dtype=np.float32)
    _, last_state = steps_side_by_side(policy, loaded, obs)[-1]  # the state carried through a few steps, both sides
    assert np.abs(last_state).max() > 0.01  # the state moved, so the comparison said something
    with pytest.raises(UserError, match="recurrent policy.*act with its state"):
        policy.act(obs[0])
    with pytest.raises(UserError, match=r"a state of shape \(8,\) does not fit"):
        policy.act(obs[0], np.zeros(8))


def test_a_state_with_the_previous_action_exports_and_acts_as_the_loaded_agent(recurrent, tmp_path):
    """rnn_prev_action: the state is h, c, then the last action; the file (checked step by step against the agent
    on export) carries it as the loaded agent does."""
    loaded = duetrl.load(recurrent["prev"])
    exported = duetrl.export(recurrent["prev"], tmp_path / "p.onnx")
    policy = exporting.ExportedPolicy(exported.path)
    assert policy.state_dim == 17 == loaded.initial_state(1).shape[-1]
    assert state_layout(exported.sidecar) == [("h", 0, 8), ("c", 8, 8), ("prev_action", 16, 1)]  # each part named
    obs = np.array([[1.0, 0.0, 0.0], [-0.5, 0.8, 3.0]], dtype=np.float32)
    for action, state in steps_side_by_side(policy, loaded, obs):
        np.testing.assert_allclose(state[:, -1:], action, atol=1e-6)  # the action just taken, carried


def test_the_parity_check_steps_the_state_so_a_file_that_forgets_it_is_refused(
    recurrent, tmp_path, monkeypatch, capsys
):
    """A file whose state input were ignored (zeros every step) agrees on the first step and drifts after: the
    parity check, which carries each side's state through episodes, refuses it."""
    run_dir = recurrent["gru"]
    real = exporting.open_runtime

    def forgetful(*args):
        runtime = real(*args)
        return lambda obs, state: runtime(obs, np.zeros_like(state))

    monkeypatch.setattr(exporting, "open_runtime", forgetful)
    capsys.readouterr()
    code, out, err = run(capsys, "export", run_dir, "-o", tmp_path / "p.onnx")
    assert_user_error(code, out, err, "differs from the torch policy")
    assert not (tmp_path / "p.onnx").exists()


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


def test_a_dict_observation_policy_takes_one_input_per_key_and_scores_as_the_run_without_torch(tmp_path, capsys):
    """GoalReach with an image: the file takes ``obs.goal``, ``obs.position`` (float32) and ``obs.view`` (uint8,
    scaled inside); the example script feeds them from the env's dict and scores as ``duetrl eval``."""
    sys.path.insert(0, str(TESTS))
    run_dir = tmp_path / "goal"
    settings = {"steps": 256, "num_envs": 2, "eval_every": 0, "normalize_obs": True}
    duetrl.train("spaces_envs:GoalReach", "ppo", run_dir=run_dir, quiet=True, env_kwargs={"image": True}, **settings)
    capsys.readouterr()  # the training's own lines
    policy = tmp_path / "policy.onnx"
    code, out, err = run(capsys, "export", run_dir, "-o", policy)
    assert code == 0, err
    info = json.loads((tmp_path / "policy.onnx.json").read_text())
    inputs = [(i["name"], i["key"], i["shape"], i["dtype"]) for i in info["inputs"]]
    assert inputs == [
        ("obs.goal", ["goal"], ["batch", 2], "float32"),
        ("obs.position", ["position"], ["batch", 2], "float32"),
        ("obs.view", ["view"], ["batch", 8, 8, 1], "uint8"),
    ]
    assert info["state"] is None and info["observation_space"]["type"] == "Dict"

    code, out, err = run(capsys, "eval", run_dir, "--deterministic", "--json", "--episodes", EPISODES)
    assert code == 0, err
    expected = json.loads(out)["returns"]
    np.testing.assert_allclose(_without_torch(str(policy), "--episodes", str(EPISODES))["returns"], expected, atol=1e-3)
    code, out, err = run(capsys, "eval", policy, "--json", "--episodes", EPISODES)
    assert code == 0, err
    np.testing.assert_allclose(json.loads(out)["returns"], expected, atol=1e-3, rtol=0)

    exported, loaded = exporting.ExportedPolicy(policy), duetrl.load(run_dir)
    obs = {"position": np.array([0.5, -0.5], np.float32), "goal": np.zeros(2, np.float32)}
    obs["view"] = np.full((8, 8, 1), 255, np.uint8)
    np.testing.assert_allclose(exported.act(obs), loaded.act(obs, deterministic=True), atol=1e-5)
    batch = {k: np.stack([v, v]) for k, v in obs.items()}
    np.testing.assert_allclose(exported.act(batch), loaded.act(batch, deterministic=True), atol=1e-5)
    with pytest.raises(UserError, match=r"keys \['goal', 'position'\].*takes keys.*\(missing \['view'\]\)"):
        exported.act({"position": obs["position"], "goal": obs["goal"]})
    with pytest.raises(UserError, match=r"unknown \['extra'\]"):
        exported.act({**obs, "extra": np.zeros(1)})
    with pytest.raises(UserError, match=r"observation part 'obs.view' of shape \(8, 8\) does not fit"):
        exported.act({**obs, "view": np.zeros((8, 8), np.uint8)})
    line = assert_user_error(*run(capsys, "eval", policy, "--env-kwargs", "image=false"), "parts obs.goal")
    assert "obs.view (8, 8, 1)" in line  # the env without its image


def test_a_nested_tuple_observation_exports_with_key_paths(tmp_path):
    sys.path.insert(0, str(TESTS))
    run_dir = tmp_path / "nested"
    duetrl.train("spaces_envs:NestedReach", "ppo", run_dir=run_dir, quiet=True, steps=128, num_envs=2, eval_every=0)
    result = duetrl.export(run_dir, tmp_path / "policy.onnx")
    assert result.max_error <= exporting.PARITY_TOLERANCE
    info = json.loads(result.sidecar.read_text())
    assert [(i["name"], i["key"], i["dtype"]) for i in info["inputs"]] == [
        ("obs.0", [0], "float32"),
        ("obs.1.goal", [1, "goal"], "float32"),
        ("obs.1.steps", [1, "steps"], "int64"),
    ]
    from_file = duetrl.evaluate(result.path, episodes=2)
    from_run = duetrl.evaluate(run_dir, episodes=2, deterministic=True)
    np.testing.assert_allclose(from_file.returns, from_run.returns, atol=1e-3)
