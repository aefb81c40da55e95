"""A toy run of the shared training loop, for the resume and multi-process tests.

    python tests/scripts/train_toy.py OUT [--steps N] [--checkpoint-every K] [--sleep S] [--no-resume]

Writes OUT/weights-rank<R>.pt (the final state dict of each process) and OUT/result-rank<R>.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from components.training import LoopConfig, train_loop


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--checkpoint-every", type=int, default=2)
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--no-resume", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    w_true = torch.arange(8, dtype=torch.float32)

    def make_batch(rng, gen):
        time.sleep(args.sleep)
        x = torch.randn(16, 8, generator=gen)
        return x, x @ w_true[:, None] + 0.1 * torch.randn(16, 1, generator=gen)

    def loss_fn(m, batch, gen):
        x, y = batch
        return torch.nn.functional.mse_loss(m(x), y)

    cfg = LoopConfig(steps=args.steps, batch_size=16, lr=1e-2, warmup_steps=2, grad_accum=args.grad_accum,
                     checkpoint_every=args.checkpoint_every, log_every=1, ema_decay=0.9, seed=3)
    res = train_loop(model, make_batch, loss_fn, cfg, args.out, resume=not args.no_resume)
    from components.training import process_state

    state = process_state()
    rank = state.process_index
    torch.save({"raw": res.raw_model.state_dict(), "ema": res.model.state_dict()}, args.out / f"weights-rank{rank}.pt")
    (args.out / f"result-rank{rank}.json").write_text(json.dumps(
        {"step": res.step, "resumed_from": res.resumed_from, "history": res.history,
         "world_size": state.num_processes}))


if __name__ == "__main__":
    main()
