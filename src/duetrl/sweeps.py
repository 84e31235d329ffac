"""Multi-seed runs and hyperparameter sweeps, each trial a normal duetrl run executed by Ray Tune.

A sweep directory holds ``sweep.json`` (what was asked, and each trial's config as resolved at the start),
``trials/<config>/seed_<s>/`` (ordinary run directories), ``tune/`` (Ray Tune's own state, used by ``--resume``) and
``summary.csv``.
By default Ray starts a local cluster for the sweep (all cores) and shuts it down after; ``address`` joins an
existing cluster instead.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from duetrl.api import resolve
from duetrl.callbacks import Callback, TrainingState
from duetrl.errors import UserError
from duetrl.evaluate import EvalResult
from duetrl.logs import read_metrics

# Two-sided 95% Student-t critical values by degrees of freedom (normal beyond 30).
_T95 = [
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
]


def mean_ci95(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% confidence interval of the mean); the half-width is nan for one value."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    t = _T95[n - 2] if n - 1 <= len(_T95) else 1.96
    return mean, t * std / math.sqrt(n)


def _ray() -> tuple[Any, Any]:
    try:
        import ray
        from ray import tune
    except ImportError:
        raise UserError("sweeps run on Ray Tune: pip install 'duetrl[ray]'") from None
    return ray, tune


def config_label(values: dict[str, Any]) -> str:
    """A directory-safe name for one configuration (the swept values, without the seed)."""
    if not values:
        return "base"
    text = ",".join(f"{k}={v}" for k, v in sorted(values.items()))
    return "".join(c if c.isalnum() or c in "=,.-_" else "_" for c in text)


@dataclass
class SweepSpec:
    """Everything needed to (re)start a sweep; saved as sweep.json."""

    env_id: str | None
    algo: str | None
    preset: str | None
    config_file: str | None
    base: dict[str, Any]  # settings shared by every trial (train flags, --set key=value)
    grid: dict[str, list[Any]]  # swept settings: --set key=v1,v2
    seeds: list[int]
    search: str = "grid"  # grid | random
    samples: int = 1  # configurations drawn when search=random
    cpus_per_trial: float = 1.0
    target_return: float | None = None
    # [{"values": {...}, "seed": s, "config": {...}}], fixed when the sweep starts; "config" is the trial's resolved
    # config (Config.to_dict), so a sweep resumed after duetrl's defaults or a preset changed runs what it started
    trials: list[dict[str, Any]] | None = None
    vectorize: bool = False  # trials that differ only in per-member settings train as one population each

    def expand(self) -> None:
        """Fix the list of trials: every grid point, or ``samples`` random draws, times every seed."""
        if self.search == "grid":
            keys = list(self.grid)
            points = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*self.grid.values())]
        else:
            rng = random.Random(0)
            points = [{k: rng.choice(v) for k, v in self.grid.items()} for _ in range(self.samples)]
        self.trials = [{"values": point, "seed": seed} for point in points for seed in self.seeds]
        for trial in self.trials:
            trial["config"] = self._resolve(trial).to_dict()

    def check(self) -> None:
        """Resolve one configuration per swept value up front, so a typo fails before any trial starts."""
        if not self.seeds:
            raise UserError("--seeds needs at least one seed")
        if self.search not in ("grid", "random"):
            raise UserError(f"--search {self.search!r}: use grid or random")
        if self.samples < 1:
            raise UserError(f"--samples {self.samples} must be at least 1")
        for key, values in self.grid.items():
            for value in values:
                resolve(self.env_id, self.algo, self.preset, self.config_file, {**self.base, key: value})

    def trial_config(self, trial: dict[str, Any]) -> Any:
        """The :class:`~duetrl.config.Config` of one trial as it was resolved when the sweep started (a sweep.json
        written before configs were kept there: resolved now)."""
        from duetrl.build import resolved_config

        return resolved_config(trial["config"]) if "config" in trial else self._resolve(trial)

    def _resolve(self, trial: dict[str, Any]) -> Any:
        settings = {**self.base, **trial["values"], "seed": trial["seed"]}
        return resolve(self.env_id, self.algo, self.preset, self.config_file, settings)[0]

    def populations(self) -> list[list[int]]:
        """With ``vectorize``: the trials (indices into ``trials``) grouped into populations, one per value of the
        swept settings that a population cannot vary per member (those that change shapes or branches, e.g.
        ``hidden``, ``num_envs``); each group is checked to train as one population (UserError if not)."""
        from duetrl.population.planning import PER_MEMBER, plan

        assert self.trials is not None
        algo = resolve(self.env_id, self.algo, self.preset, self.config_file, self.base)[0].run.algo
        if algo not in PER_MEMBER:
            raise UserError(
                f"--vectorize packs trials into populations, which train {', '.join(PER_MEMBER)}; not {algo}: "
                "drop --vectorize"
            )
        groups: dict[str, list[int]] = {}
        for i, trial in enumerate(self.trials):
            shared = {k: v for k, v in trial["values"].items() if k not in PER_MEMBER[algo]}
            groups.setdefault(config_label(shared), []).append(i)
        for indices in groups.values():
            try:
                plan([self.trial_config(self.trials[i]) for i in indices])
            except UserError as e:
                raise UserError(f"{e} (without --vectorize)") from None
        return list(groups.values())


def _trial(config: dict[str, Any]) -> None:
    """One Ray Tune trial: a normal duetrl run in its own directory, reporting each evaluation."""
    from ray import tune

    from duetrl import api
    from duetrl import checkpoint as ckpt

    spec = SweepSpec(**config["spec"])
    trial = spec.trials[config["labels"][config["trial"]]]
    run_dir = trial_dir(Path(config["sweep_dir"]), trial)

    class ReportToTune(Callback):
        def on_evaluation(self, state: TrainingState, result: EvalResult) -> None:
            tune.report({"env_steps": state.env_steps, "eval_return_mean": result.mean})

    if ckpt.list_checkpoints(run_dir) and not (run_dir / "result.json").exists():
        result = api.resume(run_dir, quiet=True, callbacks=[ReportToTune()])  # an interrupted trial continues
    else:
        result = api.train(config=spec.trial_config(trial), run_dir=run_dir, quiet=True, callbacks=[ReportToTune()])
    final = result.final_eval.mean if result.final_eval else float("nan")
    (run_dir / "result.json").write_text(json.dumps({"env_steps": result.env_steps, "final_eval": final}))
    tune.report({"env_steps": result.env_steps, "eval_return_mean": final, "done": True})


def trial_dir(sweep_dir: Path, trial: dict[str, Any]) -> Path:
    return sweep_dir / "trials" / config_label(trial["values"]) / f"seed_{trial['seed']}"


def population_dir(sweep_dir: Path, spec: SweepSpec, group: list[int]) -> Path:
    """Where a vectorized sweep's population keeps population.json and summary.json: ``populations/<label>``,
    labelled by the settings its members share among the swept ones ("base" if none)."""
    assert spec.trials is not None
    first = spec.trials[group[0]]["values"]
    shared = {k: v for k, v in first.items() if all(spec.trials[i]["values"][k] == v for i in group)}
    return sweep_dir / "populations" / config_label(shared)


def run_population(sweep_dir: Path, spec: SweepSpec, group: list[int]) -> Any:
    """Train the trials ``group`` as one population whose members write the sweep's own trial directories (so the
    summary, ``--resume`` and ``duetrl plot`` see ordinary trials); a population stopped after its first
    checkpoint continues from it. Returns the :class:`~duetrl.population.PopulationResult`."""
    from duetrl import checkpoint as ckpt
    from duetrl.api import resume_population
    from duetrl.population import POPULATION_FILE, PopulationTrainer

    assert spec.trials is not None
    trials = [spec.trials[i] for i in group]
    root, dirs = population_dir(sweep_dir, spec, group), [trial_dir(sweep_dir, t) for t in trials]
    if (root / POPULATION_FILE).exists() and any(ckpt.list_checkpoints(d) for d in dirs):
        return resume_population(root, quiet=True)
    return PopulationTrainer([spec.trial_config(t) for t in trials], root, quiet=True, dirs=dirs).train()


def _population_trial(config: dict[str, Any]) -> None:
    """One Ray Tune trial of a vectorized sweep: a population of trials, reporting the mean of its final returns."""
    from ray import tune

    spec = SweepSpec(**config["spec"])
    result = run_population(Path(config["sweep_dir"]), spec, config["groups"][config["labels"][config["trial"]]])
    finals = [m["final"] for m in result.members if "final" in m]
    mean = sum(finals) / len(finals) if finals else float("nan")
    tune.report({"env_steps": result.env_steps, "eval_return_mean": mean, "done": True})


def sweep(
    run_dir: str | Path,
    env_id: str | None = None,
    algo: str | None = None,
    seeds: list[int] | tuple[int, ...] = (0,),
    grid: dict[str, list[Any]] | None = None,
    search: str = "grid",
    samples: int = 1,
    preset: str | None = None,
    config: str | None = None,
    address: str | None = None,
    cpus_per_trial: float = 1.0,
    target_return: float | None = None,
    vectorize: bool = False,
    **settings: Any,
) -> list[dict[str, Any]]:
    """Run every (configuration, seed) trial on Ray Tune and return the summary rows (also in summary.csv).

    ``grid`` maps a setting to the values to try (``{"gamma": [0.9, 0.99]}``); ``settings`` apply to every trial.
    ``vectorize``: trials that differ only in settings a population varies per member (seeds, learning rates,
    gamma, ...; see :data:`duetrl.population.planning.PER_MEMBER`) train as ONE population in one process, each
    population a Ray trial; settings that change shapes (``hidden``, ``num_envs``) still make separate trials.
    The trial directories and the summary are the same either way.
    """
    run_dir = Path(run_dir).resolve()
    if target_return is not None:
        settings["target_return"] = target_return
    spec = SweepSpec(
        env_id,
        algo,
        preset,
        str(Path(config).resolve()) if config else None,
        settings,
        dict(grid or {}),
        list(seeds),
        search,
        samples,
        cpus_per_trial,
        target_return,
        vectorize=vectorize,
    )
    spec.check()
    spec.expand()
    if vectorize:
        spec.populations()  # refuses, before anything starts, a group that cannot train as one population
    if (run_dir / "sweep.json").exists():
        raise UserError(f"{run_dir} already holds a sweep; finish it with `duetrl sweep --resume {run_dir}`")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "sweep.json").write_text(json.dumps(spec.__dict__, indent=2))
    return _execute(run_dir, spec, address)


def resume_sweep(run_dir: str | Path, address: str | None = None) -> list[dict[str, Any]]:
    """Finish an interrupted sweep: trials with a result are kept; the others run again, continuing from their
    last checkpoint where they have one."""
    run_dir = Path(run_dir).resolve()
    path = run_dir / "sweep.json"
    if not path.is_file():
        raise UserError(f"no sweep in {run_dir} (sweep.json is missing)")
    spec = SweepSpec(**json.loads(path.read_text()))
    return _execute(run_dir, spec, address)


def _execute(run_dir: Path, spec: SweepSpec, address: str | None) -> list[dict[str, Any]]:
    assert spec.trials is not None
    pending = [i for i, t in enumerate(spec.trials) if not (trial_dir(run_dir, t) / "result.json").exists()]
    # Trials by name in Ray's live table: "gamma=0.9 seed 1", not an index.
    labels: dict[str, int] = {}
    groups = spec.populations() if spec.vectorize else []
    if spec.vectorize:  # a population runs again if any of its members has no result
        for g, group in enumerate(groups):
            if any(i in pending for i in group):
                label = f"{population_dir(run_dir, spec, group).name} population of {len(group)}"
                labels[label if label not in labels else f"{label} #{g}"] = g
    else:
        for i in pending:
            label = f"{config_label(spec.trials[i]['values'])} seed {spec.trials[i]['seed']}"
            labels[label if label not in labels else f"{label} #{i}"] = i
    if pending:
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic live table of trials
        ray, tune = _ray()
        started_here = not ray.is_initialized()
        if started_here:
            ray.init(
                address=address,
                num_cpus=None if address else os.cpu_count(),
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        try:
            tuner = tune.Tuner(
                tune.with_resources(_population_trial if spec.vectorize else _trial, {"cpu": spec.cpus_per_trial}),
                param_space={
                    "trial": tune.grid_search(list(labels)),
                    "labels": labels,
                    "groups": groups,
                    "spec": spec.__dict__,
                    "sweep_dir": str(run_dir),
                },
                run_config=tune.RunConfig(
                    name=f"sweep-{len(list((run_dir / 'tune').glob('sweep-*')))}",
                    storage_path=str(run_dir / "tune"),
                    failure_config=tune.FailureConfig(max_failures=0),
                    progress_reporter=tune.CLIReporter(
                        parameter_columns=["trial"],
                        metric_columns=["env_steps", "eval_return_mean"],
                        max_report_frequency=10,
                    ),
                    verbose=1,
                ),
            )
            for result in tuner.fit():
                if result.error is not None:
                    lines = str(result.error).strip().splitlines()
                    if spec.vectorize:
                        name = result.config["trial"]
                    else:
                        trial = spec.trials[labels[result.config["trial"]]]
                        name = f"{config_label(trial['values'])} seed {trial['seed']}"
                    print(f"duetrl: trial {name} failed: {lines[-1] if lines else result.error}", file=sys.stderr)
        finally:
            if started_here:
                ray.shutdown()
    return summarize(run_dir, spec.target_return)


# ---------------------------------------------------------------------------------------------- summary


def run_summary(run_dir: Path, target_return: float | None) -> dict[str, float] | None:
    """Final and best eval return of one run, and when it first reached the target."""
    metrics = run_dir / "metrics.csv"
    if not metrics.exists():
        return None
    evals = [r for r in read_metrics(metrics) if "eval_return_mean" in r]
    if not evals:
        return None
    out = {
        "final": evals[-1]["eval_return_mean"],
        "best": max(r["eval_return_mean"] for r in evals),
        "env_steps": evals[-1]["env_steps"],
    }
    if target_return is not None:
        hit = next((r for r in evals if r["eval_return_mean"] >= target_return), None)
        out["steps_to_target"] = hit["env_steps"] if hit else float("nan")
        out["seconds_to_target"] = hit["wall_time_s"] if hit else float("nan")
    return out


def summarize(run_dir: Path, target_return: float | None = None) -> list[dict[str, Any]]:
    """Across seeds, per configuration: mean and 95% CI of final and best eval return (and time to target)."""
    rows = []
    for config_dir in sorted(p for p in (run_dir / "trials").glob("*") if p.is_dir()):
        runs = {p.name: run_summary(p, target_return) for p in sorted(config_dir.glob("seed_*"))}
        finished = {k: v for k, v in runs.items() if v is not None and (config_dir / k / "result.json").exists()}
        row: dict[str, Any] = {"config": config_dir.name, "seeds": len(finished), "failed": len(runs) - len(finished)}
        for key in ("final", "best") + (("steps_to_target", "seconds_to_target") if target_return is not None else ()):
            values = [v[key] for v in finished.values() if not math.isnan(v.get(key, float("nan")))]
            mean, half = mean_ci95(values) if values else (float("nan"), float("nan"))
            row[f"{key}_mean"], row[f"{key}_ci95"] = round(mean, 2), round(half, 2)
        rows.append(row)
    if rows:
        with (run_dir / "summary.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return rows


def format_summary(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no finished trials"
    lines = []
    for row in rows:
        if row["seeds"] >= 2:
            text = (
                f"{row['config']}: final {row['final_mean']:.1f} ± {row['final_ci95']:.1f}, best "
                f"{row['best_mean']:.1f} ± {row['best_ci95']:.1f} over {row['seeds']} seeds (95% CI)"
            )
        else:
            text = (
                f"{row['config']}: final {row['final_mean']:.1f}, best {row['best_mean']:.1f} over {row['seeds']} "
                "seed(s) (no confidence interval from one seed)"
            )
        if "steps_to_target_mean" in row:
            text += f", target at {row['steps_to_target_mean']:.0f} steps / {row['seconds_to_target_mean']:.1f} s"
        if row["failed"]:
            text += f" ({row['failed']} failed)"
        if row["seeds"] == 2:
            text += f"; a 95% CI over 2 seeds is wide (t = {_T95[0]}): run more seeds for a useful one"
        lines.append(text)
    return "\n".join(lines)
