"""What every objective is, and the one module the trainer hands to accelerate."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

Terms = dict[str, torch.Tensor]


class Objective(nn.Module):
    """A training objective. ``forward(model, batch, generator) -> (loss, terms)``: ``loss`` a
    scalar to minimise, ``terms`` named scalars to log (detached; the loss itself need not be
    among them). ``generator`` is the micro-step's seeded torch.Generator: every random draw of
    the objective comes from it, so a resumed run draws the same numbers. An objective may hold
    modules of its own (a frozen reference policy for a KL term); the model's weights are not
    its own."""

    def forward(self, model: nn.Module, batch: Any, generator: torch.Generator) -> tuple[torch.Tensor, Terms]:
        raise NotImplementedError


class TrainModule(nn.Module):
    """The model and its objective as one module: what the trainer prepares with accelerate.
    DDP synchronises gradients through the hooks it puts on ``forward``, so the loss must be
    computed inside a forward call of the wrapped module; this is that call."""

    def __init__(self, model: nn.Module, objective: Objective):
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, batch: Any, generator: torch.Generator) -> tuple[torch.Tensor, Terms]:
        return self.objective(self.model, batch, generator)
