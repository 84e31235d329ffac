"""Learning curves: eval return against env steps (or wall time), one line per configuration, a band across
seeds, from any mix of single runs and sweep directories."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from duetrl.errors import UserError
from duetrl.logs import read_metrics

X_AXES = ("env_steps", "wall_time_s")


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


def curve(run_dir: Path, x: str) -> tuple[np.ndarray, np.ndarray]:
    rows = [r for r in read_metrics(run_dir / "metrics.csv") if "eval_return_mean" in r and x in r]
    return np.array([r[x] for r in rows]), np.array([r["eval_return_mean"] for r in rows])


def plot(paths: list[str | Path], output: str | Path, x: str = "env_steps", title: str | None = None) -> Path:
    """Draw the curves to ``output`` (.png, .svg or .pdf) and return its path."""
    if x not in X_AXES:
        raise UserError(f"--x {x!r}: use env_steps or wall_time_s")
    output = Path(output)
    if output.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise UserError(f"output must end in .png, .svg or .pdf, got {output.name!r}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("plotting needs matplotlib: pip install 'duetrl[plot]'") from None

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, runs in collect_runs(paths).items():
        curves = [c for c in (curve(r, x) for r in runs) if len(c[0])]
        if not curves:
            continue
        # Seeds evaluate at slightly different points: put them on one grid over their common span.
        start, stop = max(c[0][0] for c in curves), min(c[0][-1] for c in curves)
        grid = np.linspace(start, stop, 100) if stop > start else np.array([start])
        ys = np.stack([np.interp(grid, cx, cy) for cx, cy in curves])
        mean = ys.mean(0)
        (line,) = ax.plot(grid, mean, label=f"{label} ({len(curves)} seed{'s' if len(curves) > 1 else ''})")
        if len(curves) > 1:
            ax.fill_between(grid, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel("env steps" if x == "env_steps" else "wall time (s)")
    ax.set_ylabel("eval return (mean over episodes)")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output)
    plt.close(fig)
    return output
