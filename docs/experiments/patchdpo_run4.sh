#!/usr/bin/env bash
# PatchDPO run 4 (docs/experiments/patchdpo.md): the patch map alone on the subjects
# (patchdpo.subject_weight 1) with calibrated reference weights (the default since) and with raw ones
# (run 1's weighting), trained on run 3's pairs and scored on the standard benchmark; then the paired
# comparisons against the stored scores of SFT, SFT continued, image-level DPO and the controls.
#   bash docs/experiments/patchdpo_run4.sh <finished project> <run 3's workdir> <workdir> [<scores.csv>:<generator> ...]
# Run from the repository root with its venv active.
set -euo pipefail
F=$(realpath "$1"); R3=$(realpath "$2"); W=$(realpath -m "$3"); shift 3
mkdir -p "$W/models"
for v in "c1 calibrated" "r1 raw"; do
  set -- $v "$@"
  python - "$F/params.yaml" "$W/params-$1.yaml" "$2" <<'PY'
import sys, yaml
p = yaml.safe_load(open(sys.argv[1]))
p.setdefault("patchdpo", {}).update(objective="patch", subject_weight=1.0, reference_weights=sys.argv[3])
yaml.safe_dump(p, open(sys.argv[2], "w"), sort_keys=False)
PY
  [ -f "$W/models/$1/sampling.json" ] || python -m components.patchdpo --params "$W/params-$1.yaml" \
    --pairs "$R3/data/patchdpo" --data "$F/data/multisubject" --init "$F/models/sft" --out "$W/models/$1" \
    --reports "$W/reports/$1" --checkpoints "$W/.checkpoints" --metrics "$W/metrics/$1.json"
  shift 2
done
python - "$F" "$W" <<'PY'
import sys
from pathlib import Path
from components.benchmark.scoring import benchmark
from components.config import load_params
F, W = map(Path, sys.argv[1:])
benchmark(load_params(W / "params-c1.yaml"), F / "data/bench", F / "models/judges", W / "reports/bench",
          generators=["c1", "r1"], models=W / "models")
PY
for c in c1 r1; do
  python docs/experiments/compare_scores.py "$W/reports/bench/scores.csv:$c" "$@"
done
