"""Sweeps on a real local Ray (2 CPUs, tiny budgets): a crashing trial, a resume, the summary and the plots."""

import json
import math
import sys

import pytest

from duetrl.errors import UserError
from duetrl.sweeps import SweepSpec, mean_ci95

ray = pytest.importorskip("ray")

CRASH_MODULE = '''
import gymnasium
from gymnasium.envs.classic_control.pendulum import PendulumEnv


class SeedOneCrashes(PendulumEnv):
    """Pendulum that refuses to start when seeded with 1: one trial of a sweep over seeds 0 and 1 crashes."""

    def reset(self, *, seed=None, options=None):
        if seed == 1:
            raise RuntimeError("boom: this env cannot start from seed 1")
        return super().reset(seed=seed, options=options)


gymnasium.register("CrashyPendulum-v0", entry_point=SeedOneCrashes, max_episode_steps=200)
'''


def test_mean_ci95_against_hand_computed_values():
    mean, half = mean_ci95([1.0, 2.0, 3.0])  # std 1, t(2) = 4.303, sqrt(3)
    assert mean == 2.0 and half == pytest.approx(4.303 / math.sqrt(3), rel=1e-4)
    assert math.isnan(mean_ci95([5.0])[1])


def test_random_search_draws_fixed_trials_times_seeds():
    spec = SweepSpec("Pendulum-v1", "ppo", None, None, {}, {"gamma": [0.9, 0.95, 0.99]}, [0, 1], "random", 4)
    spec.expand()
    assert len(spec.trials) == 8 and {t["seed"] for t in spec.trials} == {0, 1}
    again = SweepSpec("Pendulum-v1", "ppo", None, None, {}, {"gamma": [0.9, 0.95, 0.99]}, [0, 1], "random", 4)
    again.expand()
    assert again.trials == spec.trials  # a resumed sweep runs the same draws


def test_a_resumed_sweep_runs_its_trials_as_resolved_when_it_started(tmp_path):
    """sweep.json keeps each trial's resolved config: editing the config file (or a new duetrl's defaults, or a
    preset file) between the start and --resume does not move the trials still to run."""
    config = tmp_path / "base.yaml"
    config.write_text("gamma: 0.9\nlr: 0.001\n")
    spec = SweepSpec("Pendulum-v1", "ppo", None, str(config), {"steps": 64}, {"gae_lambda": [0.8, 0.9]}, [0])
    spec.expand()
    saved = json.loads(json.dumps(spec.__dict__))  # as sweep.json holds it
    config.write_text("gamma: 0.5\nlr: 0.1\n")
    resumed = SweepSpec(**saved)
    for trial, lam in zip(resumed.trials, (0.8, 0.9), strict=True):
        cfg = resumed.trial_config(trial)
        assert (cfg.algo.gamma, cfg.algo.lr, cfg.algo.gae_lambda, cfg.run.steps) == (0.9, 0.001, lam, 64)
        assert cfg.to_dict() == spec.trial_config(spec.trials[0 if lam == 0.8 else 1]).to_dict()
    legacy = SweepSpec(**{**saved, "trials": [{k: t[k] for k in ("values", "seed")} for t in saved["trials"]]})
    assert legacy.trial_config(legacy.trials[0]).algo.gamma == 0.5  # an older sweep.json: resolved afresh


def test_sweep_rejects_a_bad_setting_before_starting_ray(tmp_path):
    from duetrl import sweeps as sweep

    with pytest.raises(UserError, match="did you mean"):
        sweep.sweep(tmp_path / "s", "Pendulum-v1", "ppo", seeds=[0], grid={"gama": [0.9, 0.99]})
    assert not (tmp_path / "s").exists()


def test_sweep_crash_resume_summary_and_plots(tmp_path, monkeypatch, capsys):
    import duetrl.sweeps as sweep_module
    from duetrl.cli import main

    (tmp_path / "crashy_envs.py").write_text(CRASH_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path) + ":" + ":".join(p for p in sys.path if p))
    monkeypatch.chdir(tmp_path)
    sweep_dir = tmp_path / "sweep"
    common = ["--steps", "400", "--quiet", "--set", "num_steps=50", "eval_every=200", "eval_episodes=2"]
    code = main(
        [
            "sweep",
            "CrashyPendulum-v0",
            "--algo",
            "ppo",
            "--preset",
            "none",
            "--import",
            "crashy_envs",
            "--seeds",
            "0",
            "1",
            "--run-dir",
            str(sweep_dir),
            "--set",
            "gamma=0.9,0.99",
            *common,
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0
    assert err.count("failed: ") == 2 and "boom" in err  # both seed-1 trials crashed and said why
    assert "gamma=0.99 seed 1" in out + err  # Ray's live table names each trial's configuration and seed
    rows = {r["config"]: r for r in sweep_module.summarize(sweep_dir)}
    assert set(rows) == {"gamma=0.9", "gamma=0.99"}
    assert all(r["seeds"] == 1 and r["failed"] == 1 for r in rows.values())
    assert "gamma=0.9: final" in out and (sweep_dir / "summary.csv").is_file()

    # Interrupt one finished trial (no result yet) and resume: only it runs again; the others stay as they were.
    redo = sweep_dir / "trials" / "gamma=0.9" / "seed_0"
    kept = sweep_dir / "trials" / "gamma=0.99" / "seed_0"
    (redo / "result.json").unlink()
    kept_mtime = (kept / "metrics.csv").stat().st_mtime_ns
    assert main(["sweep", "--resume", str(sweep_dir)]) == 0
    assert json.loads((redo / "result.json").read_text())["env_steps"] == 400
    assert (kept / "metrics.csv").stat().st_mtime_ns == kept_mtime

    # Curves from the sweep and a single run, in every format.
    for name in ("curves.png", "curves.svg", "curves.pdf"):
        assert main(["plot", str(sweep_dir), str(kept), "-o", str(tmp_path / name), "--x", "wall_time_s"]) == 0
        data = (tmp_path / name).read_bytes()
        assert len(data) > 1000
    assert (tmp_path / "curves.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "curves.pdf").read_bytes().startswith(b"%PDF")


def test_plot_errors_are_one_line(tmp_path, capsys):
    from duetrl.cli import main

    assert main(["plot", str(tmp_path), "-o", str(tmp_path / "x.png")]) == 2
    assert main(["plot", str(tmp_path), "-o", str(tmp_path / "x.jpg")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("duetrl: error:") for line in err)


def test_the_summary_flags_a_ci_over_two_seeds_as_wide_and_gives_none_for_one():
    from duetrl.sweeps import format_summary

    row = {"config": "gamma=0.9", "failed": 0, "final_mean": -150.0, "best_mean": -140.0}
    two = format_summary([{**row, "seeds": 2, "final_ci95": 80.0, "best_ci95": 60.0}])
    assert "± 80.0" in two and "a 95% CI over 2 seeds is wide (t = 12.706)" in two
    one = format_summary([{**row, "seeds": 1, "final_ci95": float("nan"), "best_ci95": float("nan")}])
    assert "nan" not in one and "no confidence interval from one seed" in one
    three = format_summary([{**row, "seeds": 3, "final_ci95": 20.0, "best_ci95": 10.0}])
    assert "wide" not in three and "over 3 seeds (95% CI)" in three


# ---------------------------------------------------------------------------------------------- --vectorize
TINY_PPO = {"num_envs": 4, "steps": 64, "num_steps": 8, "minibatch_size": 16, "epochs": 1, "eval_every": 64}


def vectorized_spec(algo: str = "ppo") -> SweepSpec:
    grid = {"gamma": [0.9, 0.99], "hidden": [[8, 8], [16, 16]]}
    base = {**TINY_PPO, "eval_episodes": 1} if algo == "ppo" else {"steps": 64}
    spec = SweepSpec("Pendulum-v1", algo, "none", None, base, grid, [0, 1], vectorize=True)
    spec.check()
    spec.expand()
    return spec


def test_vectorize_packs_per_member_settings_into_one_population_per_shape():
    spec = vectorized_spec()
    groups = spec.populations()
    assert sorted(len(g) for g in groups) == [4, 4]  # 2 gammas x 2 seeds in each; hidden keeps them apart
    for group in groups:
        assert len({str(spec.trials[i]["values"]["hidden"]) for i in group}) == 1
        assert {(spec.trials[i]["values"]["gamma"], spec.trials[i]["seed"]) for i in group} == {
            (g, s) for g in (0.9, 0.99) for s in (0, 1)
        }


def test_a_vectorized_population_writes_the_sweeps_own_trial_directories(tmp_path):
    from duetrl.sweeps import population_dir, run_population, summarize

    spec = vectorized_spec()
    group = next(g for g in spec.populations() if spec.trials[g[0]]["values"]["hidden"] == [8, 8])
    result = run_population(tmp_path, spec, group)
    assert len(result.members) == 4
    rows = {r["config"]: r for r in summarize(tmp_path)}  # the ordinary sweep summary reads the members as trials
    assert set(rows) == {"gamma=0.9,hidden=_8,_8_", "gamma=0.99,hidden=_8,_8_"}
    assert all(r["seeds"] == 2 and r["failed"] == 0 and math.isfinite(r["final_mean"]) for r in rows.values())
    record = json.loads((population_dir(tmp_path, spec, group) / "population.json").read_text())
    assert sorted(m["run_dir"] for m in record["members"])[0] == "../../trials/gamma=0.9,hidden=_8,_8_/seed_0"


def test_vectorize_refuses_trials_that_cannot_be_one_population_in_one_line(tmp_path, capsys):
    from helpers import assert_user_error

    from duetrl.cli import main

    argv = ["sweep", "Pendulum-v1", "--algo", "ac", "--preset", "none", "--seeds", "0", "1", "--run-dir"]
    code = main([*argv, str(tmp_path / "s"), "--vectorize", "--steps", "64"])  # ac's default: an update per episode
    assert_user_error(code, *capsys.readouterr(), match="update_every=0 .* use duetrl sweep .without --vectorize.")
    assert not (tmp_path / "s").exists()  # refused before anything was written or Ray started
