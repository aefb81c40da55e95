"""Benchmark scores of trained generators under other sampling settings (steps, precision), against
the settings they record, on the same rows with the paired bootstrap (docs/experiments/speed-levers.md).

    python docs/experiments/sampling_settings.py --project . --generators pretrain sft \
        --settings 20:fp32 20:bf16 12:bf16 10:bf16 8:bf16 [--per-subset N]

Every generator folder under ``<project>/models`` is sampled at each ``steps:precision`` setting
(CFG as its folder records), scored with the evaluation judges, and compared with the first
setting: per subset and Overall, the mean difference of SC, SA and AES with its 95% interval. Also
prints each setting's images per second.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from components import world
from components.benchmark import report
from components.benchmark.generators import TrainedGenerator
from components.benchmark.scoring import generate_all, load_bench, score
from components.config import load_params
from components.judging.sets import load_judge_set


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", type=Path, default=Path("."))
    ap.add_argument("--generators", nargs="+", default=["pretrain", "sft"])
    ap.add_argument("--settings", nargs="+", default=["20:fp32", "20:bf16", "10:bf16"])
    ap.add_argument("--per-subset", type=int, default=None)
    args = ap.parse_args()
    root = args.project
    params = load_params(root / "params.yaml")
    cfg = params.evaluate
    judges = load_judge_set(root / "models" / "judges" / cfg.judge_set, params.judges)
    rows, side = load_bench(root / "data" / "bench", args.per_subset)
    subsets = [t for t in world.TASKS if any(r.subset == t for r in rows)]
    settings = [(int(s.split(":")[0]), s.split(":")[1]) for s in args.settings]
    for name in args.generators:
        frames = []
        for steps, precision in settings:
            gen = TrainedGenerator(root / "models" / name, name=name, steps=steps, precision=precision)
            t0 = time.perf_counter()
            images = generate_all(gen, rows, side, cfg.seed)
            rate = len(rows) / (time.perf_counter() - t0)
            label = f"{steps}:{precision}"
            frames.append(score(rows, images, judges, params.judges.crop_size).assign(generator=label))
            print(f"{name} {label}: {rate:.1f} images/s", flush=True)
        scores = pd.concat(frames, ignore_index=True)
        table = report.summarise(scores, subsets)
        print(f"\n{name}: scores per setting\n{report.markdown(table)}")
        base = f"{settings[0][0]}:{settings[0][1]}"
        for steps, precision in settings[1:]:
            c = report.compare(scores, base, f"{steps}:{precision}", subsets, cfg.bootstrap, cfg.seed)
            print(report.compare_markdown(c, subsets))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
