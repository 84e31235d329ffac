"""Evaluation on held-out episodes, on-screen rendering, and video."""

from __future__ import annotations

import ctypes.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from duetrl.encoders import batch_of_one, to_tensor
from duetrl.envs.base import env_actions
from duetrl.envs.classic import vector_twin
from duetrl.envs.make import env_factory
from duetrl.errors import UserError, setting

# Two disjoint ranges of episode seeds, neither used by training's own envs (seeded from the run's seed up):
# - validation: the evaluations *inside* training (periodic, final), whose scores choose things: best.safetensors,
#   a target_return stop, a sweep's or a population's ranking;
# - test: what ``duetrl eval``, ``duetrl bench`` and ``duetrl.evaluate`` score. Training never plays these, so a run
#   stopped or a checkpoint picked on its validation score is not graded on the episodes that picked it.
VALIDATION_SEED_BASE = 500_000
EVAL_SEED_BASE = 1_000_000  # the test episodes: seeds from here on
MAX_PARALLEL = 50
DEFAULT_MAX_STEPS = 10_000  # RunConfig.eval_max_steps: the step cap of an episode on an env without a time limit

ActFn = Callable[[Tensor], Tensor]


class EvaluationStopped(Exception):  # noqa: N818 - a signal, not an error
    """The evaluation was asked to stop (``stop()`` became true) before its episodes ended."""


@dataclass
class EvalResult:
    returns: list[float]
    lengths: list[int] = field(default_factory=list)
    capped: int = 0  # episodes cut at the step cap (the env never ended them)
    step_cap: int | None = None  # that cap: the env's own time limit, else max_steps
    deterministic: bool | None = None  # the policy's most likely actions (True) or sampled ones (False)

    @property
    def mode(self) -> str | None:
        """``"deterministic"`` or ``"sampled"``: how the policy acted (None if not told)."""
        return None if self.deterministic is None else "deterministic" if self.deterministic else "sampled"

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std(self) -> float:
        return float(np.std(self.returns))

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean_return": self.mean,
            "std_return": self.std,
            "median_return": float(np.median(self.returns)),  # robust to the rare failed episode
            "episodes": len(self.returns),
            "min_return": float(np.min(self.returns)),
            "max_return": float(np.max(self.returns)),
            "mean_length": float(np.mean(self.lengths)) if self.lengths else None,
            "capped_episodes": self.capped,
            "mode": self.mode,
        }

    def cap_warning(self, env_id: str) -> str | None:
        """One sentence when episodes were cut at the step cap, else None."""
        if not self.capped:
            return None
        return (
            f"{self.capped} of {len(self.returns)} evaluation episodes of {env_id} were cut at {self.step_cap} steps: "
            f"the env has no time limit and did not end them, so their returns cover {self.step_cap} steps only "
            "(eval_max_steps sets the cap)"
        )


def step_cap(env: gym.Env | gym.vector.VectorEnv, max_steps: int) -> int:
    """Steps after which an evaluation episode is cut: the env's own time limit (a vector env's first copy's),
    else ``max_steps``."""
    if isinstance(env, gym.vector.SyncVectorEnv):
        env = env.envs[0]
    limit = env.spec.max_episode_steps if env.spec is not None else None
    return int(limit) if limit else int(max_steps)


def eval_vector_env(
    factory: Callable[[], gym.Env],
    n: int,
    env_id: Any = None,
    env_kwargs: dict[str, Any] | None = None,
    wrappers: list[str] | tuple[str, ...] = (),
    frame_stack: int = 1,
) -> gym.vector.VectorEnv:
    """``n`` copies of ``factory``'s env for evaluation, autoreset ``SAME_STEP``: the env's exact numpy twin
    (:func:`duetrl.envs.classic.vector_twin`: the same episodes, many times faster) where ``env_id`` has one and
    nothing wraps it, else a ``SyncVectorEnv``."""
    twin = None if wrappers or frame_stack > 1 else vector_twin(env_id, n, env_kwargs or {})
    if twin is not None:
        return twin
    return gym.vector.SyncVectorEnv([factory] * n, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)


def evaluate_policy(
    act: ActFn,
    env_id: Any,
    env_kwargs: dict[str, Any] | None = None,
    episodes: int = 10,
    seed: int = EVAL_SEED_BASE,
    device: torch.device | str = "cpu",
    max_steps: int = DEFAULT_MAX_STEPS,
    stop: Callable[[], bool] | None = None,
    wrappers: list[str] | tuple[str, ...] = (),
    frame_stack: int = 1,
) -> EvalResult:
    """Run ``episodes`` full episodes of Gymnasium's own env, seeded ``seed, seed+1, ...``, many in parallel.

    ``act`` maps a batch of observations to env actions. An episode is cut after the env's own time limit or,
    on an env without one, after ``max_steps`` steps (``EvalResult.capped`` counts those). ``stop``, checked
    every step, raises :class:`EvaluationStopped` when it returns true (a signal during the evaluation). An ``act``
    with memory (a ``reset(done)`` method, :class:`duetrl.cores.StatefulAct`) is told where episodes start."""
    factory = env_factory(env_id, wrappers=wrappers, frame_stack=frame_stack, **(env_kwargs or {}))
    returns: list[float] = []
    lengths: list[int] = []
    capped, cap = 0, None
    while len(returns) < episodes:
        n = min(MAX_PARALLEL, episodes - len(returns))  # the policy's batch as before: its rounding is kept
        vec = eval_vector_env(factory, n, env_id, env_kwargs, wrappers, frame_stack)
        try:
            cap = step_cap(vec, max_steps)
            space, act_space = vec.single_observation_space, vec.single_action_space
            obs, _ = vec.reset(seed=[seed + len(returns) + i for i in range(n)])
            _reset_memory(act, np.ones(n, dtype=bool))
            total, length = np.zeros(n), np.zeros(n, dtype=np.int64)
            running = np.ones(n, dtype=bool)
            while running.any():
                if stop is not None and stop():
                    raise EvaluationStopped
                with torch.no_grad():
                    action = act(to_tensor(space, obs, device)).cpu().numpy()
                obs, reward, terminated, truncated, _ = vec.step(env_actions(act_space, action, n))
                _reset_memory(act, terminated | truncated)  # autoreset: those envs start a new episode
                total += reward * running
                length += running
                running &= ~(terminated | truncated)
                if running.any() and length.max() >= cap:
                    capped += int(running.sum())
                    break
        finally:
            vec.close()
        returns += total.tolist()
        lengths += length.tolist()
    return EvalResult(returns, lengths, capped, cap)


def render_episodes(
    act: ActFn,
    env_id: Any,
    env_kwargs: dict[str, Any] | None = None,
    episodes: int = 1,
    seed: int = EVAL_SEED_BASE,
    render_mode: str = "human",
    video: str | Path | None = None,
    fps: int | None = None,
    device: torch.device | str = "cpu",
    max_steps: int = DEFAULT_MAX_STEPS,
    wrappers: list[str] | tuple[str, ...] = (),
    frame_stack: int = 1,
) -> EvalResult:
    """Play episodes one at a time in a window (``render_mode="human"``) or into a video file (.mp4/.gif), each
    cut as in :func:`evaluate_policy`."""
    if video is not None:
        if Path(video).suffix.lower() not in (".mp4", ".gif"):
            raise UserError(f"video file must end in .mp4 or .gif, got {Path(video).name!r}")
        render_mode = "rgb_array"
        writer_module = _imageio()
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # off-screen frames need no display
        headless_gl()
    elif render_mode == "human" and not has_display():
        raise UserError(
            "showing episodes in a window needs a display, and there is none here (DISPLAY is not set): "
            f"record them to a file instead ({setting('video', 'out.mp4')})"
        )
    wrapping = {"wrappers": wrappers, "frame_stack": frame_stack}
    env = env_factory(env_id, render_mode=render_mode, **wrapping, **(env_kwargs or {}))()
    if video is not None and _is_mujoco(env) and not os.environ.get("MUJOCO_GL") and not has_display():
        env.close()
        raise UserError(
            "recording MuJoCo video without a display needs an off-screen OpenGL, and neither EGL nor OSMesa was "
            "found: install one (apt install libegl1, or libosmesa6) and set MUJOCO_GL=egl (or osmesa)"
        )
    cap = step_cap(env, max_steps)
    frames: list[np.ndarray] = []
    returns, lengths, capped = [], [], 0
    for k in range(episodes):
        obs, _ = env.reset(seed=seed + k)
        _reset_memory(act, np.ones(1, dtype=bool))
        total, length, done = 0.0, 0, False
        while not done:
            if length >= cap:
                capped += 1
                break
            if video is not None:
                frames.append(_render(env))
            with torch.no_grad():
                batch = to_tensor(env.observation_space, batch_of_one(env.observation_space, obs), device)
                action = env_actions(env.action_space, act(batch).cpu().numpy(), 1)[0]
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            length += 1
            done = terminated or truncated
        returns.append(total)
        lengths.append(length)
    if video is not None:
        frames.append(_render(env))
        fps = fps or int(env.metadata.get("render_fps", 30))
        write_video(writer_module, Path(video), frames, fps)
    env.close()
    return EvalResult(returns, lengths, capped, cap)


def _reset_memory(act: ActFn, starts: np.ndarray) -> None:
    """Tell an act function with memory which envs start an episode (a memoryless one has nothing to reset)."""
    reset = getattr(act, "reset", None)
    if reset is not None:
        reset(torch.as_tensor(starts, dtype=torch.bool))


def has_display() -> bool:
    """False on a Linux machine without X or Wayland (a server, a container); elsewhere there is a screen."""
    if not sys.platform.startswith("linux"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def offscreen_gl() -> str | None:
    """MuJoCo's off-screen OpenGL that this machine has: ``egl`` if its library is installed, else ``osmesa``."""
    for name, library in (("egl", "EGL"), ("osmesa", "OSMesa")):
        if ctypes.util.find_library(library):
            return name
    return None


def headless_gl() -> str | None:
    """Where there is no display and MUJOCO_GL is unset, point MuJoCo's renderer at :func:`offscreen_gl`. MuJoCo
    reads it when the first render context is made, so setting it here, before the video's env exists, is in time.
    Returns the choice, or None if nothing was set."""
    if has_display() or os.environ.get("MUJOCO_GL"):
        return None
    choice = offscreen_gl()
    if choice is not None:
        os.environ["MUJOCO_GL"] = choice
    return choice


def _is_mujoco(env: gym.Env) -> bool:
    return type(env.unwrapped).__module__.startswith("gymnasium.envs.mujoco") or hasattr(
        env.unwrapped, "mujoco_renderer"
    )


def _render(env: gym.Env) -> np.ndarray:
    """One frame as uint8 RGB (MinAtar renders floats in [0, 1]); an OpenGL failure (MuJoCo's FatalError, a
    RuntimeError) is a UserError saying what to set."""
    try:
        frame = env.render()
        if isinstance(frame, np.ndarray) and np.issubdtype(frame.dtype, np.floating):
            frame = (np.clip(frame, 0.0, 1.0) * 255).round().astype(np.uint8)
        return frame
    except Exception as e:
        if type(e).__name__ != "FatalError" and "opengl" not in str(e).lower():
            raise
        env.close()
        chosen = os.environ.get("MUJOCO_GL")
        raise UserError(
            f"cannot render off-screen frames (MUJOCO_GL={chosen or 'unset'}): {_first_line(e)}; set MUJOCO_GL to "
            "egl or osmesa, whichever this machine has (apt install libegl1 or libosmesa6)"
        ) from e


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _imageio() -> Any:
    try:
        import imageio.v2 as imageio
    except ImportError:
        raise UserError("recording video needs imageio: pip install 'duetrl[video]'") from None
    return imageio


def write_video(imageio: Any, path: Path, frames: list[np.ndarray], fps: int) -> None:
    suffix = path.suffix.lower()
    if suffix not in (".mp4", ".gif"):
        raise UserError(f"video file must end in .mp4 or .gif, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{suffix}")
    try:
        if suffix == ".gif":
            imageio.mimsave(tmp, frames, duration=1000 / fps, loop=0)
        else:
            imageio.mimsave(tmp, frames, fps=fps, macro_block_size=1)
    except (ImportError, ValueError, RuntimeError) as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {path.name}: {e} (pip install 'duetrl[video]')") from None
    tmp.replace(path)
