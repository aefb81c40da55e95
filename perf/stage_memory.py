"""Peak memory of each training stage, against the memory of merely importing the stack.

    python perf/stage_memory.py [--steps 20]

Scaffolds a project with this checkout's params.yaml (full dataset sizes: the training stages
hold their whole dataset in memory), synthesizes the data, then runs each training stage as DVC
runs it, in its own process, with ``steps`` shortened (peak memory is reached within the first
steps: the data is loaded up front and every step has the same shapes):

- judges    on data/multi + data/single
- pretrain  on data/single (1 reference per sample)
- sft       on data/multi, which has the layout and reference counts of data/multisubject
            (2/3/4 references, batch ``training.batch_size``) and data/single replayed as the
            1-reference batches, from the pretrain output

Each stage reports its own peak resident memory (``peak_rss_mb`` among the timings of the run
record it writes for the flow, as in every pipeline run). The baseline is a process that imports what the stages import and nothing
more. Prints MiB per stage and the ratio stage peak / baseline.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from components.pipeline.project import default_params, scaffold
from components.pipeline.stage import RECORD_ENV

BASELINE = ("import resource, torch, diffusers, transformers, accelerate, mlflow, pandas; "
            "from components.models import generator; "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")


def _stage(project: Path, module: str, args: list[str], env: dict) -> dict:
    """Run a stage's command; returns the timings it records for the flow (peak_rss_mb among them)."""
    name = module.rsplit(".", 1)[-1]
    (project / "metrics").mkdir(exist_ok=True)
    record = project / f"record-{name}.json"
    r = subprocess.run([sys.executable, "-m", module, "--params", "params.yaml", *args, "--metrics",
                        f"metrics/{name}.json"], cwd=project, env={**env, RECORD_ENV: str(record)},
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode:
        raise SystemExit(f"{module} failed:\n{r.stderr[-3000:]}")
    return json.loads(record.read_text())["timings"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    params = default_params()
    for section in ("pretrain", "sft"):
        params[section].update(steps=args.steps, checkpoint_every=0, sample_every=0)
    params["training"]["grid_rows"] = 2
    for k in ("encoder_steps", "grounder_steps", "semantic_steps", "aesthetic_steps"):
        params["judges"][k] = max(args.steps, 50)  # their one-cycle schedules need some room
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "1"}
    env.pop("SUBJECTFLOW_MLFLOW_RUN_ID", None)
    with tempfile.TemporaryDirectory() as tmp:
        project = scaffold(Path(tmp) / "project", params)
        _stage(project, "components.synthesize", ["--out", "data", "--reports", "reports/synthesize"], env)
        base = float(subprocess.run([sys.executable, "-c", BASELINE], cwd=project, env=env, check=True,
                                    capture_output=True, text=True).stdout.strip().splitlines()[-1])
        runs = {
            "judges": ("components.judges", ["--data", "data", "--out", "models/judges", "--reports", "reports/judges"]),
            "pretrain": ("components.pretrain", ["--data", "data/single", "--out", "models/pretrain", "--reports",
                                                 "reports/pretrain", "--checkpoints", ".checkpoints"]),
            "sft": ("components.sft", ["--data", "data/multi", "--single", "data/single", "--init", "models/pretrain",
                                       "--out", "models/sft", "--reports", "reports/sft", "--checkpoints",
                                       ".checkpoints"]),
        }
        print(f"import baseline: {base:.0f} MiB (python + torch, diffusers, transformers, accelerate, mlflow)")
        print(f"{'stage':<10} {'peak MiB':>9} {'ratio to baseline':>18}")
        for name, (module, stage_args) in runs.items():
            peak = _stage(project, module, stage_args, env)["peak_rss_mb"]
            print(f"{name:<10} {peak:>9.0f} {peak / base:>18.2f}", flush=True)


if __name__ == "__main__":
    main()
