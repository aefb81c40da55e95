#!/usr/bin/env bash
# SerialGen, section 6 of docs/experiments/serialgen.md: sft_std on references standardized with
# objects warped, from the project's pretrained model ("pretrain") or from a pretrain trained on
# standardized references too ("pretrain_std": the whole chain standardized); benchmarked alone
# (standard, wild, serial views) and compared with the stored per-row scores of the project's sft.
#   bash docs/experiments/serialgen_warp_sft.sh <finished project> <workdir> pretrain|pretrain_std <sft's evaluate reports>
# <sft's evaluate reports>: a reports/evaluate folder holding sft's scores.csv and wild/scores.csv.
# The project's models/standardizer is copied and given warp routes (`standardizer.objects: warp`)
# if it has none. Run from the repository root with its venv active. Beside nothing else: two
# training processes on 2 cores run about 10x slower each.
set -euo pipefail
F=$(realpath "$1"); W=$(realpath -m "$2"); START=$3; S=$(realpath "$4")
export MLFLOW_DISABLE_TELEMETRY=true PREFECT_SERVER_ANALYTICS_ENABLED=false DVC_NO_ANALYTICS=1
mkdir -p "$W/metrics"
[ -f "$W/standardizer/standardizer.json" ] || python docs/experiments/serialgen_routes.py "$F" "$W/standardizer" warp
python - "$F/params.yaml" "$W/params.yaml" <<'PY'
import sys, yaml
p = yaml.safe_load(open(sys.argv[1]))
p["sft"]["standardize_from"] = "target"
p["evaluate"].update(generators=["sft_std"], compare=[])
yaml.safe_dump(p, open(sys.argv[2], "w"), sort_keys=False)
PY
INIT=$F/models/pretrain
if [ "$START" = pretrain_std ]; then
  INIT=$W/models/pretrain_std
  [ -f "$INIT/sampling.json" ] || python - "$W/params.yaml" "$F" "$W" <<'PY'
import json, sys
from pathlib import Path
from components.config import load_params
from components.training.fit import run_fit
params = load_params(sys.argv[1]); F, W = map(Path, sys.argv[2:])
m = run_fit("pretrain", params, F / "data/single", W / "models/pretrain_std", W / "reports/pretrain_std", W / ".checkpoints",
            standardizer=W / "standardizer", name="pretrain_std")
(W / "metrics/pretrain_std.json").write_text(json.dumps(m, indent=2))
PY
fi
[ -f "$W/models/sft_std/sampling.json" ] || python -m components.sft_std --params "$W/params.yaml" \
  --data "$F/data/multisubject" --single "$F/data/single" --init "$INIT" --standardizer "$W/standardizer" \
  --out "$W/models/sft_std" --reports "$W/reports/sft_std" --checkpoints "$W/.checkpoints" --metrics "$W/metrics/sft_std.json"
python -m components.evaluate --params "$W/params.yaml" --bench "$F/data/bench" --wild "$F/data/wild" \
  --serial "$F/data/serial" --judges "$F/models/judges" --models "$W/models" --reports "$W/reports/evaluate" \
  --cache "$W/.cache/evaluate" --metrics "$W/metrics/evaluate.json"
cat "$W/reports/evaluate/table.md"
python docs/experiments/compare_scores.py "$W/reports/evaluate/scores.csv:sft_std" "$S/scores.csv:sft"
python docs/experiments/compare_scores.py "$W/reports/evaluate/wild/scores.csv:sft_std" "$S/wild/scores.csv:sft"
