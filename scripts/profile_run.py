"""Where the wall time of a shipped Pendulum preset goes: env stepping, inference, update, overhead.

Usage: .venv/bin/python scripts/profile_run.py [ALGO]   (default ppo; one process, the loop's calls timed)"""

import sys
import tempfile
import time

t_start = time.perf_counter()
import duetrl  # noqa: E402
from duetrl import checkpoint, loop  # noqa: E402
from duetrl.algos import ALGOS  # noqa: E402
from duetrl.envs.native import TorchBatchEnv  # noqa: E402

totals = {}


def timed(owner, name, key):
    fn = getattr(owner, name)

    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            totals[key] = totals.get(key, 0.0) + time.perf_counter() - t

    setattr(owner, name, wrapper)


algo = sys.argv[1] if len(sys.argv) > 1 else "ppo"
agent_cls = ALGOS[algo].agent_cls
timed(TorchBatchEnv, "step", "env step")
timed(agent_cls, "explore", "policy inference (or random actions)")
timed(agent_cls, "observe", "rollout / replay storage")
timed(agent_cls, "update", "update")
timed(loop.Trainer, "_evaluate", "evaluation")
timed(checkpoint, "save", "checkpoints")
t_import = time.perf_counter() - t_start
t0 = time.perf_counter()
result = duetrl.train("Pendulum-v1", algo, run_dir=tempfile.mkdtemp(prefix="duetrl-profile-"), quiet=True)
total = time.perf_counter() - t_start
loop_total = time.perf_counter() - t0
print(f"process {total:.2f} s; imports {t_import:.2f} s ({t_import / total:.0%})")
rest = loop_total - sum(totals.values())
for k, v in list(totals.items()) + [("other (setup, loop, logging)", rest)]:
    print(f"  {k:<30} {v:6.2f} s  {v / total:5.1%}")
print("final eval", round(result.final_eval.mean, 1))
