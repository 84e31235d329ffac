"""Train and evaluate one Stable-Baselines3 agent with rl-zoo3's tuned Pendulum-v1 settings; print one JSON line.

Run as its own process by duetrl.bench so that both libraries are timed the same way (whole process).
Usage: python -m duetrl.bench_sb3 ALGO STEPS SEED [EVAL_EPISODES [UNTIL_RETURN]]
With UNTIL_RETURN, training stops at the first check (every 500 steps, 20 held-out episodes, not timed) whose
mean reaches it: ``train_s`` is then SB3's training time to that first success."""

import json
import sys
import time

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import A2C, PPO, SAC, TD3
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.noise import NormalActionNoise

EVAL_SEED_BASE = 1_000_000  # duetrl's held-out evaluation seeds: both libraries are scored on the same episodes

# rl-zoo3 hyperparams/*.yml, Pendulum-v1 entries.
ZOO = {
    "ppo": dict(
        n_envs=4,
        kwargs=dict(
            n_steps=1024,
            gae_lambda=0.95,
            gamma=0.9,
            n_epochs=10,
            ent_coef=0.0,
            learning_rate=1e-3,
            clip_range=0.2,
            use_sde=True,
            sde_sample_freq=4,
        ),
    ),
    "sac": dict(n_envs=1, kwargs=dict(learning_rate=1e-3)),
    "td3": dict(
        n_envs=1,
        kwargs=dict(
            learning_rate=1e-3,
            gamma=0.98,
            buffer_size=200_000,
            learning_starts=10_000,
            policy_kwargs=dict(net_arch=[400, 300]),
        ),
    ),
    "a2c": dict(
        n_envs=8,
        kwargs=dict(
            ent_coef=0.0,
            max_grad_norm=0.5,
            n_steps=8,
            gae_lambda=0.9,
            vf_coef=0.4,
            gamma=0.99,
            use_rms_prop=True,
            normalize_advantage=False,
            learning_rate=7e-4,
            use_sde=True,
            policy_kwargs=dict(log_std_init=-2, ortho_init=False),
        ),
    ),
}
CLASSES = {"ppo": PPO, "sac": SAC, "td3": TD3, "a2c": A2C}


def held_out_mean(model, episodes: int) -> tuple[float, float]:
    returns = []
    env = gym.make("Pendulum-v1")
    for k in range(episodes):
        obs, _ = env.reset(seed=EVAL_SEED_BASE + k)
        total, done = 0.0, False
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return float(np.mean(returns)), float(np.std(returns))


class StopAtReturn(BaseCallback):
    """Every ``every`` steps, evaluate (time not counted) and stop once the mean reaches ``target``."""

    def __init__(self, target: float, every: int = 500):
        super().__init__()
        self.target, self.every, self.eval_s, self.reached_at = target, every, 0.0, None

    def _on_step(self) -> bool:
        if self.num_timesteps % self.every:
            return True
        start = time.perf_counter()
        mean, _ = held_out_mean(self.model, 20)
        self.eval_s += time.perf_counter() - start
        if mean >= self.target:
            self.reached_at = self.num_timesteps
            return False
        return True


def main() -> None:
    algo, steps, seed = sys.argv[1], int(float(sys.argv[2])), int(sys.argv[3])
    episodes = int(sys.argv[4]) if len(sys.argv) > 4 else 100
    torch.set_num_threads(1)
    spec = ZOO[algo]
    start = time.perf_counter()
    env = make_vec_env("Pendulum-v1", n_envs=spec["n_envs"], seed=seed)
    kwargs = dict(spec["kwargs"])
    if algo == "td3":
        kwargs["action_noise"] = NormalActionNoise(np.zeros(1), 0.1 * np.ones(1))
    model = CLASSES[algo]("MlpPolicy", env, seed=seed, verbose=0, device="cpu", **kwargs)
    until = float(sys.argv[5]) if len(sys.argv) > 5 else None
    callback = StopAtReturn(until) if until is not None else None
    model.learn(total_timesteps=steps, callback=callback)
    uncounted = callback.eval_s if callback else 0.0
    train_s = time.perf_counter() - start - uncounted
    eval_start = time.perf_counter()
    mean, std = held_out_mean(model, episodes)
    result = {
        "algo": algo,
        "steps": int(model.num_timesteps),
        "seed": seed,
        "train_s": round(train_s, 2),
        "eval_s": round(time.perf_counter() - eval_start + uncounted, 2),
        "reached_at": callback.reached_at if callback else None,
        "mean_return": mean,
        "std_return": std,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
