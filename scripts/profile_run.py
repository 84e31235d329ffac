"""Where the wall time of a run goes: env stepping, inference, storage, update, evaluation, overhead.

Usage: .venv/bin/python scripts/profile_run.py [ALGO] [ENV_ID] [--steps N] [--set KEY=VALUE ...]
(default: ppo on Pendulum-v1 with its preset; one process, the loop's calls timed, both env backends). On a busy
machine set OMP_WAIT_POLICY=PASSIVE; read the shares, not the seconds, and compare runs made one after the other."""

import argparse
import tempfile
import time

import yaml

t_start = time.perf_counter()
import duetrl  # noqa: E402
from duetrl import checkpoint, loop  # noqa: E402
from duetrl.envs.gymnasium_vec import GymnasiumBatchEnv  # noqa: E402
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


parser = argparse.ArgumentParser()
parser.add_argument("algo", nargs="?", default="ppo")
parser.add_argument("env_id", nargs="?", default="Pendulum-v1")
parser.add_argument("--steps", type=int, default=None, help="env steps (default: the preset's)")
parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="settings, as duetrl train --set")
args = parser.parse_args()
settings = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
if args.steps is not None:
    settings["steps"] = args.steps
build_agent = loop.build_agent


def timed_agent(*a, **k):
    """The agent the run builds (whichever class the action space picks), its loop calls timed."""
    agent = build_agent(*a, **k)
    timed(agent, "explore", "policy inference (or random actions)")
    timed(agent, "observe", "rollout / replay storage")
    timed(agent, "update", "update")
    return agent


loop.build_agent = timed_agent
timed(TorchBatchEnv, "step", "env step")
timed(GymnasiumBatchEnv, "step", "env step")
timed(loop.Trainer, "_evaluate", "evaluation")
timed(checkpoint, "save", "checkpoints")
t_import = time.perf_counter() - t_start
t0 = time.perf_counter()
run_dir = tempfile.mkdtemp(prefix="duetrl-profile-")
result = duetrl.train(args.env_id, args.algo, run_dir=run_dir, quiet=True, **settings)
total = time.perf_counter() - t_start
loop_total = time.perf_counter() - t0
print(f"{args.algo} on {args.env_id}, {result.env_steps} env steps: {result.env_steps / loop_total:.0f} steps/s")
print(f"process {total:.2f} s; imports {t_import:.2f} s ({t_import / total:.0%})")
rest = loop_total - sum(totals.values())
for k, v in list(totals.items()) + [("other (setup, loop, logging)", rest)]:
    print(f"  {k:<36} {v:7.2f} s  {v / total:5.1%}")
print("final eval", round(result.final_eval.mean, 1))
