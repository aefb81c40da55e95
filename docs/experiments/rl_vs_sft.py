"""Benchmark an RL model folder against the SFT model it started from, on the held-out benchmark
with the evaluation judges and the paired bootstrap: what the evaluate stage does for sft -> rl,
outside the DAG, so that RL settings can be compared without rerunning the pipeline.

    python docs/experiments/rl_vs_sft.py --project /path/to/a/run/project --rl /path/to/models/rl \
        --out /tmp/rl-eval [--per-subset 50]

The project holds data/bench, models/judges and models/sft (a finished `subjectflow run`); its
evaluate cache is reused, so the SFT model is not sampled again.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--project", type=Path, required=True)
    ap.add_argument("--rl", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--per-subset", type=int, default=None)
    args = ap.parse_args()

    from components.benchmark.scoring import benchmark
    from components.config import load_params

    params = load_params(args.project / "params.yaml")
    ev = params.evaluate.model_copy(update={"compare": [("sft", "rl")], "per_subset": args.per_subset})
    params = params.model_copy(update={"evaluate": ev})
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp)
        (models / "sft").symlink_to((args.project / "models" / "sft").resolve())
        (models / "rl").symlink_to(args.rl.resolve())
        metrics = benchmark(params, args.project / "data" / "bench", args.project / "models" / "judges", args.out,
                            ["sft", "rl"], models=models, cache=args.project / ".cache" / "evaluate")
    print((args.out / "table.md").read_text())
    print((args.out / "compare.md").read_text())
    overall = {g: metrics[g]["Overall"] for g in ("sft", "rl")}
    print(json.dumps({**overall, "SC_ratio": round(overall["rl"]["SC"] / overall["sft"]["SC"], 4)}))


if __name__ == "__main__":
    main()
