"""The one training loop: collect -> update -> log -> evaluate -> checkpoint, for every algorithm."""

from __future__ import annotations

import math
import os
import random
import signal
import sys
import time
from collections import deque
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from duetrl import checkpoint as ckpt
from duetrl.build import Checkpoint, LoadedAgent, build_agent, resolve_device, restore_agent, space_signature
from duetrl.callbacks import Callback, CallbackSink, StepBatch, TrainingState, notify
from duetrl.config import Config, RunConfig, budget_warnings, ignored_settings_warnings
from duetrl.cores import acting
from duetrl.encoders import ObservationError, to_device
from duetrl.envs import BatchEnv, import_modules, make
from duetrl.envs.make import EnvSource
from duetrl.errors import TrainingError, UserError, on_command_line, say, setting
from duetrl.evaluate import VALIDATION_SEED_BASE, EvalResult, EvaluationStopped, evaluate_policy
from duetrl.logs import Logger, Progress, make_logger


@dataclass
class TrainResult:
    """What a finished (or stopped) run leaves: where it is, how far it got, how good it is, and the trained agent
    (``agent.act(obs)``, as from ``duetrl.load`` of the run's last checkpoint, without reading it back)."""

    run_dir: Path
    env_steps: int
    wall_time_s: float
    final_eval: EvalResult | None
    stopped_early: str | None = None  # "target", "interrupted", "callback" or None
    agent: LoadedAgent | None = field(default=None, repr=False)


# torch's own thread count in this process before any run set it (the physical cores, or OMP_NUM_THREADS, which Ray
# sets to a trial's CPUs), capped by the CPUs this process may run on: what ``torch_threads=0`` gives a population.
TORCH_DEFAULT_THREADS = min(
    torch.get_num_threads(), len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
)
MEMBERS_PER_THREAD = 8  # auto: a thread per 8 members (16 ppo members gained 1.5x from 2 threads; fewer: unmeasured)


def torch_threads(run: RunConfig, members: int = 1) -> int:
    """The CPU threads a run gives torch: ``run.torch_threads``, or for 0 (auto) one thread for one agent and, for a
    population, one per 8 members up to the CPUs, because its batched matmuls use them (16 ppo members of the
    Pendulum preset: 41.3 s at one thread, 27.2 s at two, ``benchmarks/population.py``). One agent gains from two
    only on an idle machine (the old 128x128 Pendulum PPO preset trained in 1.6 s at two threads and 2.3 s at one)
    and loses beside one other job, even with the passive OpenMP wait that duetrl sets (``duetrl/__init__.py``;
    torch's spinning default made it 20x slower): Pendulum PPO 3.2-4.5 s at two against 3.0-3.4 s at one, MinAtar
    PPO's first 200k steps 55 s against 32 s. Two threads also sum in another order, so the thread count must not
    depend on the machine's load: the same seed and config give the same numbers."""
    return run.torch_threads or max(1, min(members // MEMBERS_PER_THREAD, TORCH_DEFAULT_THREADS))


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators: a run is reproducible from its seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_env(cfg: Config, device: torch.device, env: EnvSource = None, backend: str | None = None) -> BatchEnv:
    """The run's batch of envs (on ``device`` when torch-native; Gymnasium's live on the CPU): of ``env`` when the
    env was given as a Python object (a class, a function, an instance), else of the config's ``env_id``; on
    ``backend`` if given (a resumed run's), else the config's."""
    import_modules(cfg.run.imports)
    backend = backend or cfg.run.backend
    env_device = device if backend != "gymnasium" else torch.device("cpu")
    return make(
        cfg.run.env_id if env is None else env,
        cfg.run.num_envs,
        backend=backend,
        device=env_device,
        vector=cfg.run.vector,
        wrappers=cfg.run.wrappers,
        frame_stack=cfg.run.frame_stack,
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
        raise UserError(
            f"cannot write to run directory {run_dir}: {e.strerror}; choose another {setting('run_dir')}"
        ) from None
    if not resume and ckpt.list_checkpoints(run_dir):
        resume = f"--resume {run_dir}" if on_command_line() else f"duetrl.resume({str(run_dir)!r})"
        raise UserError(f"{run_dir} already holds a run; use {resume} to continue it, or a new {setting('run_dir')}")


def saved_backend(checkpoint: Checkpoint, cfg: Config) -> str:
    """The backend a checkpoint's envs ran on, so that a resumed run restores its envs into the same kind, whatever
    ``auto`` would pick now: recorded in the checkpoint, else told by the shape of the saved env state."""
    state = checkpoint.state
    if state.get("backend"):
        return str(state["backend"])
    env_state = state.get("env") or {}
    if cfg.run.backend == "auto" and env_state:
        return "gymnasium" if "envs" in env_state else "torch"
    return cfg.run.backend


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


class MetricWindow:
    """What happened since the last metrics row: the finished episodes' returns and lengths, and each update's
    metrics; a row is their means. Also the last 20 returns, for the progress bar."""

    def __init__(self) -> None:
        self.returns: list[float] = []
        self.lengths: list[int] = []
        self.metrics: dict[str, list[float]] = {}
        self.recent: deque[float] = deque(maxlen=20)

    def add_episodes(self, returns: list[float], lengths: list[int]) -> float:
        """Record finished episodes; returns the mean of the last 20 returns."""
        self.returns += returns
        self.lengths += lengths
        self.recent.extend(returns)
        return float(np.mean(self.recent))

    def add_metrics(self, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.metrics.setdefault(key, []).append(value)

    def __bool__(self) -> bool:
        """True when there is something to log."""
        return bool(self.metrics or self.returns)

    def flush(self) -> dict[str, float]:
        """The window's means as row fields, and an empty window."""
        row = {}
        if self.returns:
            row["episode_return"] = float(np.mean(self.returns))
            row["episode_length"] = float(np.mean(self.lengths))
        row.update({key: float(np.mean(values)) for key, values in self.metrics.items()})
        self.returns, self.lengths, self.metrics = [], [], {}
        return row


def next_multiple(env_steps: int, every: int) -> int:
    """The first multiple of ``every`` after ``env_steps``."""
    return (env_steps // every + 1) * every


class Schedule:
    """When the loop writes a metrics row, evaluates and checkpoints. It follows from the env step alone (and the
    clock, for checkpoints), so a resumed run keeps the schedule of the run it continues. A ``*_due`` call that
    says yes moves that event on."""

    def __init__(self, run: RunConfig, env_steps: int):
        self.run = run
        self.last_row = env_steps
        self.next_eval = next_multiple(env_steps, run.eval_every) if run.eval_every > 0 else run.steps
        self.next_checkpoint = next_multiple(env_steps, run.checkpoint_every) if run.checkpoint_every > 0 else math.inf
        self.last_checkpoint_time = time.monotonic()

    def row_due(self, env_steps: int) -> bool:
        """After an update, every ``log_every`` env steps."""
        if env_steps - self.last_row < self.run.log_every:
            return False
        self.last_row = env_steps
        return True

    def eval_due(self, env_steps: int) -> bool:
        """Every ``eval_every`` env steps, but not at the end: the final evaluation is the loop's own."""
        if not self.next_eval <= env_steps < self.run.steps:
            return False
        self.next_eval = next_multiple(env_steps, self.run.eval_every)
        return True

    def checkpoint_due(self, env_steps: int) -> bool:
        """Every ``checkpoint_every`` env steps, or ``checkpoint_seconds`` after the last one."""
        now = time.monotonic()
        if env_steps >= self.next_checkpoint:
            self.next_checkpoint = next_multiple(env_steps, self.run.checkpoint_every)
        elif now - self.last_checkpoint_time < self.run.checkpoint_seconds:
            return False
        self.last_checkpoint_time = now
        return True


class Trainer:
    """Drives one agent on one batch of envs, and owns time, logs, evaluation and checkpoints."""

    def __init__(
        self,
        cfg: Config,
        run_dir: Path,
        quiet: bool = False,
        sinks: list[Any] | None = None,
        resume: Checkpoint | None = None,
        env: EnvSource = None,
        callbacks: list[Callback] | None = None,
    ):
        """A new run of ``cfg``, or with ``resume`` the run that checkpoint saved (``cfg`` is its saved config).
        ``env``: the env as a Python object (class, function, instance) when ``cfg.run.env_id`` only names it;
        ``callbacks``: see :mod:`duetrl.callbacks`; ``sinks``: objects with ``write(row)``, ``close()``, given each
        metrics row."""
        self.cfg, self.run_dir, self.quiet = cfg, Path(run_dir), quiet
        self.callbacks = list(callbacks or [])
        self.state = TrainingState(self)
        self.window = MetricWindow()
        self.env_source = cfg.run.env_id if env is None else env
        run = cfg.run
        torch.set_num_threads(torch_threads(run))
        seed_everything(run.seed)
        self.device = resolve_device(run.device)
        # Environment and agent first: a mistake there must not leave a run directory behind.
        self.env = make_env(cfg, self.device, env, None if resume is None else saved_backend(resume, cfg))
        try:
            spaces = self.env.single_observation_space, self.env.single_action_space
            if resume is None:
                self.agent = build_agent(cfg, *spaces, self.device)
            else:
                self.agent = restore_agent(resume, cfg, *spaces, self.device)
            prepare_run_dir(self.run_dir, resume is not None)
            self.env_steps = self.updates = self.episodes = 0
            self.best_eval = -math.inf
            self.cap_warned = False  # the evaluation step cap's warning is said once per session
            self.elapsed_before = 0.0  # wall time of earlier sessions of a resumed run
            self.resume_line: str | None = None
            self.notes: list[str] = []  # said after the start line: what a resumed run does differently
            saved_obs = None if resume is None else self._restore(resume)
            # The envs' current observations: new episodes for a new run, or a resumed one whose envs were not saved.
            self.obs = self._reset(run.seed + self.env_steps) if saved_obs is None else saved_obs
            cfg.save(self.run_dir / "config.yaml")
            resume_at = None if resume is None else self.env_steps
            self.logger: Logger = make_logger(self.run_dir, cfg.to_dict(), run.wandb, run.wandb_project, resume_at)
            self.logger.sinks += list(sinks or []) + [CallbackSink(c, self.state) for c in self.callbacks]
        except BaseException:
            self.env.close()
            raise
        self.start = time.perf_counter()

    # ------------------------------------------------------------------------------------------ the loop
    def train(self) -> TrainResult:
        """Collect, update, log, evaluate and checkpoint until ``steps`` env steps, the target return or a signal."""
        run, agent = self.cfg.run, self.agent
        self._announce()
        progress = Progress(run.steps, initial=self.env_steps, quiet=self.quiet)
        window, schedule = self.window, Schedule(run, self.env_steps)
        callbacks, state = self.callbacks, self.state
        stopped: str | None = None
        final_eval: EvalResult | None = None
        # Closed in this order however the loop ends: signal handlers restored, progress bar, logs, envs.
        with closing(self.env), closing(self.logger), closing(progress), stop_on_signals() as signals:
            notify(callbacks, "on_start", state)
            while self.env_steps < run.steps:
                obs = self.obs
                decision = agent.explore(obs, self.env_steps)
                self.obs, reward, terminated, truncated, info = self._step(decision.action)
                agent.observe(decision, reward, terminated, truncated, info["final_obs"])
                self.env_steps += run.num_envs
                postfix = {}
                if "episode_return" in info:
                    self.episodes += len(info["episode_return"])
                    postfix["return"] = window.add_episodes(info["episode_return"], info["episode_length"])
                if callbacks:
                    step = StepBatch(
                        obs,
                        decision.action,
                        reward,
                        terminated,
                        truncated,
                        info.get("episode_return", []),
                        info.get("episode_length", []),
                    )
                    if notify(callbacks, "on_step_batch", state, step):
                        stopped = "callback"
                logged = False
                if agent.ready():
                    metrics = self._update()
                    if callbacks and notify(callbacks, "on_update", state, metrics):
                        stopped = "callback"
                    window.add_metrics(metrics)
                    logged = schedule.row_due(self.env_steps)
                    if logged:
                        self._log(window.flush())
                progress.advance(run.num_envs, **postfix)
                if schedule.eval_due(self.env_steps):
                    result = self._evaluate(signals)
                    if result is None:  # a signal during the evaluation
                        stopped = "interrupted"
                        break
                    if callbacks and notify(callbacks, "on_evaluation", state, result):
                        stopped, final_eval = "callback", result
                        break
                    if run.target_return is not None and result.mean >= run.target_return:
                        stopped, final_eval = "target", result
                        break
                # Checkpoints sit right after a metrics row, so a resumed run rewrites nothing and loses nothing.
                if logged and schedule.checkpoint_due(self.env_steps):
                    self._save_checkpoint()
                if signals["stop"]:
                    stopped = "interrupted"
                if stopped is not None:
                    break
            if window:
                self._log(window.flush())
            # The checkpoint before the final evaluation, which may be long: a signal during it loses nothing.
            self._save_checkpoint()
            if final_eval is None and stopped != "interrupted":
                best = self.best_eval
                final_eval = self._evaluate(signals)
                if final_eval is None:
                    stopped = "interrupted"
                else:
                    if self.best_eval != best:
                        self._save_checkpoint()  # the same step, now knowing its best evaluation
                    notify(callbacks, "on_evaluation", state, final_eval)  # the run ends here whatever they say
            trained = LoadedAgent(self.cfg, agent, self.device, self.last_checkpoint, self.env_source)
            result = TrainResult(self.run_dir, self.env_steps, self._wall_time(), final_eval, stopped, trained)
            notify(callbacks, "on_end", state, result)
        return result

    # ------------------------------------------------------------------------------------------ pieces
    def _announce(self) -> None:
        """What is about to run, and the settings that would waste it or that it ignores, said before it starts."""
        run = self.cfg.run
        preset = f" with preset {run.preset}" if run.preset else ""
        batch = f"{run.num_envs} env{'s' if run.num_envs > 1 else ''}, {self.env.backend} backend"
        print(f"duetrl: training {run.algo} on {run.env_id} ({batch}){preset} -> {self.run_dir}", file=sys.stderr)
        if self.resume_line:
            print(self.resume_line, file=sys.stderr)
        for message in self.notes:
            say("note", message)
        for message in budget_warnings(self.cfg) + ignored_settings_warnings(self.cfg):
            say("warning", message)

    def _reset(self, seed: int) -> Any:
        """``env.reset``, a bad first observation a TrainingError."""
        try:
            return self.env.reset(seed=seed)[0]
        except ObservationError as e:
            raise TrainingError(f"{e} at the reset of env step {self.env_steps}") from e

    def _step(
        self, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """``env.step``, its failure a TrainingError (the last good checkpoint is kept)."""
        try:
            return self.env.step(action)
        except ObservationError as e:
            step = self.env_steps + self.cfg.run.num_envs  # the step whose observation it is
            raise TrainingError(f"{e} at env step {step}; the last good checkpoint is kept") from e
        except Exception as e:
            raise TrainingError(f"the environment raised {type(e).__name__}: {e}") from e

    def _update(self) -> dict[str, float]:
        """One update of the agent, told how far the run is; its metrics, which must be finite."""
        self.agent.set_progress(self.env_steps / self.cfg.run.steps)
        metrics = self.agent.update()
        self.updates += 1
        bad = [key for key, value in metrics.items() if not math.isfinite(value)]
        if bad:
            raise TrainingError(
                f"{', '.join(bad)} became {metrics[bad[0]]} at env step {self.env_steps}; the last good "
                "checkpoint is kept (try a lower learning rate or max_grad_norm)"
            )
        return metrics

    def _wall_time(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.start

    def _log(self, fields: dict[str, float]) -> None:
        """A metrics row: where the run is, then ``fields``."""
        where = {"env_steps": self.env_steps, "wall_time_s": round(self._wall_time(), 3)}
        self.logger.write({**where, "updates": self.updates, "episodes": self.episodes, **fields})

    def _evaluate(self, signals: dict[str, bool]) -> EvalResult | None:
        """Evaluate the current policy on the validation episodes (``VALIDATION_SEED_BASE`` on: never the test
        episodes ``duetrl eval`` scores), log it, and keep it as best.safetensors if it is; None if a signal stopped
        the evaluation."""
        run = self.cfg.run
        self.agent.train_mode(False)
        try:
            result = evaluate_policy(
                acting(self.agent, run.eval_deterministic),
                self.env_source,
                run.env_kwargs,
                run.eval_episodes,
                seed=VALIDATION_SEED_BASE,
                device=self.device,
                max_steps=run.eval_max_steps,
                stop=lambda: signals["stop"],
                wrappers=run.wrappers,
                frame_stack=run.frame_stack,
            )
        except EvaluationStopped:
            return None
        finally:
            self.agent.train_mode(True)
        result.deterministic = run.eval_deterministic
        warning = result.cap_warning(run.env_id)
        if warning and not self.cap_warned:
            say("warning", warning)
            self.cap_warned = True
        where = {"env_steps": self.env_steps, "wall_time_s": round(self._wall_time(), 3)}
        self.logger.write({**where, "eval_return_mean": result.mean, "eval_return_std": result.std})
        if result.mean > self.best_eval:
            self.best_eval = result.mean
            ckpt.save(ckpt.checkpoint_dir(self.run_dir) / "best.safetensors", self.state_dict())
        return result

    # ------------------------------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint holds: the config, the agent, counters, RNGs and the envs' state."""
        return {
            "config": self.cfg.to_dict(),
            "agent": self.agent.state_dict(),
            "counters": {
                "env_steps": self.env_steps,
                "updates": self.updates,
                "episodes": self.episodes,
                "wall_time_s": self._wall_time(),
                "best_eval": self.best_eval,
            },
            "spaces": space_signature(self.env.single_observation_space, self.env.single_action_space),
            "backend": self.env.backend,
            "rng": ckpt.rng_state(),
            "env": self.env.get_state(),
            "obs": self.obs,
        }

    def _save_checkpoint(self) -> None:
        path = ckpt.checkpoint_dir(self.run_dir) / f"step_{self.env_steps:012d}.safetensors"
        ckpt.save(path, self.state_dict())
        ckpt.prune(self.run_dir, self.cfg.run.keep_checkpoints)
        self.last_checkpoint = path

    def _restore(self, checkpoint: Checkpoint) -> torch.Tensor | None:
        """The saved run's counters, RNG and env state (the agent is already restored); returns the envs'
        observations, or None if their state could not be saved. Says what the resumed run does differently."""
        state = checkpoint.state
        counters = state["counters"]
        self.env_steps, self.updates = int(counters["env_steps"]), int(counters["updates"])
        self.episodes, self.elapsed_before = int(counters["episodes"]), float(counters["wall_time_s"])
        self.best_eval = float(counters["best_eval"])
        ckpt.set_rng_state(state["rng"])
        saved, now = state["config"], self.cfg.to_dict()
        changes = [f"{key} {saved[key]!r} -> {now[key]!r}" for key in now if key in saved and saved[key] != now[key]]
        changed = f" (changed: {', '.join(changes)})" if changes else ""
        self.resume_line = f"duetrl: resuming from step {self.env_steps} of {self.cfg.run.steps}{changed}"
        if hasattr(self.agent, "buffer") and "buffer" not in state["agent"]:
            self.notes.append(
                "the replay buffer was not saved with the run (save_buffer=false): it starts empty, so updates "
                f"wait for batch_size={self.cfg.algo.batch_size} new transitions and the run will differ from one "
                "that was never stopped"
            )
        if state.get("env") is not None and state.get("obs") is not None:
            self.env.set_state(state["env"])
            return to_device(state["obs"], self.env.device)
        self.notes.append(
            "this environment's state could not be saved: the resumed run starts new episodes here, so its "
            "numbers will differ from a run that was never stopped"
        )
        return None
