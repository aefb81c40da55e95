#!/usr/bin/env bash
# SerialGen, sections 8-9 of docs/experiments/serialgen.md: sft_std (or sft) trained with the
# repository's code on a finished project's data, pretrain and standardizer, benchmarked alone
# (standard, wild, serial views) and compared row by row with the stored scores of the project's sft.
#   bash docs/experiments/serialgen_sft_std.sh <finished project> <workdir> <sft's evaluate reports> [sft|sft_std] [section.key=value ...]
# <sft's evaluate reports>: a reports/evaluate folder holding sft's scores.csv and wild/scores.csv.
# The project's models/standardizer is copied and given the routes the standardizer stage now
# writes by default (`standardizer.objects: cut`), whatever it records; key=value pairs override the
# project's params (e.g. sft.standardize_min_extent=0.3, training.seed=1); one workdir per setting:
# a workdir's trained model is reused whatever the overrides say. Run from the repository
# root with its venv active. Beside nothing else: two training processes on 2 cores run about 10x
# slower each.
set -euo pipefail
F=$(realpath "$1"); W=$(realpath -m "$2"); S=$(realpath "$3"); STAGE=${4:-sft_std}
case $STAGE in sft|sft_std) ;; *) echo "stage must be sft or sft_std, not $STAGE" >&2; exit 2 ;; esac
shift $(( $# < 4 ? $# : 4 ))
export MLFLOW_DISABLE_TELEMETRY=true PREFECT_SERVER_ANALYTICS_ENABLED=false DVC_NO_ANALYTICS=1
mkdir -p "$W/metrics"
[ -f "$W/standardizer/standardizer.json" ] || python docs/experiments/serialgen_routes.py "$F" "$W/standardizer" cut
python - "$F/params.yaml" "$W/params.yaml" "$STAGE" "$@" <<'PY'
import sys, yaml
p = yaml.safe_load(open(sys.argv[1]))
for kv in sys.argv[4:]:
    key, value = kv.split("=", 1)
    *path, last = key.split(".")
    d = p
    for k in path:
        d = d[k]
    d[last] = yaml.safe_load(value)
p["evaluate"].update(generators=[sys.argv[3]], compare=[])
yaml.safe_dump(p, open(sys.argv[2], "w"), sort_keys=False)
PY
[ -f "$W/models/$STAGE/sampling.json" ] || python -m "components.$STAGE" --params "$W/params.yaml" \
  --data "$F/data/multisubject" --single "$F/data/single" --init "$F/models/pretrain" --standardizer "$W/standardizer" \
  --out "$W/models/$STAGE" --reports "$W/reports/$STAGE" --checkpoints "$W/.checkpoints" --metrics "$W/metrics/$STAGE.json"
python -m components.evaluate --params "$W/params.yaml" --bench "$F/data/bench" --wild "$F/data/wild" \
  --serial "$F/data/serial" --judges "$F/models/judges" --models "$W/models" --reports "$W/reports/evaluate" \
  --cache "$W/.cache/evaluate" --metrics "$W/metrics/evaluate.json"
cat "$W/reports/evaluate/table.md" "$W/reports/evaluate/serial/table.csv"
python docs/experiments/compare_scores.py "$W/reports/evaluate/scores.csv:$STAGE" "$S/scores.csv:sft"
python docs/experiments/compare_scores.py "$W/reports/evaluate/wild/scores.csv:$STAGE" "$S/wild/scores.csv:sft"
