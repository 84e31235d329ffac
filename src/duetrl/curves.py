"""Learning curves: a metric (the evaluation return by default) against env steps or wall time, one line per
configuration, a band across seeds, from any mix of single runs and sweep directories.

The points drawn are the measured ones: a run's own rows; across seeds, the mean of the seeds' k-th measurement
at the mean of their k-th x (the same x when the seeds share a schedule, as on env steps). Nothing is interpolated.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from duetrl.errors import UserError, setting
from duetrl.logs import read_metrics

X_AXES = ("env_steps", "wall_time_s")
BANDS = {"minmax": "min-max over seeds", "ci95": "95% CI of the mean over seeds"}
Y_LABELS = {
    "eval_return_mean": "eval return (mean over episodes)",
    "episode_return": "training episode return",
}
MARKERS_UP_TO = 40  # a curve with at most this many points shows each one


def collect_runs(paths: list[str | Path]) -> dict[str, list[Path]]:
    """Configuration label -> run directories (one per seed). A sweep contributes one label per configuration;
    a single run is its own label."""
    groups: dict[str, list[Path]] = defaultdict(list)
    for raw in paths:
        path = Path(raw)
        if (path / "metrics.csv").is_file():
            groups[path.name].append(path)
        elif (path / "trials").is_dir():
            for config_dir in sorted(p for p in (path / "trials").iterdir() if p.is_dir()):
                runs = [p for p in sorted(config_dir.glob("seed_*")) if (p / "metrics.csv").is_file()]
                if runs:
                    groups[f"{path.name}/{config_dir.name}"].extend(runs)
        else:
            raise UserError(f"{path} is neither a run directory (metrics.csv) nor a sweep directory (trials/)")
    if not groups:
        raise UserError("no runs with metrics.csv found in the given paths")
    return dict(groups)


def curve(run_dir: Path, x: str, y: str = "eval_return_mean") -> tuple[np.ndarray, np.ndarray]:
    """The run's measured (x, y) points: every metrics row that has both."""
    rows = [r for r in read_metrics(run_dir / "metrics.csv") if y in r and x in r]
    return np.array([r[x] for r in rows]), np.array([r[y] for r in rows])


@dataclass
class Series:
    """One configuration's line: the mean over seeds at each measured point, and the band around it."""

    label: str
    seeds: int
    x: np.ndarray
    mean: np.ndarray
    low: np.ndarray | None  # the band, None for one seed
    high: np.ndarray | None


def series(label: str, curves: list[tuple[np.ndarray, np.ndarray]], band: str = "minmax") -> Series:
    """Seeds' curves as one :class:`Series`: the k-th point is the mean of the seeds' k-th measurements (up to the
    shortest seed), at the mean of their k-th x; the band is their min-max or the 95% CI of the mean."""
    n = min(len(cx) for cx, _ in curves)
    xs = np.stack([cx[:n] for cx, _ in curves])
    ys = np.stack([cy[:n] for _, cy in curves])
    mean = ys.mean(0)
    if len(curves) == 1:
        return Series(label, 1, xs[0], mean, None, None)
    if band == "ci95":
        from duetrl.sweeps import mean_ci95

        half = np.array([mean_ci95(list(column))[1] for column in ys.T])
        low, high = mean - half, mean + half
    else:
        low, high = ys.min(0), ys.max(0)
    return Series(label, len(curves), xs.mean(0), mean, low, high)


def default_output(paths: list[str | Path], y: str) -> Path:
    """Where a plot goes without ``-o``: into the first run or sweep directory given."""
    name = "curves.png" if y == "eval_return_mean" else f"curves-{y}.png"
    return Path(paths[0]) / name


def plot(
    paths: list[str | Path],
    output: str | Path | None = None,
    x: str = "env_steps",
    title: str | None = None,
    y: str = "eval_return_mean",
    band: str = "minmax",
) -> Path:
    """Draw the curves of metric ``y`` (any column of metrics.csv: eval_return_mean, episode_return, a loss) to
    ``output`` (.png, .svg or .pdf; default: curves.png in the first run or sweep directory) and return its path."""
    if x not in X_AXES:
        raise UserError(f"{setting('x', x)}: use env_steps or wall_time_s")
    if band not in BANDS:
        raise UserError(f"{setting('band', band)}: use {' or '.join(BANDS)}")
    output = Path(output) if output is not None else default_output(paths, y)
    if output.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise UserError(f"output must end in .png, .svg or .pdf, got {output.name!r}")
    groups = collect_runs(paths)
    drawn = []
    for label, runs in groups.items():
        curves = [c for c in (curve(r, x, y) for r in runs) if len(c[0])]
        if curves:
            drawn.append(series(label, curves, band))
    if not drawn:
        columns = sorted(
            {k for runs in groups.values() for r in runs for row in read_metrics(r / "metrics.csv") for k in row}
        )
        metrics = [c for c in columns if c not in ("env_steps", "wall_time_s", "updates", "episodes")]
        raise UserError(f"no run has the metric {y!r}; these have: {', '.join(metrics) or 'nothing yet'}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        raise UserError("plotting needs matplotlib: pip install 'duetrl[plot]'") from None

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for s in drawn:
        marker = "o" if len(s.x) <= MARKERS_UP_TO else None
        name = f"{s.label} ({s.seeds} seed{'s' if s.seeds > 1 else ''})"
        (line,) = ax.plot(s.x, s.mean, marker=marker, markersize=4, label=name)
        if s.low is not None and not all(math.isnan(v) for v in s.low):
            if len(s.x) == 1:  # a single point: its band as an error bar
                ax.errorbar(s.x, s.mean, yerr=[s.mean - s.low, s.high - s.mean], color=line.get_color(), capsize=4)
            else:
                ax.fill_between(s.x, s.low, s.high, color=line.get_color(), alpha=0.2, linewidth=0)
    handles, _ = ax.get_legend_handles_labels()
    if any(s.low is not None for s in drawn):
        handles.append(Patch(color="gray", alpha=0.3, label=f"band: {BANDS[band]}"))
    ax.set_xlabel("env steps" if x == "env_steps" else "wall time (s)")
    ax.set_ylabel(Y_LABELS.get(y, y))
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, fontsize=8)
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output)
    plt.close(fig)
    return output
