"""Evaluation's env cost: Gymnasium's Pendulum-v1 in a ``SyncVectorEnv`` against its numpy twin
(``duetrl.envs.classic.PendulumVector``), stepping the episodes a population's evaluation asks for.

    python benchmarks/eval_envs.py [--episodes 1600] [--repeats 3]

Both step the same seeded episodes with the same actions (a fixed torque pattern) to their 200-step limit,
alternately, ``--repeats`` times each; the table gives each one's best wall time and the ratio, measured in the same
run (this machine is noisy: only the ratio counts). 1,600 episodes = 16 members x 100 held-out episodes.
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np

from duetrl.envs.classic import vector_twin
from duetrl.envs.make import env_factory
from duetrl.evaluate import EVAL_SEED_BASE


def run(vec: gym.vector.VectorEnv, n: int) -> tuple[float, float]:
    """Seconds to play every copy's first episode, and the summed return (to check both agree)."""
    start = time.perf_counter()
    obs, _ = vec.reset(seed=[EVAL_SEED_BASE + i for i in range(n)])
    total = 0.0
    for _ in range(200):
        action = np.clip(-2.0 * obs[:, 1:2] - 0.5 * obs[:, 2:3], -2.0, 2.0).astype(np.float32)
        obs, reward, *_ = vec.step(action)
        total += float(reward.sum())
    return time.perf_counter() - start, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=1600)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    n = args.episodes
    sync = gym.vector.SyncVectorEnv([env_factory("Pendulum-v1")] * n, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    twin = vector_twin("Pendulum-v1", n, {})
    times: dict[str, list[float]] = {"SyncVectorEnv": [], "numpy twin": []}
    totals = set()
    for _ in range(args.repeats):
        for name, vec in (("SyncVectorEnv", sync), ("numpy twin", twin)):
            seconds, total = run(vec, n)
            times[name].append(seconds)
            totals.add(total)
    assert len(totals) == 1, f"the two disagree: {totals}"
    best = {name: min(t) for name, t in times.items()}
    print(f"{n} episodes x 200 steps, best of {args.repeats}")
    for name, seconds in best.items():
        print(f"  {name:14s} {seconds:7.3f} s  {n * 200 / seconds / 1e6:6.2f} M env steps/s")
    print(f"  twin / Sync: {best['numpy twin'] / best['SyncVectorEnv']:.3f} of the wall time")


if __name__ == "__main__":
    main()
