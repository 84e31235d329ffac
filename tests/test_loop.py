"""The loop's small pieces: the window of metrics between two rows, and the schedule of rows, evaluations and
checkpoints (the loop itself runs in test_train.py and test_resume.py)."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest

from duetrl.config import RunConfig
from duetrl.loop import MetricWindow, Schedule


def test_the_window_averages_what_happened_since_the_last_row():
    window = MetricWindow()
    assert not window and window.flush() == {}
    assert window.add_episodes([-100.0, -300.0], [200, 200]) == -200.0
    window.add_metrics({"critic_loss": 1.0})
    window.add_metrics({"critic_loss": 3.0, "actor_loss": 0.5})
    assert window
    assert window.flush() == {"episode_return": -200.0, "episode_length": 200.0, "critic_loss": 2.0, "actor_loss": 0.5}
    assert not window and window.flush() == {}
    # The progress bar's return runs over the last 20 episodes, across rows.
    assert window.add_episodes([float(r) for r in range(30)], [1] * 30) == pytest.approx(sum(range(10, 30)) / 20)


def due_steps(schedule: Schedule, event: str, steps: range) -> list[int]:
    return [s for s in steps if getattr(schedule, f"{event}_due")(s)]


def test_evaluations_come_every_eval_every_steps_but_not_at_the_end():
    run = RunConfig(steps=1000, eval_every=300)
    assert due_steps(Schedule(run, 0), "eval", range(4, 1001, 4)) == [300, 600, 900]
    assert due_steps(Schedule(run, 0), "eval", range(7, 1001, 7)) == [301, 602, 903]  # the first step past each
    assert due_steps(Schedule(RunConfig(steps=1000, eval_every=0), 0), "eval", range(1, 1001)) == []


def test_rows_come_after_log_every_steps():
    assert due_steps(Schedule(RunConfig(log_every=100), 0), "row", range(30, 400, 30)) == [120, 240, 360]
    assert due_steps(Schedule(RunConfig(log_every=0), 0), "row", range(1, 4)) == [1, 2, 3]


@pytest.mark.parametrize("event, settings", [("eval", {"eval_every": 300}), ("checkpoint", {"checkpoint_every": 300})])
def test_a_resumed_schedule_is_the_uninterrupted_one(event, settings):
    run = RunConfig(steps=2000, checkpoint_seconds=math.inf, **settings)
    whole = due_steps(Schedule(run, 0), event, range(10, 2001, 10))
    resumed_at = 700
    first = due_steps(Schedule(run, 0), event, range(10, resumed_at + 1, 10))
    rest = due_steps(Schedule(run, resumed_at), event, range(resumed_at + 10, 2001, 10))
    assert first + rest == whole


def test_checkpoints_come_by_steps_or_by_time(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("duetrl.loop.time.monotonic", lambda: clock[0])
    schedule = Schedule(RunConfig(checkpoint_every=0, checkpoint_seconds=30), 0)
    assert not schedule.checkpoint_due(100)
    clock[0] = 31.0
    assert schedule.checkpoint_due(200)
    assert not schedule.checkpoint_due(300)  # the clock restarts at each checkpoint
    clock[0] = 62.0
    assert schedule.checkpoint_due(400)


def test_importing_duetrl_makes_waiting_openmp_threads_sleep():
    """duetrl sets OMP_WAIT_POLICY=PASSIVE before torch loads OpenMP (spinning threads made a two-thread run 20x
    slower beside another job), and keeps a value the user set."""
    code = "import os, duetrl; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    for given, expected in ((None, "PASSIVE"), ("ACTIVE", "ACTIVE")):
        run_env = env if given is None else {**env, "OMP_WAIT_POLICY": given}
        out = subprocess.run([sys.executable, "-c", code], env=run_env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == expected
