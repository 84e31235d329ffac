"""Config layering (defaults < preset < file < overrides), the chapter preset, and user errors."""

import re
from pathlib import Path

import pytest
import torch
import yaml

import duetrl
from duetrl.algos.ac import ACConfig, ActorCritic
from duetrl.api import resolve
from duetrl.config import RunConfig, budget_warnings, ignored_settings_warnings, list_presets, parse_assignments
from duetrl.envs.native import Pendulum
from duetrl.errors import UserError
from duetrl.policy import PolicyConfig

PENDULUM_SPACES = (Pendulum(1).single_observation_space, Pendulum(1).single_action_space)


def test_defaults_without_preset():
    cfg, preset_id = resolve("MountainCarContinuous-v0", "ac")
    assert preset_id is None
    assert cfg.run.env_id == "MountainCarContinuous-v0" and cfg.run.algo == "ac"
    assert cfg.run.steps == RunConfig().steps
    assert cfg.algo == ACConfig()


def test_env_algo_pair_picks_its_default_preset():
    cfg, preset_id = resolve("Pendulum-v1", "ppo")
    assert preset_id == "Pendulum-v1/ppo/default"
    presets = yaml.safe_load((Path(duetrl.__file__).parent / "presets" / "Pendulum-v1.yaml").read_text())
    preset = {k: v for k, v in presets["ppo"]["default"].items() if k != "description"}
    resolved = cfg.to_dict()
    assert {k: resolved[k] for k in preset} == preset  # every setting the preset file gives is in force


def test_chapter_preset_values():
    cfg, preset_id = resolve("Pendulum-v1", "ac", "chapter")
    assert preset_id == "any/ac/chapter"
    a = cfg.algo
    assert a.hidden == [128, 128]
    assert a.actor_lr == 3e-4 and a.critic_lr == 1e-3
    assert a.gamma == 0.99
    assert a.advantage == "mc" and a.critic == "v"
    assert a.update_every == 0
    assert a.bootstrap_truncation is False
    assert a.max_grad_norm == 1.0
    assert cfg.run.num_envs == 1
    assert cfg.run.eval_deterministic is False
    assert cfg.run.preset == "any/ac/chapter"


def test_chapter_preset_is_listed():
    assert any(r["algo"] == "ac" and r["name"] == "chapter" and r["description"] for r in list_presets())


def test_layering_preset_over_defaults_file_over_preset_flags_over_file(tmp_path):
    assert resolve("Pendulum-v1", "ac")[0].algo.bootstrap_truncation is True  # default
    assert resolve("Pendulum-v1", "ac", "chapter")[0].algo.bootstrap_truncation is False  # preset > default

    path = tmp_path / "c.yaml"
    path.write_text("eval_deterministic: true\ngamma: 0.9\ncritic_lr: 0.005\nseed: 3\n")
    cfg, _ = resolve("Pendulum-v1", "ac", "chapter", path, {"gamma": 0.8, "seed": 4})
    assert cfg.algo.bootstrap_truncation is False  # from the preset, untouched by file and flags
    assert cfg.run.eval_deterministic is True  # file > preset
    assert cfg.algo.critic_lr == 0.005  # file > default
    assert cfg.algo.gamma == 0.8 and cfg.run.seed == 4  # flags > file


def test_config_file_as_dict_and_file_may_name_env_algo_preset(tmp_path):
    cfg, preset_id = resolve(config_file={"env_id": "CartPole-v1", "algo": "ac", "preset": "chapter", "gamma": 0.95})
    assert cfg.run.env_id == "CartPole-v1" and preset_id == "any/ac/chapter"
    assert cfg.algo.gamma == 0.95 and cfg.algo.bootstrap_truncation is False
    # explicit arguments win over the file
    cfg, preset_id = resolve("Pendulum-v1", None, None, {"env_id": "CartPole-v1", "preset": "chapter"})
    assert cfg.run.env_id == "Pendulum-v1" and preset_id == "any/ac/chapter"


def test_a2c_has_its_own_defaults():
    cfg, _ = resolve("CartPole-v1", "a2c", preset="none", overrides={"gae_lambda": 0.9})
    assert cfg.algo.advantage == "gae" and cfg.algo.update_every == 5 and cfg.algo.optimizer == "rmsprop"
    assert cfg.algo.gae_lambda == 0.9


def test_string_coercion():
    cfg, _ = resolve(
        "Pendulum-v1",
        "ac",
        overrides={"steps": "1e5", "gamma": "0.5", "normalize_obs": "true", "hidden": [32, "16"]},
    )
    assert cfg.run.steps == 100_000 and isinstance(cfg.run.steps, int)
    assert cfg.algo.gamma == 0.5
    assert cfg.algo.normalize_obs is True
    assert cfg.algo.hidden == [32, 16]
    assert resolve("Pendulum-v1", "ac", overrides={"steps": 2e3})[0].run.steps == 2000
    assert parse_assignments(["steps=1e5", "hidden=[8, 8]", "gamma=0.9"]) == {
        "steps": "1e5",
        "hidden": [8, 8],
        "gamma": 0.9,
    }


# ------------------------------------------------------------------------------------------ user errors


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(UserError, match=r"unknown setting 'gama'.*did you mean 'gamma'"):
        resolve("Pendulum-v1", "ac", overrides={"gama": 0.9})


def test_unknown_key_in_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("actor_l: 0.1\n")
    with pytest.raises(UserError, match=r"actor_l.*config file.*actor_lr"):
        resolve("Pendulum-v1", "ac", config_file=path)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"gamma": "abc"}, r"gamma='abc'.*number"),
        ({"steps": "many"}, r"steps='many'.*integer"),
        ({"steps": 1.5}, r"steps=1.5.*integer"),
        ({"steps": True}, r"steps=True.*integer"),
        ({"normalize_obs": "maybe"}, r"normalize_obs.*true or false"),
        ({"hidden": {"a": 1}}, r"hidden.*list"),
        ({"gamma": 1.5}, r"gamma=1.5.*range"),
        ({"gamma": -0.1}, r"gamma=-0.1.*range"),
        ({"steps": -1}, r"steps=-1"),
        ({"steps": 0}, r"steps=0"),
        ({"num_envs": 0}, r"num_envs=0"),
        ({"advantage": "q-lambda"}, r"advantage='q-lambda'"),
        ({"hidden": []}, r"hidden"),
        ({"log_std_min": 3.0}, r"log_std_min"),
    ],
)
def test_bad_values_raise_user_error(overrides, match):
    with pytest.raises(UserError, match=match):
        resolve("Pendulum-v1", "ac", overrides=overrides)


def test_malformed_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("gamma: [0.9\nsteps: 10\n")
    with pytest.raises(UserError, match=r"malformed YAML.*bad.yaml"):
        resolve("Pendulum-v1", "ac", config_file=path)


def test_yaml_file_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="mapping"):
        resolve("Pendulum-v1", "ac", config_file=path)


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        resolve("Pendulum-v1", "ac", config_file=tmp_path / "nope.yaml")


def test_unknown_algo():
    with pytest.raises(UserError, match=r"unknown algorithm 'a2d'.*did you mean 'a2c'"):
        resolve("Pendulum-v1", "a2d")


def test_unknown_preset():
    with pytest.raises(UserError, match=r"unknown preset 'chaptr'.*chapter"):
        resolve("Pendulum-v1", "ac", "chaptr")


@pytest.mark.parametrize("row", list_presets(), ids=lambda r: f"{r['env']}/{r['algo']}/{r['name']}")
def test_every_shipped_preset_resolves_and_validates(row):
    """A typo in a shipped YAML (unknown key, bad value) must fail here, not in a user's run."""
    env_id = "Pendulum-v1" if row["env"] == "any" else row["env"]
    cfg, preset_id = resolve(env_id, row["algo"], row["name"])
    assert preset_id == f"{row['env']}/{row['algo']}/{row['name']}"
    cfg.algo.validate()
    assert row["description"], "every preset says what it is for and what it measured"


# ------------------------------------------------------------------------------------------ budget warnings


def warnings_for(algo, **settings):
    cfg, _ = resolve("Pendulum-v1", algo, "none", overrides=settings)
    return budget_warnings(cfg)


@pytest.mark.parametrize(
    "algo, settings, match",
    [
        ("td3", {"steps": 5_000, "learning_starts": 5_000}, "steps=5000 is not more than learning_starts=5000"),
        ("sac", {"steps": 200, "learning_starts": 100}, "not more than batch_size=256"),
        ("ppo", {"steps": 1_000, "num_steps": 2048}, "num_steps=2048.*no update ever happens"),
        ("ppo", {"steps": 2_000, "num_envs": 4, "num_steps": 512}, r"\(2048 env steps\).*no update ever happens"),
        ("ppo", {"num_steps": 32, "minibatch_size": 64}, "one gradient step on the whole rollout"),
        ("ac", {"steps": 400, "update_every": 500}, "update_every=500.*no update ever happens"),
        ("a2c", {"steps": 1_000, "num_envs": 8, "update_every": 200}, r"\(1600 env steps\)"),
        ("ppo", {"steps": 5_000, "eval_every": 20_000}, "no periodic evaluation, only the final one"),
        ("ppo", {"target_return": -200, "eval_every": 0}, "target_return=-200.0 can never stop the run early"),
        ("ppo", {"target_return": -200, "steps": 5_000}, "eval_every=10000 gives none within steps=5000"),
        ("ppo", {"rnn": "lstm"}, r"whole sequences of 2048 steps \(rnn_seq_len=0 = num_steps\)"),
        ("ppo", {"rnn": "gru", "num_steps": 512, "rnn_seq_len": 512}, "sequences of 512 steps.*at most 256"),
    ],
)
def test_budget_warnings(algo, settings, match):
    if "target_return" not in settings:
        settings = {"eval_every": 0, **settings}  # only the warning under test (short runs skip periodic evals)
    found = warnings_for(algo, **settings)
    assert len(found) == 1 and re.search(match, found[0]), found
    assert found[0][0].islower() and "\n" not in found[0]  # one sentence, printed after "duetrl: warning: "


@pytest.mark.parametrize("algo", ["ac", "a2c", "ppo", "sac", "td3", "ddpg"])
def test_clean_config_gives_no_budget_warning(algo):
    assert warnings_for(algo) == []
    # borderline cases are not warnings: the last evaluation at the end, the final one only, a target reachable
    assert warnings_for(algo, steps=30_000, eval_every=30_000) == []
    assert warnings_for(algo, steps=30_000, eval_every=0) == []
    assert warnings_for(algo, steps=30_000, eval_every=29_999, target_return=0) == []


def test_a_recurrent_ppo_with_short_sequences_gives_no_budget_warning():
    assert warnings_for("ppo", rnn="lstm", rnn_seq_len=128) == []
    assert warnings_for("ppo", rnn="gru", num_steps=256) == []  # whole rollouts of 256 steps: long, not too long


def test_borderline_budgets_give_no_budget_warning():
    assert warnings_for("td3", steps=5_001, learning_starts=5_000, eval_every=0) == []  # one step of learning
    assert warnings_for("ppo", steps=2_048, num_envs=4, num_steps=512, eval_every=0) == []  # one rollout fits
    assert warnings_for("ppo", steps=2_045, num_envs=4, num_steps=512, eval_every=0) == []  # 512 rounds of 4 envs
    assert warnings_for("ppo", num_steps=64, minibatch_size=64) == []  # one minibatch, as asked


# ------------------------------------------------------------------------------------------ ignored settings


def ignored_for(algo, preset="none", **settings):
    cfg, _ = resolve("Pendulum-v1", algo, preset, overrides=settings)
    return ignored_settings_warnings(cfg)


@pytest.mark.parametrize(
    "algo, settings, match",
    [
        (
            "td3",
            {"noise_beta": 0.5},
            "noise_beta=0.5 is ignored: .*only with noise_type=colored, and noise_type=gaussian",
        ),
        ("td3", {"noise_type": "ou", "noise_length": 500}, "noise_length=500 is ignored: .*noise_type=colored"),
        ("td3", {"ou_theta": 0.3}, "ou_theta=0.3 is ignored: .*only with noise_type=ou"),
        ("ddpg", {"target_noise_clip": 0.3}, "target_noise_clip=0.3 is ignored: .*target_noise=0"),
        ("sac", {"noise_length": 500}, "noise_length=500 is ignored: .*noise_beta=0"),
        ("sac", {"autotune_alpha": False, "alpha_lr": 1e-3}, "alpha_lr=0.001 is ignored: .*autotune_alpha is false"),
        ("sac", {"autotune_alpha": False, "target_entropy": -2}, "target_entropy=-2.0 is ignored"),
        ("sac", {"autotune_alpha": False, "target_entropy_scale": 0.5}, "target_entropy_scale=0.5 is ignored"),
        ("ac", {"gae_lambda": 0.9}, "gae_lambda=0.9 is ignored: .*only with advantage=gae, and advantage=mc"),
        ("ac", {"advantage": "td", "nstep": 3}, "nstep=3 is ignored: .*only with advantage=nstep, and advantage=td"),
        ("a2c", {"nstep": 3}, "nstep=3 is ignored: .*advantage=gae"),
        ("ac", {"squash": "tanh", "clip_log_prob": True}, "clip_log_prob=True is ignored: .*squash=tanh"),
        ("ac", {"log_std_init": -1.0}, "log_std_init=-1.0 is ignored: .*state_dependent_std is true"),
        ("ppo", {"state_dependent_std": True, "log_std_init": -1.0}, "log_std_init=-1.0 is ignored"),
    ],
)
def test_ignored_settings_warnings(algo, settings, match):
    found = ignored_for(algo, **settings)
    assert len(found) == 1 and re.search(match, found[0]), found
    assert found[0][0].islower() and "\n" not in found[0]  # one sentence, printed after "duetrl: warning: "


@pytest.mark.parametrize(
    "algo, settings",
    [
        ("td3", {"noise_type": "colored", "noise_beta": 0.5, "noise_length": 500}),
        ("td3", {"noise_type": "ou", "ou_theta": 0.3}),
        ("td3", {"target_noise_clip": 0.3}),  # TD3 smooths its target: the clip applies
        ("sac", {"noise_beta": 1.0, "noise_length": 500}),
        ("sac", {"alpha_lr": 1e-3, "target_entropy": -2}),
        ("ac", {"advantage": "gae", "gae_lambda": 0.9}),
        ("ac", {"advantage": "nstep", "nstep": 3}),
        ("ac", {"advantage": "td"}),  # gae_lambda and nstep ignored, but left at their defaults: nothing to say
        ("ac", {"clip_log_prob": True}),
        ("ac", {"state_dependent_std": False, "log_std_init": -1.0}),
        ("a2c", {"gae_lambda": 0.9}),
        ("ppo", {"log_std_init": -1.0}),
    ],
)
def test_settings_in_effect_give_no_ignored_warning(algo, settings):
    assert ignored_for(algo, **settings) == []


@pytest.mark.parametrize("row", list_presets(), ids=lambda r: f"{r['env']}/{r['algo']}/{r['name']}")
def test_no_shipped_preset_sets_what_it_ignores(row):
    env_id = "Pendulum-v1" if row["env"] == "any" else row["env"]
    cfg, _ = resolve(env_id, row["algo"], row["name"])
    assert ignored_settings_warnings(cfg) == []


def test_training_says_which_settings_it_ignores(tmp_path, capsys):
    duetrl.train(
        "Pendulum-v1",
        "td3",
        preset="none",
        run_dir=tmp_path / "run",
        quiet=True,
        steps=20,
        learning_starts=10,
        eval_every=0,
        eval_episodes=1,
        noise_beta=0.5,
    )
    err = capsys.readouterr().err
    assert "duetrl: warning: noise_beta=0.5 is ignored" in err


def test_policy_keys_reach_the_policy_whole():
    cfg, _ = resolve(
        "Pendulum-v1",
        "ac",
        "none",
        overrides={"hidden": [32], "activation": "tanh", "squash": "tanh", "log_std_min": -5.0, "ortho_init": True},
    )
    expected = PolicyConfig(hidden=(32,), activation="tanh", log_std_min=-5.0, bound_by="tanh", ortho_init=True)
    assert cfg.algo.policy_config() == expected
    agent = ActorCritic(cfg.algo, *PENDULUM_SPACES, 1, torch.device("cpu"))
    assert agent.policy.config == expected
    ppo, _ = resolve("Pendulum-v1", "ppo", "none", overrides={"squash": "tanh"})
    assert ppo.algo.policy_config().bound_by == "tanh" and not ppo.algo.policy_config().clip_log_prob
    sac, _ = resolve("Pendulum-v1", "sac", "none", overrides={"actor_hidden": [48], "critic_hidden": [16]})
    assert sac.algo.policy_config().hidden == (48,) and sac.algo.policy_config().bound_by == "tanh"


# ------------------------------------------------------------------------------------------ off-policy warm-up


@pytest.mark.parametrize(
    "algo, steps, expected",
    [("td3", 10_000, 1_000), ("td3", 1_000_000, 25_000), ("ddpg", 100_000, 10_000), ("sac", 1_000_000, 5_000)],
)
def test_learning_starts_auto_scales_with_the_budget(algo, steps, expected, tmp_path):
    cfg, _ = resolve("Pendulum-v1", algo, "none", overrides={"steps": steps})
    assert cfg.algo.learning_starts == expected
    cfg.save(tmp_path / "config.yaml")
    assert f"learning_starts: {expected}" in (tmp_path / "config.yaml").read_text()  # the run records the number
    assert budget_warnings(cfg) == []


def test_learning_starts_auto_floor_is_the_batch_size():
    cfg, _ = resolve("Pendulum-v1", "sac", "none", overrides={"steps": 1_500, "batch_size": 128, "eval_every": 0})
    assert cfg.algo.learning_starts == 150
    cfg, _ = resolve("Pendulum-v1", "sac", "none", overrides={"steps": 1_000, "eval_every": 0})
    assert cfg.algo.learning_starts == 256


def test_learning_starts_explicit_or_from_a_preset_is_kept():
    assert (
        resolve("Pendulum-v1", "td3", "none", overrides={"steps": 10_000, "learning_starts": 7})[0].algo.learning_starts
        == 7
    )
    cfg, preset_id = resolve("Pendulum-v1", "td3")
    assert preset_id is not None and cfg.algo.learning_starts == 500  # as Pendulum-v1.yaml says
    assert resolve("Pendulum-v1", "td3", "none", overrides={"learning_starts": None})[0].algo.learning_starts == 10_000


def test_learning_starts_none_validates_and_an_unresolved_agent_keeps_the_paper_value():
    from duetrl.algos.sac import SACConfig
    from duetrl.algos.td3 import TD3, TD3Config
    from duetrl.envs.native import Pendulum

    for cls in (SACConfig, TD3Config):
        cls().validate()
    env = Pendulum(1)
    agent = TD3(TD3Config(), env.single_observation_space, env.single_action_space, 1, torch.device("cpu"))
    assert agent.learning_starts == 25_000


def test_a_recorded_preset_id_names_that_preset():
    cfg, preset_id = resolve(config_file={"env_id": "Acrobot-v1", "algo": "ppo", "preset": "CartPole-v1/ppo/default"})
    assert preset_id == "CartPole-v1/ppo/default" and cfg.algo.num_steps == 64  # as CartPole-v1.yaml says
    with pytest.raises(UserError, match=r"preset 'CartPole-v1/ppo/default' is for algo 'ppo', not 'a2c'"):
        resolve("CartPole-v1", "a2c", "CartPole-v1/ppo/default")
    with pytest.raises(UserError, match=r"unknown preset 'CartPole-v1/ppo/nope'"):
        resolve("CartPole-v1", "ppo", "CartPole-v1/ppo/nope")
