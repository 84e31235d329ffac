"""PPO's update: advantages from the critic, recomputed per epoch when asked."""

import pytest
import torch

import duetrl.algos.ppo as ppo_module
from duetrl.algos.ppo import PPO, PPOConfig
from duetrl.envs.native import Pendulum

CPU = torch.device("cpu")


def filled_agent(seed: int = 0, **overrides) -> PPO:
    """A small PPO agent with one full rollout of 2 Pendulum envs x 16 steps, made the same way for every seed."""
    torch.manual_seed(seed)
    env = Pendulum(2)
    cfg = PPOConfig(hidden=[16], num_steps=16, minibatch_size=8, **overrides)
    cfg.validate()
    agent = PPO(cfg, env.single_observation_space, env.single_action_space, 2, CPU)
    obs = torch.randn(2, 3)
    for t in range(16):
        decision = agent.explore(obs, env_steps=2 * t)
        next_obs = torch.randn(2, 3)
        truncated = torch.tensor([t == 9, False])
        agent.observe(decision, torch.randn(2), torch.zeros(2, dtype=torch.bool), truncated, next_obs)
        obs = next_obs
    return agent


def params(agent: PPO) -> list[torch.Tensor]:
    return [p.detach().clone() for p in [*agent.policy.parameters(), *agent.critic.parameters()]]


def test_recompute_with_one_epoch_changes_nothing():
    a, b = filled_agent(epochs=1), filled_agent(epochs=1, recompute_advantages=True)
    torch.manual_seed(1)
    a.update()
    torch.manual_seed(1)
    b.update()
    assert all(torch.equal(x, y) for x, y in zip(params(a), params(b), strict=True))


@pytest.mark.parametrize("recompute", [False, True])
def test_each_epoch_uses_the_current_critic_only_when_recomputing(monkeypatch, recompute):
    seen: list[torch.Tensor] = []
    real_gae = ppo_module.gae

    def spy(rewards, values, *args):
        seen.append(values.clone())
        return real_gae(rewards, values, *args)

    monkeypatch.setattr(ppo_module, "gae", spy)
    agent = filled_agent(epochs=3, recompute_advantages=recompute)
    batch = {k: v.clone() for k, v in agent.rollout.stack().items()}
    with torch.no_grad():
        before = agent.critic(batch["obs"])
    agent.update()
    assert len(seen) == (3 if recompute else 1)
    assert torch.equal(seen[0], before)  # the first epoch uses the critic as it was during the rollout
    for later in seen[1:]:
        assert not torch.equal(later, seen[0])  # the critic has moved between epochs
    if recompute:  # the last recomputation saw the critic after epoch 2, which epoch 3 then trained further
        with torch.no_grad():
            assert not torch.allclose(seen[-1], agent.critic(batch["obs"]))


def test_recompute_changes_the_result_with_several_epochs():
    a, b = filled_agent(epochs=4), filled_agent(epochs=4, recompute_advantages=True)
    torch.manual_seed(1)
    a.update()
    torch.manual_seed(1)
    b.update()
    assert any(not torch.equal(x, y) for x, y in zip(params(a), params(b), strict=True))


@pytest.mark.parametrize("image", [True, False], ids=["pixels", "vector"])
def test_next_values_read_from_the_next_step_equal_a_second_encoding(image):
    """Where an episode went on, V(s'_t) is V(s_{t+1}) of the same pass; only the last step and the ended episodes'
    final observations are encoded again. Same values as encoding every next observation (up to float rounding)."""
    import gymnasium as gym
    import numpy as np

    torch.manual_seed(0)
    space = gym.spaces.Box(0, 255, (10, 10, 3), np.uint8) if image else gym.spaces.Box(-1, 1, (3,), np.float32)
    cfg = PPOConfig(hidden=[16], num_steps=8, minibatch_size=8)
    cfg.validate()
    agent = PPO(cfg, space, gym.spaces.Discrete(2), 2, CPU)

    def draw():
        return torch.randint(0, 256, (2, 10, 10, 3), dtype=torch.uint8) if image else torch.rand(2, 3) * 2 - 1

    obs = draw()
    for t in range(8):
        decision = agent.explore(obs, env_steps=2 * t)
        terminated, truncated = torch.tensor([t == 2, False]), torch.tensor([False, t == 5])
        following = draw()  # s_{t+1}: the reset observation where an episode ended
        final = torch.where((terminated | truncated).view(-1, *[1] * (obs.dim() - 1)), draw(), following)
        agent.observe(decision, torch.randn(2), terminated, truncated, final)
        obs = following
    batch = agent.rollout.stack()
    values, next_values = agent._values_and_next(batch)
    features, next_features = agent.critic_features(batch, with_next=True)
    torch.testing.assert_close(values, agent.critic(features), rtol=0, atol=1e-6)
    torch.testing.assert_close(next_values, agent.critic(next_features), rtol=0, atol=1e-6)
    assert not torch.equal(next_values[2, 0], values[3, 0])  # an ended episode: its own final observation's value


class _FixedPolicy:
    """Stands in for a Policy in ppo_loss: given log-probabilities and entropies, whatever the batch."""

    def __init__(self, log_prob: torch.Tensor, entropy: torch.Tensor):
        self.log_prob, self.entropy = log_prob, entropy

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        return obs

    def evaluate_actions(self, obs, raw, features):
        return self.log_prob, self.entropy, None


def test_ppo_loss_equals_hand_computed_terms():
    """ratio 1.5 with A=+1 is clipped to 1.2; ratio 0.5 with A=-1 to 0.8: policy loss mean(-1.2, 0.8) = -0.2.
    The value term is 0.5 * MSE = 0.5 * mean(1, 9) = 2.5, so vf_coef=1.0 here weighs it as SB3's vf_coef=0.5
    (which multiplies plain MSE). Entropy mean(0.3, 0.5) = 0.4 at ent_coef 0.1."""
    policy = _FixedPolicy(torch.tensor([1.5, 0.5]).log(), torch.tensor([0.3, 0.5]))
    values = torch.tensor([1.0, 3.0])
    mb = {
        "obs": torch.zeros(2, 1),
        "raw": torch.zeros(2, 1),
        "log_prob": torch.zeros(2),
        "advantages": torch.tensor([1.0, -1.0]),
        "returns": torch.zeros(2),
        "values": torch.zeros(2),
    }
    cfg = PPOConfig(clip_coef=0.2, ent_coef=0.1, vf_coef=1.0, normalize_advantage=False)
    loss, terms, _ = ppo_module.ppo_loss(policy, lambda features: values, mb, cfg)
    torch.testing.assert_close(terms["policy_loss"], torch.tensor(-0.2))
    torch.testing.assert_close(terms["value_loss"], torch.tensor(2.5))
    sb3_value_term = 0.5 * torch.nn.functional.mse_loss(values, mb["returns"])  # SB3's vf_coef=0.5 * plain MSE
    torch.testing.assert_close(cfg.vf_coef * terms["value_loss"], sb3_value_term)
    torch.testing.assert_close(loss, torch.tensor(-0.2 + 2.5 - 0.1 * 0.4))
    kl = ((0.5 - torch.tensor(1.5).log()) + (-0.5 - torch.tensor(0.5).log())) / 2  # mean((r - 1) - log r)
    torch.testing.assert_close(terms["approx_kl"], kl)
    assert terms["clip_fraction"].item() == 1.0  # both ratios lie outside [0.8, 1.2]


SB3_NAMES = {  # duetrl's parameter -> SB3 ActorCriticPolicy's (separate [64, 64] tanh actor and critic)
    "policy.actor.log_std_param": "log_std",
    "policy.actor.trunk.0.weight": "mlp_extractor.policy_net.0.weight",
    "policy.actor.trunk.0.bias": "mlp_extractor.policy_net.0.bias",
    "policy.actor.trunk.2.weight": "mlp_extractor.policy_net.2.weight",
    "policy.actor.trunk.2.bias": "mlp_extractor.policy_net.2.bias",
    "policy.actor.mean.weight": "action_net.weight",
    "policy.actor.mean.bias": "action_net.bias",
    "critic.net.0.weight": "mlp_extractor.value_net.0.weight",
    "critic.net.0.bias": "mlp_extractor.value_net.0.bias",
    "critic.net.2.weight": "mlp_extractor.value_net.2.weight",
    "critic.net.2.bias": "mlp_extractor.value_net.2.bias",
    "critic.net.4.weight": "value_net.weight",
    "critic.net.4.bias": "value_net.bias",
}


def test_update_equals_sb3_ppo_train_on_the_same_rollout_and_weights():
    """SB3's PPO with its defaults except the rollout size, one minibatch per epoch (so the shuffle order cannot
    matter), and duetrl's PPO with ``vf_coef=1.0`` (SB3's 0.5 on plain MSE), no lr annealing and unscaled rewards
    (SB3's defaults have no VecNormalize), from the same weights on SB3's own rollout: the same values, GAE
    advantages and weights after three epochs, to float rounding. What separated the two libraries' untuned results
    was the settings, not the update."""
    sb3 = pytest.importorskip("stable_baselines3")
    import gymnasium as gym
    from stable_baselines3.common.env_util import make_vec_env

    from duetrl.algos.base import Decision

    steps, epochs = 96, 3
    model = sb3.PPO(
        "MlpPolicy",
        make_vec_env("Pendulum-v1", n_envs=1, seed=0),
        n_steps=steps,
        batch_size=steps,
        n_epochs=epochs,
        seed=0,
        device="cpu",
    )
    seen = {}
    train = model.train

    def recording_train():
        b = model.rollout_buffer
        seen.update(
            {
                k: torch.as_tensor(getattr(b, k)).float()
                for k in ("observations", "actions", "rewards", "episode_starts", "values", "log_probs", "advantages")
            }
        )
        seen["last_obs"] = torch.as_tensor(model._last_obs).float()
        seen["before"] = {n: p.detach().clone() for n, p in model.policy.named_parameters()}
        train()

    model.train = recording_train
    model.learn(total_timesteps=steps)
    after = dict(model.policy.named_parameters())

    env = gym.make("Pendulum-v1")
    cfg = PPOConfig(
        num_steps=steps, minibatch_size=steps, epochs=epochs, vf_coef=1.0, anneal_lr=False, normalize_reward=False
    )
    cfg.validate()
    agent = PPO(cfg, env.observation_space, env.action_space, 1, CPU)
    ours = {
        **{f"policy.{n}": p for n, p in agent.policy.named_parameters()},
        **{f"critic.{n}": p for n, p in agent.critic.named_parameters()},
    }
    assert set(ours) == set(SB3_NAMES)
    with torch.no_grad():
        for name, p in ours.items():
            p.copy_(seen["before"][SB3_NAMES[name]])
    obs = seen["observations"]  # [T, 1, 3]; Pendulum neither terminates nor truncates within 96 steps
    for t in range(steps):
        next_obs = obs[t + 1] if t + 1 < steps else seen["last_obs"]
        raw = seen["actions"][t]
        record = {"obs": obs[t], "raw": raw, "action": raw.clamp(-2, 2), "log_prob": seen["log_probs"][t]}
        no = torch.zeros(1, dtype=torch.bool)
        agent.observe(Decision(t, raw, record), seen["rewards"][t], no, no, next_obs)
    values, advantages, _ = agent._advantages(agent.rollout.stack())
    torch.testing.assert_close(values, seen["values"], rtol=0, atol=1e-5)
    torch.testing.assert_close(advantages, seen["advantages"], rtol=1e-5, atol=1e-4)
    agent.update()
    for name, p in ours.items():
        moved = (after[SB3_NAMES[name]] - seen["before"][SB3_NAMES[name]]).abs().max()
        assert moved > 1e-5, name  # every weight moved (three Adam steps of lr 3e-4), by far more than atol
        torch.testing.assert_close(p.detach(), after[SB3_NAMES[name]].detach(), rtol=0, atol=1e-6, msg=name)
