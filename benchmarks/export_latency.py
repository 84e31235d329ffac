"""Inference latency for one observation: an exported policy in onnxruntime (and as pt2) against
``duetrl.load(...).act``.

    python benchmarks/export_latency.py RUN [RUN ...] [--calls 2000] [--repeats 7]

Each run is exported (onnx and pt2, into a temporary directory), then each way of acting is called ``calls``
times on one observation drawn from the env, ``repeats`` times; the table gives the median over repeats of the
time per call in microseconds (and the fastest repeat), one thread each (onnxruntime's session as
``duetrl.deploy`` opens it, torch.set_num_threads(1) as duetrl evaluates). A recurrent run (``rnn=lstm`` or
``gru``) is called as it acts, with its state: ``duetrl.load(...).act(obs, state)``, ``ExportedPolicy.act(obs,
state)`` and ``session.run`` fed the observation and the state (each call from the same state: the time of one
step). A Dict or Tuple observation is fed as the env gives it (``session.run``: one input per leaf).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

import duetrl
from duetrl.deploy import ExportedPolicy, leaf_of


def per_call_us(fn: Callable[[], object], calls: int, repeats: int) -> tuple[float, float]:
    """(median, fastest) microseconds per call over ``repeats`` timings of ``calls`` calls, after a warm-up."""
    for _ in range(min(calls, 200)):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(times), min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        "| run | algo | hidden | rnn | duetrl.load().act | onnxruntime (ExportedPolicy.act) | onnxruntime session.run "
        "| pt2 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for run in args.runs:
        loaded = duetrl.load(run)
        env = gym.make(loaded.env_id, **loaded.config.run.env_kwargs)
        obs = env.reset(seed=0)[0]
        env.close()
        if isinstance(obs, np.ndarray):
            obs = obs.astype(np.float32)
        state = loaded.initial_state() if loaded.recurrent else None  # [S]: one env's state at an episode start
        with tempfile.TemporaryDirectory() as tmp:
            onnx_file = duetrl.export(run, Path(tmp) / "policy.onnx").path
            pt2_file = duetrl.export(run, Path(tmp) / "policy.pt2").path
            onnx_policy, pt2_policy = ExportedPolicy(onnx_file), ExportedPolicy(pt2_file)
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = options.inter_op_num_threads = 1
            session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
            feed = {name: np.asarray(leaf_of(obs, key), dtype)[None] for name, key, _, dtype in onnx_policy.leaves}
            outputs = ["action"]
            if state is not None:
                feed[onnx_policy.state["input"]] = state[None]
                outputs.append(onnx_policy.state["output"])
            with_state = () if state is None else (state,)
            cells = [
                per_call_us(partial(loaded.act, obs, *with_state, deterministic=True), args.calls, args.repeats),
                per_call_us(partial(onnx_policy.act, obs, *with_state), args.calls, args.repeats),
                per_call_us(partial(session.run, outputs, feed), args.calls, args.repeats),
                per_call_us(partial(pt2_policy.act, obs, *with_state), args.calls, args.repeats),
            ]
        cfg = loaded.config.algo
        hidden = getattr(cfg, "hidden", None) or getattr(cfg, "actor_hidden", None)
        rnn = f"{cfg.rnn} {cfg.rnn_hidden}" if loaded.recurrent else "none"
        text = " | ".join(f"{median:.1f} us (best {best:.1f})" for median, best in cells)
        print(f"| {run} | {loaded.config.run.algo} | {hidden} | {rnn} | {text} |")


if __name__ == "__main__":
    main()
