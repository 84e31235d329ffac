"""Callbacks: your code inside the training loop, for custom metrics, early stopping and saving.

Subclass :class:`Callback`, override the events you need, and pass instances to ``duetrl.train(...,
callbacks=[...])`` (or ``duetrl.resume``)::

    class StopWhenSolved(duetrl.Callback):
        def on_evaluation(self, state, result):
            if result.mean > -200:
                state.save(state.run_dir / "solved.safetensors")  # duetrl.load() takes this file
                return False  # stop training

    class ActionSize(duetrl.Callback):
        def on_step_batch(self, state, step):
            state.record("action_abs", float(step.action.abs().mean()))  # a column of metrics.csv

    duetrl.train("Pendulum-v1", "ppo", callbacks=[StopWhenSolved(), ActionSize()])

Every event gets a :class:`TrainingState`, the live run. An event that returns ``False`` (not merely a falsy
value: ``None``, the default, continues) or raises :class:`StopTraining` stops training: the loop stops after the
current step, writes its last metrics row and checkpoint, and evaluates (unless the stop came from an evaluation,
which then is the run's final one); ``TrainResult.stopped_early`` is ``"callback"``.

The ``sinks=`` argument of ``duetrl.train`` takes the simplest form of :meth:`Callback.on_log`: objects with
``write(row)`` and ``close()``, given every metrics row (a sweep reports to Ray Tune this way).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

if TYPE_CHECKING:
    from duetrl.config import Config
    from duetrl.evaluate import EvalResult
    from duetrl.loop import Trainer, TrainResult


class StopTraining(Exception):  # noqa: N818 - a request, not an error
    """Raise it in a callback to stop training (as returning ``False`` does)."""


@dataclass
class StepBatch:
    """One step of every env of the batch, ``[num_envs, ...]`` tensors: what the agent saw and did, and what came
    of it. ``episode_returns`` and ``episode_lengths`` list the episodes that ended at this step."""

    obs: Tensor
    action: Tensor
    reward: Tensor
    terminated: Tensor
    truncated: Tensor
    episode_returns: list[float]
    episode_lengths: list[int]


class TrainingState:
    """The run as a callback sees it: counters, settings, the agent, and two actions (record a metric, save)."""

    def __init__(self, trainer: Trainer):
        self._trainer = trainer

    @property
    def env_steps(self) -> int:
        """Env steps so far, summed over the batch of envs."""
        return self._trainer.env_steps

    @property
    def updates(self) -> int:
        return self._trainer.updates

    @property
    def episodes(self) -> int:
        """Training episodes finished so far."""
        return self._trainer.episodes

    @property
    def run_dir(self) -> Path:
        return self._trainer.run_dir

    @property
    def config(self) -> Config:
        """The run's settings: ``config.run`` (steps, env_id, ...) and ``config.algo`` (the algorithm's)."""
        return self._trainer.cfg

    @property
    def agent(self) -> Any:
        """The agent being trained (``act(obs_tensor, deterministic)``; see ``duetrl.algos.base.Agent``)."""
        return self._trainer.agent

    def record(self, name: str, value: float) -> None:
        """Add a metric to the next metrics row (metrics.csv, TensorBoard, W&B): the mean of the values recorded
        since the row before it, as for the algorithm's own metrics."""
        self._trainer.window.add_metrics({name: float(value)})

    def save(self, path: str | Path) -> Path:
        """Write a checkpoint of the run as it is now to ``path`` (a .safetensors file): ``duetrl.load(path)``
        takes it. The run's own checkpoints (checkpoint_every, best.safetensors) go on as configured."""
        from duetrl import checkpoint as ckpt

        path = Path(path)
        ckpt.save(path, self._trainer.state_dict())
        return path


class Callback:
    """Override the events you need; each gets the live :class:`TrainingState`. Return ``False`` from
    ``on_step_batch``, ``on_update`` or ``on_evaluation`` (or raise :class:`StopTraining`) to stop training."""

    def on_start(self, state: TrainingState) -> None:
        """Before the first step (of this session, for a resumed run)."""

    def on_step_batch(self, state: TrainingState, step: StepBatch) -> bool | None:
        """After every step of the batch of envs (``state.env_steps`` already counts it)."""

    def on_update(self, state: TrainingState, metrics: dict[str, float]) -> bool | None:
        """After every update of the agent, with its metrics (losses, ...)."""

    def on_evaluation(self, state: TrainingState, result: EvalResult) -> bool | None:
        """After every evaluation on held-out episodes, the periodic ones and the final one."""

    def on_log(self, state: TrainingState, row: dict[str, float]) -> None:
        """Every metrics row, as written to metrics.csv."""

    def on_end(self, state: TrainingState, result: TrainResult) -> None:
        """After the last checkpoint and evaluation, with what ``duetrl.train`` returns."""


class CallbackSink:
    """A callback's ``on_log`` as a metrics sink (the logger fans each row out to its sinks)."""

    def __init__(self, callback: Callback, state: TrainingState):
        self.callback, self.state = callback, state

    def write(self, row: dict[str, float]) -> None:
        self.callback.on_log(self.state, row)

    def close(self) -> None:
        pass


def notify(callbacks: list[Callback], event: str, state: TrainingState, *args: Any) -> bool:
    """Call ``event`` on every callback; True if one asked to stop (returned False or raised StopTraining)."""
    stop = False
    for callback in callbacks:
        try:
            stop |= getattr(callback, event)(state, *args) is False
        except StopTraining:
            return True
    return stop
