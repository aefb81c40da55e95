"""A toy run of the shared trainer, for the resume and multi-process tests.

    python tests/scripts/train_toy.py OUT [--steps N] [--checkpoint-every K] [--sleep S] [--no-resume]
                                          [--grad-accum A] [--on-policy] [--stall-checkpoint STEP]

Offline: regression of a linear target. ``--on-policy``: a Gaussian policy (the same network as
its mean) is rolled out from its current weights, rewarded, and trained with a clipped-ratio
objective over two inner epochs; the collector keeps a running reward baseline, so an exact
resume needs its state too. Writes OUT/weights-rank<R>.pt (the final state dict of each process)
and OUT/result-rank<R>.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from components.objectives import Objective
from components.training import LoopConfig, Trainer, process_state

W_TRUE = torch.arange(8, dtype=torch.float32)
STD = 0.5


class Regression(Objective):
    def forward(self, model, batch, generator):
        x, y = batch
        return torch.nn.functional.mse_loss(model(x), y), {}


class ClippedRatio(Objective):
    """Flow-GRPO's policy term on a one-step Gaussian policy: mean(max(-A r, -A clip(r)))."""

    def forward(self, model, batch, generator):
        logp = _log_prob(model(batch["x"]), batch["actions"])
        ratio = torch.exp(logp - batch["old_logp"])
        adv = batch["advantages"]
        loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(0.8, 1.2)).mean()
        return loss, {"ratio": ratio.mean().detach(), "clipfrac": ((ratio - 1).abs() > 0.2).float().mean(),
                      "reward": batch["rewards"].mean()}


def _log_prob(mean, actions):
    return -((actions - mean) ** 2).sum(-1) / (2 * STD ** 2)


class Rollouts:
    """Collects 3 batches of 4 states x 4 actions from the current policy; the advantage is the
    reward against a running baseline kept across collections (state to checkpoint)."""

    def __init__(self, sleep: float):
        self.sleep, self.baseline = sleep, 0.0

    def __call__(self, model, rng, gen):
        batches = []
        for _ in range(3):
            time.sleep(self.sleep)
            x = torch.randn(4, 8, generator=gen).repeat_interleave(4, 0)
            mean = model(x)
            actions = mean + STD * torch.randn(mean.shape, generator=gen)
            rewards = -((actions[:, 0] - x @ W_TRUE) ** 2)
            self.baseline = 0.9 * self.baseline + 0.1 * float(rewards.mean())
            adv = (rewards - self.baseline) / (rewards.std() + 1e-4)
            batches.append({"x": x, "actions": actions, "old_logp": _log_prob(mean, actions), "rewards": rewards,
                            "advantages": adv})
        return batches

    def state_dict(self) -> dict:
        return {"baseline": self.baseline}

    def load_state_dict(self, state: dict) -> None:
        self.baseline = state["baseline"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--checkpoint-every", type=int, default=2)
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--on-policy", action="store_true")
    ap.add_argument("--no-resume", action="store_true")
    ap.add_argument("--stall-checkpoint", type=int, default=0,
                    help="hang for a minute inside the checkpoint write of this step (to be killed there)")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))

    def make_batch(rng, gen):
        time.sleep(args.sleep)
        x = torch.randn(16, 8, generator=gen)
        return x, x @ W_TRUE[:, None] + 0.1 * torch.randn(16, 1, generator=gen)

    cfg = LoopConfig(steps=args.steps, batch_size=16, lr=1e-2, warmup_steps=2, grad_accum=args.grad_accum,
                     inner_epochs=2 if args.on_policy else 1, checkpoint_every=args.checkpoint_every, log_every=1,
                     ema_decay=0.9, seed=3)
    source = {"collect": Rollouts(args.sleep)} if args.on_policy else {"make_batch": make_batch}
    objective = ClippedRatio() if args.on_policy else Regression()
    trainer = Trainer(model, objective, cfg, args.out, **source)
    if args.stall_checkpoint:  # the state is written, not yet renamed into place: a crash here must cost nothing
        save = trainer.acc.save_state

        def stalling_save(path, *a, **k):
            out = save(path, *a, **k)
            if trainer.progress.step == args.stall_checkpoint:
                time.sleep(60)
            return out
        trainer.acc.save_state = stalling_save
    res = trainer.run(resume=not args.no_resume)
    state = process_state()
    rank = state.process_index
    torch.save({"raw": res.raw_model.state_dict(), "ema": res.model.state_dict()}, args.out / f"weights-rank{rank}.pt")
    (args.out / f"result-rank{rank}.json").write_text(json.dumps(
        {"step": res.step, "resumed_from": res.resumed_from, "history": res.history,
         "world_size": state.num_processes}))


if __name__ == "__main__":
    main()
