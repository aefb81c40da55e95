"""Is the RL gradient signal or noise at this batch size? The cosine between the policy gradients
of two independent collections (other rows, other noise) from the same SFT weights: near 0, one
collection's gradient is mostly noise and a step along it mostly a random walk; the cosine grows
with the batch as sqrt(batch) x signal / noise.

    python docs/experiments/rl_gradient_agreement.py --project <a finished run> [--pairs 3] \
        [--set rl.window_range=[0,1] --set rl.eta=1.0 ...]

Collections are built exactly as the rl stage builds them (``grpo.train.build_rl`` on the
project's params.yaml, with ``--set`` overrides), the gradient is the objective's (no step taken).
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--project", type=Path, required=True)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--set", action="append", default=[], help="rl.key=yaml-value")
    args = ap.parse_args()
    from components.config import Params
    from components.grpo.train import build_rl
    from components.rl import RLPaths
    from components.training.loop import collect_randomness

    raw = yaml.safe_load((args.project / "params.yaml").read_text())
    for s in args.set:
        key, value = s.split("=", 1)
        section, name = key.split(".", 1)
        raw.setdefault(section, {})[name] = yaml.safe_load(value)
    params = Params.model_validate(raw)
    with tempfile.TemporaryDirectory() as tmp:
        paths = RLPaths(args.project / "data" / "multisubject", args.project / "models" / "sft",
                        args.project / "models" / "judges", Path(tmp) / "o", Path(tmp) / "r", Path(tmp) / "c")
        setup = build_rl(params, paths)
    setup.collector.log = None
    model, objective = setup.model, setup.objective
    params_ = [p for p in model.parameters() if p.requires_grad]

    def gradient(seed: int) -> torch.Tensor:
        rng, gen = collect_randomness(seed, 0, 0)
        model.eval()
        with torch.no_grad():
            batches = setup.collector(model, rng, gen)
        model.train()
        grads = [torch.zeros_like(p) for p in params_]
        for b in batches:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=params.training.mixed_precision == "bf16"):
                loss, _ = objective(model, b, torch.Generator())
            for g, d in zip(grads, torch.autograd.grad(loss, params_)):
                g += d
        return torch.cat([g.flatten() for g in grads])

    cos = []
    for i in range(args.pairs):
        a, b = gradient(2 * i + 1000), gradient(2 * i + 1001)
        cos.append(float(torch.nn.functional.cosine_similarity(a, b, dim=0)))
        print(f"pair {i}: cosine {cos[-1]:+.4f}", flush=True)
    n = params.rl.group_size * params.rl.groups_per_batch * params.rl.batches
    print(f"{args.set}: {n} rollouts per collection, cosine mean {np.mean(cos):+.4f} (sd {np.std(cos):.4f})")


if __name__ == "__main__":
    main()
