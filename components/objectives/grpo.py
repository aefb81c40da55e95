"""Flow-GRPO (Liu et al., 2025): group-relative advantages and the clipped policy objective on the
Gaussian steps of the SDE sampler.

A rollout batch (``RolloutBatch``) holds, for a window of SDE steps of each trajectory, the state
before the step, the state after it, the log-probability the sampler gave that step, and the
sample's advantage. The objective recomputes each step's Gaussian under the current policy
(``policy_step``: the same function the sampler calls, so the first on-policy ratio is exactly 1)
and minimises

    L = mean_{i, j} max(-A_i r_ij, -A_i clip(r_ij, 1 - eps, 1 + eps)) + beta KL_ij,

with ``r_ij = exp(log p_theta - log p_old)`` per sample i and SDE step j, log-probabilities
averaged over dimensions (Flow-GRPO's convention; the clip range is calibrated to it), advantages
clipped to +-``adv_clip``. Only SDE steps carry a log-probability: the deterministic (ODE) steps
and the final step are never in a batch. The KL term is the exact KL between the policy's and the
reference model's Gaussian for the same step, computed in closed form from their means:
``KL = |mu_theta - mu_ref|^2 / (2 std^2)`` with ``std = sigma_t sqrt(dt)``, averaged over
dimensions. Dt is in it (through ``std``); Flow-GRPO's code drops it to keep late, large-dt SD3
steps from weighing little, but our sampler's steps are all the same size, so the two forms differ
by a constant factor absorbed in beta.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .base import Objective, Terms

# --- advantages -------------------------------------------------------------------------------

def group_advantages(rewards: Mapping[str, np.ndarray], weights: Mapping[str, float], groups: Sequence,
                     mode: str = "per_reward", eps: float = 1e-4, scale: str = "group") -> tuple[np.ndarray, np.ndarray]:
    """Advantages of N samples and which samples train (``(A, keep)``).

    ``rewards[name]`` (N,) per reward, ``groups`` (N,) the group key of each sample (a prompt
    with its references). ``mode``:
    - ``per_reward``: each reward is normalised within its group, ``(r - mean) / (std + eps)``,
      then the normalised rewards are weighted and summed, so the weights mean what they say
      whatever each reward's scale and spread;
    - ``sum``: Flow-GRPO's, the weighted sum of raw rewards normalised within its group.
    ``scale``: what the deviations from the group mean are divided by: the group's own std
    (``group``, GRPO's), or the pooled within-group std of the batch's groups that vary
    (``batch``): a group whose samples barely differ then keeps small advantages instead of having
    its differences, mostly judge noise, blown up to unit size. (Flow-GRPO's ``global_std``
    divides by the batch's total std instead, which also counts the spread between prompts.)
    A group whose rewards have zero spread (every reward tied in ``per_reward``, the sum tied in
    ``sum``) carries no signal: its samples get ``keep`` False (and advantage 0)."""
    if mode not in ("per_reward", "sum"):
        raise ValueError(f"advantage mode must be 'per_reward' or 'sum', not {mode!r}")
    if scale not in ("group", "batch"):
        raise ValueError(f"advantage scale must be 'group' or 'batch', not {scale!r}")
    keys = np.asarray([str(g) for g in groups])
    n = len(keys)
    parts = {k: np.asarray(rewards[k], np.float64) for k in weights}
    if any(len(v) != n for v in parts.values()):
        raise ValueError("every reward needs one score per sample")
    if mode == "sum":
        series, scales = [sum(w * parts[k] for k, w in weights.items())], [1.0]
    else:
        series, scales = [parts[k] for k in weights], list(weights.values())
    members = [np.flatnonzero(keys == key) for key in np.unique(keys)]
    deviations, varies = np.zeros((len(series), n)), np.zeros((len(series), n), bool)
    for idx in members:
        for j, s in enumerate(series):
            deviations[j, idx] = s[idx] - s[idx].mean()
            varies[j, idx] = s[idx].max() > s[idx].min()
    # (series,): the within-group std pooled over the groups that vary (tied ones would shrink it)
    pooled = np.sqrt(np.where(varies, deviations ** 2, 0).sum(axis=1) / np.maximum(varies.sum(axis=1), 1))
    adv, keep = np.zeros(n), np.zeros(n, bool)
    for idx in members:
        a, spread = np.zeros(len(idx)), False
        for j, (s, w) in enumerate(zip(series, scales)):
            if varies[j, idx[0]]:  # max > min, not s.std() > 0: the mean of equal floats can round off them
                spread = True
                std = s[idx].std() if scale == "group" else pooled[j]
                a += w * deviations[j, idx] / (std + eps)
        if spread:
            adv[idx], keep[idx] = a, True
    return adv.astype(np.float32), keep


# --- one SDE step -----------------------------------------------------------------------------

def policy_step(model, x: torch.Tensor, t: float, t_next: float, t_max: float, eta: float, cond, uncond,
                ref: torch.Tensor, guidance: float) -> tuple[torch.Tensor, float]:
    """Mean and std of the SDE step from ``x`` at ``t`` to ``t_next`` under ``model``'s guided
    velocity: what the sampler draws from and what training re-evaluates."""
    from ..models.generator import sde_step_moments

    v = model.guided_velocity(x, x.new_full((x.shape[0],), t), cond, uncond, ref, torch.full_like(ref, -1.0),
                              guidance)
    return sde_step_moments(x, v, t, t_next, t_max, eta)


def step_log_prob(x_next: torch.Tensor, mean: torch.Tensor, std: float) -> torch.Tensor:
    """Per-sample log-density of ``x_next`` under N(mean, std^2), averaged over dimensions."""
    from ..models.generator import gaussian_log_prob

    return gaussian_log_prob(x_next, mean, std)


def gaussian_kl(mean: torch.Tensor, mean_ref: torch.Tensor, std: float) -> torch.Tensor:
    """Per-sample KL(N(mean, std^2) || N(mean_ref, std^2)), averaged over dimensions."""
    return ((mean - mean_ref) ** 2).mean(dim=tuple(range(1, mean.ndim))) / (2 * std ** 2)


def clipped_policy_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                        clip_range: float, adv_clip: float) -> tuple[torch.Tensor, Terms]:
    """PPO's clipped surrogate, per element (the caller averages): ``max(-A r, -A clip(r))``; terms
    are the ratio's mean and the fractions clipped above ``1 + eps`` and below ``1 - eps``."""
    a = advantages.clamp(-adv_clip, adv_clip)
    ratio = torch.exp(log_prob - old_log_prob)
    loss = torch.maximum(-a * ratio, -a * ratio.clamp(1 - clip_range, 1 + clip_range))
    r = ratio.detach()
    return loss, {"ratio": r.mean(), "clipfrac_above": (r > 1 + clip_range).float().mean(),
                  "clipfrac_below": (r < 1 - clip_range).float().mean()}


# --- the objective ----------------------------------------------------------------------------

@dataclass
class RolloutBatch:
    """One training batch of rollouts: B samples, S trained SDE steps each.

    ``states`` (B, S + 1, N, C): the state before each trained step and after the last (the
    window is contiguous); ``log_probs`` (B, S) the sampler's; ``timesteps`` (S + 1,) the t of
    each state; ``advantages`` (B,); ``text`` the prompts' (hidden, pooled) and ``blank_text``
    the empty prompt's, both computed by the frozen text encoder at rollout time; ``refs``
    (B, k, N, C) reference tokens; ``t_max`` the sampler's second level (see
    ``sde_step_moments``); ``eta`` and ``guidance`` as sampled; ``keep`` (B,) False for the samples
    of groups without reward spread, kept in the batch (the batch the sampler drew, so that training
    recomputes its steps exactly) but left out of the loss."""

    states: torch.Tensor
    log_probs: torch.Tensor
    timesteps: Sequence[float]
    advantages: torch.Tensor
    text: tuple[torch.Tensor, torch.Tensor]
    blank_text: tuple[torch.Tensor, torch.Tensor]
    refs: torch.Tensor
    t_max: float
    eta: float
    guidance: float
    keep: torch.Tensor
    final: torch.Tensor | None = None  # (B, N, C) the finished samples (advantage-weighted flow matching)


class FrozenReference:
    """The KL reference as a frozen copy of the starting model (the tiny profile: a few MB)."""

    def __init__(self, model: nn.Module):
        import copy

        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @contextmanager
    def __call__(self, policy):
        yield self.model


class AdapterReference:
    """The KL reference as the policy itself with its RL adapter switched off (LoRA: no second
    copy of the network). ``active`` are the adapters of the policy, ``reference`` those of the
    reference (the real profile's SFT adapter; none: the base network)."""

    def __init__(self, active: list[str], reference: list[str]):
        self.active, self.reference = active, reference

    @contextmanager
    def __call__(self, policy):
        # peft's set_adapter makes every active adapter trainable: put back which ones are
        trainable = {p: p.requires_grad for p in policy.transformer.parameters()}
        if self.reference:
            policy.transformer.set_adapters(self.reference)
        else:  # no adapter below the trained one: the base network
            policy.transformer.disable_adapters()
        try:
            yield policy
        finally:
            if not self.reference:
                policy.transformer.enable_adapters()
            policy.transformer.set_adapters(self.active)
            for p, flag in trainable.items():
                p.requires_grad_(flag)


class FlowGRPO(Objective):
    """The clipped Flow-GRPO objective of a ``RolloutBatch`` (module docstring). ``reference``
    gives the KL's reference model (``FrozenReference`` / ``AdapterReference``); with ``beta`` 0
    it is never run. Terms: ``policy_loss``, ``kl``, ``ratio``, ``clipfrac_above``,
    ``clipfrac_below``, ``approx_kl`` (the old-to-new log-probability drift)."""

    def __init__(self, clip_range: float = 1e-4, adv_clip: float = 5.0, beta: float = 0.0,
                 reference=None):
        super().__init__()
        if beta > 0 and reference is None:
            raise ValueError("a KL term (beta > 0) needs a reference model")
        self.clip_range, self.adv_clip, self.beta, self.reference = clip_range, adv_clip, beta, reference

    def forward(self, model, batch: RolloutBatch, generator: torch.Generator) -> tuple[torch.Tensor, Terms]:
        ts = list(batch.timesteps)
        losses, kls, stats = [], [], []
        for j in range(len(ts) - 1):
            x, x_next = batch.states[:, j], batch.states[:, j + 1]
            mean, std = policy_step(model, x, ts[j], ts[j + 1], batch.t_max, batch.eta, batch.text, batch.blank_text,
                                    batch.refs, batch.guidance)
            lp = step_log_prob(x_next, mean, std)
            loss, terms = clipped_policy_loss(lp, batch.log_probs[:, j], batch.advantages, self.clip_range,
                                              self.adv_clip)
            losses.append(loss)
            stats.append({**terms, "approx_kl": 0.5 * ((lp.detach() - batch.log_probs[:, j]) ** 2).mean()})
            if self.beta > 0:
                with torch.no_grad(), self.reference(model) as ref_model:
                    mean_ref, _ = policy_step(ref_model, x, ts[j], ts[j + 1], batch.t_max, batch.eta, batch.text,
                                              batch.blank_text, batch.refs, batch.guidance)
                kls.append(gaussian_kl(mean, mean_ref, std))
        w = batch.keep.to(batch.advantages.dtype)
        w = w / w.sum().clamp(min=1.0)  # the mean over kept samples (all left out: a zero loss, still a graph)
        policy_loss = (torch.stack(losses) * w).sum(1).mean()
        kl = (torch.stack(kls) * w).sum(1).mean() if kls else policy_loss.new_zeros(())
        terms = {k: torch.stack([s[k] for s in stats]).mean() for k in stats[0]}
        return policy_loss + self.beta * kl, {"policy_loss": policy_loss.detach(), "kl": kl.detach(), **terms}


class AdvantageWeightedFM(Objective):
    """Advantage-weighted flow matching on the policy's own finished samples: the on-policy form of
    DiffusionNFT's objective (Zheng et al., 2025), whose gradient at the sampling weights is
    ``sum_i a_i grad |v_theta(x_t,i) - (eps - x0_i)|^2`` with ``a_i = clip(A_i / adv_clip, -1, 1)``.
    Likelihood-free: it needs no SDE log-probability, only the samples and their advantages, and each
    sample's whole image is its regression target, not a 3072-dimensional noise draw (see
    docs/experiments/rl.md for why that matters at this batch size). ``t`` is logit-normal and
    ``eps`` fresh, as in flow matching; the conditional branch is trained (the CFG combination is
    the sampler's). ``beta`` adds the v-space KL of DiffusionNFT, ``|v_theta - v_ref|^2`` on the same
    ``x_t``. Terms: ``weighted_fm``, ``kl``, ``positive_share`` (of the kept samples)."""

    def __init__(self, adv_clip: float = 5.0, beta: float = 0.0, reference=None):
        super().__init__()
        if beta > 0 and reference is None:
            raise ValueError("a KL term (beta > 0) needs a reference model")
        self.adv_clip, self.beta, self.reference = adv_clip, beta, reference

    def forward(self, model, batch: RolloutBatch, generator: torch.Generator) -> tuple[torch.Tensor, Terms]:
        if batch.final is None:
            raise ValueError("advantage-weighted flow matching needs the rollouts' finished samples (batch.final)")
        x0 = batch.final
        b = x0.shape[0]
        t = torch.sigmoid(torch.randn(b, generator=generator)).to(x0.device)
        eps = torch.randn(x0.shape, generator=generator).to(x0.device)
        x_t = (1 - t)[:, None, None] * x0 + t[:, None, None] * eps
        v = model.velocity(x_t, t, batch.text, batch.refs)
        err = ((v.float() - (eps - x0)) ** 2).mean(dim=(1, 2))
        a = (batch.advantages / self.adv_clip).clamp(-1, 1) * batch.keep.to(err.dtype)
        loss = (a * err).sum() / batch.keep.sum().clamp(min=1)
        kl = loss.new_zeros(())
        if self.beta > 0:
            with torch.no_grad(), self.reference(model) as ref_model:
                v_ref = ref_model.velocity(x_t, t, batch.text, batch.refs)
            kl = ((v.float() - v_ref.float()) ** 2).mean()
        kept = batch.keep.bool()
        share = (batch.advantages[kept] > 0).float().mean() if kept.any() else loss.new_zeros(())
        return loss + self.beta * kl, {"weighted_fm": loss.detach(), "kl": kl.detach(), "positive_share": share}
