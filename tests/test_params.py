"""Every setting is described, from its dataclass: ``duetrl params`` cannot drift from the config classes."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from duetrl.algos import ALGOS
from duetrl.config import RunConfig
from duetrl.params import HELP, describe, field_comments, rows

# dict.fromkeys, not a set: the order must be the same in every process (pytest-xdist's workers collect separately).
CONFIG_CLASSES = [RunConfig, *dict.fromkeys(spec.config_cls for spec in ALGOS.values())]


@pytest.mark.parametrize("cls", CONFIG_CLASSES, ids=lambda c: c.__name__)
def test_every_field_of_every_config_class_has_a_description(cls):
    missing = [f.name for f in dataclasses.fields(cls) if not describe(cls, f.name).strip()]
    assert not missing, f"{cls.__name__}: give these fields a trailing comment, or an entry in params.HELP: {missing}"
    for name, _, _, text in rows(cls):
        assert "\n" not in text and len(text) < 200, (name, text)


def test_every_help_entry_describes_a_field():
    used = set()
    for cls in CONFIG_CLASSES:
        for f in dataclasses.fields(cls):
            used |= {f.name} | {f"{k.__name__}.{f.name}" for k in cls.__mro__}
    assert set(HELP) <= used, f"entries of params.HELP for no field: {sorted(set(HELP) - used)}"


def test_descriptions_come_from_the_dataclass_comments():
    comments = field_comments(RunConfig)
    assert comments["steps"] == "total environment steps (summed over parallel envs)"
    assert describe(RunConfig, "steps") == comments["steps"]
    ppo = ALGOS["ppo"].config_cls
    assert describe(ppo, "squash") == f"{HELP['squash']} ({field_comments(ppo)['squash']})"  # what it is + values


def test_params_shows_the_algorithm_asked_for_with_a_description_per_setting():
    done = subprocess.run(
        [sys.executable, "-m", "duetrl.cli", "params", "--algo", "ppo"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "# run settings" and any(line.startswith("# ppo settings: proximal") for line in lines)
    settings = [line for line in lines if not line.startswith("#")]
    algo = next(line for line in settings if line.split()[0] == "algo")
    assert algo.split()[2] == "'ppo'"  # the algorithm asked for, not the default 'ac'
    assert next(line for line in settings if line.split()[0] == "clip_coef").endswith(
        "clip range of the probability ratio"
    )
    fields = {f.name for f in dataclasses.fields(RunConfig)} | {
        f.name for f in dataclasses.fields(ALGOS["ppo"].config_cls)
    }
    assert len(settings) == len(fields)
