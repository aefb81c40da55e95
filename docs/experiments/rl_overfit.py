"""The over-fitting check of docs/experiments/rl.md: can the rl stage raise its reward on eight
fixed training rows? The probe samples the same rows, so its reward judges' score is the trained
reward on them.

    python docs/experiments/rl_overfit.py --project <a finished run> --out /tmp/rl-overfit \
        [--set rl.lr=3e-4 ...]

The run uses the project's params.yaml with psr as the only reward, 4 groups x 2 batches and one
step per iteration, probes every 5 steps (``--set`` overrides any of it) and writes the usual
reports under ``--out``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import yaml


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--project", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--set", action="append", default=[], help="rl.key=yaml-value")
    args = ap.parse_args()
    import components.grpo.train as train
    from components.config import Params
    from components.rl import RLPaths

    raw = yaml.safe_load((args.project / "params.yaml").read_text())
    raw["rl"] = {**raw.get("rl", {}), "steps": 30, "probe_every": 5, "probe_rows": 8, "lr": 3e-4,
                 "rewards": {"psr": 1.0}, "beta": 0.0, "groups_per_batch": 4, "batches": 2, "grad_accum": 2,
                 "ref_count_probs": {2: 1.0}, "output": "last"}
    for s in args.set:
        key, value = s.split("=", 1)
        section, name = key.split(".", 1)
        raw.setdefault(section, {})[name] = yaml.safe_load(value)

    def eight_rows(rows, n, seed):
        two = [i for i, r in enumerate(rows.refs) if len(r) == 2][:8]
        return rows.take(two), rows.take(two)

    train.split_probe = eight_rows
    p = args.project
    train.run_rl(Params.model_validate(raw), RLPaths(p / "data" / "multisubject", p / "models" / "sft",
                                                     p / "models" / "judges", args.out / "model", args.out / "reports",
                                                     args.out / ".checkpoints"))


if __name__ == "__main__":
    main()
