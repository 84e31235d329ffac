"""The one training loop: collect -> update -> log -> evaluate -> checkpoint, for every algorithm."""

from __future__ import annotations

import math
import random
import signal
import sys
import time
import warnings
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from duetrl import checkpoint as ckpt
from duetrl.build import Checkpoint, build_agent, resolve_device, restore_agent, space_signature
from duetrl.config import Config, budget_warnings
from duetrl.envs import BatchEnv, import_modules, make
from duetrl.errors import TrainingError, UserError
from duetrl.evaluate import EVAL_SEED_BASE, EvalResult, evaluate_policy
from duetrl.logs import Logger, Progress, make_logger


@dataclass
class TrainResult:
    """What a finished (or stopped) run leaves: where it is, how far it got, how good it is."""

    run_dir: Path
    env_steps: int
    wall_time_s: float
    final_eval: EvalResult | None
    stopped_early: str | None = None  # "target", "interrupted" or None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_env(cfg: Config, device: torch.device) -> BatchEnv:
    import_modules(cfg.run.imports)
    env_device = device if cfg.run.backend != "gymnasium" else torch.device("cpu")
    return make(
        cfg.run.env_id,
        cfg.run.num_envs,
        backend=cfg.run.backend,
        device=env_device,
        vector=cfg.run.vector,
        **cfg.run.env_kwargs,
    )


def prepare_run_dir(run_dir: Path, resume: bool) -> None:
    """Create the run directory, refusing to mix a new run into an old one."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to run directory {run_dir}: {e.strerror}; choose another --run-dir") from None
    if not resume and ckpt.list_checkpoints(run_dir):
        raise UserError(f"{run_dir} already holds a run; use --resume {run_dir} to continue it, or a new --run-dir")


@contextmanager
def stop_on_signals() -> Iterator[dict[str, bool]]:
    """Turn SIGINT/SIGTERM into a flag the loop checks, so it can checkpoint and flush before leaving."""
    flag = {"stop": False}
    previous = {}

    def handler(signum: int, frame: Any) -> None:
        if flag["stop"]:  # a second signal: leave now
            raise KeyboardInterrupt
        flag["stop"] = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread (e.g. inside a Ray worker): leave signals alone
            pass
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class Trainer:
    """Drives one agent on one batch of envs, and owns time, logs, evaluation and checkpoints."""

    def __init__(
        self,
        cfg: Config,
        run_dir: Path,
        quiet: bool = False,
        sinks: list[Any] | None = None,
        resume: Checkpoint | None = None,
    ):
        """A new run of ``cfg``, or with ``resume`` the run that checkpoint saved (``cfg`` is its saved config)."""
        self.cfg, self.run_dir, self.quiet = cfg, Path(run_dir), quiet
        run = cfg.run
        torch.set_num_threads(run.torch_threads)
        seed_everything(run.seed)
        self.device = resolve_device(run.device)
        # Environment and agent first: a mistake there must not leave a run directory behind.
        self.env = make_env(cfg, self.device)
        try:
            spaces = self.env.single_observation_space, self.env.single_action_space
            if resume is None:
                self.agent = build_agent(cfg, *spaces, self.device)
            else:
                self.agent = restore_agent(resume, cfg, *spaces, self.device)
            prepare_run_dir(self.run_dir, resume is not None)
            self.env_steps = self.updates = self.episodes = 0
            self.obs: torch.Tensor | None = None  # the envs' current observations
            self.obs_device = self.env.device
            self.elapsed_before = 0.0  # wall time of earlier sessions of a resumed run
            self.best_eval = -math.inf
            self.next_eval = run.eval_every if run.eval_every > 0 else run.steps
            self.next_checkpoint = run.checkpoint_every if run.checkpoint_every > 0 else math.inf
            self.last_checkpoint_time = time.monotonic()
            resume_at = None if resume is None else self._restore(resume.state)
            cfg.save(self.run_dir / "config.yaml")
            self.logger: Logger = make_logger(self.run_dir, cfg.to_dict(), run.wandb, run.wandb_project, resume_at)
            self.logger.sinks += list(sinks or [])  # e.g. a sweep reporting each evaluation to Ray Tune
        except BaseException:
            self.env.close()
            raise

    # ------------------------------------------------------------------------------------------ the loop
    def train(self) -> TrainResult:
        run = self.cfg.run
        preset = f" with preset {run.preset}" if run.preset else ""
        print(f"duetrl: training {run.algo} on {run.env_id}{preset} -> {self.run_dir}", file=sys.stderr)
        for message in budget_warnings(self.cfg):  # settings that would waste the run, said before it starts
            print(f"duetrl: warning: {message}", file=sys.stderr)
        start = time.perf_counter()
        self.start = start
        progress = Progress(run.steps, initial=self.env_steps, quiet=self.quiet)
        recent_returns: deque[float] = deque(maxlen=20)
        pending_returns: list[float] = []
        pending_lengths: list[int] = []
        pending_metrics: dict[str, list[float]] = {}
        last_log_step = self.env_steps
        stopped: str | None = None
        final_eval: EvalResult | None = None
        if self.obs is None:  # a new run, or a resumed one whose envs could not be saved
            self.obs, _ = self.env.reset(seed=run.seed + self.env_steps)
        try:
            with stop_on_signals() as signals:
                while self.env_steps < run.steps:
                    decision = self.agent.explore(self.obs, self.env_steps)
                    try:
                        self.obs, reward, terminated, truncated, info = self.env.step(decision.action)
                    except Exception as e:
                        raise TrainingError(f"the environment raised {type(e).__name__}: {e}") from e
                    self.agent.observe(decision, reward, terminated, truncated, info["final_obs"])
                    self.env_steps += run.num_envs
                    postfix = {}
                    if "episode_return" in info:
                        self.episodes += len(info["episode_return"])
                        pending_returns += info["episode_return"]
                        pending_lengths += info["episode_length"]
                        recent_returns.extend(info["episode_return"])
                        postfix["return"] = float(np.mean(recent_returns))

                    logged = False
                    if self.agent.ready():
                        self.agent.set_progress(self.env_steps / run.steps)
                        metrics = self.agent.update()
                        self.updates += 1
                        _check_finite(metrics, self.env_steps)
                        for key, value in metrics.items():
                            pending_metrics.setdefault(key, []).append(value)
                        if self.env_steps - last_log_step >= run.log_every:
                            self._log(pending_metrics, pending_returns, pending_lengths)
                            pending_metrics, pending_returns, pending_lengths = {}, [], []
                            last_log_step = self.env_steps
                            logged = True

                    progress.advance(run.num_envs, **postfix)
                    if self.env_steps >= self.next_eval and self.env_steps < run.steps:
                        self.next_eval += run.eval_every
                        result = self._evaluate()
                        if run.target_return is not None and result.mean >= run.target_return:
                            stopped, final_eval = "target", result
                            break
                    # Checkpoints sit right after a metrics row, so a resumed run rewrites nothing and loses nothing.
                    if logged and self._checkpoint_due():
                        self._save_checkpoint()
                    if signals["stop"]:
                        stopped = "interrupted"
                        break
                # Still inside the signal guard: a signal now cannot cut the final evaluation or checkpoint short.
                if pending_metrics or pending_returns:
                    self._log(pending_metrics, pending_returns, pending_lengths)
                if stopped != "interrupted" and final_eval is None:
                    final_eval = self._evaluate()
                self._save_checkpoint()
        finally:
            progress.close()
            self.logger.close()
            self.env.close()
        return TrainResult(self.run_dir, self.env_steps, self._wall_time(), final_eval, stopped)

    # ------------------------------------------------------------------------------------------ pieces
    def _wall_time(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.start

    def _log(self, metrics: dict[str, list[float]], returns: list[float], lengths: list[int]) -> None:
        row: dict[str, Any] = {
            "env_steps": self.env_steps,
            "wall_time_s": round(self._wall_time(), 3),
            "updates": self.updates,
            "episodes": self.episodes,
        }
        if returns:
            row["episode_return"] = float(np.mean(returns))
            row["episode_length"] = float(np.mean(lengths))
        row.update({key: float(np.mean(values)) for key, values in metrics.items()})
        self.logger.write(row)

    def _evaluate(self) -> EvalResult:
        run = self.cfg.run
        self.agent.train_mode(False)
        result = evaluate_policy(
            lambda o: self.agent.act(o, deterministic=run.eval_deterministic).to("cpu"),
            run.env_id,
            run.env_kwargs,
            run.eval_episodes,
            seed=EVAL_SEED_BASE,
            device=self.device,
        )
        self.agent.train_mode(True)
        self.logger.write(
            {
                "env_steps": self.env_steps,
                "wall_time_s": round(self._wall_time(), 3),
                "eval_return_mean": result.mean,
                "eval_return_std": result.std,
            }
        )
        if result.mean > self.best_eval:
            self.best_eval = result.mean
            ckpt.save(ckpt.checkpoint_dir(self.run_dir) / "best.safetensors", self._state())
        return result

    def _checkpoint_due(self) -> bool:
        if self.env_steps >= self.next_checkpoint:
            while self.next_checkpoint <= self.env_steps:
                self.next_checkpoint += self.cfg.run.checkpoint_every
            return True
        return time.monotonic() - self.last_checkpoint_time >= self.cfg.run.checkpoint_seconds

    def _state(self) -> dict[str, Any]:
        return {
            "config": self.cfg.to_dict(),
            "agent": self.agent.state_dict(),
            "counters": {
                "env_steps": self.env_steps,
                "updates": self.updates,
                "episodes": self.episodes,
                "wall_time_s": self._wall_time() if hasattr(self, "start") else self.elapsed_before,
                "best_eval": self.best_eval,
                "next_eval": self.next_eval,
            },
            "spaces": space_signature(self.env.single_observation_space, self.env.single_action_space),
            "rng": ckpt.rng_state(),
            "env": self.env.get_state(),
            "obs": self.obs,
        }

    def _save_checkpoint(self) -> None:
        path = ckpt.checkpoint_dir(self.run_dir) / f"step_{self.env_steps:012d}.safetensors"
        ckpt.save(path, self._state())
        ckpt.prune(self.run_dir, self.cfg.run.keep_checkpoints)
        self.last_checkpoint_time = time.monotonic()

    def _restore(self, state: dict[str, Any]) -> int:
        """The saved run's counters, RNG and env state (the agent is already restored); returns its env step."""
        counters = state["counters"]
        self.env_steps, self.updates = int(counters["env_steps"]), int(counters["updates"])
        self.episodes, self.elapsed_before = int(counters["episodes"]), float(counters["wall_time_s"])
        self.best_eval = float(counters["best_eval"])
        # The next evaluation follows from where the run is (the saved one may be past a final evaluation).
        every = self.cfg.run.eval_every
        self.next_eval = (self.env_steps // every + 1) * every if every > 0 else self.cfg.run.steps
        ckpt.set_rng_state(state["rng"])
        if state.get("env") is not None and state.get("obs") is not None:
            self.env.set_state(state["env"])
            self.obs = state["obs"].to(self.obs_device)
        else:
            warnings.warn(
                "this environment's state could not be saved: the resumed run starts new episodes here, so its "
                "numbers will differ from a run that was never stopped",
                stacklevel=2,
            )
        return self.env_steps


def _check_finite(metrics: dict[str, float], env_steps: int) -> None:
    bad = [k for k, v in metrics.items() if not math.isfinite(v)]
    if bad:
        raise TrainingError(
            f"{', '.join(bad)} became {metrics[bad[0]]} at env step {env_steps}; the last good "
            "checkpoint is kept (try a lower learning rate or max_grad_norm)"
        )
