#!/usr/bin/env bash
# SerialGen, section 8 of docs/experiments/serialgen.md: which step of the standardized references
# makes sft_std's speckled patchwork. sft_std (sft.standardize_placement keep, standardize_from
# target) trained and benchmarked alone, with the project's own standardizer routed by a probe
# patch (serialgen_route_probe.patch, on components/models/standardizer.py at 9319131):
#   bash docs/experiments/serialgen_route_probe.sh <finished project> <workdir> <probe> [<min extent>]
# <probe>: cut     every subject, the person too, cut out in place by the analyser's mask, not turned
#          warpall every subject warped in place by the analyser's mask and rotation (the person not redrawn)
#          cutobj  objects cut out in place, not turned; the person redrawn (= `standardizer.objects: cut`)
#          anchor  every subject cut out, not turned, centred where it stands and scaled to the standard size
#          none    the shipped routes (objects turned; the person redrawn)
# <min extent>: with cutobj, a subject smaller than this share of the side is enlarged to it in place.
# Run from the repository root; beside nothing else (two training processes on 2 cores run ~10x slower).
set -euo pipefail
F=$(realpath "$1"); W=$(realpath -m "$2"); PROBE=$3; MIN=${4:-}
R=$(pwd)
export MLFLOW_DISABLE_TELEMETRY=true PREFECT_SERVER_ANALYTICS_ENABLED=false DVC_NO_ANALYTICS=1
mkdir -p "$W"
if [ ! -d "$W/code" ]; then
  git -C "$R" worktree add --detach "$W/code" 9319131
  git -C "$W/code" apply "$R/docs/experiments/serialgen_route_probe.patch"
fi
python - "$F/params.yaml" "$W/params.yaml" <<'PY'
import sys, yaml
p = yaml.safe_load(open(sys.argv[1]))
p["sft"].update(standardize_from="target", standardize_placement="keep")
p["evaluate"].update(generators=["sft_std"], compare=[])
yaml.safe_dump(p, open(sys.argv[2], "w"), sort_keys=False)
PY
cd "$W/code"
[ "$PROBE" = none ] || export SF_HACK=$PROBE
[ -z "$MIN" ] || export SF_MIN=$MIN
[ -f "$W/models/sft_std/sampling.json" ] || python -m components.sft_std --params "$W/params.yaml" \
  --data "$F/data/multisubject" --single "$F/data/single" --init "$F/models/pretrain" --standardizer "$F/models/standardizer" \
  --out "$W/models/sft_std" --reports "$W/reports/sft_std" --checkpoints "$W/.checkpoints" --metrics "$W/metrics/sft_std.json"
python -m components.evaluate --params "$W/params.yaml" --bench "$F/data/bench" --wild "$F/data/wild" --serial "$F/data/serial" \
  --judges "$F/models/judges" --models "$W/models" --reports "$W/reports/evaluate" --cache "$W/.cache/evaluate" \
  --metrics "$W/metrics/evaluate.json"
cat "$W/reports/evaluate/table.md"
