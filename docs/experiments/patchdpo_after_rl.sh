#!/usr/bin/env bash
# PatchDPO applied after RL against RL alone (docs/experiments/patchdpo.md): from a finished
# project's RL model, build the pairs with it, train PatchDPO from it, and benchmark both.
#   bash docs/experiments/patchdpo_after_rl.sh <project> <workdir> [section.key=value ...]
# Run from the repository root with its venv active.
set -euo pipefail
F=$(realpath "$1"); W=$(realpath -m "$2"); shift 2
mkdir -p "$W/models"
ln -sfn "$F/models/rl" "$W/models/rl"
python - "$F/params.yaml" "$W/params.yaml" "$@" <<'PY'
import sys, yaml
src, out, *extra = sys.argv[1:]
p = yaml.safe_load(open(src))
p.setdefault("patchdpo", {})["objective"] = "patch"
for line in extra:
    key, value = line.split("=", 1)
    section, name = key.split(".", 1)
    p.setdefault(section, {})[name] = yaml.safe_load(value)
p["evaluate"]["generators"] = ["rl", "patchdpo_rl"]
p["evaluate"]["compare"] = [["rl", "patchdpo_rl"]]
yaml.safe_dump(p, open(out, "w"), sort_keys=False)
PY
t0=$(date +%s)
[ -f "$W/data/patchdpo/manifest.parquet" ] || python -m components.patchdpo_data --params "$W/params.yaml" \
  --data "$F/data/multisubject" --init "$F/models/rl" --judges "$F/models/judges" --out "$W/data/patchdpo" \
  --reports "$W/reports/patchdpo_data" --metrics "$W/metrics/patchdpo_data.json"
echo "patchdpo_data: $(( $(date +%s) - t0 )) s"; t0=$(date +%s)
[ -f "$W/models/patchdpo_rl/sampling.json" ] || python -m components.patchdpo --params "$W/params.yaml" \
  --pairs "$W/data/patchdpo" --data "$F/data/multisubject" --init "$F/models/rl" --out "$W/models/patchdpo_rl" \
  --reports "$W/reports/patchdpo_rl" --checkpoints "$W/.checkpoints" --metrics "$W/metrics/patchdpo_rl.json"
echo "patchdpo_rl: $(( $(date +%s) - t0 )) s"; t0=$(date +%s)
python -m components.evaluate --params "$W/params.yaml" --bench "$F/data/bench" --wild "$F/data/wild" \
  --serial "$F/data/serial" --judges "$F/models/judges" --models "$W/models" --reports "$W/reports/evaluate" \
  --cache "$W/.cache/evaluate" --metrics "$W/metrics/evaluate.json"
echo "evaluate: $(( $(date +%s) - t0 )) s"
cat "$W/reports/evaluate/table.md" "$W/reports/evaluate/compare.md"
