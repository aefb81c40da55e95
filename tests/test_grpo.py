"""Flow-GRPO's pieces on hand-made tensors and a tiny generator: group advantages, the clipped
objective, the closed-form KL, and rollouts whose first on-policy ratio is exactly 1."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from components.grpo.rollout import rollout
from components.models.generator import SubjectGenerator, sde_step_moments
from components.objectives.grpo import (
    FlowGRPO,
    FrozenReference,
    RolloutBatch,
    clipped_policy_loss,
    gaussian_kl,
    group_advantages,
)
from tests.test_pretrain import SMALL_GEN

# --- advantages -------------------------------------------------------------------------------

def test_advantages_are_normalised_within_each_group():
    r = {"psr": np.array([0.1, 0.3, 0.5, 10.0, 20.0, 30.0])}
    adv, keep = group_advantages(r, {"psr": 1.0}, ["a", "a", "a", "b", "b", "b"])
    assert keep.all()
    # the same within-group ranks give the same advantages, whatever the group's scale
    np.testing.assert_allclose(adv[:3], adv[3:], atol=1e-3)  # eps 1e-4 against a std of 0.16
    np.testing.assert_allclose(adv[:3].mean(), 0, atol=1e-6)
    np.testing.assert_allclose(adv[:3].std(), 1, atol=1e-3)


def test_batch_scale_keeps_a_group_that_barely_differs_small():
    """scale=batch divides every group's deviations by the batch's pooled within-group std: a
    group with a 200x smaller spread gets 200x smaller advantages (group scale: the same ones)."""
    r = {"psr": np.array([0.1, 0.3, 0.5, 0.399, 0.4, 0.401])}
    groups = ["a"] * 3 + ["b"] * 3
    adv, keep = group_advantages(r, {"psr": 1.0}, groups, scale="batch")
    assert keep.all()
    np.testing.assert_allclose(adv[3:], adv[:3] / 200, rtol=1e-3, atol=1e-9)
    dev = np.array([-0.2, 0, 0.2, -0.001, 0, 0.001])
    np.testing.assert_allclose(adv, dev / (np.sqrt((dev ** 2).mean()) + 1e-4), rtol=1e-4, atol=1e-9)
    with pytest.raises(ValueError, match="scale"):
        group_advantages(r, {"psr": 1.0}, groups, scale="global")
    # a tied group adds nothing to the pooled std: the others' advantages are as without it
    tied = {"psr": np.concatenate([r["psr"], [0.7, 0.7, 0.7]])}
    adv3, keep3 = group_advantages(tied, {"psr": 1.0}, groups + ["c"] * 3, scale="batch")
    np.testing.assert_allclose(adv3[:6], adv, rtol=1e-6)
    assert not keep3[6:].any() and (adv3[6:] == 0).all()


def test_a_group_without_spread_is_left_out():
    r = {"psr": np.array([0.4, 0.4, 0.4, 0.1, 0.2, 0.3])}
    adv, keep = group_advantages(r, {"psr": 1.0}, ["a"] * 3 + ["b"] * 3)
    assert keep.tolist() == [False] * 3 + [True] * 3 and (adv[:3] == 0).all()


def test_per_reward_normalisation_makes_the_weights_mean_what_they_say():
    """A reward on a scale 100x larger dominates the raw sum, not the per-reward mix."""
    small = np.array([0.0, 0.01, 0.02])  # prefers sample 2
    large = np.array([2.0, 1.0, 0.0])  # prefers sample 0
    w = {"small": 0.8, "large": 0.2}
    per, _ = group_advantages({"small": small, "large": large}, w, ["g"] * 3, "per_reward")
    plain, _ = group_advantages({"small": small, "large": large}, w, ["g"] * 3, "sum")
    assert per.argmax() == 2 and plain.argmax() == 0
    # each reward normalised, then weighted: sample 2 gets 0.8 z_small + 0.2 z_large
    z = lambda x: (x - x.mean()) / (x.std() + 1e-4)
    np.testing.assert_allclose(per, 0.8 * z(small) + 0.2 * z(large), rtol=1e-5)


def test_per_reward_keeps_a_group_when_one_reward_has_spread():
    adv, keep = group_advantages({"a": np.array([1.0, 1.0]), "b": np.array([0.0, 1.0])}, {"a": 0.5, "b": 0.5},
                                 ["g", "g"])
    assert keep.all() and adv[1] > adv[0]


def test_the_group_key_tells_apart_one_prompt_with_other_references():
    """Two groups of the same prompt with different references are normalised apart."""
    r = {"psr": np.array([0.0, 1.0, 10.0, 11.0])}
    adv, _ = group_advantages(r, {"psr": 1.0}, ["row-1", "row-1", "row-2", "row-2"])
    np.testing.assert_allclose(adv, [-1, 1, -1, 1], atol=1e-3)


# --- the objective on hand-made tensors ---------------------------------------------------------

def _grad(log_prob, old, adv, clip=0.2):
    lp = torch.tensor([log_prob], requires_grad=True)
    loss, terms = clipped_policy_loss(lp, torch.tensor([old]), torch.tensor([adv]), clip, 5.0)
    loss.mean().backward()
    return float(lp.grad), terms


def test_a_positive_advantage_raises_the_log_probability_until_the_clip():
    g, _ = _grad(0.0, 0.0, 1.0)
    assert g < 0  # gradient descent raises log p of a sample better than its group
    g, _ = _grad(0.0, 0.0, -1.0)
    assert g > 0  # and lowers it for a worse one
    g, terms = _grad(math.log(1.5), 0.0, 1.0)  # ratio 1.5 > 1 + 0.2: clipped, no more push
    assert g == 0 and float(terms["clipfrac_above"]) == 1 and float(terms["clipfrac_below"]) == 0
    g, terms = _grad(math.log(0.5), 0.0, -1.0)  # ratio 0.5 < 1 - 0.2 for a bad sample: clipped too
    assert g == 0 and float(terms["clipfrac_below"]) == 1
    g, _ = _grad(math.log(0.5), 0.0, 1.0)  # below the clip with a good sample: still pushed up
    assert g < 0


def test_advantages_are_clipped():
    g_big, _ = _grad(0.0, 0.0, 100.0)
    g_clip, _ = _grad(0.0, 0.0, 5.0)
    assert g_big == g_clip


def test_the_kl_is_zero_against_itself_and_the_gaussian_kl_otherwise():
    mean = torch.randn(3, 4, 5)
    assert torch.equal(gaussian_kl(mean, mean, 0.3), torch.zeros(3))
    other = mean + 0.1
    # KL(N(a, s^2) || N(b, s^2)) = (a - b)^2 / (2 s^2) per dimension
    np.testing.assert_allclose(gaussian_kl(mean, other, 0.3).numpy(), 0.01 / (2 * 0.09), rtol=1e-5)


# --- rollouts and the first on-policy ratio ------------------------------------------------------

@pytest.fixture(scope="module")
def model():
    return SubjectGenerator.tiny(**SMALL_GEN, seed=1).eval()


def _refs(n, k, seed=0):
    return [list(np.random.default_rng([seed, i]).integers(0, 255, (k, 32, 32, 3), dtype=np.uint8)) for i in range(n)]


def _batch(r, adv, keep=None):
    b = len(r.images)
    return RolloutBatch(r.states, r.log_probs, r.timesteps, torch.as_tensor(adv, dtype=torch.float32), r.text,
                        r.blank_text, r.refs, r.t_max, r.eta, r.guidance,
                        torch.ones(b, dtype=torch.bool) if keep is None else torch.as_tensor(keep), r.final)


@pytest.mark.parametrize("precision,guidance", [("fp32", 2.5), ("bf16", 2.5), ("bf16", 1.0)])
def test_the_first_on_policy_ratio_is_exactly_one(model, precision, guidance):
    """Training recomputes the sampler's steps bit for bit: the same function, batch and autocast,
    with CFG or without (rl.rollout_guidance 1)."""
    r = rollout(model, ["a cat and a dog", "a red ball"], _refs(2, 2), group_size=3, steps=6, window_start=2,
                window_size=2, eta=0.7, guidance=guidance, precision=precision, generator=torch.Generator().manual_seed(0))
    assert r.states.shape[:2] == (6, 3) and r.log_probs.shape == (6, 2) and len(r.timesteps) == 3
    assert torch.isfinite(r.log_probs).all()
    objective = FlowGRPO(clip_range=1e-4, beta=0.1, reference=FrozenReference(model))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        _, terms = objective(model, _batch(r, np.linspace(-1, 1, 6)), torch.Generator())
    assert float(terms["ratio"]) == 1.0 and float(terms["approx_kl"]) == 0.0
    assert float(terms["clipfrac_above"]) == float(terms["clipfrac_below"]) == 0.0
    assert float(terms["kl"]) == 0.0  # the reference is the policy, unchanged


def test_a_group_shares_its_prefix_and_branches_in_the_window(model):
    r = rollout(model, ["a cat"], _refs(1, 1), group_size=4, steps=6, window_start=3, window_size=1, eta=0.7,
                guidance=1.0, precision="fp32", generator=torch.Generator().manual_seed(0))
    assert torch.equal(r.states[0, 0], r.states[3, 0])  # the same state entering the window
    assert not torch.equal(r.states[0, 1], r.states[1, 1])  # each sample its own SDE noise
    assert len({im.tobytes() for im in r.images}) == 4


def test_the_window_never_takes_the_final_step(model):
    with pytest.raises(ValueError, match="never the last"):
        rollout(model, ["a cat"], _refs(1, 1), 2, steps=4, window_start=2, window_size=2, eta=0.7, guidance=1.0,
                precision="fp32", generator=torch.Generator())


def test_left_out_samples_do_not_move_the_policy(model):
    r = rollout(model, ["a cat", "a dog"], _refs(2, 1), group_size=2, steps=4, window_start=0, window_size=1, eta=0.7,
                guidance=1.0, precision="fp32", generator=torch.Generator().manual_seed(1))
    objective = FlowGRPO(clip_range=0.2)
    params = [p for p in model.transformer.parameters()]
    loss, _ = objective(model, _batch(r, [0.0, 0.0, 1.0, -1.0], keep=[True, True, False, False]), torch.Generator())
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    assert all(g is None or torch.count_nonzero(g) == 0 for g in grads)


def test_a_gradient_step_raises_the_log_probability_of_a_good_sample(model):
    """End to end on the generator: one step along the objective's gradient makes the sample
    with the positive advantage more likely and the negative one less likely."""
    import copy

    policy = copy.deepcopy(model)
    r = rollout(policy, ["a cat"], _refs(1, 1), group_size=2, steps=4, window_start=1, window_size=1, eta=0.7,
                guidance=1.0, precision="fp32", generator=torch.Generator().manual_seed(2))
    batch = _batch(r, [1.0, -1.0])
    loss, _ = FlowGRPO(clip_range=10.0)(policy, batch, torch.Generator())
    opt = torch.optim.SGD(policy.transformer.parameters(), lr=1e-3)
    loss.backward()
    opt.step()
    t, t_next = r.timesteps
    v = policy.guided_velocity(r.states[:, 0], torch.full((2,), t), r.text, r.blank_text, r.refs,
                               torch.full_like(r.refs, -1.0), 1.0)
    mean, std = sde_step_moments(r.states[:, 0], v, t, t_next, r.t_max, 0.7)
    from components.models.generator import gaussian_log_prob

    new = gaussian_log_prob(r.states[:, 1], mean, std)
    assert new[0] > r.log_probs[0, 0] and new[1] < r.log_probs[1, 0]


def test_advantage_weighted_flow_matching_fits_good_samples_and_leaves_bad_ones():
    """One step along weighted_fm's gradient lowers the flow-matching error of the sample with a
    positive advantage and raises the error of the one with a negative advantage; with every sample
    left out, no gradient."""
    import copy

    from components.objectives.grpo import AdvantageWeightedFM

    base = SubjectGenerator.tiny(**SMALL_GEN, seed=1).eval()
    r = rollout(base, ["a cat"], _refs(1, 1), group_size=2, steps=4, window_start=0, window_size=1, eta=0.7,
                guidance=1.0, precision="fp32", generator=torch.Generator().manual_seed(3))
    batch = _batch(r, [1.0, -1.0])
    objective = AdvantageWeightedFM(adv_clip=1.0)

    def errors(model):  # each sample's error on fixed noise levels and noise
        g = torch.Generator().manual_seed(9)
        t = torch.full((2,), 0.5)
        eps = torch.randn(r.final.shape, generator=g)
        x_t = 0.5 * r.final + 0.5 * eps
        with torch.no_grad():
            v = model.velocity(x_t, t, r.text, r.refs)
        return ((v - (eps - r.final)) ** 2).mean(dim=(1, 2))

    policy = copy.deepcopy(base)
    opt = torch.optim.SGD(policy.transformer.parameters(), lr=0.05)
    for step in range(5):
        loss, terms = objective(policy, batch, torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    before, after = errors(base), errors(policy)
    assert after[0] < before[0] and after[1] > before[1]
    assert float(terms["positive_share"]) == 0.5
    loss, _ = objective(base, _batch(r, [1.0, -1.0], keep=[False, False]), torch.Generator())
    grads = torch.autograd.grad(loss, list(base.transformer.parameters()), allow_unused=True)
    assert all(g is None or torch.count_nonzero(g) == 0 for g in grads)
