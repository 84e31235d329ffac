"""PendulumNoVel-v1: duetrl's recurrent SAC preset (``--algo sac``, picked automatically), one fresh process per
seed, one at a time, scored on 100 held-out deterministic episodes (seeds 1,000,000 + k, the GRU state carried and
reset per episode) by the run's final evaluation. No public library ships recurrent SAC, so there is no side to
compare with: the table is solved seeds (>= -200), median, worst and wall time.

Usage: python benchmarks/recurrent_sac.py SEEDS [KEY=VALUE ...]   e.g. 0 1 2 utd=1 (settings over the preset)
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time

EPISODES = 100
GOAL = -200.0


def run(seed: int, settings: list[str]) -> dict:
    """One training run in a fresh process: its final evaluation's mean return and wall time."""
    with tempfile.TemporaryDirectory() as tmp:
        argv = [sys.executable, "-m", "duetrl.cli", "train", "PendulumNoVel-v1", "--algo", "sac", "--seed", str(seed)]
        argv += ["--quiet", "--run-dir", f"{tmp}/run", "--set", f"eval_episodes={EPISODES}", *settings]
        start = time.perf_counter()
        out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
        wall = time.perf_counter() - start
    final = json.loads(out.strip().splitlines()[-1])
    return {"seed": seed, "mean": final["mean_return"], "wall_s": round(wall, 1)}


def main(argv: list[str]) -> None:
    seeds = [int(a) for a in argv if "=" not in a]
    settings = [a for a in argv if "=" in a]
    rows = []
    for seed in seeds:
        rows.append(run(seed, settings))
        print(json.dumps(rows[-1]), flush=True)
    means = [r["mean"] for r in rows]
    solved = sum(m >= GOAL for m in means)
    print(
        f"| settings | solved (>= {GOAL:.0f}) | median | worst | wall per run (median) |\n|---|---|---|---|---|\n"
        f"| preset {' '.join(settings)} | {solved}/{len(rows)} | {statistics.median(means):.1f} | {min(means):.1f} "
        f"| {statistics.median(r['wall_s'] for r in rows):.0f} s |"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
