"""Wall and CPU time against population size, and where this machine saturates (the issue 21 scaling plot).

    python benchmarks/population_scaling.py [--algos ppo sac] [--members 1 2 4 ... 256] --json S.json --plot S.png
    python benchmarks/population_scaling.py --from-json S.json --plot docs/figures/population_scaling.png

For each algorithm (the shipped Pendulum-v1 preset) and population size M, in this process: one warm-up iteration,
then timed ones, of the loop as ``duetrl train --seeds`` runs it (see ``population_profile.py``): for ppo a rollout
of 128 envs x 16 steps and its update (10 epochs of 2 minibatches), 1/29 of the preset's 60k steps; for sac
``--steps`` env steps and their 4 gradient steps each (the preset's utd), with a full buffer. So the budgets are
short slices of a run, the same slice for every M, not whole trainings (a 256-member PPO run would take hours here).
M = 0 is the ordinary solo agent, the reference: M separate runs one after another cost M times it.

The saturation point is the smallest M whose CPU time per member is within 15% of the lowest measured: beyond it,
adding members adds their full cost (the cores are busy with arithmetic, not waiting on Python or launches).
CPU time is the process's (every thread): on a machine shared with other jobs it is the honest figure; wall time is
also drawn, with the load average noted.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from population_profile import Clock, build, iteration  # noqa: E402


def measure(algo: str, members: int, iterations: int, steps: int) -> dict:
    """Wall and CPU seconds of ``iterations`` timed iterations (after one warm-up) of ``members`` members."""
    agent, envs, configs, _ = build(members, {}, algo)
    solo = members == 0
    obs = torch.stack([env.reset(seed=c.run.seed)[0] for env, c in zip(envs, configs, strict=True)])
    clock = Clock()
    if not hasattr(agent.cfg, "num_steps"):  # off-policy: a full batch in the buffer first
        obs = iteration(agent, envs, obs, solo, clock, steps=agent.cfg.batch_size, learn=False)
    obs = iteration(agent, envs, obs, solo, clock, steps=steps)
    clock.on = True
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(iterations):
        obs = iteration(agent, envs, obs, solo, clock, steps=steps)
    wall, cpu = (time.perf_counter() - wall) / iterations, (time.process_time() - cpu) / iterations
    load = os.getloadavg()[0]
    del agent, envs
    gc.collect()
    return {"algo": algo, "members": members, "wall_s": wall, "cpu_s": cpu, "load": load}


def saturation(rows: list[dict]) -> int | None:
    """The smallest population whose CPU time per member is within 15% of the lowest measured."""
    pops = [r for r in rows if r["members"] > 0]
    if not pops:
        return None
    best = min(r["cpu_s"] / r["members"] for r in pops)
    return min(r["members"] for r in pops if r["cpu_s"] / r["members"] <= 1.15 * best)


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    algos = sorted({r["algo"] for r in rows})
    fig, axes = plt.subplots(1, len(algos), figsize=(5.5 * len(algos), 4.2), squeeze=False)
    for ax, algo in zip(axes[0], algos, strict=True):
        mine = sorted((r for r in rows if r["algo"] == algo), key=lambda r: r["members"])
        solo = next((r for r in mine if r["members"] == 0), None)
        pops = [r for r in mine if r["members"] > 0]
        sizes = [r["members"] for r in pops]
        ax.plot(sizes, [r["cpu_s"] for r in pops], "o-", label="population: CPU s")
        ax.plot(sizes, [r["wall_s"] for r in pops], "s--", alpha=0.6, label="population: wall s")
        if solo is not None:
            ax.plot(sizes, [solo["cpu_s"] * m for m in sizes], "k:", label="M solo runs: CPU s")
        sat = saturation(mine)
        if sat is not None:
            ax.axvline(sat, color="grey", lw=0.8)
            ax.text(sat, 0.5, f" saturates at M={sat}", rotation=90, va="center", ha="right",
                    transform=ax.get_xaxis_transform())  # fmt: skip
        loads = [r["load"] for r in mine]
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="members M",
            ylabel="seconds per iteration",
            title=f"{algo}, Pendulum-v1 preset (load {min(loads):.1f}-{max(loads):.1f}, {os.cpu_count()} cores)",
        )
        ax.set_xscale("log", base=2)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", nargs="+", default=["ppo", "sac"])
    parser.add_argument("--members", nargs="+", type=int, default=[0, 1, 2, 4, 8, 16, 32, 64, 128, 256])
    parser.add_argument("--iterations", type=int, default=2, help="timed iterations (1 from 64 members on)")
    parser.add_argument("--steps", type=int, default=25, help="sac: env steps per iteration")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--from-json", type=Path, help="plot these rows instead of measuring")
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    if args.from_json:
        rows = json.loads(args.from_json.read_text())
    else:
        torch.set_num_threads(args.threads)
        rows = []
        for algo in args.algos:
            for members in args.members:
                iterations = args.iterations if members < 64 else 1
                rows.append(measure(algo, members, iterations, args.steps))
                r = rows[-1]
                per = max(members, 1)
                print(
                    f"{algo} M={members:>3}: {r['wall_s']:7.2f} s wall, {r['cpu_s']:7.2f} s CPU per iteration "
                    f"({r['cpu_s'] / per:.3f} s CPU per member), load {r['load']:.2f}",
                    flush=True,
                )
                if args.json:
                    args.json.write_text(json.dumps(rows, indent=2))
    for algo in sorted({r["algo"] for r in rows}):
        print(f"{algo}: saturates at M={saturation([r for r in rows if r['algo'] == algo])}")
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
