"""Training throughput of the shared loop against a bare PyTorch loop, same model, same batches.

    python perf/training_throughput.py [--steps 30] [--batch 32] [--refs 1]

Both train the default generator of params.yaml (the tiny FluxTransformer2DModel, 32 px in 4x4
patches) on the same pre-rendered single-subject batches with AdamW. The bare
loop is forward, backward, step; the shared loop adds accelerate, the LR schedule, gradient
clipping, per-step seeded randomness and its logging. Runs alternate (bare, shared, bare, shared)
so machine noise hits both; the shared loop is timed whole (set-up and final checkpoint
included). Prints samples/s of each and the ratio shared / bare (target >= 0.95).
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from components import world
from components.config import load_params
from components.objectives import FlowMatching, FlowMatchingBatch
from components.training import LoopConfig, Trainer
from components.training.fit import build_generator


def _batches(n: int, batch: int, refs: int):
    rng = np.random.default_rng(0)
    pool = world.identity_pool("train", 0.1, "subjectflow-v1")
    samples = [world.sample_task(rng, "Three", pool) if refs > 1 else world.sample_single(rng, pool)
               for _ in range(batch)]
    targets = np.stack([world.render(s.target).image for s in samples])
    ref_imgs = [[world.render(r).image for r in s.refs[:refs]] for s in samples]
    return [FlowMatchingBatch(targets, [s.prompt for s in samples], ref_imgs)] * n


def _model():
    params = load_params()
    return build_generator(params.generator, params.synthesize.resolution, seed=0)


def bare(steps: int, data) -> float:
    model = _model().train()
    objective = FlowMatching()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # as the Trainer
    t0 = time.perf_counter()
    for i in range(steps):
        loss, _ = objective(model, data[i], torch.Generator().manual_seed(i))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * len(data[0].prompts) / (time.perf_counter() - t0)


def shared(steps: int, data) -> float:
    model = _model()
    cfg = LoopConfig(steps=steps, batch_size=len(data[0].prompts), lr=1e-4, log_every=10, checkpoint_every=0)
    with tempfile.TemporaryDirectory() as tmp:
        it = iter(data)
        t0 = time.perf_counter()  # everything the loop costs: set-up, steps and its final checkpoint
        Trainer(model, FlowMatching(), cfg, tmp, make_batch=lambda rng, gen: next(it)).run(resume=False)
        return steps * len(data[0].prompts) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--refs", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    data = _batches(args.steps, args.batch, args.refs)
    bare(2, data), shared(10, data)  # warm-up: first calls pay for allocation
    b, s = [], []
    for _ in range(args.rounds):
        b.append(bare(args.steps, data))
        s.append(shared(args.steps, data))
    print(f"training throughput, default generator, batch {args.batch}, {args.refs} reference(s), {args.steps} steps x {args.rounds}")
    print(f"  bare PyTorch loop : {np.mean(b):7.1f} samples/s  ({', '.join(f'{x:.1f}' for x in b)})")
    print(f"  shared loop       : {np.mean(s):7.1f} samples/s  ({', '.join(f'{x:.1f}' for x in s)})")
    print(f"  ratio shared / bare = {np.mean(s) / np.mean(b):.3f}  (target >= 0.95)")


if __name__ == "__main__":
    main()
