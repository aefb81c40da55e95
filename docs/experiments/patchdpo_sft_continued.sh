#!/usr/bin/env bash
# SFT trained 300 more steps of 32 on its own data (the other same-compute row of
# docs/experiments/patchdpo.md), scored on the standard benchmark and compared with the rows of a
# finished patchdpo_table.sh / patchdpo_run3.sh workdir (their reports/evaluate/scores.csv).
#   bash docs/experiments/patchdpo_sft_continued.sh <finished project> <workdir with reports/evaluate>
# Run from the repository root with its venv active.
set -euo pipefail
F=$(realpath "$1"); W=$(realpath "$2")
python - "$F/params.yaml" "$W/params-sftc.yaml" <<'PY'
import sys, yaml
p = yaml.safe_load(open(sys.argv[1]))
p["sft"].update(steps=300, lr=2e-4, ema_decay=0.99, checkpoint_every=100, sample_every=150, standardize_refs=False)
p["training"]["batch_size"] = 32
yaml.safe_dump(p, open(sys.argv[2], "w"), sort_keys=False)
PY
[ -f "$W/models/sftc/sampling.json" ] || python -m components.sft --params "$W/params-sftc.yaml" \
  --data "$F/data/multisubject" --single "$F/data/single" --init "$F/models/sft" --standardizer "$F/models/standardizer" \
  --out "$W/models/sftc" --reports "$W/reports/sftc" --checkpoints "$W/.checkpoints" --metrics "$W/metrics/sftc.json"
python - "$F" "$W" <<'PY'
import sys
from pathlib import Path
import pandas as pd
from components.benchmark.report import compare
from components.benchmark.scoring import benchmark
from components.config import load_params
F, W = map(Path, sys.argv[1:])
benchmark(load_params(W / "params-sftc.yaml"), F / "data/bench", F / "models/judges", W / "reports/sftc-bench",
          generators=["sftc"], models=W / "models")
s = pd.read_csv(W / "reports/evaluate/scores.csv")
s = pd.concat([s, pd.read_csv(W / "reports/sftc-bench/scores.csv")[s.columns]])
subsets = list(s.subset.unique())
for other in sorted(set(s.generator) - {"sftc"}):
    t = compare(s, "sftc", other, subsets)
    print(t[t.subset == "Overall"].to_string(index=False, header=False))
PY
