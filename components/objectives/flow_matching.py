"""Rectified flow matching (FLUX's), with condition dropout and subject weighting.

``x_t = (1 - t) x0 + t eps`` with logit-normal t, and the model predicts the velocity
``v = eps - x0``. Condition dropout (text, references, both) trains the unconditional branches
classifier-free guidance needs; subject weighting lets the subjects' pixels count more than the
background's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .base import Objective, Terms


@dataclass
class FlowMatchingBatch:
    """Targets (uint8 (B, H, W, 3) or a float tensor already in the model's space), prompts,
    references (B lists of k uint8 images, or a tensor (B, k, C, S, S) in the model's space) and
    optional masks (B, H, W), nonzero on subjects."""

    targets: object
    prompts: Sequence[str]
    refs: object
    masks: object = None


def flow_matching_loss(v: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor,
                       weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error of the predicted velocity ``v`` against ``eps - x0``; with ``weight``
    (the shape of ``v``) a weighted mean, normalised by the weights' sum."""
    if weight is None:
        return F.mse_loss(v, eps - x0)
    return ((v - (eps - x0)) ** 2 * weight).sum() / weight.sum()


def condition_dropout(u: torch.Tensor, drop_text: float, drop_refs: float,
                      drop_both: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Which samples lose their prompt and which their references, from one uniform draw per
    sample: [0, drop_text) the prompt only, the next ``drop_both`` both, the next ``drop_refs`` the
    references only; so the three probabilities are exact and exclusive."""
    drop_t = u < drop_text + drop_both
    drop_r = (u >= drop_text) & (u < drop_text + drop_refs + drop_both)
    return drop_t, drop_r


class FlowMatching(Objective):
    """Flow-matching loss of a ``FlowMatchingBatch``; terms: ``mse`` (the unweighted error, to
    compare runs with different subject weights)."""

    def __init__(self, drop_text: float = 0.0, drop_refs: float = 0.0, drop_both: float = 0.0,
                 subject_weight: float = 1.0):
        super().__init__()
        self.drop_text, self.drop_refs, self.drop_both = drop_text, drop_refs, drop_both
        self.subject_weight = subject_weight

    def forward(self, model, batch: FlowMatchingBatch, generator: torch.Generator) -> tuple[torch.Tensor, Terms]:
        x0 = model.pack(model.to_space(batch.targets))
        b = x0.shape[0]
        ref = model.ref_tokens(batch.refs)
        # The draws' order (u, t, eps) is part of what a seed means: keep it.
        u = torch.rand(b, generator=generator, device="cpu").to(model.device)
        drop_t, drop_r = condition_dropout(u, self.drop_text, self.drop_refs, self.drop_both)
        prompts = ["" if d else p for p, d in zip(batch.prompts, drop_t.tolist())]
        ref = torch.where(drop_r[:, None, None, None], torch.full_like(ref, -1.0), ref)  # blank = black frames
        t = torch.sigmoid(torch.randn(b, generator=generator).to(model.device))  # logit-normal (SD3 / FLUX)
        eps = torch.randn(x0.shape, generator=generator).to(model.device)
        x_t = (1 - t)[:, None, None] * x0 + t[:, None, None] * eps
        v = model.velocity(x_t, t, model.encode_text(prompts), ref)
        weight = self.token_weights(model, batch.masks, x0.dtype)
        loss = flow_matching_loss(v, x0, eps, weight)
        terms = {"mse": loss.detach() if weight is None else flow_matching_loss(v.detach(), x0, eps)}
        return loss, terms

    def token_weights(self, model, masks, dtype) -> torch.Tensor | None:
        """Per-token weights: 1 on the background, ``subject_weight`` where a subject is; None
        when every weight is 1. A latent covers a block of pixels: any subject in it counts."""
        if masks is None or self.subject_weight == 1.0:
            return None
        m = torch.as_tensor(np.asarray(masks) > 0, dtype=dtype, device=model.device)[:, None]
        if model.config.space_size != m.shape[-1]:
            m = F.adaptive_max_pool2d(m, model.config.space_size)
        return model.pack((1.0 + (self.subject_weight - 1.0) * m).expand(-1, model.config.space_channels, -1, -1))
