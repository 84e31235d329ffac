"""Metric sinks: CSV, TensorBoard, Weights & Biases, and the progress bar."""

from __future__ import annotations

import csv
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from tqdm import tqdm

BASE_COLUMNS = ["env_steps", "wall_time_s"]


def read_metrics(path: Path) -> list[dict[str, float]]:
    """A ``metrics.csv`` as rows of floats (empty cells left out)."""
    with path.open(newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


class CSVLog:
    """``metrics.csv``: one row per logged point. A metric seen for the first time adds a column (the file is
    rewritten once with the wider header); rows lacking a metric leave it empty."""

    def __init__(self, path: Path, resume_at: int | None = None):
        self.path = path
        self.columns = list(BASE_COLUMNS)
        self.rows: list[dict[str, Any]] = []
        if resume_at is not None and path.exists():
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                self.columns = list(reader.fieldnames or BASE_COLUMNS)
                self.rows = [r for r in reader if r.get("env_steps") and int(float(r["env_steps"])) <= resume_at]
            self._rewrite()
        else:
            self._rewrite()

    def _rewrite(self) -> None:
        tmp = self.path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp, self.path)

    def write(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        new = [k for k in row if k not in self.columns]
        if new:
            self.columns += new
            self._rewrite()
            return
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore").writerow(row)

    def close(self) -> None:
        pass


class TensorBoardLog:
    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir))

    def write(self, row: dict[str, Any]) -> None:
        step = int(row["env_steps"])
        for key, value in row.items():
            if key != "env_steps" and isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


class WandbLog:
    """Weights & Biases; offline when there is no API key (nothing ever waits on the network)."""

    def __init__(self, run_dir: Path, project: str, name: str, config: dict[str, Any]):
        import wandb

        mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        self.run = wandb.init(
            project=project,
            name=name,
            config=config,
            dir=str(run_dir),
            mode=mode,
            settings=wandb.Settings(init_timeout=30, silent=True),
        )

    def write(self, row: dict[str, Any]) -> None:
        self.run.log({k: v for k, v in row.items() if k != "env_steps"}, step=int(row["env_steps"]))

    def close(self) -> None:
        self.run.finish()


class Logger:
    """Fans each row out to every sink; a failing optional sink (W&B) warns once and is dropped."""

    def __init__(self, sinks: list[Any]):
        self.sinks = sinks

    def write(self, row: dict[str, Any]) -> None:
        for sink in list(self.sinks):
            try:
                sink.write(row)
            except Exception as e:  # an optional sink must never stop training
                if isinstance(sink, CSVLog):
                    raise
                warnings.warn(f"{type(sink).__name__} failed and is turned off: {e}", stacklevel=2)
                self.sinks.remove(sink)

    def close(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as e:  # pragma: no cover - closing must not hide the real outcome
                warnings.warn(f"{type(sink).__name__} failed to close: {e}", stacklevel=2)


def make_logger(
    run_dir: Path, config: dict[str, Any], use_wandb: bool, wandb_project: str, resume_at: int | None = None
) -> Logger:
    sinks: list[Any] = [CSVLog(run_dir / "metrics.csv", resume_at=resume_at)]
    try:
        sinks.append(TensorBoardLog(run_dir / "tb"))
    except ImportError:
        warnings.warn("tensorboard is not installed: no TensorBoard logs (pip install tensorboard)", stacklevel=2)
    if use_wandb:
        try:
            sinks.append(WandbLog(run_dir, wandb_project, run_dir.name, config))
        except ImportError:
            warnings.warn("wandb is not installed: pip install 'duetrl[wandb]'; continuing without it", stacklevel=2)
        except Exception as e:
            warnings.warn(f"W&B could not start ({e}); continuing without it", stacklevel=2)
    return Logger(sinks)


class Progress:
    """A tqdm bar over env steps showing steps/s and the latest returns; silent when ``quiet``."""

    def __init__(self, total: int, initial: int = 0, quiet: bool = False):
        self.bar = tqdm(
            total=total,
            initial=initial,
            unit="step",
            unit_scale=True,
            dynamic_ncols=True,
            disable=quiet,
            file=sys.stderr,
            smoothing=0.05,
        )

    def advance(self, steps: int, **postfix: float) -> None:
        if postfix:
            self.bar.set_postfix({k: f"{v:.1f}" for k, v in postfix.items()}, refresh=False)
        self.bar.update(steps)

    def close(self) -> None:
        self.bar.close()
