"""The speed levers of issue 21, measured side by side in one process (docs/experiments/speed-levers.md).

    python docs/experiments/speed_levers.py train  [--batch 16] [--refs 1] [--compile]
    python docs/experiments/speed_levers.py sample [--images 64] [--refs 1] [--steps 4]

train: one training step (flow matching, AdamW) of the default generator per variant, variants
interleaved over rounds, best round kept:
  fp32 / diffusers attention (what 9faad51 ran), bf16 autocast / diffusers attention,
  bf16 autocast / models/attention.py (the shipped default), and with --compile the shipped
  default under torch.compile (its compile time printed apart).
sample: ODE sampling with CFG 2.5 per variant: fp32 or bf16, the two CFG branches as two
transformer calls (shipped) or as one call on a batch of 2B.
Prints samples (images) per second and the ratio to the first variant.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "perf"))

from diffusers.models.transformers.transformer_flux import FluxAttnProcessor
from mfu import _batch, _rows

from components.config import load_params
from components.models.generator import SubjectGenerator
from components.objectives import FlowMatching
from components.training.fit import build_generator


def _model(params, diffusers_attention: bool):
    model = build_generator(params.generator, params.synthesize.resolution, seed=0)
    if diffusers_attention:
        model.transformer.set_attn_processor(FluxAttnProcessor())
    return model


def interleaved_best(names: list[str], step, rounds: int, reps: int) -> dict[str, float]:
    """Seconds per ``step(name, i)`` of each variant: ``rounds`` rounds of ``reps`` calls, the
    variants interleaved within a round (these machines drift), the best round of each."""
    best = {name: float("inf") for name in names}
    for _ in range(rounds):
        for name in names:
            t0 = time.perf_counter()
            for i in range(reps):
                step(name, i)
            best[name] = min(best[name], (time.perf_counter() - t0) / reps)
    return best


def train(params, args) -> None:
    batch = _batch(args.batch, args.refs)
    objective = FlowMatching(0.1, 0.05, 0.05, params.training.subject_weight)
    variants = {"fp32, diffusers attention": (True, False, False), "bf16, diffusers attention": (True, True, False),
                "bf16, models/attention.py": (False, True, False)}
    if args.compile:
        variants["bf16, models/attention.py, compiled"] = (False, True, True)
    runs = {}
    for name, (theirs, bf16, compiled) in variants.items():
        model = _model(params, theirs).train()
        if compiled:
            model.transformer = torch.compile(model.transformer, dynamic=False)
        runs[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4), bf16)

    def step(name, i):
        model, opt, bf16 = runs[name]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _ = objective(model, batch, torch.Generator().manual_seed(i))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for name in runs:
        t0 = time.perf_counter()
        step(name, 0), step(name, 1)
        if "compiled" in name:
            print(f"{name}: first two steps (compilation) {time.perf_counter() - t0:.1f} s")
    best = interleaved_best(list(runs), step, args.rounds, 4)
    _print(best, args.batch, f"training step, batch {args.batch}, {args.refs} reference(s)", "samples/s")


def sample(params, args) -> None:
    samples, refs = _rows(args.images, args.refs, seed=1)
    prompts = [s.prompt for s in samples]
    model = _model(params, False).eval()
    separate = SubjectGenerator.guided_velocity

    def one_call(self, x, t, cond, uncond, ref, blank, guidance):
        both = self.velocity(torch.cat([x, x]), torch.cat([t, t]), (torch.cat([cond[0], uncond[0]]),
                             torch.cat([cond[1], uncond[1]])), torch.cat([ref, blank])).float()
        v, v_uncond = both.chunk(2)
        return v_uncond + guidance * (v - v_uncond)

    variants = {"fp32, two calls": ("fp32", separate), "fp32, one call of 2B": ("fp32", one_call),
                "bf16, two calls": ("bf16", separate), "bf16, one call of 2B": ("bf16", one_call)}

    def run(name):
        precision, guided = variants[name]
        SubjectGenerator.guided_velocity = guided
        try:
            t0 = time.perf_counter()
            model.sample(prompts, refs, steps=args.steps, guidance=2.5, precision=precision)
            return time.perf_counter() - t0
        finally:
            SubjectGenerator.guided_velocity = separate

    for name in variants:
        run(name)
    best = {name: min(run(name) for _ in range(args.rounds)) for name in variants}
    _print(best, args.images, f"sampling, {args.images} images, {args.refs} reference(s), {args.steps} steps, CFG 2.5",
           "images/s")


def _print(seconds: dict[str, float], n: int, title: str, unit: str) -> None:
    print(f"{title}; torch threads {torch.get_num_threads()}")
    first = next(iter(seconds.values()))
    for name, s in seconds.items():
        print(f"  {name:<40} {n / s:7.1f} {unit}  ratio {first / s:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["train", "sample"])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--refs", type=int, default=1)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()
    np.random.seed(0)
    params = load_params()
    (train if args.what == "train" else sample)(params, args)


if __name__ == "__main__":
    main()
