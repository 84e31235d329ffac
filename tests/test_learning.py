"""One small learning test per algorithm: each fails if learning breaks (a random policy scores about
-1200 on Pendulum-v1 and about 20 on CartPole-v1). Budgets are cut from the shipped presets to stay fast."""

import pytest

import duetrl

pytestmark = pytest.mark.learning


@pytest.mark.parametrize(
    ("algo", "steps", "threshold"),
    [
        ("ac", 150_000, -600.0),  # the Pendulum-v1/ac preset: GAE over parallel envs
        ("a2c", 150_000, -600.0),
        ("ppo", 40_000, -400.0),
        ("sac", 2_000, -400.0),
        ("td3", 3_000, -400.0),
        ("ddpg", 3_000, -400.0),
    ],
)
def test_learns_pendulum_with_gravity(algo, steps, threshold, tmp_path):
    result = duetrl.train(
        "Pendulum-v1", algo, steps=steps, seed=0, eval_every=0, eval_episodes=10, run_dir=tmp_path / "run", quiet=True
    )
    assert result.final_eval.mean >= threshold, f"{algo} scored {result.final_eval.mean:.0f} after {steps} steps"


@pytest.mark.parametrize(("algo", "steps", "threshold"), [("ppo", 30_000, 300.0), ("a2c", 60_000, 150.0)])
def test_learns_cartpole_discrete(algo, steps, threshold, tmp_path):
    result = duetrl.train(
        "CartPole-v1", algo, steps=steps, seed=0, eval_every=0, eval_episodes=10, run_dir=tmp_path / "run", quiet=True
    )
    assert result.final_eval.mean >= threshold, f"{algo} scored {result.final_eval.mean:.0f} after {steps} steps"


def test_chapter_preset_learns_without_gravity(tmp_path):
    """The chapter's own agent on its own task (g=0): it improves on the untrained policy within 100 episodes."""
    kwargs = dict(preset="chapter", env_kwargs={"g": 0.0}, seed=0, eval_episodes=20, quiet=True)
    before = duetrl.train("Pendulum-v1", "ac", steps=200, eval_every=0, run_dir=tmp_path / "a", **kwargs)
    after = duetrl.train("Pendulum-v1", "ac", steps=20_000, eval_every=0, run_dir=tmp_path / "b", **kwargs)
    assert after.final_eval.mean > before.final_eval.mean + 100
