"""Helpers that several test files share, and a ``duetrl`` child process that stops at a known step.

Run as a script, ``python tests/helpers.py STEP FLAG_DIR ARGV...`` is ``duetrl ARGV`` whose run stops dead at its
first metrics row past env step STEP: it writes ``FLAG_DIR/paused`` (holding that row's env step) and waits for
``FLAG_DIR/go``. The parent kills or signals it there, so the tests that stop a run never race the run's end.
"""

from __future__ import annotations

import csv
import functools
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PAUSE_TIMEOUT_S = 300  # a paused child whose test died exits on its own after this long
START_TIMEOUT_S = 120  # generous: the machine may be busy


def read_metrics(run_dir: Path) -> tuple[list[str], list[dict[str, str]]]:
    """``metrics.csv`` of a run: (columns, rows)."""
    with (run_dir / "metrics.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def without_wall_time(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k != "wall_time_s"} for r in rows]


def run(capsys: Any, *argv: Any) -> tuple[int, str, str]:
    """``duetrl ARGV`` in this process: (exit code, stdout, stderr)."""
    from duetrl.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code: int, out: str, err: str, match: str | None = None) -> str:
    """A user error: exit code 2 and one line ``duetrl: error: ...`` (matching ``match``), no traceback."""
    assert code == 2, (code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("duetrl: error:"), err
    assert "Traceback" not in err and "Traceback" not in out
    if match is not None:
        assert re.search(match, lines[0]), lines[0]
    return lines[0]


# The source of a user env module (write it to a file and import it) whose episodes never end.
NEVER_ENDS = '''
import gymnasium as gym
import numpy as np


class NeverEnds(gym.Env):
    """Neither terminates nor truncates: an episode lasts as long as its caller lets it."""

    observation_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, dtype=np.float32), {}

    def step(self, action):
        return np.zeros(2, dtype=np.float32), 1.0, False, False, {}
'''


# ------------------------------------------------------------------------------------------ parameters that moved


def snapshot(module: Any) -> list[Any]:
    """Copies of ``module``'s parameters, to tell later whether a step changed them."""
    return [p.detach().clone() for p in module.parameters()]


def changed(module: Any, before: list[Any]) -> bool:
    """Whether any parameter of ``module`` differs from its ``snapshot``."""
    import torch

    return any(not torch.equal(p, b) for p, b in zip(module.parameters(), before, strict=True))


# ------------------------------------------------------------------------------------------ exported recurrent policies


def state_layout(sidecar: Path) -> list[tuple[str, int, int]]:
    """An exported policy's state layout from its sidecar: (name, offset, size) of each part."""
    import json

    return [(p["name"], p["offset"], p["size"]) for p in json.loads(sidecar.read_text())["state"]["layout"]]


def steps_side_by_side(policy: Any, loaded: Any, obs: Any, steps: int = 3) -> list[tuple[Any, Any]]:
    """Act ``steps`` times with an exported recurrent ``policy`` and the ``loaded`` agent from zeros, each carrying
    its own state; asserts that their actions and next states agree at every step, and returns the file's
    (action, next state) of each step."""
    import numpy as np

    ours, theirs, seen = policy.initial_state(len(obs)), loaded.initial_state(len(obs)), []
    for _ in range(steps):
        action, ours = policy.act(obs, ours)
        expected, theirs = loaded.act(obs, theirs, deterministic=True)
        np.testing.assert_allclose(action, expected, atol=1e-5)
        np.testing.assert_allclose(ours, theirs, atol=1e-5)
        seen.append((action, ours))
    return seen


# ------------------------------------------------------------------------------------------ a run paused at a step


class PauseAfter:
    """A metrics sink that holds the run at its first row past env step ``step`` until ``flag_dir/go`` appears.

    The CSV sink before it has written that row; no checkpoint has been written for it yet."""

    def __init__(self, step: int, flag_dir: Path):
        self.step, self.flag_dir, self.paused = step, flag_dir, False

    def write(self, row: dict[str, Any]) -> None:
        if self.paused or int(row["env_steps"]) <= self.step:
            return
        self.paused = True
        tmp = self.flag_dir / "paused.tmp"
        tmp.write_text(str(row["env_steps"]))
        tmp.rename(self.flag_dir / "paused")  # whole when it appears
        deadline = time.monotonic() + PAUSE_TIMEOUT_S
        while not (self.flag_dir / "go").exists():
            if time.monotonic() > deadline:
                os._exit(3)  # the test is gone: do not linger (an exception here would only be warned about)
            time.sleep(0.01)

    def close(self) -> None:
        pass


def spawn_paused(tmp_path: Path, name: str, step: int, *argv: Any) -> tuple[subprocess.Popen, Path]:
    """``duetrl ARGV`` as a child process that pauses past env step ``step``; its output goes to files
    ``tmp_path/NAME.out`` and ``.err``, its flags to ``tmp_path/NAME.flags``. Returns (process, flag dir)."""
    flags = tmp_path / f"{name}.flags"
    flags.mkdir()
    with (tmp_path / f"{name}.out").open("wb") as out, (tmp_path / f"{name}.err").open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, __file__, str(step), str(flags), *map(str, argv)], cwd=tmp_path, stdout=out, stderr=err
        )
    return proc, flags


def wait_paused(proc: subprocess.Popen, flags: Path) -> int:
    """Wait for a :func:`spawn_paused` child to pause; the env step of the row it paused at."""
    import pytest

    paused = flags / "paused"
    deadline = time.monotonic() + START_TIMEOUT_S
    while not paused.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            code = proc.wait()
            err = flags.with_suffix(".err").read_text()
            pytest.fail(f"the run did not pause (exit code {code}); stderr:\n{err}")
        time.sleep(0.01)
    return int(paused.read_text())


def _main_paused(argv: list[str]) -> int:
    import duetrl
    from duetrl.cli import main

    step, flags, *cli_argv = argv
    duetrl.train = functools.partial(duetrl.train, sinks=[PauseAfter(int(step), Path(flags))])  # the CLI calls this
    return main(cli_argv)


if __name__ == "__main__":
    sys.exit(_main_paused(sys.argv[1:]))
