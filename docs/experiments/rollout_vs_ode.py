"""How the rollouts RL trains on differ from the images the benchmark scores: the SFT model's
reward-judge scores on the same training rows, sampled (a) with the ODE at the benchmark's
settings, (b) with the ODE at the rollouts' step count, (c) as RL rolls out (an SDE window
inside the ODE, shared prefix per group).

    python docs/experiments/rollout_vs_ode.py --project <a finished run> [--rows 96] [--eta 0.7]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--project", type=Path, required=True)
    ap.add_argument("--rows", type=int, default=96)
    ap.add_argument("--eta", type=float, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--model", type=Path, default=None)
    args = ap.parse_args()
    from components.config import load_params
    from components.grpo.rollout import rollout
    from components.grpo.train import load_rows
    from components.judging.rewards import make_reward
    from components.judging.sets import load_judge_set
    from components.models.generator import SubjectGenerator
    from components.models.sampling import SamplingSettings

    params = load_params(args.project / "params.yaml")
    cfg = params.rl
    folder = args.model or args.project / "models" / "sft"
    model = SubjectGenerator.from_pretrained(folder).eval()
    sampling = SamplingSettings.load(folder)
    rows = load_rows(args.project / "data" / "multisubject")
    idx = np.random.default_rng(0).choice(len(rows.prompts), size=args.rows, replace=False)
    rows = rows.take(idx)
    judges = {s: load_judge_set(args.project / "models" / "judges" / s, params.judges) for s in ("reward", "eval")}
    fns = {(s, n): make_reward(n, judges[s], **({"crop_size": params.judges.crop_size} if n == "psr" else {}))
           for s in judges for n in ("psr", "semantic", "aesthetic")}
    steps, eta = args.steps or cfg.rollout_steps, args.eta or cfg.eta

    def score(name, images):
        out = {f"{s}/{n}": float(f(images, rows.prompts, rows.meta).scores.mean()) for (s, n), f in fns.items()}
        print(f"{name:<34}" + "  ".join(f"{k} {v:.3f}" for k, v in out.items()), flush=True)

    by_k = rows.by_ref_count()

    def draw(fn):
        images = [None] * len(rows.prompts)
        for k, ix in by_k.items():
            part = rows.take(ix)
            for i, im in zip(ix, fn(part, k)):
                images[i] = im
        return images

    score(f"ODE {sampling.steps} steps (benchmark)", draw(lambda p, k: model.sample(
        p.prompts, p.refs, steps=sampling.steps, guidance=sampling.guidance, seed=k, precision=sampling.precision)["images"]))
    score(f"ODE {steps} steps", draw(lambda p, k: model.sample(
        p.prompts, p.refs, steps=steps, guidance=sampling.guidance, seed=k, precision=sampling.precision)["images"]))
    for start in range(cfg.window_range[0], cfg.window_range[1]):
        score(f"rollout: SDE steps {start}..{start + cfg.window_size - 1} of {steps}", draw(lambda p, k: rollout(
            model, p.prompts, p.refs, 1, steps, start, cfg.window_size, eta, sampling.guidance, sampling.precision,
            torch.Generator().manual_seed(k)).images))


if __name__ == "__main__":
    main()
