"""The project's standard benchmark: duetrl and Stable-Baselines3 side by side, in one run, on this machine.

Every figure is a whole process (``duetrl train ...`` or an SB3 script), timed from outside, run one at a time
so that they do not measure each other; quality is the mean return on the same held-out episodes (seeds
1,000,000 + k, deterministic actions; 100 on Pendulum, 10 on MuJoCo) for both libraries. Ratios, not absolute
seconds, are the result: this machine is noisy.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Task:
    """One benchmark line: duetrl's shipped preset for (env, algo) against rl-zoo3's tuned SB3 settings."""

    env_id: str
    algo: str
    sb3_steps: int  # 0 = SB3 not run
    episodes: int = 100  # held-out evaluation episodes, for both libraries


TASKS: dict[str, Task] = {
    "ppo": Task("Pendulum-v1", "ppo", 100_000),  # SB3: rl-zoo3's tuned 100k steps
    "a2c": Task("Pendulum-v1", "a2c", 0),  # SB3's tuned A2C needs 1M steps and still fails (about -695): not rerun
    "sac": Task("Pendulum-v1", "sac", 20_000),  # SB3: trained until its first held-out check at >= -200 (see UNTIL)
    "td3": Task("Pendulum-v1", "td3", 20_000),
    # MuJoCo (pip install 'duetrl[mujoco]'): long runs, 25-60 min each for SB3 on this machine. 100 episodes, not
    # 10: a PPO gait that runs at ~5,600 can still get stuck in one episode in twenty and score ~0 there.
    "ppo-halfcheetah": Task("HalfCheetah-v5", "ppo", 1_000_000),
    "sac-halfcheetah": Task("HalfCheetah-v5", "sac", 300_000),
}


# Tasks where SB3 is timed to its first success rather than over a fixed budget.
UNTIL = {"sac": -200.0}


@dataclass
class Figure:
    library: str
    task: str
    seed: int
    env_steps: int
    process_s: float
    mean_return: float
    std_return: float
    first_target_s: float | None = None  # training seconds to the first periodic eval >= TARGET (duetrl)

    @property
    def steps_per_s(self) -> float:
        return self.env_steps / self.process_s


TARGET = -200.0


def first_target_seconds(run_dir: Path, target: float = TARGET) -> float | None:
    """Training wall time at the first periodic evaluation whose mean reached ``target``, if any."""
    from duetrl.sweeps import read_metrics

    hit = next(
        (r for r in read_metrics(run_dir / "metrics.csv") if r.get("eval_return_mean", float("-inf")) >= target), None
    )
    return None if hit is None else round(hit["wall_time_s"], 2)


def _run(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {out.stderr.strip().splitlines()[-1:]}")
    return elapsed, out.stdout


def run_duetrl(task: str, seed: int, workdir: Path) -> Figure:
    spec = TASKS[task]
    run_dir = workdir / f"duetrl-{task}-{seed}"
    duetrl = [sys.executable, "-m", "duetrl.cli"]
    process_s, out = _run(
        [
            *duetrl,
            "train",
            spec.env_id,
            "--algo",
            spec.algo,
            "--seed",
            str(seed),
            "--quiet",
            "--run-dir",
            str(run_dir),
        ]
    )
    steps = json.loads(out.strip().splitlines()[-1])["env_steps"]
    _, out = _run([*duetrl, "eval", str(run_dir), "--episodes", str(spec.episodes), "--deterministic", "--json"])
    result = json.loads(out)
    return Figure(
        "duetrl",
        task,
        seed,
        steps,
        round(process_s, 2),
        result["mean_return"],
        result["std_return"],
        first_target_seconds(run_dir) if spec.env_id == "Pendulum-v1" else None,
    )


def run_sb3(task: str, seed: int) -> Figure | None:
    spec = TASKS[task]
    if not spec.sb3_steps:
        return None
    until = [str(UNTIL[task])] if task in UNTIL else []
    process_s, out = _run(
        [
            sys.executable,
            "-m",
            "duetrl.bench_sb3",
            spec.env_id,
            spec.algo,
            str(spec.sb3_steps),
            str(seed),
            str(spec.episodes),
            *until,
        ]
    )
    result = json.loads(out.strip().splitlines()[-1])
    steps = result["steps"]
    # The SB3 process also evaluates; subtract that so both sides time training only (plus startup).
    return Figure(
        "sb3", task, seed, steps, round(process_s - result["eval_s"], 2), result["mean_return"], result["std_return"]
    )


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
    from duetrl.policy import Policy

    torch.set_num_threads(1)
    env = make(env_id, num_envs, backend=backend)
    policy = Policy(env.single_observation_space, env.single_action_space, [64, 64], "tanh", False)
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
    """Run the benchmark and return {figures, ratios, chapter}; prints a table as it goes."""
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        from duetrl.errors import UserError

        raise UserError(f"unknown benchmark task(s) {', '.join(unknown)}; choose from {', '.join(TASKS)}")
    if with_sb3 and not have_sb3():
        with_sb3 = False
        print("stable-baselines3 not installed: duetrl figures only (pip install 'duetrl[bench]')", file=sys.stderr)
    workdir = Path(tempfile.mkdtemp(prefix="duetrl-bench-"))
    figures: list[Figure] = []
    print(
        f"{'task':<6} {'library':<7} {'seed':>4} {'env steps':>9} {'process s':>9} {'steps/s':>8} "
        f"{'mean return':>11} {'to -200 s':>9}"
    )
    try:
        for task in tasks:
            for seed in seeds:
                runs = [run_duetrl(task, seed, workdir)]
                if with_sb3:
                    runs.append(run_sb3(task, seed))
                for fig in filter(None, runs):
                    figures.append(fig)
                    print(
                        f"{fig.task:<6} {fig.library:<7} {fig.seed:>4} {fig.env_steps:>9} {fig.process_s:>9.1f} "
                        f"{fig.steps_per_s:>8.0f} {fig.mean_return:>11.1f} "
                        f"{'-' if fig.first_target_s is None else fig.first_target_s:>9}",
                        flush=True,
                    )
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
    return {"figures": [asdict(f) for f in figures], "time_ratio": ratios, "chapter": chapter, "throughput": throughput}
