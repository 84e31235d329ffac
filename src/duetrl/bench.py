"""The project's standard benchmark: duetrl and Stable-Baselines3 side by side, in one run, on this machine.

Every figure is a whole process (``duetrl train ...`` or an SB3 script), timed from outside, run one at a time
so that they do not measure each other; quality is the mean return on the same held-out episodes (seeds
1,000,000 + k, deterministic actions; 100 episodes) for both libraries. Ratios, not absolute seconds, are the
result: this machine is noisy. Over many seeds (each a fresh process), every task and library is summarised in
figures a lucky seed cannot fake (duetrl.stats): the fraction of seeds reaching the task's threshold, the median
and interquartile mean with 95% bootstrap intervals, the worst seed, and the env steps and training seconds to
the threshold.

The `defaults` family (``bench_defaults``) asks another question: how well each library does, untuned, on envs
nobody tuned it for -- duetrl with no preset against SB3's library defaults.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from duetrl.errors import UserError
from duetrl.logs import read_metrics
from duetrl.stats import bootstrap_ci, summarize, summarize_times


@dataclass(frozen=True)
class Task:
    """One benchmark line: duetrl's shipped preset for (env, algo) against rl-zoo3's tuned SB3 settings."""

    env_id: str
    algo: str
    sb3_steps: int  # 0 = SB3 not run
    episodes: int = 100  # held-out evaluation episodes, for both libraries
    threshold: float | None = -200.0  # a seed "reaches" it with a held-out mean >= threshold; None = no threshold
    checkpoints: tuple[int, ...] = ()  # duetrl is also scored on its checkpoints at these env steps
    sb3_until: bool = False  # SB3 trains until its first held-out check >= threshold, not over a fixed budget
    defaults: bool = False  # untuned, both over sb3_steps: duetrl --preset none, SB3's library defaults


HALFCHEETAH = 4800.0  # Gymnasium's reward_threshold for HalfCheetah-v5

TASKS: dict[str, Task] = {
    "ppo": Task("Pendulum-v1", "ppo", 100_000),  # SB3: rl-zoo3's tuned 100k steps
    "a2c": Task("Pendulum-v1", "a2c", 0),  # SB3's tuned A2C needs 1M steps and still fails (about -695): not rerun
    "ac": Task("Pendulum-v1", "ac", 0),  # duetrl's own actor-critic: no SB3 counterpart
    # SAC's preset trains 2k steps; scored after 2k and 3k, its run goes on to 3k (so its row and process time are
    # 3k steps). SB3 trains until its first held-out check at >= -200.
    "sac": Task("Pendulum-v1", "sac", 20_000, checkpoints=(2000, 3000), sb3_until=True),
    "td3": Task("Pendulum-v1", "td3", 20_000),
    "ddpg": Task("Pendulum-v1", "ddpg", 0),  # duetrl only, like a2c and ac
    # MuJoCo (pip install 'duetrl[mujoco]'): long runs, 25-60 min each for SB3 on this machine. 100 episodes, not
    # 10: a PPO gait that runs at ~5,600 can still get stuck in one episode in twenty and score ~0 there.
    "ppo-halfcheetah": Task("HalfCheetah-v5", "ppo", 1_000_000, threshold=HALFCHEETAH),
    "sac-halfcheetah": Task("HalfCheetah-v5", "sac", 300_000, threshold=HALFCHEETAH),
}


@dataclass
class Figure:
    library: str
    task: str
    seed: int
    env_steps: int
    process_s: float
    mean_return: float
    std_return: float
    first_target_s: float | None = None  # training seconds to the first periodic eval >= the task's threshold
    first_target_steps: int | None = None  # env steps to it (None: never reached, or not measured)
    checkpoint_returns: dict[int, float] = field(default_factory=dict)  # held-out mean at each Task.checkpoints

    @property
    def steps_per_s(self) -> float:
        return self.env_steps / self.process_s


def first_target(run_dir: Path, threshold: float | None) -> tuple[int | None, float | None]:
    """Env steps and training seconds at the first periodic evaluation in metrics.csv whose mean reached
    ``threshold``; (None, None) if none did (or there is no threshold)."""
    if threshold is None:
        return None, None
    rows = read_metrics(run_dir / "metrics.csv")
    hit = next((r for r in rows if r.get("eval_return_mean", -math.inf) >= threshold), None)
    return (None, None) if hit is None else (int(hit["env_steps"]), round(hit["wall_time_s"], 2))


def checkpoint_file(run_dir: Path, step: int) -> Path:
    """The step checkpoint a run saves at ``step`` env steps (named as in loop.Trainer._save_checkpoint)."""
    return run_dir / "checkpoints" / f"step_{step:012d}.safetensors"


def checkpoint_args(spec: Task) -> list[str]:
    """``duetrl train`` flags that keep a checkpoint at each of ``spec.checkpoints`` and train far enough."""
    if not spec.checkpoints:
        return []
    from duetrl.api import resolve

    every, last = math.gcd(*spec.checkpoints), max(spec.checkpoints)
    steps = resolve(spec.env_id, spec.algo)[0].run.steps
    longer = ["--steps", str(last)] if steps < last else []
    return [*longer, "--set", f"checkpoint_every={every}", f"keep_checkpoints={max(steps, last) // every + 2}"]


def _run(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {out.stderr.strip().splitlines()[-1:]}")
    return elapsed, out.stdout


DUETRL = [sys.executable, "-m", "duetrl.cli"]


def evaluate(run_dir: Path, episodes: int, checkpoint: str | Path = "latest") -> dict[str, Any]:
    """``duetrl eval``'s JSON for one checkpoint of a run, on the held-out episodes."""
    _, out = _run(
        [*DUETRL, "eval", str(run_dir), "--checkpoint", str(checkpoint), "--episodes", str(episodes)]
        + ["--deterministic", "--json"]
    )
    return json.loads(out)


def run_duetrl(task: str, seed: int, workdir: Path, spec: Task | None = None) -> Figure:
    """Train and score duetrl on ``spec`` (default ``TASKS[task]``), one fresh process each."""
    spec = spec or TASKS[task]
    run_dir = workdir / f"duetrl-{task}-{seed}"
    untuned = ["--preset", "none", "--steps", str(spec.sb3_steps), "--set", "eval_every=0"]
    process_s, out = _run(
        [*DUETRL, "train", spec.env_id, "--algo", spec.algo, "--seed", str(seed), "--quiet"]
        + ["--run-dir", str(run_dir), *(untuned if spec.defaults else checkpoint_args(spec))]
    )
    steps = json.loads(out.strip().splitlines()[-1])["env_steps"]
    result = evaluate(run_dir, spec.episodes)
    at = {
        step: (result if step == steps else evaluate(run_dir, spec.episodes, checkpoint_file(run_dir, step)))
        for step in spec.checkpoints
    }
    to_steps, to_s = first_target(run_dir, spec.threshold)
    return Figure(
        "duetrl",
        task,
        seed,
        steps,
        round(process_s, 2),
        result["mean_return"],
        result["std_return"],
        to_s,
        to_steps,
        {step: r["mean_return"] for step, r in at.items()},
    )


def run_sb3(task: str, seed: int, spec: Task | None = None) -> Figure | None:
    """Train and score SB3 on ``spec`` (default ``TASKS[task]``) in ``duetrl.bench_sb3``'s own process."""
    spec = spec or TASKS[task]
    if not spec.sb3_steps:
        return None
    until = [str(spec.threshold)] if spec.sb3_until else []
    process_s, out = _run(
        [
            sys.executable,
            "-m",
            "duetrl.bench_sb3",
            *(["--defaults"] if spec.defaults else []),
            spec.env_id,
            spec.algo,
            str(spec.sb3_steps),
            str(seed),
            str(spec.episodes),
            *until,
        ]
    )
    result = json.loads(out.strip().splitlines()[-1])
    reached = result["reached_at"]
    # The SB3 process also evaluates; subtract that so both sides time training only (plus startup).
    return Figure(
        "sb3",
        task,
        seed,
        result["steps"],
        round(process_s - result["eval_s"], 2),
        result["mean_return"],
        result["std_return"],
        result["train_s"] if reached else None,
        reached,
    )


FIGURE_HEADER = (
    f"{'task':<6} {'library':<7} {'seed':>4} {'env steps':>9} {'process s':>9} {'steps/s':>8} "
    f"{'mean return':>11} {'s to thr':>9}"
)


def figure_line(fig: Figure) -> str:
    """One run as a row under FIGURE_HEADER, with its checkpoint scores after it."""
    return (
        f"{fig.task:<6} {fig.library:<7} {fig.seed:>4} {fig.env_steps:>9} {fig.process_s:>9.1f} "
        f"{fig.steps_per_s:>8.0f} {fig.mean_return:>11.1f} "
        f"{'-' if fig.first_target_s is None else fig.first_target_s:>9}"
        + "".join(f"  @{step} {r:.1f}" for step, r in fig.checkpoint_returns.items())
    )


def summaries(figures: list[Figure]) -> dict[str, dict[str, dict[str, Any]]]:
    """{task: {library: {label: summary}}} over the seeds: the held-out score (a SeedSummary), the score at each
    checkpoint, and the env steps and training seconds to the threshold (TimeSummary), where they were measured
    (duetrl always; SB3 only when it trains until the threshold)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for task, library in dict.fromkeys((f.task, f.library) for f in figures):
        spec = TASKS[task]
        runs = [f for f in figures if f.task == task and f.library == library]
        seeds = [f.seed for f in runs]
        rows = {"score": summarize([f.mean_return for f in runs], spec.threshold, seeds)}
        for step in runs[0].checkpoint_returns:
            rows[f"at {step} steps"] = summarize([f.checkpoint_returns[step] for f in runs], spec.threshold, seeds)
        if spec.threshold is not None and (library == "duetrl" or spec.sb3_until):
            rows[f"env steps to {spec.threshold:g}"] = summarize_times([f.first_target_steps for f in runs])
            rows[f"seconds to {spec.threshold:g}"] = summarize_times([f.first_target_s for f in runs])
        out.setdefault(task, {})[library] = rows
    return out


def run_chapter_speed(listing: Path, workdir: Path) -> dict[str, float]:
    """Env steps/s of the chapter's listing and of ``--preset chapter``, on g=0, same budget."""
    _, out = _run([sys.executable, str(listing), "0", "30", "1000", "0"])
    listing_sps = json.loads(out.strip().splitlines()[-1])["steps_per_s"]
    run_dir = workdir / "duetrl-chapter"
    _run(
        [
            sys.executable,
            "-m",
            "duetrl.cli",
            "train",
            "Pendulum-v1",
            "--algo",
            "ac",
            "--preset",
            "chapter",
            "--env-kwargs",
            "g=0",
            "--steps",
            "6000",
            "--quiet",
            "--run-dir",
            str(run_dir),
            "--set",
            "eval_every=0",
            "eval_episodes=1",
        ]
    )
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    last = [r.split(",") for r in rows[1:] if r.split(",")[header.index("episode_return")]][-1]
    ours = float(last[header.index("env_steps")]) / float(last[header.index("wall_time_s")])
    return {
        "listing_steps_per_s": listing_sps,
        "duetrl_steps_per_s": round(ours),
        "ratio": round(ours / listing_sps, 2),
    }


def rollout_throughput(
    env_id: str = "Pendulum-v1", num_envs: int = 4096, steps: int = 200, backend: str = "torch"
) -> float:
    """Env steps/s with a 64x64 MLP policy sampling actions in the loop (no learning)."""
    import torch

    from duetrl.envs import make
    from duetrl.policy import Policy, PolicyConfig

    torch.set_num_threads(1)
    env = make(env_id, num_envs, backend=backend)
    config = PolicyConfig(hidden=(64, 64), activation="tanh", state_dependent_std=False)
    policy = Policy(env.single_observation_space, env.single_action_space, config)
    obs, _ = env.reset(seed=0)
    with torch.inference_mode():
        for i in range(steps + 10):
            if i == 10:  # warm-up done
                start = time.perf_counter()
            _, action, _ = policy.sample(obs)
            obs, *_ = env.step(action)
    env.close()
    return num_envs * steps / (time.perf_counter() - start)


def have_sb3() -> bool:
    try:
        import stable_baselines3  # noqa: F401
    except ImportError:
        return False
    return True


def bench(tasks: list[str], seeds: list[int], with_sb3: bool = True, listing: Path | None = None) -> dict[str, Any]:
    """Run the benchmark and return {figures, summaries, time_ratio, chapter, throughput}; prints a table as it
    goes, then the summary over the seeds of each task and library."""
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise UserError(f"unknown benchmark task(s) {', '.join(unknown)}; choose from {', '.join(TASKS)}")
    if with_sb3 and not have_sb3():
        with_sb3 = False
        print("stable-baselines3 not installed: duetrl figures only (pip install 'duetrl[bench]')", file=sys.stderr)
    workdir = Path(tempfile.mkdtemp(prefix="duetrl-bench-"))
    figures: list[Figure] = []
    print(FIGURE_HEADER)
    try:
        for task in tasks:
            for seed in seeds:
                runs = [run_duetrl(task, seed, workdir)]
                if with_sb3:
                    runs.append(run_sb3(task, seed))
                for fig in filter(None, runs):
                    figures.append(fig)
                    print(figure_line(fig), flush=True)
        chapter = run_chapter_speed(listing, workdir) if listing else None
        throughput = {
            "torch_4096": round(rollout_throughput("Pendulum-v1", 4096, 200, "torch")),
            "gymnasium_16": round(rollout_throughput("Pendulum-v1", 16, 300, "gymnasium")),
        }
        print(
            f"rollout throughput, Pendulum-v1, 64x64 policy in the loop: torch-native x4096 "
            f"{throughput['torch_4096']:,} env steps/s; Gymnasium sync x16 {throughput['gymnasium_16']:,} env steps/s"
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    summary = summaries(figures)
    for task, libraries in summary.items():
        for library, rows in libraries.items():
            for label, row in rows.items():
                print(f"{task:<6} {library:<7} {label}: {row.format()}")
    ratios = {}
    for task in tasks:
        ours = [f for f in figures if f.task == task and f.library == "duetrl"]
        theirs = [f for f in figures if f.task == task and f.library == "sb3"]
        if ours and theirs:
            ratios[task] = round(sum(f.process_s for f in ours) / sum(f.process_s for f in theirs), 3)
    if ratios:
        print(
            "time ratio duetrl / sb3 (whole process, lower is better): "
            + ", ".join(f"{t} {r}" for t, r in ratios.items())
        )
    if chapter:
        print(
            f"chapter preset: {chapter['duetrl_steps_per_s']} env steps/s vs the listing's "
            f"{chapter['listing_steps_per_s']} ({chapter['ratio']}x)"
        )
    return {
        "figures": [asdict(f) for f in figures],
        "summaries": {
            task: {library: {label: asdict(row) for label, row in rows.items()} for library, rows in libraries.items()}
            for task, libraries in summary.items()
        },
        "time_ratio": ratios,
        "chapter": chapter,
        "throughput": throughput,
    }


# The `defaults` family (issue 16, item 4): defaults that work on an env nobody tuned for. duetrl with no preset
# against SB3's library defaults, on Gymnasium envs with no duetrl preset (those cover Pendulum, CartPole,
# MountainCarContinuous, HalfCheetah and Hopper), over the same env steps on one env, scored on the same 20 held-out
# episodes; 3 seeds by default. Ant-v5 is left out: it needs about 1M steps to be worth scoring. All of it is 38
# pairs x 3 seeds x 2 libraries = 228 runs, roughly 15 hours on a 2-core CPU (about 6 for ppo and a2c alone).


@dataclass(frozen=True)
class DefaultsEnv:
    """One env of the family and its budgets in env steps, the same for both libraries."""

    env_id: str
    discrete: bool  # a discrete action space: SB3's sac and td3 cannot act in it, so they are left out
    on_policy: int  # ppo, a2c
    off_policy: int = 0  # sac, td3


DEFAULTS_ENVS = {
    e.env_id: e
    for e in (
        # env, discrete action space, budget for ppo and a2c, budget for sac and td3 (env steps)
        DefaultsEnv("Acrobot-v1", True, 100_000),
        DefaultsEnv("MountainCar-v0", True, 100_000),
        DefaultsEnv("LunarLander-v3", True, 200_000),
        DefaultsEnv("LunarLanderContinuous-v3", False, 200_000, 50_000),
        DefaultsEnv("BipedalWalker-v3", False, 200_000, 50_000),
        DefaultsEnv("InvertedPendulum-v5", False, 100_000, 30_000),
        DefaultsEnv("InvertedDoublePendulum-v5", False, 100_000, 50_000),
        DefaultsEnv("Reacher-v5", False, 100_000, 30_000),
        DefaultsEnv("Pusher-v5", False, 100_000, 30_000),
        DefaultsEnv("Swimmer-v5", False, 100_000, 50_000),
        DefaultsEnv("Walker2d-v5", False, 200_000, 50_000),
    )
}
DEFAULTS_ALGOS = ("ppo", "a2c", "sac", "td3")
# SB3 trains in whole rollouts (its defaults: PPO n_steps=2048, A2C n_steps=5), so the budgets are rounded up to
# them for both libraries to take the same env steps; duetrl's own defaults (PPO num_steps=2048, A2C
# update_every=5) divide them. PPO's measured table, before and after its defaults changed (issue 16), is in
# docs/benchmarks.md ("Untuned: PPO's defaults on envs nobody tuned for").
SB3_ROLLOUT = {"ppo": 2048, "a2c": 5}
DEFAULTS_SEEDS = (0, 1, 2)
DEFAULTS_EPISODES = 20


def defaults_tasks(
    envs: list[str] | None = None, algos: list[str] | None = None, scale: float = 1.0
) -> dict[str, Task]:
    """The family's (env, algo) pairs as Tasks named ALGO-ENV, each budget times ``scale`` (rounded up to whole
    SB3 rollouts). A pair SB3 cannot run (its sac and td3 on a discrete action space; duetrl's sac can) is left
    out, not an error."""
    envs, algos = envs or list(DEFAULTS_ENVS), algos or list(DEFAULTS_ALGOS)
    for kind, names, known in (("env", envs, DEFAULTS_ENVS), ("algorithm", algos, DEFAULTS_ALGOS)):
        unknown = [n for n in names if n not in known]
        if unknown:
            raise UserError(f"defaults family: unknown {kind}(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    if scale <= 0:
        raise UserError(f"--budget-scale {scale:g}: must be > 0")
    tasks = {}
    for env in (DEFAULTS_ENVS[e] for e in envs):
        for algo in algos:
            off_policy = algo in ("sac", "td3")
            if env.discrete and off_policy:
                continue
            rollout = SB3_ROLLOUT.get(algo, 1)
            steps = math.ceil((env.off_policy if off_policy else env.on_policy) * scale / rollout) * rollout
            tasks[f"{algo}-{env.env_id}"] = Task(
                env.env_id, algo, steps, DEFAULTS_EPISODES, threshold=None, defaults=True
            )
    return tasks


@functools.cache
def random_return(env_id: str, episodes: int = DEFAULTS_EPISODES) -> float:
    """Mean return of uniformly random actions on the held-out episodes, scored as SB3 is scored."""
    import gymnasium as gym

    from duetrl.bench_sb3 import episode_returns

    space = gym.make(env_id).action_space
    space.seed(0)
    return float(episode_returns(lambda obs: space.sample(), episodes, env_id).mean())


def verdict(duetrl_ci: tuple[float, float], sb3_ci: tuple[float, float]) -> str:
    """Which library is better: the one whose 95% interval lies wholly above the other's; overlapping = noise."""
    if duetrl_ci[0] > sb3_ci[1]:
        return "duetrl better"
    if sb3_ci[0] > duetrl_ci[1]:
        return "SB3 better"
    return "within noise"


def normalised(score: float, random: float, reference: float) -> float | None:
    """(score - random) / (reference - random): 0 = random actions, 1 = the reference. None when the reference is
    no better than random (neither library learned anything there), where the ratio means nothing."""
    return None if reference <= random else (score - random) / (reference - random)


def compare(tasks: dict[str, Task], figures: list[Figure], randoms: dict[str, float]) -> dict[str, Any]:
    """Per pair: each library's mean over seeds with a 95% bootstrap interval, the verdict, and the normalised
    scores against the better of the two means; across pairs, each library's median normalised score and the
    verdict counts. A pair a failed run left without one library's scores is left out."""
    pairs = {}
    for name, spec in tasks.items():
        scores = {
            lib: [f.mean_return for f in figures if (f.task, f.library) == (name, lib)] for lib in ("duetrl", "sb3")
        }
        if not all(scores.values()):
            continue
        means = {
            lib: {"mean": float(np.mean(x)), "ci": bootstrap_ci(x, np.mean), "scores": x} for lib, x in scores.items()
        }
        reference = max(m["mean"] for m in means.values())
        random = randoms[spec.env_id]
        pairs[name] = {
            "env_id": spec.env_id,
            "algo": spec.algo,
            "steps": spec.sb3_steps,
            "random": random,
            **means,
            "verdict": verdict(means["duetrl"]["ci"], means["sb3"]["ci"]),
            "normalised": {lib: normalised(m["mean"], random, reference) for lib, m in means.items()},
        }
    scored = [p["normalised"] for p in pairs.values() if p["normalised"]["duetrl"] is not None]
    return {
        "pairs": pairs,
        "median_normalised": {
            "pairs": len(scored),
            **{lib: float(np.median([n[lib] for n in scored])) if scored else None for lib in ("duetrl", "sb3")},
        },
        "verdicts": {
            v: sum(p["verdict"] == v for p in pairs.values()) for v in ("duetrl better", "SB3 better", "within noise")
        },
    }


def format_defaults(result: dict[str, Any]) -> str:
    """The family's table: one row per pair, then the median normalised scores and the verdict counts."""

    def ci(m: dict[str, Any]) -> str:
        return f"{m['mean']:.1f} [{m['ci'][0]:.1f}, {m['ci'][1]:.1f}]"

    def norm(n: float | None) -> str:
        return "-" if n is None else f"{n:.2f}"

    lines = [
        f"{'env':<25} {'algo':<4} {'steps':>7} {'random':>8}  {'duetrl mean [95% CI]':<28} "
        f"{'SB3 mean [95% CI]':<28} {'verdict':<13} normalised duetrl/SB3"
    ]
    for p in result["pairs"].values():
        lines.append(
            f"{p['env_id']:<25} {p['algo']:<4} {p['steps']:>7,} {p['random']:>8.1f}  {ci(p['duetrl']):<28} "
            f"{ci(p['sb3']):<28} {p['verdict']:<13} {norm(p['normalised']['duetrl'])}/{norm(p['normalised']['sb3'])}"
        )
    med = result["median_normalised"]
    lines.append(
        f"median normalised score over {med['pairs']} of {len(result['pairs'])} pairs (random 0, the better "
        f"library 1): duetrl {norm(med['duetrl'])}, SB3 {norm(med['sb3'])}"
    )
    lines.append("verdicts: " + ", ".join(f"{v} {n}" for v, n in result["verdicts"].items()))
    return "\n".join(lines)


def bench_defaults(
    envs: list[str] | None = None,
    algos: list[str] | None = None,
    seeds: list[int] | tuple[int, ...] = DEFAULTS_SEEDS,
    scale: float = 1.0,
) -> dict[str, Any]:
    """Run the `defaults` family (each run a fresh process, one at a time) and return {seeds, episodes,
    budget_scale, budgets, random, figures, failures, pairs, median_normalised, verdicts}; prints each run as it
    goes, then the table. A failed run is reported and costs its pair, not the family."""
    tasks = defaults_tasks(envs, algos, scale)
    if not have_sb3():
        raise UserError("the defaults family compares against stable-baselines3: pip install 'duetrl[bench]'")
    randoms = {env_id: random_return(env_id) for env_id in dict.fromkeys(t.env_id for t in tasks.values())}
    workdir = Path(tempfile.mkdtemp(prefix="duetrl-bench-defaults-"))
    figures: list[Figure] = []
    failures = []
    print(FIGURE_HEADER)
    try:
        for name, spec in tasks.items():
            for seed in seeds:
                for library in ("duetrl", "sb3"):
                    try:
                        fig = (
                            run_duetrl(name, seed, workdir, spec) if library == "duetrl" else run_sb3(name, seed, spec)
                        )
                    except RuntimeError as e:
                        failures.append({"task": name, "library": library, "seed": seed, "error": str(e)})
                        print(f"{name} {library} seed {seed}: {e}", file=sys.stderr, flush=True)
                        continue
                    figures.append(fig)
                    print(figure_line(fig), flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result = {
        "seeds": list(seeds),
        "episodes": DEFAULTS_EPISODES,
        "budget_scale": scale,
        "budgets": {name: spec.sb3_steps for name, spec in tasks.items()},
        "random": randoms,
        "figures": [asdict(f) for f in figures],
        "failures": failures,
        **compare(tasks, figures, randoms),
    }
    print(format_defaults(result))
    return result
