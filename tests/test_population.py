"""Populations (duetrl.population): members trained in one process are independent, match their solo runs, write
ordinary run directories, resume exactly after kill -9, and refuse what they cannot do in one line."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import assert_user_error, read_metrics, run, wait_paused, without_wall_time

import duetrl
from duetrl.api import resolve
from duetrl.build import build_agent
from duetrl.loop import make_env, seed_everything
from duetrl.population import PPOPopulation, StackedAdam, clip_per_member, memory_estimate

TINY = {"num_envs": 4, "num_steps": 8, "minibatch_size": 16, "epochs": 2, "hidden": [16, 16], "steps": 512}
TINY_ARGS = ["--num-envs", "4", "--steps", "256", "--quiet"]
TINY_SETS = [
    "--set",
    "num_steps=8",
    "minibatch_size=16",
    "epochs=2",
    "hidden=16,16",
    "eval_every=128",
    "eval_episodes=2",
]


def members(seeds: list[int], algo: str = "ppo", settings: dict = TINY, **overrides):
    """Solo-built agents (PPO's ``TINY`` unless told), their configs, RNG streams and env batches, as
    PopulationTrainer builds them."""
    agents, configs, generators, envs = [], [], [], []
    for seed in seeds:
        cfg, _ = resolve("Pendulum-v1", algo, "none", None, {**settings, **overrides, "seed": seed})
        seed_everything(seed)
        env = make_env(cfg, torch.device("cpu"))
        agents.append(build_agent(cfg, env.single_observation_space, env.single_action_space, torch.device("cpu")))
        generator = torch.Generator()
        generator.set_state(torch.get_rng_state())
        configs.append(cfg)
        generators.append(generator)
        envs.append(env)
    return agents, configs, generators, envs


def rollout_and_update(population: PPOPopulation, envs: list, seeds: list[int], updates: int = 2) -> list[dict]:
    obs = torch.stack([env.reset(seed=s)[0] for env, s in zip(envs, seeds, strict=True)])
    metrics = []
    for _ in range(updates * (getattr(population.cfg, "num_steps", None) or population.cfg.update_every)):
        action, record = population.explore(obs)
        out = [env.step(a) for env, a in zip(envs, action, strict=True)]
        obs = torch.stack([o[0] for o in out])
        population.observe(
            record,
            *(torch.stack([o[i] for o in out]) for i in (1, 2, 3)),
            torch.stack([o[4]["final_obs"] for o in out]),
        )
        if population.ready():
            population.set_progress(0.5)
            metrics.append(population.update())
    return metrics


def test_perturbing_one_member_leaves_another_bit_identical():
    seeds = [0, 1, 2, 3, 4, 5]
    runs = []
    for perturb in (False, True):
        agents, configs, generators, envs = members(seeds)
        if perturb:  # member 3: other weights and another RNG stream
            with torch.no_grad():
                for p in agents[3].policy.parameters():
                    p.add_(0.5)
            generators[3].manual_seed(12345)
        population = PPOPopulation(agents, configs, generators)
        metrics = rollout_and_update(population, envs, seeds)
        runs.append(([p[5].clone() for p in population.params], [m[5] for m in metrics], [m[3] for m in metrics]))
    (params_a, metrics_a, three_a), (params_b, metrics_b, three_b) = runs
    assert all(torch.equal(a, b) for a, b in zip(params_a, params_b, strict=True))
    assert metrics_a == metrics_b
    assert three_a != three_b  # the perturbation did change member 3


def test_members_passed_through_the_update_in_groups_get_the_numbers_of_one_pass(monkeypatch):
    """A large population's minibatch passes run a cache-sized group of members at a time: the grouping changes no
    member's numbers (here 6 members in groups of 2 against one pass of 6)."""
    import duetrl.population.ppo as population_ppo

    seeds = [0, 1, 2, 3, 4, 5]
    runs = []
    for group_bytes in (population_ppo.ACTIVATION_BYTES, 2 * 16 * 16 * 4):  # minibatch 16 x width 16, 2 members
        monkeypatch.setattr(population_ppo, "ACTIVATION_BYTES", group_bytes)
        agents, configs, generators, envs = members(seeds)
        population = PPOPopulation(agents, configs, generators)
        runs.append((len(population.member_groups()), rollout_and_update(population, envs, seeds), population.params))
    (one_pass, metrics_a, params_a), (groups, metrics_b, params_b) = runs
    assert (one_pass, groups) == (1, 3)
    assert metrics_a == metrics_b
    assert all(torch.equal(a, b) for a, b in zip(params_a, params_b, strict=True))


def test_a_population_of_one_acts_as_its_solo_run_and_updates_to_float_rounding():
    """The member draws the solo run's random numbers (its generator continues the solo run's global stream), and
    its actions and update agree with the solo run's to float32 rounding only: vmap turns each matmul into a
    batched matmul, whose kernel may sum in another order. Over many updates the rounding grows as any chaotic
    training does, so solo and population runs match as distributions over seeds (benchmarks/population.py), not
    number for number."""
    agents, configs, generators, envs = members([7])
    solo = copy.deepcopy(agents[0])
    population = PPOPopulation(agents, configs, generators)
    env, (solo_env,) = envs[0], members([7])[3]
    obs, solo_obs = env.reset(seed=7)[0], solo_env.reset(seed=7)[0]
    torch.set_rng_state(generators[0].get_state())
    for _ in range(configs[0].algo.num_steps):
        action, record = population.explore(obs[None])
        decision = solo.explore(solo_obs, 0)
        assert torch.allclose(action[0], decision.action, atol=1e-6)
        o, r, te, tr, info = env.step(decision.action)
        solo_obs, *outcome = solo_env.step(decision.action)
        population.observe(record, r[None], te[None], tr[None], info["final_obs"][None])
        solo.observe(decision, outcome[0], outcome[1], outcome[2], outcome[3]["final_obs"])
        obs = o
    population.set_progress(0.25)
    solo.set_progress(0.25)
    ours, theirs = population.update()[0], solo.update()
    for key in ("entropy", "explained_variance", "approx_kl"):
        assert ours[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-6)
    assert ours["actor_loss"] == pytest.approx(theirs["actor_loss"], rel=1e-4, abs=1e-6)
    member = population.write_back(0)
    for mine, solo_param in zip(member.policy.parameters(), solo.policy.parameters(), strict=True):
        assert torch.allclose(mine, solo_param, atol=1e-6)


def test_stacked_adam_and_clipping_are_each_members_own():
    torch.manual_seed(0)
    params = [torch.randn(3, 4, 2), torch.randn(3, 5)]
    solo = [[torch.nn.Parameter(p[m].clone()) for p in params] for m in range(3)]
    optimizers = [torch.optim.Adam(s, lr=lr, eps=1e-5) for s, lr in zip(solo, (1e-2, 1e-3, 1e-2), strict=True)]
    adam = StackedAdam(params, [o.state_dict() for o in optimizers], (0.9, 0.999), 1e-5)
    for _ in range(3):
        grads = [torch.randn_like(p) * 10 for p in params]
        for m, (s, o) in enumerate(zip(solo, optimizers, strict=True)):
            for p, g in zip(s, grads, strict=True):
                p.grad = g[m].clone()
            torch.nn.utils.clip_grad_norm_(s, 0.5)
            o.step()
        clip_per_member(grads, torch.full((3,), 0.5))
        adam.step(grads, torch.tensor([1e-2, 1e-3, 1e-2], dtype=torch.float64))
    for m in range(3):
        for p, s in zip(params, solo[m], strict=True):
            assert torch.allclose(p[m], s, atol=1e-7)


def test_seeds_write_ordinary_run_dirs_that_eval_and_summary_read(capsys, tmp_path):
    code, out, err = run(
        capsys,
        "train",
        "Pendulum-v1",
        "--algo",
        "ppo",
        "--seeds",
        "3",
        "5",
        *TINY_ARGS,
        *TINY_SETS,
        "--target-return",
        "-5000",
        "--run-dir",
        tmp_path / "pop",
    )
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["members"] == 2 and summary["summary"][0]["members"] == 2
    row = summary["summary"][0]
    assert {"mean", "mean_ci", "median_ci", "iqm", "iqm_ci", "fraction_reached", "steps_to_target"} <= set(row)
    for seed in (3, 5):
        member = tmp_path / "pop" / f"seed_{seed}"
        assert (member / "config.yaml").exists() and (member / "metrics.csv").exists() and (member / "tb").is_dir()
        code, out, err = run(capsys, "eval", member, "--episodes", "2")
        assert code == 0 and "mean return" in out, err


def test_a_grid_of_settings_times_seeds_is_one_population(capsys, tmp_path):
    code, out, err = run(
        capsys,
        "train",
        "Pendulum-v1",
        "--algo",
        "ppo",
        "--seeds",
        "0",
        "1",
        *TINY_ARGS,
        *TINY_SETS,
        "lr=1e-3,3e-4",
        "--run-dir",
        tmp_path / "grid",
    )
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["members"] == 4
    assert sorted(r["config"] for r in summary["summary"]) == ["lr=0.0003", "lr=0.001"]
    trials = tmp_path / "grid" / "trials"
    assert (trials / "lr=0.001" / "seed_1" / "metrics.csv").exists()
    assert "lr: 0.0003" in (trials / "lr=0.0003" / "seed_0" / "config.yaml").read_text()
    from duetrl.sweeps import summarize

    rows = summarize(tmp_path / "grid")  # a sweep directory's layout: the sweep summary reads it unchanged
    assert [(r["config"], r["seeds"]) for r in rows] == [("lr=0.0003", 2), ("lr=0.001", 2)]


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--seeds", "0", "1", "--seed", "2"], "--seeds and --seed"),
        (["--seeds"], "expected at least one argument"),
        (["--seeds", "1", "2", "1"], "seed 1 appears twice"),
        (["--seeds", "0", "1", "--set", "hidden=[64],[32]"], "hidden differs .* use duetrl sweep"),
        (["--seeds", "0", "1", "--set", "num_steps=8,16"], "num_steps differs .* use duetrl sweep"),
        (["--seeds", "0", "--algo", "a2c", "--set", "optimizer=rmsprop"], "optimizer=rmsprop is not yet stacked"),
        (["--seeds", "0", "--algo", "ac", "--set", "critic=q"], "critic=q .* not yet trained per member"),
        (["--seeds", "0", "1", "--set", "rnn=lstm"], "rnn=lstm .* not yet trained per member .* use duetrl sweep"),
    ],
)
def test_bad_population_input_is_one_line(capsys, tmp_path, argv, match):
    base = ["train", "Pendulum-v1", "--run-dir", tmp_path / "bad", "--quiet", "--steps", "64"]
    if "--algo" not in argv:
        base += ["--algo", "ppo"]
    assert_user_error(*run(capsys, *base, *argv), match=match)
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("env_id", ["spaces_envs:GoalReach", "spaces_envs:Pixels"])
def test_a_population_of_dict_or_image_observations_is_refused_in_one_line(capsys, tmp_path, env_id):
    """Populations stack flat vectors: a Dict or an image observation (issue 19) is one line, before anything is
    written, not a traceback from deep inside the stacked statistics."""
    sys.path.insert(0, str(Path(__file__).parent))
    argv = ["train", env_id, "--algo", "ppo", "--seeds", "0", "1", "--steps", "64", "--num-envs", "2"]
    out = assert_user_error(*run(capsys, *argv, "--run-dir", tmp_path / "bad", "--quiet"), match="flat Box")
    assert "duetrl sweep" in out
    assert not (tmp_path / "bad").exists()


def test_a_population_too_large_for_memory_is_refused_before_training(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("duetrl.population.planning.available_memory", lambda device: 20 * 2**20)
    line = assert_user_error(
        *run(
            capsys,
            "train",
            "Pendulum-v1",
            "--algo",
            "ppo",
            "--seeds",
            *map(str, range(16)),
            "--run-dir",
            tmp_path / "big",
            "--quiet",
        ),
        match=r"population of 16 members needs about .* GiB .* train fewer members",
    )
    assert "MiB each" in line
    assert not (tmp_path / "big").exists()
    cfg, _ = resolve("Pendulum-v1", "ppo", None, None, {})
    assert memory_estimate(cfg, 64, 3, 1) == 64 * memory_estimate(cfg, 1, 3, 1)


def test_a_member_that_goes_nan_stops_and_the_others_go_on(capsys, tmp_path, monkeypatch):
    from duetrl import population as pop

    real = pop.PPOPopulation.update

    def poisoned(self):
        rows = real(self)
        if self.configs[0].run.seed == 0:  # member seed 0 still in the population: its loss goes NaN
            rows[0]["actor_loss"] = float("nan")
        return rows

    monkeypatch.setattr(pop.PPOPopulation, "update", poisoned)
    code, out, err = run(
        capsys,
        "train",
        "Pendulum-v1",
        "--algo",
        "ppo",
        "--seeds",
        "0",
        "1",
        *TINY_ARGS,
        *TINY_SETS,
        "log_every=32",
        "checkpoint_every=32",  # a checkpoint is due at the update where seed 0 fails
        "--run-dir",
        tmp_path / "nan",
    )
    assert code == 1
    assert "seed_0 stopped: actor_loss became nan" in err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["summary"][0]["members"] == 1 and summary["summary"][0]["failed"] == 1
    _, rows = read_metrics(tmp_path / "nan" / "seed_1")
    assert int(rows[-1]["env_steps"]) == 256
    failed = tmp_path / "nan" / "seed_0" / "checkpoints"
    assert not list(failed.glob("step_*"))  # it failed at its first update: no good checkpoint to keep, none written


PAUSED = """
import functools, sys
sys.path[:0] = [{tests!r}, {src!r}]
from pathlib import Path
from helpers import PauseAfter
import duetrl.api
pause = PauseAfter({step}, Path({flags!r}))
duetrl.api.train_population = functools.partial(duetrl.api.train_population, sinks=[pause])
from duetrl.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_then_resume_matches_an_uninterrupted_population(capsys, tmp_path):
    argv = [
        "train",
        "Pendulum-v1",
        "--algo",
        "ppo",
        "--seeds",
        "0",
        "1",
        "2",
        "--num-envs",
        "4",
        "--steps",
        "512",
        "--quiet",
        *TINY_SETS[:-2],
        "eval_every=128",
        "eval_episodes=2",
        "checkpoint_every=64",
        "log_every=64",
    ]
    code, _, err = run(capsys, *argv, "--run-dir", tmp_path / "a")
    assert code == 0, err
    flags = tmp_path / "flags"
    flags.mkdir()
    script = tmp_path / "paused.py"
    src = str(Path(duetrl.__file__).resolve().parents[1])  # this checkout's, whatever the venv installed
    script.write_text(PAUSED.format(tests=str(Path(__file__).parent), src=src, step=200, flags=str(flags)))
    with flags.with_suffix(".err").open("wb") as errfile:
        proc = subprocess.Popen([sys.executable, script, *argv, "--run-dir", tmp_path / "b"], stderr=errfile)
    paused_at = wait_paused(proc, flags)
    proc.kill()
    proc.wait()
    _, killed_rows = read_metrics(tmp_path / "b" / "seed_0")
    saved = [int(p.stem.split("_")[1]) for p in (tmp_path / "b" / "seed_0" / "checkpoints").glob("step_*")]
    assert max(int(r["env_steps"]) for r in killed_rows) == paused_at > max(saved)  # rows the resume must redo
    code, _, err = run(capsys, "train", "--resume", tmp_path / "b", "--quiet")
    assert code == 0, err
    for seed in (0, 1, 2):
        _, reference = read_metrics(tmp_path / "a" / f"seed_{seed}")
        _, resumed = read_metrics(tmp_path / "b" / f"seed_{seed}")
        assert without_wall_time(resumed) == without_wall_time(reference)


def offpolicy_members(algo: str, seeds: list[int], steps: int = 300):
    agents, configs, generators, envs = [], [], [], []
    for seed in seeds:
        overrides = {"steps": steps, "seed": seed, "learning_starts": 100, "batch_size": 32, "utd": 2}
        cfg, _ = resolve("Pendulum-v1", algo, None, None, overrides)
        seed_everything(seed)
        env = make_env(cfg, torch.device("cpu"))
        agents.append(build_agent(cfg, env.single_observation_space, env.single_action_space, torch.device("cpu")))
        generator = torch.Generator()
        generator.set_state(torch.get_rng_state())
        configs.append(cfg)
        generators.append(generator)
        envs.append(env)
    return agents, configs, generators, envs


@pytest.mark.parametrize("algo", ["sac", "td3", "ddpg"])
def test_offpolicy_members_are_independent_and_a_population_of_one_follows_its_solo_run(algo):
    from duetrl.population import POPULATIONS

    seeds = [0, 1, 2]
    finals = []
    for perturb in (False, True):
        agents, configs, generators, envs = offpolicy_members(algo, seeds)
        solo = copy.deepcopy(agents[2])
        if perturb:
            generators[0].manual_seed(999)
        population = POPULATIONS[algo](agents, configs, generators)
        obs = torch.stack([env.reset(seed=s)[0] for env, s in zip(envs, seeds, strict=True)])
        solo_env = offpolicy_members(algo, [2])[3][0]
        solo_obs = solo_env.reset(seed=2)[0]
        for step in range(150):
            action, record = population.explore(obs, step)
            out = [env.step(a) for env, a in zip(envs, action, strict=True)]
            obs = torch.stack([o[0] for o in out])
            final = torch.stack([o[4]["final_obs"] for o in out])
            population.observe(record, *(torch.stack([o[i] for o in out]) for i in (1, 2, 3)), final)
            metrics = population.update() if population.ready() else None
            if not perturb:  # member 2 against its solo run, to float rounding
                decision = solo.explore(solo_obs, step)
                assert torch.allclose(decision.action, action[2], atol=1e-5)
                solo_obs, reward, terminated, truncated, info = solo_env.step(decision.action)
                solo.observe(decision, reward, terminated, truncated, info["final_obs"])
                if solo.ready():
                    theirs = solo.update()
                    assert metrics[2]["critic_loss"] == pytest.approx(theirs["critic_loss"], rel=1e-3)
        finals.append(([p[2].clone() for p in population.params], metrics[2], metrics[0]))
    (params_a, metrics_a, zero_a), (params_b, metrics_b, zero_b) = finals
    assert all(torch.equal(a, b) for a, b in zip(params_a, params_b, strict=True)) and metrics_a == metrics_b
    assert zero_a != zero_b


@pytest.mark.parametrize("algo", ["sac", "td3"])
def test_an_offpolicy_population_writes_ordinary_run_dirs(capsys, tmp_path, algo):
    code, out, err = run(capsys, "train", "Pendulum-v1", "--algo", algo, "--seeds", "0", "1", "--steps", "240",
                         "--quiet", "--set", "learning_starts=100", "batch_size=32", "utd=1", "eval_every=120",
                         "eval_episodes=2", "--run-dir", tmp_path / "sac")  # fmt: skip
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["members"] == 2
    code, out, err = run(capsys, "eval", tmp_path / "sac" / "seed_1", "--episodes", "2")
    assert code == 0 and "mean return" in out, err


@pytest.mark.parametrize("env_id, backend", [("Pendulum-v1", "gymnasium"), ("CartPole-v1", "torch")])
def test_gymnasium_backend_and_discrete_actions(capsys, tmp_path, env_id, backend):
    code, out, err = run(capsys, "train", env_id, "--algo", "ppo", "--backend", backend, "--seeds", "0", "1",
                         *TINY_ARGS, *TINY_SETS, "--run-dir", tmp_path / "p")  # fmt: skip
    assert code == 0, err
    assert f"{backend} backend" in err
    assert json.loads(out.strip().splitlines()[-1])["summary"][0]["members"] == 2


# ---------------------------------------------------------------------------------------------- ac and a2c members
TINY_AC = {"num_envs": 4, "update_every": 8, "hidden": [16, 16], "steps": 512, "advantage": "gae", "optimizer": "adam"}


def ac_members(algo: str, seeds: list[int]):
    """Solo-built ac/a2c agents (reward and observation normalisation on, clipping on), as PopulationTrainer builds
    them."""
    settings = {**TINY_AC, "normalize_obs": True, "normalize_reward": True, "max_grad_norm": 0.5}
    return members(seeds, algo, settings)


@pytest.mark.parametrize("algo", ["ac", "a2c"])
def test_ac_members_are_independent(algo):
    from duetrl.population import ACPopulation

    seeds = [0, 1, 2, 3, 4, 5]
    runs = []
    for perturb in (False, True):
        agents, configs, generators, envs = ac_members(algo, seeds)
        if perturb:  # member 3: other weights and another RNG stream
            with torch.no_grad():
                for p in agents[3].policy.parameters():
                    p.add_(0.5)
            generators[3].manual_seed(12345)
        population = ACPopulation(agents, configs, generators)
        metrics = rollout_and_update(population, envs, seeds, updates=3)
        runs.append(([p[5].clone() for p in population.params], [m[5] for m in metrics], [m[3] for m in metrics]))
    (params_a, metrics_a, three_a), (params_b, metrics_b, three_b) = runs
    assert len(metrics_a) == 3 and {"actor_loss", "critic_loss", "actor_grad_norm"} <= set(metrics_a[0])
    assert all(torch.equal(a, b) for a, b in zip(params_a, params_b, strict=True))
    assert metrics_a == metrics_b
    assert three_a != three_b  # the perturbation did change member 3


@pytest.mark.parametrize("algo", ["ac", "a2c"])
def test_an_ac_population_of_one_follows_its_solo_run_to_float_rounding(algo):
    from duetrl.population import ACPopulation

    agents, configs, generators, envs = ac_members(algo, [7])
    solo = copy.deepcopy(agents[0])
    population = ACPopulation(agents, configs, generators)
    env, (solo_env,) = envs[0], ac_members(algo, [7])[3]
    obs, solo_obs = env.reset(seed=7)[0], solo_env.reset(seed=7)[0]
    torch.set_rng_state(generators[0].get_state())
    for _ in range(2):
        for _ in range(configs[0].algo.update_every):
            action, record = population.explore(obs[None])
            decision = solo.explore(solo_obs, 0)
            assert torch.allclose(action[0], decision.action, atol=1e-5)
            o, r, te, tr, info = env.step(decision.action)
            solo_obs, *outcome = solo_env.step(decision.action)
            population.observe(record, r[None], te[None], tr[None], info["final_obs"][None])
            solo.observe(decision, outcome[0], outcome[1], outcome[2], outcome[3]["final_obs"])
            obs = o
        assert population.ready() and solo.ready()
        population.set_progress(0.25)
        solo.set_progress(0.25)
        ours, theirs = population.update()[0], solo.update()
        assert set(ours) == set(theirs)
        for key, value in theirs.items():
            assert ours[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    member = population.write_back(0)
    for mine, solo_param in zip(member.policy.parameters(), solo.policy.parameters(), strict=True):
        assert torch.allclose(mine, solo_param, atol=1e-6)
    for mine, solo_param in zip(member.critic.parameters(), solo.critic.parameters(), strict=True):
        assert torch.allclose(mine, solo_param, atol=1e-6)


def test_auto_threads_give_one_agent_one_thread_and_a_population_the_cores():
    """torch_threads=0 (the default): a single agent's small MLPs run fastest on one thread; a population's
    batched matmuls use up to the cores torch found (or OMP_NUM_THREADS, which Ray sets per trial). An explicit
    value is kept either way."""
    from duetrl.config import RunConfig
    from duetrl.loop import TORCH_DEFAULT_THREADS, torch_threads

    auto, two = RunConfig(env_id="Pendulum-v1"), RunConfig(env_id="Pendulum-v1", torch_threads=2)
    assert auto.torch_threads == 0 and torch_threads(auto) == 1 and torch_threads(auto, members=1) == 1
    assert torch_threads(auto, members=4) == 1  # small populations: the one thread a single agent runs fastest on
    assert torch_threads(auto, members=16) == min(2, TORCH_DEFAULT_THREADS)
    assert torch_threads(auto, members=256) == min(32, TORCH_DEFAULT_THREADS)
    assert torch_threads(two) == 2 and torch_threads(two, members=16) == 2
