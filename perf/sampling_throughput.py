"""Sampling throughput of the generator: images per second, batched against one at a time.

    python perf/sampling_throughput.py [--images 32] [--steps 20] [--generator models/sft]

Samples the same prompts and references with the ODE sampler (``--steps`` Euler steps, no CFG,
then with CFG 3, which doubles the transformer calls) for 1, 2 and 4 references: once as one
batch, once image by image. A last row ("4 slots") times what serving a model trained with the
``slots`` reference layout adds: packing each of the four references into its slot
(``layout.arrange``) before the batched sampling, against the same batched sampling on references
packed beforehand. Uses the trained generator folder if given, else a freshly
initialised one of the default architecture (speed does not depend on the weights). Prints
images/s of each and the ratio batched / one at a time.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from components import world
from components.config import load_params
from components.models.generator import SubjectGenerator
from components.models.layout import arrange
from components.training.fit import build_generator


def _inputs(n: int, refs: int):
    rng = np.random.default_rng(0)
    pool = world.identity_pool("train", 0.1, "subjectflow-v1")
    task = {1: None, 2: "Position", 3: "Three", 4: "Four"}[refs]
    samples = [world.sample_single(rng, pool) if task is None else world.sample_task(rng, task, pool) for _ in range(n)]
    return [s.prompt for s in samples], [[world.render(r).image for r in s.refs] for s in samples]


def _rate(fn, images: int) -> float:
    t0 = time.perf_counter()
    fn()
    return images / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--generator", type=Path, default=None, help="a generator folder (default: fresh, default size)")
    args = ap.parse_args()
    params = load_params()
    gen = SubjectGenerator.from_pretrained(args.generator) if args.generator else \
        build_generator(params.generator, params.synthesize.resolution, seed=0)
    gen.eval()
    print(f"torch threads {torch.get_num_threads()}; {args.images} images, {args.steps} ODE steps; "
          f"{sum(p.numel() for p in gen.transformer.parameters()) / 1e6:.2f}M transformer parameters")
    print(f"{'refs':>4} {'cfg':>4} {'batched img/s':>14} {'one-by-one img/s':>17} {'ratio':>6}")
    for refs in (1, 2, 4):
        prompts, references = _inputs(args.images, refs)
        for guidance in (1.0, 3.0):
            kw = dict(steps=args.steps, guidance=guidance)
            gen.sample(prompts[:2], references[:2], **kw)  # warm-up
            batched = _rate(lambda: gen.sample(prompts, references, **kw), args.images)
            single = _rate(lambda: [gen.sample([p], [r], **kw) for p, r in zip(prompts, references)], args.images)
            print(f"{refs:>4} {guidance:>4.0f} {batched:>14.1f} {single:>17.1f} {batched / single:>6.2f}", flush=True)
    kw = dict(steps=args.steps, guidance=1.0)
    prompts, references = _inputs(args.images, 4)
    packed = [arrange(r, "slots") for r in references]
    with_packing = _rate(lambda: gen.sample(prompts, [arrange(r, "slots") for r in references], **kw), args.images)
    prepacked = _rate(lambda: gen.sample(prompts, packed, **kw), args.images)
    print(f"4 slots: batched with packing {with_packing:.1f} img/s, references packed beforehand {prepacked:.1f} img/s, "
          f"ratio {with_packing / prepacked:.3f}", flush=True)


if __name__ == "__main__":
    main()
