"""Callbacks: every event is called when it should be, a callback can stop training, and record its own metric."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import read_metrics

import duetrl
from duetrl import checkpoint as ckpt

# 4 envs x 16 steps per update (a2c, update_every=16): an update every 64 env steps; rows after each update.
SMALL = dict(
    preset="none", num_envs=4, update_every=16, steps=256, eval_every=128, eval_episodes=1, log_every=0, quiet=True
)


class Counter(duetrl.Callback):
    def __init__(self):
        self.calls: dict[str, int] = {}
        self.steps_seen: list[int] = []
        self.rows: list[dict] = []
        self.evaluations: list[float] = []

    def _count(self, event):
        self.calls[event] = self.calls.get(event, 0) + 1

    def on_start(self, state):
        self._count("on_start")
        assert state.env_steps == 0 and state.config.run.algo == "a2c"

    def on_step_batch(self, state, step):
        self._count("on_step_batch")
        self.steps_seen.append(state.env_steps)
        assert step.obs.shape == (4, 3) and step.action.shape == (4, 1) and step.reward.shape == (4,)

    def on_update(self, state, metrics):
        self._count("on_update")
        assert "critic_loss" in metrics and state.updates >= 1

    def on_evaluation(self, state, result):
        self._count("on_evaluation")
        self.evaluations.append(result.mean)

    def on_log(self, state, row):
        self._count("on_log")
        self.rows.append(row)

    def on_end(self, state, result):
        self._count("on_end")
        self.result = result


def test_a_callback_is_called_at_every_event(tmp_path):
    counter = Counter()
    result = duetrl.train("Pendulum-v1", "a2c", run_dir=tmp_path / "r", callbacks=[counter], **SMALL)
    assert counter.calls == {
        "on_start": 1,
        "on_step_batch": 64,  # 256 env steps in batches of 4
        "on_update": 4,
        "on_evaluation": 2,  # at 128, and the final one at 256
        "on_log": 4 + 2,  # a row per update, and one per evaluation
        "on_end": 1,
    }
    assert counter.steps_seen == list(range(4, 257, 4))
    assert counter.evaluations[-1] == result.final_eval.mean and counter.result is result
    _, rows = read_metrics(tmp_path / "r")
    assert len(rows) == len(counter.rows)


def test_a_callback_that_returns_false_stops_training_with_a_checkpoint_and_a_final_evaluation(tmp_path):
    class StopAt100(duetrl.Callback):
        def on_step_batch(self, state, step):
            return state.env_steps < 100  # False from 100 on

    result = duetrl.train("Pendulum-v1", "a2c", run_dir=tmp_path / "r", callbacks=[StopAt100()], **SMALL)
    assert result.stopped_early == "callback" and result.env_steps == 100
    assert result.final_eval is not None and len(result.final_eval.returns) == 1
    assert ckpt.latest_checkpoint(tmp_path / "r").name == "step_000000000100.safetensors"


def test_stop_training_raised_in_an_evaluation_makes_it_the_final_one(tmp_path):
    class StopAtFirstEvaluation(duetrl.Callback):
        def on_evaluation(self, state, result):
            self.seen = (state.env_steps, result.mean)
            raise duetrl.StopTraining

    callback = StopAtFirstEvaluation()
    result = duetrl.train("Pendulum-v1", "a2c", run_dir=tmp_path / "r", callbacks=[callback], **SMALL)
    assert result.stopped_early == "callback" and result.env_steps == 128
    assert callback.seen == (128, result.final_eval.mean)


def test_a_callback_records_a_custom_metric_and_saves_a_checkpoint(tmp_path):
    class ActionSize(duetrl.Callback):
        def on_step_batch(self, state, step):
            state.record("action_abs", step.action.abs().mean())

        def on_evaluation(self, state, result):
            self.saved = state.save(tmp_path / f"at_{state.env_steps}.safetensors")

    callback = ActionSize()
    duetrl.train("Pendulum-v1", "a2c", run_dir=tmp_path / "r", callbacks=[callback], **SMALL)
    columns, rows = read_metrics(tmp_path / "r")
    assert "action_abs" in columns
    values = [float(r["action_abs"]) for r in rows if r["action_abs"]]
    assert len(values) == 4 and all(0 <= v <= 2 and math.isfinite(v) for v in values)
    agent = duetrl.load(callback.saved)  # the final evaluation's save, loadable as any checkpoint
    assert agent.act(torch.zeros(3).numpy()).shape == (1,)


def test_sinks_still_get_every_row(tmp_path):
    class Sink:
        rows: list = []
        closed = False

        def write(self, row):
            self.rows.append(row)

        def close(self):
            self.closed = True

    sink = Sink()
    duetrl.train("Pendulum-v1", "a2c", run_dir=tmp_path / "r", sinks=[sink], **SMALL)
    assert len(sink.rows) == 6 and sink.closed


@pytest.mark.parametrize("event", ["on_update", "on_evaluation"])
def test_a_falsy_value_other_than_false_does_not_stop(tmp_path, event):
    callback = type("Zero", (duetrl.Callback,), {event: lambda self, state, x: 0})()
    result = duetrl.train("Pendulum-v1", "a2c", run_dir=tmp_path / "r", callbacks=[callback], **SMALL)
    assert result.stopped_early is None and result.env_steps == 256
