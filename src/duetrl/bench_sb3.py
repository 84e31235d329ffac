"""Train and evaluate one Stable-Baselines3 agent with rl-zoo3's tuned settings (or SB3's defaults); print one
JSON line.

Run as its own process by duetrl.bench so that both libraries are timed the same way (whole process).
Usage: python -m duetrl.bench_sb3 [--defaults] ENV_ID ALGO STEPS SEED [EVAL_EPISODES [UNTIL_RETURN]]
With --defaults, SB3's own library defaults instead, as a user who tunes nothing gets them: ``ALGO("MlpPolicy",
env)`` on one env, so no VecNormalize and, for TD3, no action noise (SB3's default is none).
With UNTIL_RETURN, training stops at the first check (every 500 steps, 20 held-out episodes, not timed) whose
mean reaches it: ``train_s`` is then SB3's training time to that first success."""

import json
import sys
import time
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import A2C, PPO, SAC, TD3
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.noise import NormalActionNoise
from stable_baselines3.common.vec_env import VecNormalize

from duetrl.evaluate import EVAL_SEED_BASE  # both libraries are scored on the same held-out episodes

# rl-zoo3 hyperparams/*.yml: the Pendulum-v1 entries, and the MuJoCo ones (zoo's -v4 tuning, run on -v5).
ZOO: dict[str, dict[str, dict]] = {}
ZOO["Pendulum-v1"] = {
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


def _mujoco(**ppo: float) -> dict[str, dict]:
    """A MuJoCo env's zoo entries: PPO's tuned numbers on one normalised env with the zoo's MuJoCo policy
    (log std -2, no orthogonal init, ReLU 256x256), and SAC with its defaults after a 10k-step warm-up."""
    policy = dict(
        log_std_init=-2, ortho_init=False, activation_fn=torch.nn.ReLU, net_arch=dict(pi=[256, 256], vf=[256, 256])
    )
    return {
        "ppo": dict(n_envs=1, normalize=True, kwargs=dict(**ppo, policy_kwargs=policy)),
        "sac": dict(n_envs=1, kwargs=dict(learning_starts=10_000)),
    }


ZOO["HalfCheetah-v5"] = _mujoco(
    batch_size=64,
    n_steps=512,
    gamma=0.98,
    learning_rate=2.0633e-05,
    ent_coef=0.000401762,
    clip_range=0.1,
    n_epochs=20,
    gae_lambda=0.92,
    max_grad_norm=0.8,
    vf_coef=0.58096,
)
ZOO["Hopper-v5"] = _mujoco(
    batch_size=32,
    n_steps=512,
    gamma=0.999,
    learning_rate=9.80828e-05,
    ent_coef=0.00229519,
    clip_range=0.2,
    n_epochs=5,
    gae_lambda=0.99,
    max_grad_norm=0.7,
    vf_coef=0.835671,
)
CLASSES = {"ppo": PPO, "sac": SAC, "td3": TD3, "a2c": A2C}


def episode_returns(act, episodes: int, env: str | Callable[[], gym.Env], max_steps: int | None = None) -> np.ndarray:
    """The return of ``act(obs) -> action`` on each held-out episode (seeds EVAL_SEED_BASE + k). ``env``: an id, or
    a factory for an env that needs wrapping; ``max_steps``: a cap for envs whose episodes may never end."""
    returns = []
    env = gym.make(env) if isinstance(env, str) else env()
    for k in range(episodes):
        obs, _ = env.reset(seed=EVAL_SEED_BASE + k)
        total, done, length = 0.0, False, 0
        while not done and (max_steps is None or length < max_steps):
            obs, reward, terminated, truncated, _ = env.step(act(obs))
            total, length, done = total + float(reward), length + 1, terminated or truncated
        returns.append(total)
    env.close()
    return np.array(returns)


def held_out_returns(model, episodes: int, env_id: str = "Pendulum-v1") -> np.ndarray:
    """The model's deterministic actions on the held-out episodes (through its VecNormalize statistics, if any)."""
    norm = model.get_vec_normalize_env()
    return episode_returns(
        lambda obs: model.predict(obs if norm is None else norm.normalize_obs(obs), deterministic=True)[0],
        episodes,
        env_id,
    )


class StopAtReturn(BaseCallback):
    """Every ``every`` steps, evaluate (time not counted) and stop once the mean reaches ``target``."""

    def __init__(self, target: float, every: int = 500):
        super().__init__()
        self.target, self.every, self.eval_s, self.reached_at = target, every, 0.0, None

    def _on_step(self) -> bool:
        if self.num_timesteps % self.every:
            return True
        start = time.perf_counter()
        mean = held_out_returns(self.model, 20, self.training_env.get_attr("spec")[0].id).mean()
        self.eval_s += time.perf_counter() - start
        if mean >= self.target:
            self.reached_at = self.num_timesteps
            return False
        return True


def main() -> None:
    defaults = "--defaults" in sys.argv
    argv = [a for a in sys.argv if a != "--defaults"]
    env_id, algo, steps, seed = argv[1], argv[2], int(float(argv[3])), int(argv[4])
    episodes = int(argv[5]) if len(argv) > 5 else 100
    torch.set_num_threads(1)
    # One env, as duetrl trains with no preset (a test in tests/test_bench.py holds it to that).
    spec = dict(n_envs=1, kwargs={}) if defaults else ZOO[env_id][algo]
    start = time.perf_counter()
    env = make_vec_env(env_id, n_envs=spec["n_envs"], seed=seed)
    kwargs = dict(spec["kwargs"])
    if spec.get("normalize"):  # the zoo's VecNormalize(obs and reward), discounting with the algorithm's gamma
        env = VecNormalize(env, gamma=kwargs.get("gamma", 0.99))
    if algo == "td3" and not defaults:
        size = env.action_space.shape[0]
        kwargs["action_noise"] = NormalActionNoise(np.zeros(size), 0.1 * np.ones(size))
    model = CLASSES[algo]("MlpPolicy", env, seed=seed, verbose=0, device="cpu", **kwargs)
    until = float(argv[6]) if len(argv) > 6 else None
    callback = StopAtReturn(until) if until is not None else None
    model.learn(total_timesteps=steps, callback=callback)
    uncounted = callback.eval_s if callback else 0.0
    train_s = time.perf_counter() - start - uncounted
    eval_start = time.perf_counter()
    if isinstance(env, VecNormalize):
        env.training = False
    returns = held_out_returns(model, episodes, env_id)
    result = {
        "env_id": env_id,
        "algo": algo,
        "steps": int(model.num_timesteps),
        "seed": seed,
        "train_s": round(train_s, 2),
        "eval_s": round(time.perf_counter() - eval_start + uncounted, 2),
        "reached_at": callback.reached_at if callback else None,
        "mean_return": float(returns.mean()),
        "std_return": float(returns.std()),
        "median_return": float(np.median(returns)),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
