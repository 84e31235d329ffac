"""Learning curves: measured points only, markers where there are few, a band the legend names, any metric, and a
default output inside the run or sweep directory."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest

from duetrl.curves import plot, series

pytest.importorskip("matplotlib")


def write_run(run_dir, rows):
    run_dir.mkdir(parents=True)
    columns = sorted({k for row in rows for k in row}, key=lambda k: (k not in ("env_steps", "wall_time_s"), k))
    with (run_dir / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return run_dir


def evals(steps_and_returns, wall=1.0, loss=None):
    rows = []
    for step, value in steps_and_returns:
        if loss is not None:
            rows.append({"env_steps": step, "wall_time_s": step * wall / 2, "critic_loss": loss})
        rows.append({"env_steps": step, "wall_time_s": step * wall, "eval_return_mean": value})
    return rows


def test_seeds_are_averaged_at_their_measured_points_not_interpolated():
    a = (np.array([100.0, 200.0, 300.0]), np.array([-300.0, -200.0, -150.0]))
    b = (np.array([100.0, 200.0, 300.0]), np.array([-500.0, -180.0, -170.0]))
    s = series("x", [a, b])
    np.testing.assert_array_equal(s.x, [100, 200, 300])
    np.testing.assert_array_equal(s.mean, [-400, -190, -160])
    np.testing.assert_array_equal(s.low, [-500, -200, -170])
    np.testing.assert_array_equal(s.high, [-300, -180, -150])
    # on wall time the seeds' x differ: the k-th points are averaged, up to the shortest seed
    c = (np.array([1.0, 2.2]), np.array([-1.0, -2.0]))
    d = (np.array([1.2, 2.0, 3.0]), np.array([-3.0, -4.0, -5.0]))
    s = series("y", [c, d], band="ci95")
    np.testing.assert_allclose(s.x, [1.1, 2.1])
    np.testing.assert_array_equal(s.mean, [-2.0, -3.0])
    np.testing.assert_allclose(s.high - s.mean, [12.706 * np.sqrt(2) / np.sqrt(2)] * 2, rtol=1e-3)  # t(1) * std/sqrt(2)
    one = series("z", [a])
    assert one.low is None and one.seeds == 1 and np.array_equal(one.x, a[0]) and np.array_equal(one.mean, a[1])


@pytest.fixture
def figures(monkeypatch):
    """The figures plot() draws, kept open for the test to read."""
    import matplotlib.pyplot as plt

    kept = []
    monkeypatch.setattr(plt, "close", lambda fig=None: kept.append(fig))
    yield kept
    for fig in kept:
        plt.figure(fig.number)
        plt.clf()


def test_a_single_evaluation_point_is_drawn_as_a_marker_and_the_band_is_named(tmp_path, figures):
    single = write_run(tmp_path / "single", evals([(400, -900.0)]))
    sweep = tmp_path / "sweep" / "trials" / "gamma=0.9"
    write_run(sweep / "seed_0", evals([(200, -800.0), (400, -300.0)]))
    write_run(sweep / "seed_1", evals([(200, -600.0), (400, -100.0)]))
    out = plot([single, tmp_path / "sweep"], tmp_path / "c.png")
    assert out.stat().st_size > 1000
    (ax,) = figures[0].axes
    lines = {line.get_label(): line for line in ax.lines if not line.get_label().startswith("_")}
    one = lines["single (1 seed)"]
    assert one.get_marker() == "o" and list(one.get_xdata()) == [400] and list(one.get_ydata()) == [-900]
    both = lines["sweep/gamma=0.9 (2 seeds)"]
    assert list(both.get_xdata()) == [200, 400] and list(both.get_ydata()) == [-700, -200]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "band: min-max over seeds" in legend


def cli(cwd, *argv):
    done = subprocess.run(
        [sys.executable, "-m", "duetrl.cli", "plot", *map(str, argv)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout, done.stderr


def test_plot_writes_into_the_run_directory_and_offers_other_metrics(tmp_path):
    run = write_run(tmp_path / "run", evals([(200, -800.0), (400, -300.0)], loss=0.5))
    (tmp_path / "elsewhere").mkdir()
    code, out, err = cli(tmp_path / "elsewhere", run)
    assert code == 0, err
    assert out.strip() == str(run / "curves.png") and (run / "curves.png").stat().st_size > 1000
    code, out, err = cli(tmp_path / "elsewhere", run, "--y", "critic_loss", "--band", "ci95")
    assert code == 0, err
    assert (run / "curves-critic_loss.png").is_file()
    assert list((tmp_path / "elsewhere").iterdir()) == []  # nothing in the current directory
    code, out, err = cli(tmp_path, run, "--y", "actor_loss")
    assert code == 2 and err.strip().splitlines() == [
        "duetrl: error: no run has the metric 'actor_loss'; these have: critic_loss, eval_return_mean"
    ], err
