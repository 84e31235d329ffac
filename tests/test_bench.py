"""The benchmark's own pieces (the benchmark itself is run by hand: `duetrl bench`, never timed in tests)."""

import pytest

from duetrl.bench import TASKS, bench, rollout_throughput
from duetrl.errors import UserError


@pytest.mark.parametrize("backend", ["torch", "gymnasium"])
def test_rollout_throughput_runs_a_policy_in_the_loop(backend):
    assert rollout_throughput("Pendulum-v1", num_envs=8, steps=5, backend=backend) > 0


def test_unknown_task_is_a_user_error():
    with pytest.raises(UserError, match="unknown benchmark task"):
        bench(["nope"], [0])


def test_every_task_names_a_registered_algorithm():
    from duetrl.algos import ALGOS

    assert all(task.algo in ALGOS for task in TASKS.values())
