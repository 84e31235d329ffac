"""The benchmark's own pieces (the benchmark itself is run by hand: `duetrl bench`, never timed in tests)."""

import json
from types import SimpleNamespace

import pytest

from duetrl import bench as bench_module
from duetrl.bench import TASKS, Figure, Task, bench, checkpoint_args, checkpoint_file, first_target, rollout_throughput
from duetrl.errors import UserError


@pytest.mark.parametrize("backend", ["torch", "gymnasium"])
def test_rollout_throughput_times_the_steps_after_the_warm_up(monkeypatch, backend):
    import duetrl.envs

    make, calls = duetrl.envs.make, []

    def counting_make(*args, **kwargs):
        env = make(*args, **kwargs)
        step = env.step

        def counted(action):
            calls.append(tuple(action.shape))
            return step(action)

        env.step = counted
        return env

    clock = iter([100.0, 102.5])  # perf_counter as the timed steps begin and end
    monkeypatch.setattr(duetrl.envs, "make", counting_make)
    monkeypatch.setattr(bench_module, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    assert rollout_throughput("Pendulum-v1", num_envs=8, steps=5, backend=backend) == 8 * 5 / 2.5
    assert calls == [(8, 1)] * (10 + 5)  # 10 warm-up steps, then the 5 timed ones, all of them policy actions


def test_unknown_task_is_a_user_error():
    with pytest.raises(UserError, match="unknown benchmark task"):
        bench(["nope"], [0])


def test_every_task_names_a_registered_algorithm():
    from duetrl.algos import ALGOS

    assert all(task.algo in ALGOS for task in TASKS.values())


def test_every_pendulum_preset_algorithm_has_a_task():
    from duetrl.config import list_presets

    shipped = {row["algo"] for row in list_presets() if row["env"] == "Pendulum-v1"}
    assert shipped == {"ppo", "a2c", "ac", "sac", "td3", "ddpg"}
    assert shipped <= {task.algo for task in TASKS.values() if task.env_id == "Pendulum-v1"}
    assert all(task.threshold == -200.0 for task in TASKS.values() if task.env_id == "Pendulum-v1")


@pytest.mark.parametrize("checkpoints", [TASKS["sac"].checkpoints, (2_000, 7_000)], ids=["sac", "past-preset"])
def test_sac_trains_to_its_last_checkpoint_and_keeps_every_one(checkpoints):
    from duetrl.api import resolve
    from duetrl.cli import _overrides, build_parser

    flags = checkpoint_args(Task("Pendulum-v1", "sac", 0, checkpoints=checkpoints))
    args = build_parser().parse_args(["train", "Pendulum-v1", "--algo", "sac", *flags])
    run = resolve("Pendulum-v1", "sac", None, None, _overrides(args))[0].run
    assert run.steps >= max(checkpoints) and run.checkpoint_every == 1_000
    assert run.keep_checkpoints > run.steps // run.checkpoint_every  # every checkpoint of the run is kept
    assert checkpoint_args(TASKS["ppo"]) == []


def test_checkpoint_file_is_named_as_the_loop_names_it(tmp_path):
    from duetrl.checkpoint import list_checkpoints

    path = checkpoint_file(tmp_path, 2000)
    assert path.name == "step_000000002000.safetensors"
    path.parent.mkdir()
    path.touch()
    assert list_checkpoints(tmp_path) == [path]


def test_first_target_reads_the_first_periodic_eval_at_the_threshold(tmp_path):
    (tmp_path / "metrics.csv").write_text(
        "env_steps,wall_time_s,episode_return,eval_return_mean\n"
        "500,2.5,-1200.0,\n"
        "500,2.9,,-900.0\n"
        "1000,6.0,,-201.0\n"
        "1500,9.004,,-200.0\n"  # >= the threshold: the first hit
        "2000,12.0,,-150.0\n"
    )
    assert first_target(tmp_path, -200.0) == (1500, 9.0)
    assert first_target(tmp_path, -100.0) == (None, None)
    assert first_target(tmp_path, None) == (None, None)


def _figure(library, task, seed, score, steps=None, seconds=None, at=None):
    return Figure(library, task, seed, 3000, 10.0, score, 5.0, seconds, steps, at or {})


FIGURES = [
    _figure("duetrl", "sac", 0, -160.0, 1500, 8.0, {2000: -190.0, 3000: -160.0}),
    _figure("duetrl", "sac", 1, -150.0, 1000, 6.0, {2000: -250.0, 3000: -150.0}),
    _figure("duetrl", "sac", 2, -300.0, None, None, {2000: -400.0, 3000: -300.0}),
    _figure("sb3", "sac", 0, -170.0, 4500, 30.0),
    _figure("sb3", "sac", 1, -180.0, None, None),
    _figure("sb3", "sac", 2, -175.0, 5000, 33.0),
    _figure("sb3", "ppo", 0, -190.0),
]


def test_summaries_per_task_library_checkpoint_and_threshold():
    out = bench_module.summaries(FIGURES)
    assert list(out) == ["sac", "ppo"]
    ours = out["sac"]["duetrl"]
    assert list(ours) == ["score", "at 2000 steps", "at 3000 steps", "env steps to -200", "seconds to -200"]
    assert (ours["score"].reached, ours["score"].worst_seed, ours["score"].worst_score) == (2, 2, -300.0)
    assert (ours["at 2000 steps"].reached, ours["at 2000 steps"].median) == (1, -250.0)
    assert ours["at 3000 steps"] == ours["score"]
    steps, seconds = ours["env steps to -200"], ours["seconds to -200"]
    assert (steps.reached, steps.median, steps.max) == (2, 1250.0, 1500.0)
    assert (seconds.reached, seconds.median, seconds.max) == (2, 7.0, 8.0)
    theirs = out["sac"]["sb3"]  # trained until the threshold: its steps and seconds to it are measured
    assert (theirs["score"].reached, theirs["env steps to -200"].max) == (3, 5000.0)
    assert list(out["ppo"]["sb3"]) == ["score"]  # a fixed budget: no time to the threshold


def test_summaries_without_a_threshold_report_no_fraction(monkeypatch):
    monkeypatch.setitem(TASKS, "sac", bench_module.Task("Pendulum-v1", "sac", 0, threshold=None))
    out = bench_module.summaries([f for f in FIGURES if f.task == "sac" and f.library == "sb3"])
    assert list(out["sac"]["sb3"]) == ["score"]
    assert out["sac"]["sb3"]["score"].fraction_reached is None


def test_bench_prints_and_returns_the_summaries(monkeypatch, capsys):
    monkeypatch.setattr(bench_module, "have_sb3", lambda: True)
    monkeypatch.setattr(bench_module, "rollout_throughput", lambda *a: 1.0)
    by_key = {(f.library, f.task, f.seed): f for f in FIGURES}
    monkeypatch.setattr(bench_module, "run_duetrl", lambda task, seed, workdir: by_key[("duetrl", task, seed)])
    monkeypatch.setattr(bench_module, "run_sb3", lambda task, seed: by_key[("sb3", task, seed)])
    results = bench(["sac"], [0, 1, 2])
    printed = capsys.readouterr().out
    assert "sac    duetrl  at 2000 steps: 1/3 reach -200; median -250.0 [" in printed
    assert "sac    duetrl  env steps to -200: 2/3 got there; median 1,250, max 1,500" in printed
    assert "sac    sb3     score: 3/3 reach -200; median -175.0 [" in printed
    assert "@2000 -190.0  @3000 -160.0" in printed
    assert results["time_ratio"] == {"sac": 1.0}
    summary = json.loads(json.dumps(results))["summaries"]["sac"]["duetrl"]["score"]
    assert (summary["n"], summary["reached"], summary["worst_seed"]) == (3, 2, 2)
    assert summary["iqm"] == pytest.approx(-610 / 3)  # n=3: int(0.75) = 0 cut, the plain mean


# The `defaults` family: its pure parts (the runs themselves are by hand: `duetrl bench --tasks defaults`).


def test_normalised_is_zero_at_random_and_one_at_the_reference():
    assert bench_module.normalised(-100.0, -500.0, -100.0) == 1.0
    assert bench_module.normalised(-500.0, -500.0, -100.0) == 0.0
    assert bench_module.normalised(-300.0, -500.0, -100.0) == pytest.approx(0.5)
    assert bench_module.normalised(-600.0, -500.0, -100.0) == pytest.approx(-0.25)  # worse than random
    assert bench_module.normalised(-200.0, -200.0, -200.0) is None  # nothing learned: no scale to measure on
    assert bench_module.normalised(-250.0, -200.0, -210.0) is None


def test_verdict_needs_intervals_that_do_not_overlap():
    assert bench_module.verdict((10.0, 20.0), (0.0, 9.9)) == "duetrl better"
    assert bench_module.verdict((0.0, 9.9), (10.0, 20.0)) == "SB3 better"
    assert bench_module.verdict((0.0, 10.0), (10.0, 20.0)) == "within noise"  # touching = overlapping
    assert bench_module.verdict((0.0, 30.0), (10.0, 20.0)) == "within noise"


def test_defaults_tasks_leave_out_what_cannot_act_and_scale_the_budgets():
    tasks = bench_module.defaults_tasks(["Acrobot-v1", "Reacher-v5"], ["sac", "ppo"], scale=0.1)
    assert list(tasks) == ["ppo-Acrobot-v1", "sac-Reacher-v5", "ppo-Reacher-v5"]  # no sac on a discrete env
    assert [t.sb3_steps for t in tasks.values()] == [10_240, 3_000, 10_240]  # PPO: whole 2048-step SB3 rollouts
    assert all(t.defaults and t.threshold is None and t.episodes == 20 for t in tasks.values())
    every = bench_module.defaults_tasks()
    assert len({t.env_id for t in every.values()}) >= 10
    assert {t.algo for t in every.values() if t.env_id == "MountainCar-v0"} == {"ppo", "a2c"}
    assert {t.algo for t in every.values() if t.env_id == "Swimmer-v5"} == {"ppo", "a2c", "sac", "td3"}
    assert all(t.sb3_steps % 2048 == 0 for t in every.values() if t.algo == "ppo")


@pytest.mark.parametrize(
    "envs, algos, scale, match",
    [(["CartPole-v1"], None, 1.0, "unknown env"), (None, ["ddpg"], 1.0, "unknown algorithm"), (None, None, 0, "> 0")],
)
def test_defaults_tasks_reject_what_the_family_does_not_have(envs, algos, scale, match):
    with pytest.raises(UserError, match=match):
        bench_module.defaults_tasks(envs, algos, scale)


def test_defaults_envs_have_no_preset_and_one_env_like_sb3s_defaults():
    from duetrl.api import resolve
    from duetrl.config import list_presets

    preset_envs = {row["env"] for row in list_presets()}
    assert not preset_envs & set(bench_module.DEFAULTS_ENVS)
    for algo in bench_module.DEFAULTS_ALGOS:  # bench_sb3 --defaults trains on one env: so must duetrl
        assert resolve("Reacher-v5", algo, "none", None, {})[0].run.num_envs == 1


def test_defaults_envs_say_truly_whether_their_actions_are_discrete():
    gym = pytest.importorskip("gymnasium")
    for env in bench_module.DEFAULTS_ENVS.values():
        try:
            space = gym.make(env.env_id).action_space
        except gym.error.DependencyNotInstalled:
            continue  # Box2D or MuJoCo not installed here
        assert isinstance(space, gym.spaces.Discrete) == env.discrete, env.env_id


def test_random_return_scores_random_actions_on_the_held_out_episodes():
    pytest.importorskip("stable_baselines3")
    assert bench_module.random_return("MountainCar-v0", 2) == -200.0  # random actions never reach the flag


def test_defaults_runs_are_untuned_on_both_sides(monkeypatch, tmp_path):
    commands = []

    def fake_run(cmd):
        commands.append(cmd)
        return 1.0, json.dumps({"env_steps": 300, "steps": 300, "mean_return": -1.0, "std_return": 0.0} | SB3_TIMES)

    monkeypatch.setattr(bench_module, "_run", fake_run)
    spec = bench_module.defaults_tasks(["Reacher-v5"], ["td3"], scale=0.01)["td3-Reacher-v5"]
    bench_module.run_duetrl("td3-Reacher-v5", 4, tmp_path, spec)
    train, evaluate = (" ".join(c[3:]) for c in commands)
    assert train.startswith("train Reacher-v5 --algo td3 --seed 4 --quiet --run-dir ")
    assert train.endswith(" --preset none --steps 300 --set eval_every=0")
    assert evaluate.endswith("--checkpoint latest --episodes 20 --deterministic --json")
    figure = bench_module.run_sb3("td3-Reacher-v5", 4, spec)
    assert commands[-1][2:] == ["duetrl.bench_sb3", "--defaults", "Reacher-v5", "td3", "300", "4", "20"]
    assert (figure.library, figure.task, figure.env_steps) == ("sb3", "td3-Reacher-v5", 300)


SB3_TIMES = {"eval_s": 0.5, "train_s": 0.4, "reached_at": None}


def _defaults_figures():
    def fig(library, task, seed, score):
        return Figure(library, task, seed, 1000, 10.0, score, 0.0)

    return [
        *(fig("duetrl", "ppo-Acrobot-v1", s, x) for s, x in enumerate([-100.0, -110.0, -90.0])),
        *(fig("sb3", "ppo-Acrobot-v1", s, x) for s, x in enumerate([-300.0, -310.0, -290.0])),
        *(fig("duetrl", "a2c-Acrobot-v1", s, -500.0) for s in range(3)),  # both random: no normalised score
        *(fig("sb3", "a2c-Acrobot-v1", s, -500.0) for s in range(3)),
        *(fig("duetrl", "ppo-Reacher-v5", s, x) for s, x in enumerate([-20.0, -5.0, -35.0])),
        *(fig("sb3", "ppo-Reacher-v5", s, x) for s, x in enumerate([-10.0, -12.0, -8.0])),
        fig("duetrl", "sac-Reacher-v5", 0, -4.0),  # its SB3 run failed: the pair is left out
    ]


def test_compare_gives_verdicts_and_median_normalised_scores():
    tasks = bench_module.defaults_tasks(["Acrobot-v1", "Reacher-v5"], ["ppo", "a2c", "sac"])
    out = bench_module.compare(tasks, _defaults_figures(), {"Acrobot-v1": -500.0, "Reacher-v5": -40.0})
    assert list(out["pairs"]) == ["ppo-Acrobot-v1", "a2c-Acrobot-v1", "ppo-Reacher-v5"]
    acrobot, reacher = out["pairs"]["ppo-Acrobot-v1"], out["pairs"]["ppo-Reacher-v5"]
    assert acrobot["verdict"] == "duetrl better" and reacher["verdict"] == "within noise"
    assert acrobot["duetrl"]["mean"] == -100.0 and acrobot["duetrl"]["ci"][0] < -100.0 < acrobot["duetrl"]["ci"][1]
    assert acrobot["normalised"] == {"duetrl": 1.0, "sb3": pytest.approx(0.5)}
    assert reacher["normalised"] == {"duetrl": pytest.approx(2 / 3), "sb3": 1.0}  # (-20 + 40) / (-10 + 40)
    assert out["pairs"]["a2c-Acrobot-v1"]["normalised"] == {"duetrl": None, "sb3": None}
    assert out["median_normalised"] == {"pairs": 2, "duetrl": pytest.approx(5 / 6), "sb3": pytest.approx(0.75)}
    assert out["verdicts"] == {"duetrl better": 1, "SB3 better": 0, "within noise": 2}


def test_format_defaults_prints_one_row_per_pair_and_the_medians():
    tasks = bench_module.defaults_tasks(["Acrobot-v1"], ["ppo", "a2c"])
    result = bench_module.compare(tasks, _defaults_figures(), {"Acrobot-v1": -500.0})
    lines = bench_module.format_defaults(result).splitlines()
    assert len(lines) == 5 and lines[0].startswith("env ")
    assert lines[1].startswith("Acrobot-v1                ppo  100,352   -500.0  -100.0 [")
    assert lines[1].endswith("duetrl better 1.00/0.50")
    assert lines[2].endswith("within noise  -/-")
    assert lines[3] == (
        "median normalised score over 1 of 2 pairs (random 0, the better library 1): duetrl 1.00, SB3 0.50"
    )
    assert lines[4] == "verdicts: duetrl better 1, SB3 better 0, within noise 1"


def test_cli_runs_the_defaults_family_with_its_own_seeds(monkeypatch):
    from duetrl.cli import main

    calls = []
    monkeypatch.setattr(bench_module, "bench_defaults", lambda *args: calls.append(args) or {})
    monkeypatch.setattr(bench_module, "bench", lambda *a, **k: pytest.fail("no standard task was asked for"))
    argv = ["bench", "--tasks", "defaults", "--defaults-envs", "Reacher-v5", "--defaults-algos", "sac"]
    assert main([*argv, "--budget-scale", "0.1"]) == 0
    assert calls == [(["Reacher-v5"], ["sac"], (0, 1, 2), 0.1)]
    assert main(["bench", "--tasks", "defaults", "--seeds", "7"]) == 0
    assert calls[-1] == (None, None, [7], 1.0)
    assert main(["bench", "--tasks", "defaults", "--no-sb3"]) == 2
    assert main([*argv[:-1], "ddpg"]) == 2  # before any run
    assert len(calls) == 2
