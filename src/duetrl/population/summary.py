"""The summary across members: mean, median and IQM with 95% CIs, and who reached the target when."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from duetrl.logs import read_metrics
from duetrl.stats import bootstrap_ci, summarize, summarize_times

# ---------------------------------------------------------------------------------------------- summary


def time_to_target(run_dir: Path, target: float) -> tuple[float | None, float | None]:
    """(env steps, seconds) at a run's first evaluation whose mean reached ``target``; Nones if none did."""
    rows = read_metrics(run_dir / "metrics.csv") if (run_dir / "metrics.csv").exists() else []
    hit = next((r for r in rows if r.get("eval_return_mean", -math.inf) >= target), None)
    return (hit["env_steps"], hit["wall_time_s"]) if hit else (None, None)


def summarize_members(results: list[dict[str, Any]], target: float | None) -> list[dict[str, Any]]:
    """Across the members of each hyperparameter setting: the final evaluation's mean, median and IQM with 95%
    bootstrap intervals (:mod:`duetrl.stats`), and with a target how many reached it and when (env steps and
    seconds: :func:`duetrl.stats.summarize_times`); failed members are counted apart."""
    rows = []
    for label in dict.fromkeys(r["label"] for r in results):
        group = [r for r in results if r["label"] == label]
        scored = [r for r in group if "final" in r]
        row: dict[str, Any] = {"config": label or "all", "members": len(scored), "failed": len(group) - len(scored)}
        if scored:
            finals = [r["final"] for r in scored]
            stats = summarize(finals, target, [r["seed"] for r in scored])
            row.update(
                mean=round(stats.mean, 2),
                mean_ci=[round(x, 2) for x in bootstrap_ci(finals, np.mean)],
                median=round(stats.median, 2),
                median_ci=[round(x, 2) for x in stats.median_ci],
                iqm=round(stats.iqm, 2),
                iqm_ci=[round(x, 2) for x in stats.iqm_ci],
                worst=round(stats.worst_score, 2),
                worst_seed=stats.worst_seed,
            )
            if target is not None:
                times = [time_to_target(Path(r["run_dir"]), target) for r in scored]
                row["reached_target"] = sum(steps is not None for steps, _ in times)
                row["fraction_reached"] = row["reached_target"] / len(scored)
                row["steps_to_target"] = summarize_times([steps for steps, _ in times]).format()
                row["seconds_to_target"] = summarize_times([seconds for _, seconds in times]).format()
        rows.append(row)
    return rows


def format_members_summary(rows: list[dict[str, Any]]) -> str:
    """One line per hyperparameter setting."""
    lines = []
    for row in rows:
        if not row["members"]:
            lines.append(f"{row['config']}: no member finished ({row['failed']} failed)")
            continue
        text = (
            f"{row['config']}: {row['members']} members, final mean {row['mean']:.1f} [{row['mean_ci'][0]:.1f}, "
            f"{row['mean_ci'][1]:.1f}]; "
            f"median {row['median']:.1f} [{row['median_ci'][0]:.1f}, {row['median_ci'][1]:.1f}]; "
            f"IQM {row['iqm']:.1f} [{row['iqm_ci'][0]:.1f}, {row['iqm_ci'][1]:.1f}] (95% CIs); "
            f"worst {row['worst']:.1f} (seed {row['worst_seed']})"
        )
        if "reached_target" in row:
            text += f"; {row['reached_target']}/{row['members']} reached the target, steps: {row['steps_to_target']}"
        if row["failed"]:
            text += f" ({row['failed']} failed)"
        lines.append(text)
    return "\n".join(lines)
