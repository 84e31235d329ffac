"""Populations against solo runs: wall time and final returns of M members trained in one process.

    python benchmarks/population.py --members 1 16 [--solo 16] [--ray] [--sb3 16] [--algo ppo] [--set key=value ...]

For each population size M: one ``duetrl train ENV --seeds 0..M-1`` process (the shipped preset unless --set
changes it), its wall time (the run's own ``wall_time_s``: training and evaluations, without the process's start)
and its CPU time (start-up included; the honest figure on a shared machine), per member, and how many members'
final evaluation (``--set eval_episodes=100`` by default: 100 held-out episodes) reaches ``--threshold``. With
``--solo K``, K ordinary runs of seeds 0..K-1 one after another, the same figures, so the two distributions of final
returns can be compared (median and IQM with 95% bootstrap CIs). Against separate runs (issue 21): ``--ray`` runs the
largest population's seeds as ``duetrl sweep --seeds ...`` (one Ray trial per seed, as many at once as there are
cores), and ``--sb3 K`` runs Stable-Baselines3 with rl-zoo3's tuned settings K times one after another
(``duetrl.bench_sb3``, PPO and SAC on Pendulum-v1, at duetrl's budget unless ``--sb3-steps``), each scored on the
same 100 held-out episodes. Every row also has ``process_s``: the whole process (or processes) timed from outside,
start-up included, the figure the rows compare side by side.
Each run is a fresh process; note the machine's load beside the figures (``uptime``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from duetrl.stats import summarize


def cpu_seconds() -> float:
    """CPU time (user + system) of this process's finished children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def process(*argv: str) -> tuple[str, float, float]:
    """``python ARGV`` in a fresh process: its stdout, wall seconds from outside and CPU seconds (start-up
    included; for a Ray sweep, its workers' too as far as they were waited for)."""
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    before, start = cpu_seconds(), time.perf_counter()
    out = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{out.stderr[-3000:]}")
    return out.stdout, wall, cpu_seconds() - before


def duetrl(*argv: str) -> dict:
    """``duetrl ARGV`` in a fresh process: its JSON summary (the last stdout line), with ``cpu_s``, the process's
    CPU time (start-up included: on a shared machine, what the run cost whatever the others took), and
    ``process_s``, its wall time from outside."""
    stdout, wall, cpu = process("-m", "duetrl.cli", *argv)
    return {**json.loads(stdout.strip().splitlines()[-1]), "cpu_s": cpu, "process_s": wall}


def final_returns(run_dirs: list[Path]) -> list[float]:
    """Each run's final evaluation mean (the last eval row of its metrics.csv)."""
    from duetrl.logs import read_metrics

    out = []
    for run_dir in run_dirs:
        evals = [r for r in read_metrics(run_dir / "metrics.csv") if "eval_return_mean" in r]
        out.append(evals[-1]["eval_return_mean"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="Pendulum-v1")
    parser.add_argument("--algo", default="ppo")
    parser.add_argument("--members", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--solo", type=int, default=0, help="also this many ordinary runs, one after another")
    parser.add_argument("--threshold", type=float, default=-200.0)
    parser.add_argument("--set", dest="sets", nargs="+", default=["eval_episodes=100"])
    parser.add_argument("--ray", action="store_true", help="also the largest population's seeds as a Ray sweep")
    parser.add_argument("--sb3", type=int, default=0, help="also this many SB3 runs (rl-zoo3 tuned), one after another")
    parser.add_argument("--sb3-steps", type=int, help="SB3's budget (default: duetrl's; rl-zoo3's PPO takes 100000)")
    parser.add_argument("--json", help="write the rows here too")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="duetrl-population-") as tmp:
        for members in args.members:
            run_dir = Path(tmp) / f"pop{members}"
            seeds = [str(s) for s in range(members)]
            result = duetrl(
                "train", args.env, "--algo", args.algo, "--seeds", *seeds, "--run-dir", str(run_dir), "--quiet",
                "--set", *args.sets,
            )  # fmt: skip
            finals = final_returns([run_dir / f"seed_{s}" for s in seeds])
            rows.append(
                row(
                    f"population of {members}",
                    members,
                    result["wall_time_s"],
                    result["cpu_s"],
                    finals,
                    args.threshold,
                    result["process_s"],
                )  # fmt: skip
            )
            print(format_row(rows[-1]), flush=True)
        if args.solo:
            total, cpu, process_s, dirs = 0.0, 0.0, 0.0, []
            for seed in range(args.solo):
                run_dir = Path(tmp) / f"solo{seed}"
                result = duetrl(
                    "train", args.env, "--algo", args.algo, "--seed", str(seed), "--run-dir", str(run_dir), "--quiet",
                    "--set", *args.sets,
                )  # fmt: skip
                total += result["wall_time_s"]
                cpu += result["cpu_s"]
                process_s += result["process_s"]
                dirs.append(run_dir)
            finals = final_returns(dirs)
            name = f"{args.solo} solo runs, one after another"
            rows.append(row(name, args.solo, total, cpu, finals, args.threshold, process_s))
            print(format_row(rows[-1]), flush=True)
        largest = max(args.members)
        if args.ray:
            sweep_dir = Path(tmp) / "ray"
            seeds = [str(s) for s in range(largest)]
            _, wall, cpu = process(
                "-m", "duetrl.cli", "sweep", args.env, "--algo", args.algo, "--seeds", *seeds,
                "--run-dir", str(sweep_dir), "--quiet", "--set", *args.sets,
            )  # fmt: skip
            finals = final_returns([sweep_dir / "trials" / "base" / f"seed_{s}" for s in seeds])
            rows.append(row(f"duetrl sweep on Ray, {largest} seeds", largest, wall, cpu, finals, args.threshold, wall))
            print(format_row(rows[-1]), flush=True)
        if args.sb3:
            steps = str(args.sb3_steps or preset_steps(args.env, args.algo, args.sets))
            total, cpu, finals = 0.0, 0.0, []
            for seed in range(args.sb3):
                stdout, wall, used = process("-m", "duetrl.bench_sb3", args.env, args.algo, steps, str(seed), "100")
                total += wall
                cpu += used
                finals.append(json.loads(stdout.strip().splitlines()[-1])["mean_return"])
            name = f"SB3 (rl-zoo3 tuned, {steps} steps), {args.sb3} runs one after another"
            rows.append(row(name, args.sb3, total, cpu, finals, args.threshold, total))
            print(format_row(rows[-1]), flush=True)
    print(f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores, {time.strftime('%H:%M')}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


def preset_steps(env: str, algo: str, sets: list[str]) -> int:
    """The env steps a run of ``env`` and ``algo`` takes: its preset's, or a ``steps=`` in ``sets``."""
    from duetrl.api import resolve

    for item in sets:
        if item.startswith("steps="):
            return int(float(item.split("=", 1)[1]))
    return int(resolve(env, algo=algo)[0].run.steps)


def row(
    name: str, members: int, seconds: float, cpu: float, finals: list[float], threshold: float, process_s: float
) -> dict:
    stats = summarize(finals, threshold)
    return {
        "name": name,
        "members": members,
        "process_s": round(process_s, 2),
        "wall_time_s": round(seconds, 2),
        "seconds_per_member": round(seconds / members, 3),
        "cpu_s": round(cpu, 2),
        "cpu_s_per_member": round(cpu / members, 3),
        "reached": stats.reached,
        "summary": stats.format(),
        "finals": [round(f, 1) for f in finals],
    }


def format_row(r: dict) -> str:
    wall = f"{r['process_s']:.1f} s process, {r['wall_time_s']:.1f} s wall ({r['seconds_per_member']:.2f} s per member)"
    cpu = f"{r['cpu_s']:.1f} s CPU ({r['cpu_s_per_member']:.2f} s per member)"
    return f"{r['name']}: {wall}, {cpu}; {r['summary']}"


if __name__ == "__main__":
    main()
