"""Benchmarks of issue 19 (observations and actions of any space), duetrl and Stable-Baselines3 side by side.

    python scripts/bench_spaces.py memory                                  # bytes per stored 84x84x4 transition
    python scripts/bench_spaces.py minatar --steps 200000 --seeds 0 1 2    # MinAtar Breakout, PPO
    python scripts/bench_spaces.py goal --steps 5000 --seeds 0 1 2         # Dict-observation goal reach, SAC (+ PPO)
    python scripts/bench_spaces.py atari --steps 20000 --seeds 0           # Pong PPO throughput, 8 envs each
    python scripts/bench_spaces.py minatar --src /tmp/old/src --no-sb3     # the same, timing another checkout

Every training is a whole process, run one at a time and timed from outside (``wall_s``, including start-up and
the final evaluation, the same for both libraries); returns are means over the same held-out episodes (seeds
1,000,000 + k, deterministic actions). SB3 on MinAtar gets a CNN that fits the 10x10 image (its NatureCNN refuses
images under 36x36): MinAtar's own small CNN, the one duetrl picks, with the same PPO settings as duetrl's preset.
The goal-reach env is ``tests/spaces_envs.py:GoalReach`` (positions and goal as a Dict).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
EPISODES = 20
MAX_STEPS = 10_000  # duetrl's eval_max_steps: an episode of a never-missing Breakout agent is cut here


SRC = ROOT / "src"  # the duetrl timed: --src times another checkout's (a before/after table in one run)


def env_vars() -> dict[str, str]:
    paths = [str(SRC), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), "OMP_WAIT_POLICY": "PASSIVE"}


def timed(cmd: list[str]) -> tuple[float, dict]:
    """Run ``cmd``; (its wall seconds, the JSON of its last stdout line)."""
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env_vars(), cwd=ROOT)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return wall, json.loads(done.stdout.strip().splitlines()[-1])


def duetrl_run(env_id: str, algo: str, steps: int, seed: int, *sets: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "duetrl.cli", "train", env_id, "--algo", algo, "--steps", str(steps)]
        cmd += ["--seed", str(seed), "--quiet", "--run-dir", f"{tmp}/run"]
        cmd += ["--set", "eval_every=0", f"eval_episodes={EPISODES}", f"eval_max_steps={MAX_STEPS}", *sets]
        wall, out = timed(cmd)
    return {
        "lib": "duetrl",
        "src": str(SRC),
        "algo": algo,
        "seed": seed,
        "steps": steps,
        "wall_s": round(wall, 1),
        "return": out["mean_return"],
    }


def sb3_run(kind: str, steps: int, seed: int) -> dict:
    wall, out = timed([sys.executable, __file__, f"sb3-{kind}", str(steps), str(seed)])
    return {"lib": "sb3", **out, "wall_s": round(wall, 1)}


# ---------------------------------------------------------------------------------------------- SB3 side


def held_out(act, make_env, episodes: int = EPISODES) -> float:
    """SB3's mean return on the held-out episodes, by duetrl's own evaluation seeds and step cap."""
    from duetrl.bench_sb3 import episode_returns

    return float(episode_returns(act, episodes, make_env, MAX_STEPS).mean())


def sb3_minatar(steps: int, seed: int) -> dict:
    import gymnasium as gym
    import minatar.gym
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
    from torch import nn

    class MinAtarCNN(BaseFeaturesExtractor):
        """MinAtar's small CNN (16 3x3 filters, stride 1, then 128 features): what duetrl picks for 10x10."""

        def __init__(self, observation_space: gym.spaces.Box, features_dim: int = 128):
            super().__init__(observation_space, features_dim)
            h, w, c = observation_space.shape
            self.conv = nn.Sequential(nn.Conv2d(c, 16, 3, 1), nn.ReLU(), nn.Flatten())
            self.linear = nn.Sequential(nn.Linear(16 * (h - 2) * (w - 2), features_dim), nn.ReLU())

        def forward(self, obs: torch.Tensor) -> torch.Tensor:
            return self.linear(self.conv(obs.permute(0, 3, 1, 2)))

    minatar.gym.register_envs()
    torch.set_num_threads(1)
    env = make_vec_env("MinAtar/Breakout-v1", n_envs=8, seed=seed)
    # duetrl's MinAtar preset in SB3's words: its vf_coef is twice ours (no 0.5 inside), lr annealed linearly.
    model = PPO(
        "MlpPolicy",
        env,
        n_steps=128,
        batch_size=256,
        n_epochs=4,
        learning_rate=lambda f: 5e-4 * f,
        gamma=0.99,
        gae_lambda=0.95,
        clip_range=0.2,
        ent_coef=0.01,
        vf_coef=1.0,
        max_grad_norm=0.5,
        seed=seed,
        device="cpu",
        policy_kwargs=dict(
            features_extractor_class=MinAtarCNN,
            net_arch=dict(pi=[128], vf=[128]),
            activation_fn=nn.ReLU,
            normalize_images=False,
        ),
    )
    model.learn(total_timesteps=steps)
    score = held_out(lambda o: model.predict(o, deterministic=True)[0], lambda: gym.make("MinAtar/Breakout-v1"))
    return {"algo": "ppo", "seed": seed, "steps": int(model.num_timesteps), "return": score}


def sb3_atari(steps: int, seed: int) -> dict:
    import ale_py
    import gymnasium as gym
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecFrameStack

    gym.register_envs(ale_py)
    torch.set_num_threads(1)
    # The same env as duetrl's Pong preset: Gymnasium's AtariPreprocessing on ALE/Pong-v5 (frameskip=1), 4 frames
    # (stacked on a channel axis of SB3's own: 84x84x4).
    env = make_vec_env(
        "ALE/Pong-v5",
        n_envs=8,
        seed=seed,
        env_kwargs={"frameskip": 1},
        wrapper_class=lambda e: gym.wrappers.AtariPreprocessing(e, grayscale_newaxis=True),
    )
    env = VecFrameStack(env, 4)
    model = PPO(
        "CnnPolicy",
        env,
        n_steps=128,
        batch_size=256,
        n_epochs=4,
        learning_rate=lambda f: 2.5e-4 * f,
        clip_range=0.1,
        ent_coef=0.01,
        vf_coef=1.0,
        max_grad_norm=0.5,
        seed=seed,
        device="cpu",
    )
    start = time.perf_counter()
    model.learn(total_timesteps=steps)
    return {"algo": "ppo", "seed": seed, "steps": int(model.num_timesteps), "train_s": time.perf_counter() - start}


def sb3_goal(steps: int, seed: int) -> dict:
    import torch
    from spaces_envs import GoalReach
    from stable_baselines3 import SAC

    torch.set_num_threads(1)
    model = SAC("MultiInputPolicy", GoalReach(), learning_starts=500, seed=seed, device="cpu")
    model.learn(total_timesteps=steps)
    score = held_out(lambda o: model.predict(o, deterministic=True)[0], GoalReach)
    return {"algo": "sac", "seed": seed, "steps": int(model.num_timesteps), "return": score}


# ---------------------------------------------------------------------------------------------- benchmarks


def memory() -> list[dict]:
    """Bytes per stored transition of an 84x84x4 uint8 observation and a 6-d Box action."""
    import gymnasium as gym
    import torch
    from stable_baselines3.common.buffers import ReplayBuffer as SB3Buffer

    from duetrl.buffers import ReplayBuffer

    obs_space = gym.spaces.Box(0, 255, (84, 84, 4), np.uint8)
    act_space = gym.spaces.Box(-1, 1, (6,), np.float32)
    rows = []
    ours = ReplayBuffer(1000, obs_space, 6, torch.device("cpu"))
    rows.append({"buffer": "duetrl ReplayBuffer (image: stored once)", "bytes": ours.bytes_per_transition()})
    for optimize in (True, False):
        sb3 = SB3Buffer(
            1000, obs_space, act_space, "cpu", optimize_memory_usage=optimize, handle_timeout_termination=not optimize
        )
        arrays = [sb3.observations, sb3.actions, sb3.rewards, sb3.dones, sb3.timeouts]
        if not optimize:
            arrays.append(sb3.next_observations)
        rows.append(
            {
                "buffer": f"SB3 ReplayBuffer(optimize_memory_usage={optimize})",
                "bytes": sum(a.nbytes for a in arrays) / 1000,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["memory", "minatar", "goal", "atari", "sb3-minatar", "sb3-goal", "sb3-atari"])
    parser.add_argument("steps", nargs="?", type=int)
    parser.add_argument("seed", nargs="?", type=int)
    parser.add_argument("--steps", dest="budget", type=int, default=200_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sac-only", action="store_true")
    parser.add_argument("--src", type=Path, help="duetrl's src directory to time (default: this checkout's)")
    parser.add_argument("--no-sb3", action="store_true", help="duetrl's rows only")
    args = parser.parse_args()
    if args.src is not None:
        global SRC
        SRC = args.src.resolve()
    if args.what == "sb3-minatar":
        print(json.dumps(sb3_minatar(args.steps, args.seed)))
        return
    if args.what == "sb3-atari":
        print(json.dumps(sb3_atari(args.steps, args.seed)))
        return
    if args.what == "sb3-goal":
        sys.path.insert(0, str(ROOT / "tests"))
        print(json.dumps(sb3_goal(args.steps, args.seed)))
        return
    if args.what == "memory":
        for row in memory():
            print(json.dumps(row), flush=True)
        return
    for seed in args.seeds:
        if args.what == "atari":  # throughput: env steps per second of the whole process, no evaluation to speak of
            row = duetrl_run("ALE/Pong-v5", "ppo", args.budget, seed, "eval_episodes=1", "eval_max_steps=100")
            print(json.dumps({**row, "steps_per_s": round(args.budget / row["wall_s"], 1)}), flush=True)
            if not args.no_sb3:
                row = sb3_run("atari", args.budget, seed)
                print(json.dumps({**row, "steps_per_s": round(args.budget / row["wall_s"], 1)}), flush=True)
        elif args.what == "minatar":
            row = duetrl_run("MinAtar/Breakout-v1", "ppo", args.budget, seed)
            print(json.dumps(row), flush=True)
            if not args.no_sb3:
                print(json.dumps(sb3_run("minatar", args.budget, seed)), flush=True)
        else:
            env = "spaces_envs:GoalReach"
            print(json.dumps(duetrl_run(env, "sac", args.budget, seed, "learning_starts=500")), flush=True)
            print(json.dumps(sb3_run("goal", args.budget, seed)), flush=True)
            if not args.sac_only:
                row = duetrl_run(env, "ppo", 4 * args.budget, seed, "num_envs=4", "num_steps=128")
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
