"""Orchestration overhead of the pipeline flow and the wall time of a no-op rerun.

    python perf/flow_overhead.py [--scale 1.0]

Scaffolds a fresh project (this checkout's params.yaml, dataset sizes times --scale), runs
`subjectflow run` in it twice as a user would, and prints:
- the flow's wall time, the sum of the stages' own compute times and their ratio
  (flow wall / stage compute: 1.0 would be free orchestration; the rest is DVC hashing, caching
  and pushing, MLflow logging and Prefect bookkeeping);
- the process wall time of each run, which adds interpreter start-up and Prefect's ephemeral
  server;
- the same for the second, no-op run (DVC finds nothing stale and every stage is skipped).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow

from components.pipeline.project import default_params, scaffold


def _run(project: Path, env: dict) -> tuple[float, dict]:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "components.pipeline.cli", "run", "--project", str(project)], env=env,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    mlflow.set_tracking_uri(f"sqlite:///{project}/mlflow.db")
    parent = mlflow.search_runs(search_all_experiments=True, output_format="list", max_results=1,
                                filter_string="tags.kind = 'pipeline'", order_by=["start_time DESC"])[0]
    return wall, parent.data.metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every dataset size by this")
    args = ap.parse_args()
    params = default_params()
    for key in ("single", "standardize", "multi", "bench_per_subset"):
        params["synthesize"][key] = max(1, int(params["synthesize"][key] * args.scale))
    bench_rows = params["synthesize"].get("bench_rows", {})
    params["synthesize"]["bench_rows"] = {t: max(1, int(n * args.scale)) for t, n in bench_rows.items()}
    with tempfile.TemporaryDirectory() as tmp:
        project = scaffold(Path(tmp) / "project", params)
        env = {**os.environ, "PREFECT_HOME": str(Path(tmp) / "prefect-home"),
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
               "DVC_NO_ANALYTICS": "1"}
        first_wall, first = _run(project, env)
        again_wall, again = _run(project, env)
    compute = first["flow.stage_compute_seconds"]
    print(f"pipeline on the default profile x{args.scale} ({params['synthesize']['multi']} multi samples)")
    print(f"  first run : flow {first['flow.seconds']:6.1f}s  stage compute {compute:6.1f}s  "
          f"overhead ratio flow/compute = {first['flow.seconds'] / compute:.2f}  (process wall {first_wall:.1f}s)")
    print(f"  no-op rerun: flow {again['flow.seconds']:6.1f}s  stages ran {int(again['flow.stages_ran'])}  "
          f"process wall {again_wall:.1f}s  (ratio no-op / first process wall = {again_wall / first_wall:.2f})")


if __name__ == "__main__":
    main()
