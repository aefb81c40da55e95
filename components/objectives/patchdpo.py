"""PatchDPO's patch-weighted denoising loss, and image-level Diffusion-DPO beside it.

**PatchDPO** (arXiv 2412.03177; the loss of its released ``train_patchdpo.py``), ported from
epsilon-prediction to the flow-matching velocity:

    L = mean[(1 - M_ref) * ||v(x_t^ref) - v||^2  +  M_gen * ||v(x_t^gen) - v||^2]

over every element of both images of a pair. ``x^ref`` is a reference image, ``x^gen`` the model's
own output for the pair's prompt; both are denoised with the same prompt and the same references
in context, the same t and the same noise. ``(1 - M_ref)`` weighs up the reference patches the
output failed to reproduce; ``M_gen`` is positive on good generated patches, negative (clamped)
on bad ones, which the loss then pushes away from. The weights come in per element
(``preference/quality.py`` computes them). There is no frozen model and no log-sigmoid: it is a
weighted regression, normalised by the element count as the released code does.

Weighting over t: the trainer's logit-normal t and the plain velocity error, exactly as SFT
trains. The faithful port of an epsilon-MSE is ``(1 - t)^2`` times the velocity MSE, which would
all but silence the high-noise steps where a subject's layout and colours are decided; keeping
SFT's weighting also makes the same-pairs control (this loss with the patch maps replaced by 1:
subjects ``patchdpo.subject_weight``, the rest 1) flow matching on the same images as SFT trains
(exactly SFT's loss when that weight is ``training.subject_weight``), so the two runs differ in the
patch weights alone. With every weight 1 the loss is plain flow matching (tested).

**Image-level Diffusion-DPO** (Wallace et al. 2023, Eq. 14; Flow-DPO's velocity form with a
constant beta): a winner and a loser for the same prompt and references, the policy's and the
frozen starting model's errors on both at a shared t and noise,
``-log sigmoid(-beta / 2 * ((e_w - e_w_ref) - (e_l - e_l_ref)))``, with e the per-sample mean
squared velocity error.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from .base import Objective, Terms
from .flow_matching import condition_dropout


@dataclass
class PairBatch:
    """Pairs sharing a prompt and references: ``first`` and ``second`` images (uint8
    (B, H, W, 3) or float tensors in the model's space), their per-pixel weights
    ``first_weight`` / ``second_weight`` ((B, H, W) float, None = 1), prompts and references
    ((B, k, C, S, S) in the model's space, or B lists of uint8 images). PatchDPO: first = the
    reference image, second = the generated one. Image-level DPO: first = winner, second = loser."""

    first: object
    second: object
    prompts: Sequence[str]
    refs: object
    first_weight: torch.Tensor | None = None
    second_weight: torch.Tensor | None = None


def patch_weighted_loss(err_first: torch.Tensor, err_second: torch.Tensor, w_first: torch.Tensor | None,
                        w_second: torch.Tensor | None) -> torch.Tensor:
    """PatchDPO's loss from elementwise squared errors of both images of each pair (same
    shapes) and their weights (None = 1): the weighted errors' mean over every element of both."""
    a = err_first if w_first is None else err_first * w_first
    b = err_second if w_second is None else err_second * w_second
    return (a.sum() + b.sum()) / (a.numel() + b.numel())


def dpo_loss(err_w: torch.Tensor, err_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor,
             beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Diffusion-DPO from per-sample errors (B,) of the policy and of the frozen model on the
    winners and the losers: (loss, the implicit reward margin per sample)."""
    margin = -0.5 * beta * ((err_w - ref_w) - (err_l - ref_l))
    return -F.logsigmoid(margin).mean(), margin


def token_weights(model, pixels: torch.Tensor | None) -> torch.Tensor | None:
    """(B, H, W) per-pixel weights -> the model's token layout (B, N, C*p*p): each element of a
    token gets its pixel's weight (averaged over a latent's pixels when the model works in a
    latent space)."""
    if pixels is None:
        return None
    w = torch.as_tensor(pixels, dtype=torch.float32, device=model.device)[:, None]
    if model.config.space_size != w.shape[-1]:
        w = F.adaptive_avg_pool2d(w, model.config.space_size)
    return model.pack(w.expand(-1, model.config.space_channels, -1, -1))


class _PairObjective(Objective):
    """Both images of every pair through the model in one call, at one t and one noise per pair,
    with the pair's prompt and references (dropped together, for CFG, as SFT drops them)."""

    def __init__(self, drop_text: float = 0.0, drop_refs: float = 0.0, drop_both: float = 0.0):
        super().__init__()
        self.drop_text, self.drop_refs, self.drop_both = drop_text, drop_refs, drop_both

    def draw(self, model, batch: PairBatch, generator: torch.Generator):
        """The pair's shared draws: (x0 of both halves (2B, N, C), x_t, t, eps, text, refs)."""
        x1, x2 = model.pack(model.to_space(batch.first)), model.pack(model.to_space(batch.second))
        b = x1.shape[0]
        ref = model.ref_tokens(batch.refs)
        u = torch.rand(b, generator=generator, device="cpu").to(model.device)
        drop_t, drop_r = condition_dropout(u, self.drop_text, self.drop_refs, self.drop_both)
        prompts = ["" if d else p for p, d in zip(batch.prompts, drop_t.tolist())]
        ref = torch.where(drop_r[:, None, None, None], torch.full_like(ref, -1.0), ref)
        t = torch.sigmoid(torch.randn(b, generator=generator).to(model.device))
        eps = torch.randn(x1.shape, generator=generator).to(model.device)
        x0, t2, eps2 = torch.cat([x1, x2]), torch.cat([t, t]), torch.cat([eps, eps])
        x_t = (1 - t2)[:, None, None] * x0 + t2[:, None, None] * eps2
        hidden, pooled = model.encode_text(prompts)
        text = (torch.cat([hidden, hidden]), torch.cat([pooled, pooled]))
        return x0, x_t, t2, eps2, text, torch.cat([ref, ref])

    @staticmethod
    def errors(v: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Elementwise squared velocity errors of the first and the second halves."""
        err = (v.float() - (eps - x0)) ** 2
        return err.chunk(2)


class PatchDPO(_PairObjective):
    """PatchDPO's patch-weighted loss (module docstring) with the batch's weights; ``weighted=False``
    sets every weight to 1 (plain, unweighted flow matching on the pairs). Terms: ``mse_first`` and
    ``mse_second`` (unweighted), ``negative_share`` (the share of the second image's elements
    with a negative weight)."""

    def __init__(self, weighted: bool = True, **dropout):
        super().__init__(**dropout)
        self.weighted = weighted

    def forward(self, model, batch: PairBatch, generator: torch.Generator) -> tuple[torch.Tensor, Terms]:
        x0, x_t, t, eps, text, ref = self.draw(model, batch, generator)
        v = model.velocity(x_t, t, text, ref)
        e1, e2 = self.errors(v, x0, eps)
        w1 = token_weights(model, batch.first_weight) if self.weighted else None
        w2 = token_weights(model, batch.second_weight) if self.weighted else None
        loss = patch_weighted_loss(e1, e2, w1, w2)
        terms = {"mse_first": e1.mean().detach(), "mse_second": e2.mean().detach()}
        if w2 is not None:
            terms["negative_share"] = (w2 < 0).float().mean()
        return loss, terms


class ImageDPO(_PairObjective):
    """Image-level Diffusion-DPO against a frozen copy of the starting model (``reference``: a
    ``FrozenReference``); first = winner, second = loser. Terms: ``accuracy`` (the share of pairs
    whose implicit reward ranks the winner first), ``margin``, ``mse_first``, ``mse_second``."""

    def __init__(self, beta: float, reference, **dropout):
        super().__init__(**dropout)
        self.beta, self.reference = beta, reference

    def forward(self, model, batch: PairBatch, generator: torch.Generator) -> tuple[torch.Tensor, Terms]:
        x0, x_t, t, eps, text, ref = self.draw(model, batch, generator)
        e_w, e_l = (e.flatten(1).mean(1) for e in self.errors(model.velocity(x_t, t, text, ref), x0, eps))
        with torch.no_grad(), self.reference(model) as frozen:
            r_w, r_l = (e.flatten(1).mean(1) for e in self.errors(frozen.velocity(x_t, t, text, ref), x0, eps))
        loss, margin = dpo_loss(e_w, e_l, r_w, r_l, self.beta)
        return loss, {"accuracy": (margin > 0).float().mean().detach(), "margin": margin.mean().detach(),
                      "mse_first": e_w.mean().detach(), "mse_second": e_l.mean().detach()}
