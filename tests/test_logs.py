"""Metric sinks: the CSV grows columns as metrics appear; W&B runs offline without a key and never blocks."""

import csv

import pytest

import duetrl
from duetrl.logs import CSVLog


def test_csv_adds_columns_and_keeps_rows(tmp_path):
    log = CSVLog(tmp_path / "m.csv")
    log.write({"env_steps": 1, "wall_time_s": 0.1, "a": 1.0})
    log.write({"env_steps": 2, "wall_time_s": 0.2, "b": 2.0})
    rows = list(csv.DictReader((tmp_path / "m.csv").open()))
    assert [r["env_steps"] for r in rows] == ["1", "2"]
    assert rows[0]["a"] == "1.0" and rows[0]["b"] == "" and rows[1]["b"] == "2.0"
    resumed = CSVLog(tmp_path / "m.csv", resume_at=1)  # a resumed run drops rows past its checkpoint
    assert [r["env_steps"] for r in resumed.rows] == ["1"]


def test_wandb_runs_offline_without_a_key(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "run"
    result = duetrl.train(
        "Pendulum-v1",
        "ac",
        preset="chapter",
        steps=400,
        eval_every=200,
        eval_episodes=1,
        wandb=True,
        run_dir=run_dir,
        quiet=True,
    )
    assert result.env_steps == 400
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert offline, "W&B should have written an offline run"
