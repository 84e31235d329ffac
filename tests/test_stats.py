"""Seed statistics (duetrl.stats) against hand-computed values."""

import numpy as np
import pytest

from duetrl.stats import bootstrap_ci, iqm, summarize, summarize_times


def test_iqm_averages_the_middle_half():
    assert iqm(range(1, 11)) == pytest.approx(5.5)  # int(2.5) = 2 cut from each end: mean(3..8)
    assert iqm([100, 1, 2, 3, 4, 5, 6, -100]) == pytest.approx(3.5)  # 8 values: 2 cut each end, mean(2, 3, 4, 5)
    assert iqm([7.0, -1e9, 1e9]) == pytest.approx(7.0 / 3)  # int(0.75) = 0: nothing cut, the plain mean


def test_iqm_reduces_the_last_axis_of_a_matrix():
    rows = np.array([[1, 2, 3, 4, 1000], [5, 5, 5, 5, 5]], dtype=float)
    np.testing.assert_allclose(iqm(rows), [3.0, 5.0])  # n=5: int(1.25) = 1 cut from each end
    np.testing.assert_allclose(iqm(rows.T, axis=0), [3.0, 5.0])


def test_iqm_matches_scipy_trim_mean():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    for n in (1, 2, 3, 4, 5, 7, 8, 10, 13, 100):
        x = rng.normal(size=n)
        assert iqm(x) == pytest.approx(stats.trim_mean(x, 0.25))


def test_bootstrap_ci_contains_the_estimate_and_narrows_with_more_data():
    rng = np.random.default_rng(0)
    small, large = rng.normal(-160, 10, size=10), rng.normal(-160, 10, size=200)
    for statistic in (np.median, iqm):
        low, high = bootstrap_ci(small, statistic)
        assert low <= statistic(small) <= high
        low_large, high_large = bootstrap_ci(large, statistic)
        assert low_large <= statistic(large) <= high_large
        assert high_large - low_large < (high - low) / 2


def test_bootstrap_ci_of_a_constant_sample_has_zero_width():
    assert bootstrap_ci([-150.0] * 10, iqm) == (-150.0, -150.0)


def test_bootstrap_ci_is_reproducible_by_seed():
    x = [-120.0, -135.5, -150.0, -170.2, -300.0, -141.0]
    assert bootstrap_ci(x, np.median, seed=3) == bootstrap_ci(x, np.median, seed=3)
    assert bootstrap_ci(x, np.mean, seed=3) != bootstrap_ci(x, np.mean, seed=4)


def test_bootstrap_ci_widens_with_confidence():
    x = np.arange(20.0)
    low90, high90 = bootstrap_ci(x, np.mean, confidence=0.90)
    low99, high99 = bootstrap_ci(x, np.mean, confidence=0.99)
    assert low99 < low90 < 9.5 < high90 < high99


def test_bootstrap_ci_rejects_an_empty_sample():
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_ci([], np.mean)


def test_summarize_counts_seeds_at_the_threshold_and_names_the_worst():
    scores = [-160.0, -200.0, -150.0, -400.0, -199.9]
    s = summarize(scores, -200.0, seeds=[10, 11, 12, 13, 14])
    assert (s.n, s.reached, s.fraction_reached) == (5, 4, 0.8)  # -200 itself reaches it
    assert (s.worst_seed, s.worst_score) == (13, -400.0)
    assert s.median == -199.9
    assert s.iqm == pytest.approx((-160.0 - 200.0 - 199.9) / 3)  # int(1.25) = 1 cut each end
    assert s.mean == pytest.approx(sum(scores) / 5)
    assert s.median_ci[0] <= s.median <= s.median_ci[1]
    assert s.iqm_ci[0] <= s.iqm <= s.iqm_ci[1]
    line = s.format()
    assert line.startswith("4/5 reach -200; median -199.9 [")
    assert line.endswith("worst -400.0 (seed 13)")
    assert "; IQM -186.6 [" in line


def test_summarize_without_threshold_or_seeds():
    s = summarize([3.0, 1.0, 2.0], None)
    assert s.reached is None and s.fraction_reached is None
    assert s.worst_seed == 1  # seeds default to 0..n-1
    assert s.format().startswith("median 2.0 [")
    with pytest.raises(ValueError, match="3 scores but 2 seeds"):
        summarize([3.0, 1.0, 2.0], None, seeds=[0, 1])


def test_summarize_times_ignores_seeds_that_never_got_there():
    t = summarize_times([1500, None, 2500, 1000, None])
    assert (t.n, t.reached, t.median, t.max) == (5, 3, 1500.0, 2500.0)
    assert t.format() == "3/5 got there; median 1,500, max 2,500"
    assert summarize_times([8.25, 12.5]).format() == "2/2 got there; median 10.4, max 12.5"
    none = summarize_times([None, None])
    assert (none.reached, none.median, none.max) == (0, None, None)
    assert none.format() == "0/2 got there"
