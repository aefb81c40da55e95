"""An RL iteration's time split (sampling, scoring, training) and its samples per second against
the SFT training loop's, side by side in one run.

    python perf/rl_iteration.py --project <a finished run's project> [--iterations 3] [--rounds 2]

The project holds data/multisubject, models/sft and models/judges (`subjectflow run` made them).
RL is built exactly as the rl stage builds it from the project's params.yaml (``grpo.train.build_rl``)
and runs ``--iterations`` whole iterations through the shared trainer (rollouts, rewards,
optimizer steps; no probe); SFT is the sft stage's training step (the same trainer, flow
matching, ``training.batch_size``) on bootstrapped rows with the reference counts RL draws, in
the same proportions. Rounds alternate RL and SFT; each prints its best round. "Samples" are
trained samples: for RL, the rollouts of an iteration (each trained on ``rl.window_size`` SDE
steps), for SFT, the rows of a batch (one noise level each).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def rl_round(params, project: Path, iterations: int) -> dict:
    from components.grpo.train import build_rl
    from components.rl import RLPaths
    from components.training import Trainer

    cfg = params.rl
    with tempfile.TemporaryDirectory() as tmp:
        paths = RLPaths(project / "data" / "multisubject", project / "models" / "sft", project / "models" / "judges",
                        Path(tmp) / "out", Path(tmp) / "reports", Path(tmp) / "ckpt")
        setup = build_rl(params, paths)
        setup.collector.log = None
        loop = setup.loop
        loop.steps, loop.sample_every, loop.checkpoint_every = 10 ** 6, 0, 0
        trainer = Trainer(setup.model, setup.objective, loop, paths.checkpoints, collect=setup.collector)
        trainer.module.train()
        t0 = time.perf_counter()
        for _ in range((iterations + 1) * cfg.steps_per_iteration):  # + 1: the next collection ends the last
            trainer.step()
        trainer.next_batch(*_rng())  # the collection that times the last iteration's training
        wall = time.perf_counter() - t0
    hist = setup.collector.history[:iterations + 1]
    per_it = cfg.group_size * cfg.groups_per_batch * cfg.batches
    split = {k: float(np.mean([h[k] for h in hist[1:]])) for k in ("seconds_sampling", "seconds_scoring",
                                                                      "seconds_training")}
    total = sum(split.values())
    return {**split, "samples_per_second": per_it / total, "wall": wall}


def _rng():
    import torch

    return np.random.default_rng(0), torch.Generator().manual_seed(0)


def sft_round(params, project: Path, steps: int) -> float:
    from components.objectives import FlowMatching, FlowMatchingBatch
    from components.training import LoopConfig, Trainer
    from components.training.fit import encode_pairs, load_pairs
    from components.models.generator import SubjectGenerator

    cfg = params.train_config("sft")
    data = load_pairs(project / "data" / "multisubject")
    groups = data.by_ref_count()
    probs = {k: p for k, p in params.rl.ref_count_probs.items() if k in groups and p > 0}
    model = SubjectGenerator.from_pretrained(project / "models" / "sft")
    targets, refs = encode_pairs(model, data, groups)
    counts = sorted(probs)
    weights = np.array([probs[k] for k in counts]) / sum(probs.values())

    def make_batch(rng, gen):
        k = counts[int(rng.choice(len(counts), p=weights))]
        pick = rng.choice(len(groups[k]), size=cfg.batch_size)
        idx = groups[k][pick]
        return FlowMatchingBatch(targets[idx], [data.prompts[i] for i in idx], refs[k][pick], data.masks[idx])

    objective = FlowMatching(cfg.drop_text, cfg.drop_refs, cfg.drop_both, cfg.subject_weight)
    with tempfile.TemporaryDirectory() as tmp:
        loop = LoopConfig(steps=10 ** 6, batch_size=cfg.batch_size, lr=cfg.lr, grad_accum=cfg.grad_accum,
                          mixed_precision=cfg.mixed_precision, max_grad_norm=cfg.max_grad_norm,
                          ema_decay=cfg.ema_decay, log_every=10 ** 6)
        trainer = Trainer(model, objective, loop, tmp, make_batch=make_batch)
        trainer.module.train()
        trainer.step()  # warm-up
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.step()
        seconds = time.perf_counter() - t0
    return steps * cfg.batch_size * cfg.grad_accum / seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--project", type=Path, required=True)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--sft-steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    import torch

    from components.config import load_params

    params = load_params(args.project / "params.yaml")
    cfg = params.rl
    print(f"rl: {cfg.batches} batches x {cfg.groups_per_batch} groups x G={cfg.group_size} per iteration, "
          f"{cfg.rollout_steps} rollout steps, window {cfg.window_size}, beta {cfg.beta}; torch threads "
          f"{torch.get_num_threads()}", flush=True)
    rl, sft = [], []
    for r in range(args.rounds):
        rl.append(rl_round(params, args.project, args.iterations))
        sft.append(sft_round(params, args.project, args.sft_steps))
        print(f"round {r}: rl {rl[-1]['samples_per_second']:.2f} samples/s, sft {sft[-1]:.2f} samples/s", flush=True)
    best = max(rl, key=lambda x: x["samples_per_second"])
    total = best["seconds_sampling"] + best["seconds_scoring"] + best["seconds_training"]
    print(f"RL iteration (best round): {total:.2f} s = sampling {best['seconds_sampling']:.2f} s "
          f"({best['seconds_sampling'] / total:.0%}) + scoring {best['seconds_scoring']:.2f} s "
          f"({best['seconds_scoring'] / total:.0%}) + training {best['seconds_training']:.2f} s "
          f"({best['seconds_training'] / total:.0%})")
    print(f"RL: {best['samples_per_second']:.2f} trained samples/s; SFT loop: {max(sft):.2f} samples/s; "
          f"ratio RL / SFT = {best['samples_per_second'] / max(sft):.3f}")


if __name__ == "__main__":
    main()
