"""Rollouts for Flow-GRPO: an ODE trajectory with a window of SDE steps (Flow-GRPO-Fast,
MixGRPO).

A group is G samples of one prompt with its references. The group shares its starting noise
and its ODE prefix up to the window, then branches: each sample takes the window's Gaussian SDE
steps with its own noise (whose log-probabilities are recorded), then follows the ODE to t = 0.
Reward differences within a group thus come from the window's steps alone, the steps the
objective trains, and the prefix is integrated once per group instead of G times.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.generator import SubjectGenerator, autocast
from ..objectives.grpo import policy_step, step_log_prob


@dataclass
class Rollout:
    images: list  # uint8 (H, W, 3), group after group, G each
    states: torch.Tensor  # (n * G, window + 1, N, C): before each window step and after the last
    log_probs: torch.Tensor  # (n * G, window)
    timesteps: list[float]  # (window + 1,)
    text: tuple[torch.Tensor, torch.Tensor]  # the prompts', repeated G times
    blank_text: tuple[torch.Tensor, torch.Tensor]
    refs: torch.Tensor  # (n * G, k, N, C)
    t_max: float
    eta: float
    guidance: float
    final: torch.Tensor  # (n * G, N, C): the finished samples' tokens (what the images decode from)


def window_timesteps(steps: int) -> list[float]:
    """The sampler's levels t_0 = 1 > ... > t_steps = 0 (as the ODE sampler uses them)."""
    return [float(t) for t in torch.linspace(1.0, 0.0, steps + 1)]


@torch.no_grad()
def rollout(model: SubjectGenerator, prompts: list[str], refs, group_size: int, steps: int, window_start: int,
            window_size: int, eta: float, guidance: float, precision: str, generator: torch.Generator) -> Rollout:
    """G samples of each of ``prompts`` (with ``refs``: per prompt a list of k uint8 images, or
    a (n, k, C, S, S) tensor in the model's space). Steps ``window_start`` to ``window_start +
    window_size - 1`` are SDE steps; the final step is never one (its Gaussian is nearly a point)."""
    if not 0 <= window_start or window_start + window_size > steps - 1 or window_size < 1:
        raise ValueError(f"the SDE window [{window_start}, {window_start + window_size}) must lie in the first "
                         f"{steps - 1} of {steps} steps (never the last)")
    n, g = len(prompts), group_size
    ts = window_timesteps(steps)
    ref = model.ref_tokens(refs)
    blank = torch.full_like(ref, -1.0)
    cond, uncond = model.encode_text(prompts), model.encode_text([""] * n)
    x = torch.randn(n, model.config.grid ** 2, model.config.channels, generator=generator).to(model.device)

    def ode(x, i, c, u, r, b):
        with autocast(model.device, precision):
            v = model.guided_velocity(x, x.new_full((x.shape[0],), ts[i]), c, u, r, b, guidance)
        return x + (ts[i + 1] - ts[i]) * v

    for i in range(window_start):  # shared prefix, once per group
        x = ode(x, i, cond, uncond, ref, blank)
    rep = lambda z: z.repeat_interleave(g, 0)
    x, ref, blank = rep(x), rep(ref), rep(blank)
    cond, uncond = (rep(cond[0]), rep(cond[1])), (rep(uncond[0]), rep(uncond[1]))
    states, log_probs = [x], []
    for i in range(window_start, window_start + window_size):
        with autocast(model.device, precision):
            mean, std = policy_step(model, x, ts[i], ts[i + 1], ts[1], eta, cond, uncond, ref, guidance)
        x = mean + std * torch.randn(x.shape, generator=generator).to(model.device)
        log_probs.append(step_log_prob(x, mean, std))
        states.append(x)
    for i in range(window_start + window_size, steps):
        x = ode(x, i, cond, uncond, ref, blank)
    images = list(model.decode_images(model.unpack(x)))
    return Rollout(images, torch.stack(states, 1), torch.stack(log_probs, 1),
                   ts[window_start:window_start + window_size + 1], cond, uncond, ref, ts[1], eta, guidance, x)
