"""The benchmark's own pieces (the benchmark itself is run by hand: `duetrl bench`, never timed in tests)."""

import json

import pytest

from duetrl import bench as bench_module
from duetrl.bench import TASKS, Figure, bench, checkpoint_args, checkpoint_file, first_target, rollout_throughput
from duetrl.errors import UserError


@pytest.mark.parametrize("backend", ["torch", "gymnasium"])
def test_rollout_throughput_runs_a_policy_in_the_loop(backend):
    assert rollout_throughput("Pendulum-v1", num_envs=8, steps=5, backend=backend) > 0


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


def test_sac_trains_to_its_last_checkpoint_and_keeps_every_one():
    from duetrl.cli import _overrides, build_parser
    from duetrl.config import resolve

    flags = checkpoint_args(TASKS["sac"])
    assert flags == ["--steps", "3000", "--set", "checkpoint_every=1000", "keep_checkpoints=5"]
    args = build_parser().parse_args(["train", "Pendulum-v1", "--algo", "sac", *flags])
    run = resolve("Pendulum-v1", "sac", None, None, _overrides(args))[0].run
    assert (run.steps, run.checkpoint_every, run.keep_checkpoints) == (3000, 1000, 5)
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
