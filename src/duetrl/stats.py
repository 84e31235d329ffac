"""Figures over many seeds that a lucky seed cannot fake: fraction reaching a threshold, median and
interquartile mean (IQM) with 95% percentile-bootstrap confidence intervals, and the worst seed.

The IQM and the percentile bootstrap are the definitions of rliable (Agarwal et al. 2021, "Deep RL at the
Edge of the Statistical Precipice"): ``aggregate_iqm`` is ``scipy.stats.trim_mean(x, 0.25)``, and its
intervals are percentile bootstraps. rliable itself is not used: 1.2.0, its newest release, cannot run with
the current dependencies here -- under arch 8 its StratifiedBootstrap fails ("Only NumPy arrays ... are
supported in keyword arguments. Input `random_state` ..."), and arch 7.2 fails to import under pandas 3.
The two definitions take about thirty lines of numpy, with no scipy, pandas or arch dependency.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

# A reduction over an axis, like np.mean or np.median: bootstrap_ci calls it once on a [reps, n] matrix.
Statistic = Callable[..., np.ndarray | float]


def iqm(scores: Sequence[float] | np.ndarray, axis: int = -1) -> np.ndarray | float:
    """Interquartile mean: sort, cut ``int(0.25 * n)`` scores from each end, average the rest.

    Equal to ``scipy.stats.trim_mean(scores, 0.25, axis)``; reduces ``axis`` like ``np.mean``."""
    x = np.sort(np.asarray(scores, dtype=float), axis=axis)
    n = x.shape[axis]
    cut = int(0.25 * n)
    return np.take(x, np.arange(cut, n - cut), axis=axis).mean(axis=axis)


def bootstrap_ci(
    scores: Sequence[float] | np.ndarray,
    statistic: Statistic,
    reps: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of ``statistic(scores)``.

    Draws ``reps`` resamples of the n scores with replacement at once (a [reps, n] index matrix from a seeded
    numpy Generator), applies ``statistic(samples, axis=-1)`` (np.median, np.mean, :func:`iqm`), and returns
    the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the ``reps`` values."""
    x = np.asarray(scores, dtype=float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"bootstrap_ci needs a non-empty 1-D list of scores, got shape {x.shape}")
    index = np.random.default_rng(seed).integers(0, x.size, size=(reps, x.size))
    values = statistic(x[index], axis=-1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class SeedSummary:
    """One score per seed, summarised; ``reached`` and ``fraction_reached`` are None without a threshold."""

    n: int
    threshold: float | None
    reached: int | None
    fraction_reached: float | None
    median: float
    median_ci: tuple[float, float]
    iqm: float
    iqm_ci: tuple[float, float]
    mean: float
    worst_seed: int
    worst_score: float

    def format(self) -> str:
        """One line, e.g. ``10/10 reach -200; median -163.2 [-166.0, -160.1]; IQM ...; worst -178.3 (seed 6)``."""
        reach = "" if self.threshold is None else f"{self.reached}/{self.n} reach {self.threshold:g}; "
        return (
            f"{reach}median {self.median:.1f} [{self.median_ci[0]:.1f}, {self.median_ci[1]:.1f}]; "
            f"IQM {self.iqm:.1f} [{self.iqm_ci[0]:.1f}, {self.iqm_ci[1]:.1f}]; "
            f"worst {self.worst_score:.1f} (seed {self.worst_seed})"
        )


def summarize(scores: Sequence[float], threshold: float | None, seeds: Sequence[int] | None = None) -> SeedSummary:
    """Summarise one score per seed (``seeds[i]`` scored ``scores[i]``; default seeds 0..n-1).

    A seed reaches the threshold when its score is ``>= threshold``; ``threshold=None`` reports no fraction."""
    x = np.asarray(scores, dtype=float)
    seeds = list(range(x.size)) if seeds is None else list(seeds)
    if len(seeds) != x.size:
        raise ValueError(f"{x.size} scores but {len(seeds)} seeds")
    worst = int(np.argmin(x))
    reached = None if threshold is None else int((x >= threshold).sum())
    return SeedSummary(
        n=int(x.size),
        threshold=threshold,
        reached=reached,
        fraction_reached=None if reached is None else reached / x.size,
        median=float(np.median(x)),
        median_ci=bootstrap_ci(x, np.median),
        iqm=float(iqm(x)),
        iqm_ci=bootstrap_ci(x, iqm),
        mean=float(x.mean()),
        worst_seed=seeds[worst],
        worst_score=float(x[worst]),
    )


@dataclass(frozen=True)
class TimeSummary:
    """Env steps or seconds to a threshold over n seeds: how many got there, and the median and max of those."""

    n: int
    reached: int
    median: float | None  # over the seeds that got there; None if none did
    max: float | None

    def format(self) -> str:
        """One line, e.g. ``9/10 got there; median 1,500, max 2,500``."""
        if not self.reached:
            return f"0/{self.n} got there"
        return f"{self.reached}/{self.n} got there; median {_number(self.median)}, max {_number(self.max)}"


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.1f}"


def summarize_times(values: Sequence[float | None]) -> TimeSummary:
    """Summarise steps or seconds to a threshold, one value per seed; None = that seed never got there."""
    got = np.array([v for v in values if v is not None], dtype=float)
    return TimeSummary(
        n=len(values),
        reached=int(got.size),
        median=float(np.median(got)) if got.size else None,
        max=float(got.max()) if got.size else None,
    )
