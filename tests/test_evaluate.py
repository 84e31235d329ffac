"""Evaluation on held-out episodes and headless video."""

import pytest

import duetrl


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "run"
    duetrl.train(
        "Pendulum-v1", "ac", preset="chapter", steps=200, eval_every=0, eval_episodes=1, run_dir=path, quiet=True
    )
    return path


def test_evaluate_is_reproducible_and_counts_episodes(run_dir):
    agent = duetrl.load(run_dir)
    first = duetrl.evaluate(agent, episodes=7, deterministic=True)
    again = duetrl.evaluate(agent, episodes=7, deterministic=True)
    assert len(first.returns) == 7 and first.returns == again.returns
    assert all(length == 200 for length in first.lengths)


@pytest.mark.parametrize("suffix", [".gif", ".mp4"])
def test_video_is_written_headless(run_dir, tmp_path, suffix):
    pytest.importorskip("imageio")
    out = tmp_path / f"episode{suffix}"
    result = duetrl.evaluate(run_dir, episodes=1, video=out)
    assert len(result.returns) == 1 and out.stat().st_size > 1000
    assert not list(tmp_path.glob(".*tmp*"))  # written under a temporary name, then renamed


def test_video_needs_a_known_format(run_dir, tmp_path):
    with pytest.raises(duetrl.UserError, match="mp4 or .gif"):
        duetrl.evaluate(run_dir, episodes=1, video=tmp_path / "x.avi")
