"""A small, seeded training loop for the judges (CPU-sized models, a few hundred steps).

The generator stages get the full loop (accelerate, checkpoints, resume); judges train in
seconds, so they only need determinism and a loss history.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch


def fit(model: torch.nn.Module, make_batch: Callable[[np.random.Generator], object],
        loss_fn: Callable[[torch.nn.Module, object], torch.Tensor], steps: int, lr: float, seed: int,
        weight_decay: float = 1e-4) -> list[float]:
    """Train ``model`` for ``steps`` AdamW steps on batches from ``make_batch(rng)``; returns the
    loss of every step. Same seed, same data, same weights."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.1)
    model.train()
    history = []
    for _ in range(steps):
        loss = loss_fn(model, make_batch(rng))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        history.append(float(loss.detach()))
    model.eval()
    return history


def to_tensor(images) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [0, 1]."""
    arr = np.ascontiguousarray(images)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)
