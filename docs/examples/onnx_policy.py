"""Run a policy exported by ``duetrl export`` with onnxruntime, gymnasium and numpy only: no torch, no duetrl.

    python onnx_policy.py runs/my-run/policy.onnx --episodes 10

The file maps a batch of raw observations to env actions: the observation normaliser, the encoder, the action
bounds and the argmax are inside it. Its sidecar, policy.onnx.json, lists the file's inputs: one per observation
leaf (``obs``, or for a Dict or Tuple observation ``obs.<key path>`` with the path in ``key``), each with its
shape ``[batch, ...]`` and dtype, and for a recurrent policy its state (``state``: zeros at an episode's start,
the ``next_state`` output fed back at the next step). It also names the env, its kwargs and the held-out seeds
``duetrl eval`` scores on; this script plays those episodes and prints their returns as JSON.
"""

import argparse
import importlib
import json

import gymnasium as gym
import numpy as np
import onnxruntime as ort


def make_env(info: dict) -> gym.Env:
    """The env as the run made it: a registered id (``Pendulum-v1``, ``my_pkg:MyEnv-v0``) or ``module:Class`` for an
    env class, then the run's wrappers (``module:Name``) in order, then its frame stacking."""
    module, _, name = info["env_id"].partition(":")
    target = getattr(importlib.import_module(module), name, None) if name else None
    if isinstance(target, type) and issubclass(target, gym.Env):
        env = target(**info["env_kwargs"])
    else:
        env = gym.make(info["env_id"], **info["env_kwargs"])
    for wrapper in info.get("wrappers", []):
        module, _, name = wrapper.partition(":")
        env = getattr(importlib.import_module(module), name)(env)
    if info.get("frame_stack", 1) > 1:
        env = gym.wrappers.FrameStackObservation(env, info["frame_stack"])
    return env


def leaf(obs, key):
    """The part of an observation at a key path (Dict keys, Tuple indices; [] for the whole)."""
    for part in key:
        obs = obs[part]
    return obs


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
    state = info.get("state")  # None for a memoryless policy
    observation_inputs = [i for i in info["inputs"] if state is None or i["name"] != state["input"]]
    outputs = [info["outputs"][0]["name"]] + ([state["output"]] if state else [])

    env = make_env(info)
    has_limit = env.spec is not None and env.spec.max_episode_steps is not None
    max_steps = None if has_limit else info["evaluation"]["max_steps"]  # duetrl eval's cap, without a time limit
    returns = []
    for episode in range(args.episodes):
        obs, _ = env.reset(seed=info["evaluation"]["seed"] + episode)
        memory = np.zeros((1, state["size"]), np.float32) if state else None  # zeros start every episode
        total, done, steps = 0.0, False, 0
        while not done and (max_steps is None or steps < max_steps):
            feed = {
                i["name"]: np.asarray(leaf(obs, i.get("key", [])), dtype=i["dtype"])[None] for i in observation_inputs
            }
            if state:
                feed[state["input"]] = memory
            result = session.run(outputs, feed)  # a batch of one observation
            action = result[0][0]
            if state:
                memory = result[1]  # carried to the next step of this episode
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            steps += 1
            done = terminated or truncated
        returns.append(total)
    env.close()
    print(json.dumps({"env_id": info["env_id"], "returns": returns, "mean_return": float(np.mean(returns))}))


if __name__ == "__main__":
    main()
