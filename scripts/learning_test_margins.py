"""Measure the distribution behind each learning test: every case of tests/test_learning.py over many seeds and
both thread counts, so that each threshold can be set with a stated margin below the worst seed.

    .venv/bin/python scripts/learning_test_margins.py [--seeds 0 1 ... 9] [--cases ppo-pendulum sac-pendulum ...]

With two threads on a busy machine, set OMP_WAIT_POLICY=PASSIVE: spinning OpenMP threads that wait for a descheduled
partner slow a run by orders of magnitude (the wait policy changes scheduling, not the arithmetic).

Prints a line per run, then one line per case: the scores (mean return over the test's evaluation episodes) for
each thread count, the worst, and the threshold's margin below it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_learning import CASES  # noqa: E402

import duetrl  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", nargs="+", type=int, default=list(range(10)))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--cases", nargs="+", default=list(CASES))
    args = parser.parse_args()
    for name in args.cases:
        case = CASES[name]
        scores = {}
        for threads in args.threads:
            for seed in args.seeds:
                with tempfile.TemporaryDirectory() as tmp:
                    result = duetrl.train(**case.settings(seed, threads), run_dir=Path(tmp) / "run", quiet=True)
                scores[(threads, seed)] = result.final_eval.mean
                print(f"{name} threads {threads} seed {seed}: {result.final_eval.mean:.1f}", flush=True)
        worst = min(scores.values())
        lines = "; ".join(
            f"threads {t}: " + " ".join(f"{scores[(t, s)]:.0f}" for s in args.seeds) for t in args.threads
        )
        print(
            f"{name}: {lines} | worst {worst:.0f}, threshold {case.threshold:.0f}, margin {worst - case.threshold:.0f}"
            f" | {sum(v >= case.threshold for v in scores.values())}/{len(scores)} pass",
            flush=True,
        )


if __name__ == "__main__":
    main()
