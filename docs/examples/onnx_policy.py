"""Run a policy exported by ``duetrl export`` with onnxruntime, gymnasium and numpy only: no torch, no duetrl.

    python onnx_policy.py runs/my-run/policy.onnx --episodes 10

The file maps a batch of raw observations (float32, shape [B, *obs_shape]) to env actions ([B, act_dim] float32,
or [B] int64 for a discrete space): the observation normaliser, the action bounds and the argmax are inside it.
Its sidecar, policy.onnx.json, names the env, its kwargs and the held-out seeds ``duetrl eval`` scores on; this
script plays those episodes and prints their returns as JSON.
"""

import argparse
import importlib
import json

import gymnasium as gym
import numpy as np
import onnxruntime as ort


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("policy", help="the .onnx file written by duetrl export")
    parser.add_argument("--episodes", type=int, default=10)
    args = parser.parse_args()

    with open(args.policy + ".json") as f:
        info = json.load(f)
    for module in info["imports"]:  # modules that register the env, as the run imported them
        importlib.import_module(module)
    session = ort.InferenceSession(args.policy, providers=["CPUExecutionProvider"])
    obs_name, action_name = info["inputs"][0]["name"], info["outputs"][0]["name"]

    env = gym.make(info["env_id"], **info["env_kwargs"])
    returns = []
    for episode in range(args.episodes):
        obs, _ = env.reset(seed=info["evaluation"]["seed"] + episode)
        total, done = 0.0, False
        while not done:
            batch = np.asarray(obs, dtype=np.float32)[None]  # a batch of one observation
            action = session.run([action_name], {obs_name: batch})[0][0]
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    print(json.dumps({"env_id": info["env_id"], "returns": returns, "mean_return": float(np.mean(returns))}))


if __name__ == "__main__":
    main()
