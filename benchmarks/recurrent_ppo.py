"""PendulumNoVel-v1: duetrl's recurrent PPO preset against sb3-contrib's RecurrentPPO with rl-baselines3-zoo's tuned
``ppo_lstm`` settings, each a whole fresh process, scored on the same 100 held-out episodes (seeds 1,000,000 + k,
deterministic actions, the LSTM state carried and reset per episode).

Usage: python benchmarks/recurrent_ppo.py sb3 SEED        one sb3-contrib run: prints a JSON line
       python benchmarks/recurrent_ppo.py compare SEEDS   duetrl's preset then sb3-contrib, for each seed (0,1,2)
       python benchmarks/recurrent_ppo.py update [RNN]    ms per PPO update of the preset's rollout (rnn=gru by
                                                          default; none, lstm, gru), one thread: a JSON line
Needs sb3-contrib (pip install 'duetrl[bench]').
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from duetrl.bench_sb3 import ZOO
from duetrl.evaluate import EVAL_SEED_BASE

EPISODES = 100
STEPS = 100_000

# rl-baselines3-zoo hyperparams/ppo_lstm.yml's PendulumNoVel-v1 entry has the values of its ppo.yml Pendulum-v1 entry
# (no VecNormalize; SB3's MlpLstmPolicy defaults otherwise: one 256-unit LSTM each for actor and critic, 64x64 tanh
# heads), so the settings are read from there rather than copied.
ZOO_PPO_LSTM = ZOO["Pendulum-v1"]["ppo"]["kwargs"]
ZOO_N_ENVS = ZOO["Pendulum-v1"]["ppo"]["n_envs"]


def run_sb3(seed: int) -> dict:
    import gymnasium as gym
    import numpy as np
    import torch
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.env_util import make_vec_env

    import duetrl  # noqa: F401 - registers PendulumNoVel-v1 (the zoo's own registration, same masking)

    torch.set_num_threads(1)
    start = time.perf_counter()
    env = make_vec_env("PendulumNoVel-v1", n_envs=ZOO_N_ENVS, seed=seed)
    model = RecurrentPPO("MlpLstmPolicy", env, seed=seed, verbose=0, device="cpu", **ZOO_PPO_LSTM)
    model.learn(total_timesteps=STEPS)
    train_s = time.perf_counter() - start
    returns = []
    eval_env = gym.make("PendulumNoVel-v1")
    for k in range(EPISODES):
        obs, _ = eval_env.reset(seed=EVAL_SEED_BASE + k)
        state, start_flag, total, done = None, np.ones((1,), dtype=bool), 0.0, False
        while not done:
            action, state = model.predict(obs, state=state, episode_start=start_flag, deterministic=True)
            obs, reward, terminated, truncated, _ = eval_env.step(action)
            start_flag = np.zeros((1,), dtype=bool)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    returns = np.array(returns)
    return {
        "library": "sb3-contrib RecurrentPPO (zoo ppo_lstm)",
        "seed": seed,
        "steps": int(model.num_timesteps),
        "train_s": round(train_s, 1),
        "mean_return": float(returns.mean()),
        "median_return": float(np.median(returns)),
        "min_return": float(returns.min()),
    }


def process(argv: list[str], env: dict | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=True)
    return time.perf_counter() - start, done.stdout.strip().splitlines()[-1]


def compare(seeds: list[int]) -> None:
    python = sys.executable
    for seed in seeds:
        with tempfile.TemporaryDirectory() as tmp:
            argv = [python, "-m", "duetrl.cli", "train", "PendulumNoVel-v1", "--algo", "ppo", "--seed", str(seed)]
            argv += ["--quiet", "--run-dir", f"{tmp}/run", "--set", f"eval_episodes={EPISODES}"]
            wall, line = process(argv, {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
            ours = json.loads(line)
        print(json.dumps({"library": "duetrl", "seed": seed, "process_s": round(wall, 1), **_score(ours)}), flush=True)
        wall, line = process([python, __file__, "sb3", str(seed)])
        print(json.dumps({**json.loads(line), "process_s": round(wall, 1)}), flush=True)


def update_ms(rnn: str = "gru", repeats: int = 20) -> dict:
    """Per ``update()`` of the PendulumNoVel-v1 preset's agent on one rollout (its num_envs x num_steps): the
    median over ``repeats`` updates of the same rollout, in wall ms and in CPU ms of this one-thread process (less
    moved by other processes on a shared machine); and the same for collecting the rollout."""
    import statistics

    import torch

    import duetrl
    from duetrl.algos import ALGOS
    from duetrl.envs import make

    torch.set_num_threads(1)
    cfg, _ = duetrl.resolve("PendulumNoVel-v1", "ppo", overrides={"rnn": rnn})
    env = make("PendulumNoVel-v1", cfg.run.num_envs, backend="torch")
    torch.manual_seed(0)
    agent = ALGOS["ppo"].agent_cls(cfg.algo, env.single_observation_space, env.single_action_space, env.num_envs, "cpu")
    obs, _ = env.reset(seed=0)
    collect = []
    for t in range(cfg.algo.num_steps):
        start = (time.perf_counter(), time.process_time())
        decision = agent.explore(obs, t)
        obs, reward, terminated, truncated, info = env.step(decision.action)
        agent.observe(decision, reward, terminated, truncated, info["final_obs"])
        collect.append((time.perf_counter() - start[0], time.process_time() - start[1]))
    steps = list(agent.rollout.steps)
    update = []
    for _ in range(repeats):
        agent.rollout.steps = list(steps)
        start = (time.perf_counter(), time.process_time())
        agent.update()
        update.append((time.perf_counter() - start[0], time.process_time() - start[1]))

    def ms(times: list[tuple[float, float]], scale: int) -> tuple[float, float]:
        return tuple(round(statistics.median(t[i] for t in times) * scale * 1e3, 1) for i in (0, 1))

    (update_wall, update_cpu), (collect_wall, collect_cpu) = ms(update, 1), ms(collect, len(collect))
    return {"rnn": rnn, "update_ms": update_wall, "update_cpu_ms": update_cpu, "collect_ms": collect_wall,
            "collect_cpu_ms": collect_cpu}  # fmt: skip


def _score(summary: dict) -> dict:
    keys = ("env_steps", "mean_return", "median_return", "min_return")
    return {k: summary[k] for k in keys}


if __name__ == "__main__":
    what = sys.argv[1]
    if what == "sb3":
        print(json.dumps(run_sb3(int(sys.argv[2]))))
    elif what == "update":
        print(json.dumps(update_ms(*sys.argv[2:3])))
    elif what == "compare":
        compare([int(s) for s in sys.argv[2].split(",")])
    else:
        raise SystemExit(__doc__)
