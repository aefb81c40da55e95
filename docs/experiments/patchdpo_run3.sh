#!/usr/bin/env bash
# PatchDPO run 3 (docs/experiments/patchdpo.md): run 2's images re-scored, then the control and
# PatchDPO with missed subjects' references, and PatchDPO with normalised weights, benchmarked
# beside SFT (scores of generators already in <workdir>/.cache/evaluate are reused).
#   bash docs/experiments/patchdpo_run3.sh <finished project> <run 2's workdir> <workdir>
# Run from the repository root with its venv active.
set -euo pipefail
F=$(realpath "$1"); R2=$(realpath "$2"); W=$(realpath -m "$3")
mkdir -p "$W/models"
ln -sfn "$F/models/sft" "$W/models/sft"
ln -sfn "$R2/models/patchdpo" "$W/models/pdo_old"
ln -sfn "$R2/models/patchdpo_fm" "$W/models/fm_old"
[ -d "$W/.cache" ] || { [ -d "$R2/.cache" ] && cp -r "$R2/.cache" "$W/"; } || true
[ -f "$W/data/patchdpo/maps.npz" ] || python docs/experiments/patchdpo_remap.py "$R2/data/patchdpo" \
  "$F/data/multisubject" "$F/models/judges" "$W/data/patchdpo" "$F/params.yaml"
python - "$F/params.yaml" "$W" <<'PY'
import sys, yaml
src, w = sys.argv[1:]
p = yaml.safe_load(open(src))
p["evaluate"]["generators"] = ["sft", "fm_old", "pdo_old", "fm", "pdo", "pdo_n"]
p["evaluate"]["compare"] = [["sft", "pdo"], ["fm", "pdo"], ["fm", "pdo_n"], ["sft", "pdo_n"], ["pdo_old", "pdo"],
                            ["fm_old", "fm"], ["sft", "fm"]]
for name, objective, norm in [("pdo", "patch", False), ("fm", "flow_matching", False), ("pdo_n", "patch", True)]:
    p.setdefault("patchdpo", {}).update(objective=objective, missed_references=True, normalize_weights=norm)
    yaml.safe_dump(p, open(f"{w}/params-{name}.yaml", "w"), sort_keys=False)
PY
for v in pdo fm pdo_n; do
  [ -f "$W/models/$v/sampling.json" ] || python -m components.patchdpo --params "$W/params-$v.yaml" \
    --pairs "$W/data/patchdpo" --data "$F/data/multisubject" --init "$F/models/sft" --out "$W/models/$v" \
    --reports "$W/reports/$v" --checkpoints "$W/.checkpoints" --metrics "$W/metrics/$v.json"
done
python -m components.evaluate --params "$W/params-pdo.yaml" --bench "$F/data/bench" --wild "$F/data/wild" \
  --serial "$F/data/serial" --judges "$F/models/judges" --models "$W/models" --reports "$W/reports/evaluate" \
  --cache "$W/.cache/evaluate" --metrics "$W/metrics/evaluate.json"
cat "$W/reports/evaluate/table.md" "$W/reports/evaluate/compare.md"
