"""How long the quick profile takes: `subjectflow init DIR --profile quick` then `subjectflow run
--project DIR`, against its budget (5 minutes on 2 cores), and whether it left a champion.

    python perf/quick_profile.py [--keep DIR]

It prints the wall time of each command, the ratio of the whole to the budget, and the machine's
fp32 matmul speed measured in the same run (the machines vary between sessions: a slower one
explains a larger ratio).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUDGET_SECONDS = 300.0


def matmul_gflops(n: int = 1024, repeats: int = 20) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n ** 3 * repeats / (time.perf_counter() - t0) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", type=Path, default=None, help="make the project here and keep it")
    args = ap.parse_args()
    gflops = matmul_gflops()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp) / "quick"
        cli = [sys.executable, "-m", "components.pipeline.cli"]
        t0 = time.perf_counter()
        subprocess.run([*cli, "init", str(root), "--profile", "quick"], check=True)
        t1 = time.perf_counter()
        subprocess.run([*cli, "run", "--project", str(root)], check=True)
        t2 = time.perf_counter()
        import mlflow

        mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
        champion = mlflow.MlflowClient().get_model_version_by_alias("subjectflow-generator", "champion")
        total = t2 - t0
        print(f"fp32 matmul {gflops:.0f} GFLOP/s")
        print(f"init {t1 - t0:.1f} s, run {t2 - t1:.1f} s, total {total:.1f} s; budget {BUDGET_SECONDS:.0f} s; "
              f"ratio total / budget = {total / BUDGET_SECONDS:.2f}")
        print(f"champion: version {champion.version} ({champion.tags.get('generator')}), "
              f"Overall SC {champion.tags.get('bench.Overall.SC')}")


if __name__ == "__main__":
    main()
