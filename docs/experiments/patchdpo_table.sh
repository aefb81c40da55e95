#!/usr/bin/env bash
# PatchDPO's table in miniature (docs/experiments/patchdpo.md): from a finished project's SFT
# model, build the pairs once, train the three rows on them (PatchDPO, the same pairs with every
# weight 1, image-level DPO), then benchmark SFT and the three on the held-out rows with the
# evaluation judges and paired bootstraps.
#   bash docs/experiments/patchdpo_table.sh <project> <workdir> [extra params.yaml lines]
# <project>: a project whose default run finished sft (models/sft, models/judges, data/...).
# Run from the repository root with its venv active.
set -euo pipefail
F=$(realpath "$1"); W=$(realpath -m "$2"); shift 2
mkdir -p "$W/models"
ln -sfn "$F/models/sft" "$W/models/sft"
ln -sfn "$F/models/judges" "$W/models/judges"
base() {  # the project's params with the patchdpo section and the evaluate section of this table
  python - "$F/params.yaml" "$1" "$W/$2" "${@:3}" <<'PY'
import sys, yaml
src, objective, out, *extra = sys.argv[1:]
p = yaml.safe_load(open(src))
p.setdefault("patchdpo", {})["objective"] = objective
for line in extra:
    key, value = line.split("=", 1)
    section, name = key.split(".", 1)
    p.setdefault(section, {})[name] = yaml.safe_load(value)
p["evaluate"]["generators"] = ["sft", "patchdpo_fm", "patchdpo_dpo", "patchdpo"]
p["evaluate"]["compare"] = [["sft", "patchdpo"], ["patchdpo_fm", "patchdpo"], ["patchdpo_dpo", "patchdpo"],
                            ["sft", "patchdpo_fm"], ["sft", "patchdpo_dpo"]]
yaml.safe_dump(p, open(out, "w"), sort_keys=False)
PY
}
base patch params-patch.yaml "$@"
base flow_matching params-fm.yaml "$@"
base image_dpo params-dpo.yaml "$@"
t0=$(date +%s)
[ -f "$W/data/patchdpo/manifest.parquet" ] || python -m components.patchdpo_data --params "$W/params-patch.yaml" \
  --data "$F/data/multisubject" --init "$F/models/sft" --judges "$F/models/judges" --out "$W/data/patchdpo" \
  --reports "$W/reports/patchdpo_data" --metrics "$W/metrics/patchdpo_data.json"
echo "patchdpo_data: $(( $(date +%s) - t0 )) s"
for v in patch:patchdpo fm:patchdpo_fm dpo:patchdpo_dpo; do
  t0=$(date +%s)
  [ -f "$W/models/${v#*:}/sampling.json" ] || python -m components.patchdpo --params "$W/params-${v%%:*}.yaml" \
    --pairs "$W/data/patchdpo" --data "$F/data/multisubject" --init "$F/models/sft" --out "$W/models/${v#*:}" \
    --reports "$W/reports/${v#*:}" --checkpoints "$W/.checkpoints" --metrics "$W/metrics/${v#*:}.json"
  echo "${v#*:}: $(( $(date +%s) - t0 )) s"
done
t0=$(date +%s)
python -m components.evaluate --params "$W/params-patch.yaml" --bench "$F/data/bench" --wild "$F/data/wild" \
  --serial "$F/data/serial" --judges "$F/models/judges" --models "$W/models" --reports "$W/reports/evaluate" \
  --cache "$W/.cache/evaluate" --metrics "$W/metrics/evaluate.json"
echo "evaluate: $(( $(date +%s) - t0 )) s"
cat "$W/reports/evaluate/table.md" "$W/reports/evaluate/compare.md"
