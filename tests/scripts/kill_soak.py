"""Kill -9 the training stages at random moments, again and again, and check that every rerun
ends with the weights and reports of an uninterrupted run.

    python -m tests.scripts.kill_soak [--trials 10] [--kills 1-3] [--stages judges,pretrain,sft] [--seed 0]

A tiny project is synthesized in a temporary folder; each stage runs once uninterrupted (the
reference). Then each trial starts the stage's command (what DVC runs) and SIGKILLs its process
group at a moment drawn uniformly over the reference run's duration, 1 to 3 times in a row, each
restart first emptying the stage's outputs as ``dvc repro`` does; the last start runs to the
end. A trial passes when the model folder is byte-identical to the reference's, the metrics
equal the reference's (but for ``resumed_from_step``), the history and sample grids cover the
whole run, and nothing is left behind (temporary copies, checkpoints). Prints one line per kill
and a summary; exits 1 if any trial failed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[2]
# Long enough that a random moment falls in training (and in checkpoint writes) more often than
# in process start-up; tiny enough that a trial takes seconds.
TRAIN = {"steps": 48, "batch_size": 4, "warmup_steps": 2, "log_every": 2, "sample_every": 12, "checkpoint_every": 4,
         "sample_steps": 2, "grid_rows": 2}
SMALL_GEN = {"width": 32, "heads": 2, "double_blocks": 1, "single_blocks": 1, "text_hidden": 16, "text_layers": 1}
STAGES = {
    "judges": ["--data", "data", "--out", "models/judges", "--reports", "reports/judges"],
    "pretrain": ["--data", "data/single", "--out", "models/pretrain", "--reports", "reports/pretrain",
                 "--checkpoints", ".checkpoints"],
    "sft": ["--data", "data/multi", "--single", "data/single", "--init", "models/pretrain",
            "--standardizer", "models/standardizer", "--out", "models/sft",
            "--reports", "reports/sft", "--checkpoints", ".checkpoints"],
}


def make_project(root: Path) -> Path:
    """params.yaml (tiny everything) and synthesized data in ``root``."""
    sys.path.insert(0, str(REPO))
    from components.config import load_params
    from components.synthesize import SynthesizePaths
    from components.synthesize import run as synthesize
    from tests.conftest import set_training, tiny_params

    params = tiny_params()
    params["generator"].update(SMALL_GEN)
    params["judges"].update(encoder_steps=40, grounder_steps=40, semantic_steps=40, aesthetic_steps=40)
    for stage in ("pretrain", "sft"):
        set_training(params, stage, **TRAIN)
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    synthesize(load_params(root / "params.yaml"), SynthesizePaths(out=root / "data", reports=root / "reports" / "data"))
    return root


def command(stage: str) -> list[str]:
    return [sys.executable, "-m", f"components.{stage}", "--params", "params.yaml", *STAGES[stage],
            "--metrics", f"metrics/{stage}.json"]


def outputs(root: Path, stage: str) -> list[Path]:
    args = STAGES[stage]
    return [root / args[args.index(flag) + 1] for flag in ("--out", "--reports")] + [root / f"metrics/{stage}.json"]


def start(root: Path, stage: str) -> subprocess.Popen:
    """The stage's command in a process group of its own, its outputs emptied first (as DVC does)."""
    for path in outputs(root, stage):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_DISABLE_TELEMETRY": "true", "GX_ANALYTICS_ENABLED": "false"}
    env.pop("SUBJECTFLOW_MLFLOW_RUN_ID", None)
    return subprocess.Popen(command(stage), cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)


def finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"stage exited {proc.returncode}:\n{err.decode()[-3000:]}")


def snapshot(root: Path, stage: str) -> dict:
    """What must not depend on whether the run was interrupted."""
    from components.io import folder_hash

    out, reports, metrics = outputs(root, stage)
    snap = {"model": folder_hash(out), "metrics": json.loads(metrics.read_text())}
    snap["metrics"].pop("resumed_from_step", None)
    if (reports / "history.csv").exists():
        snap["history"] = pd.read_csv(reports / "history.csv").drop(columns="samples_per_second").to_dict("list")
        snap["grids"] = sorted(p.name for p in (reports / "samples").iterdir())
    return snap


def leftovers(root: Path) -> list[str]:
    """Temporary copies and checkpoints a finished stage must not leave behind."""
    found = [str(p.relative_to(root)) for p in root.rglob(".*.tmp-*")] + \
            [str(p.relative_to(root)) for p in root.rglob(".*.old-*")]
    ckpt = root / ".checkpoints"
    return found + ([str(p.relative_to(root)) for p in ckpt.iterdir()] if ckpt.is_dir() else [])


def trial(root: Path, stage: str, duration: float, kills: int, rng: np.random.Generator, log) -> dict:
    """Kill the stage ``kills`` times at random moments, then let it finish. A start that ends
    before its kill shortens the span the next moments are drawn from (the machine got faster)."""
    events = []
    for _ in range(kills):
        proc, t0 = start(root, stage), time.perf_counter()
        delay = float(rng.uniform(0.0, duration))
        try:
            proc.wait(timeout=delay)
            events.append({"delay": delay, "killed": False})  # it finished first: not a kill
            duration = min(duration, time.perf_counter() - t0)
            continue
        except subprocess.TimeoutExpired:
            pass
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        during_write = any((root / ".checkpoints").rglob("step-*.tmp"))  # the next start removes it
        events.append({"delay": delay, "killed": True, "during_checkpoint_write": during_write})
        log(f"  {stage}: killed at {delay:5.1f}s" + (" (during a checkpoint write)" if events[-1]
                                                       ["during_checkpoint_write"] else ""))
    finish(start(root, stage))
    metrics = json.loads(outputs(root, stage)[2].read_text())
    return {"events": events, "resumed_from": metrics.get("resumed_from_step"), "duration": duration}


def soak(root: Path, stages: list[str], trials: int, kills: tuple[int, int], seed: int, log=print) -> dict:
    """Reference runs, then ``trials`` kill trials per stage; returns counts and failures."""
    rng = np.random.default_rng(seed)
    report = {}
    for stage in stages:
        t0 = time.perf_counter()
        finish(start(root, stage))
        duration = time.perf_counter() - t0
        reference = snapshot(root, stage)
        stats = {"reference_seconds": round(duration, 1), "trials": 0, "kills": 0, "during_checkpoint_write": 0,
                 "resumed_from": [], "failures": []}
        for i in range(trials):
            result = trial(root, stage, duration, int(rng.integers(kills[0], kills[1] + 1)), rng, log)
            duration = result["duration"]
            stats["trials"] += 1
            stats["kills"] += sum(e["killed"] for e in result["events"])
            stats["during_checkpoint_write"] += sum(e.get("during_checkpoint_write", False) for e in result["events"])
            stats["resumed_from"].append(result["resumed_from"])
            got, left = snapshot(root, stage), leftovers(root)
            diff = sorted(k for k in reference if got.get(k) != reference[k])
            if diff or left:
                stats["failures"].append({"trial": i, "differs": diff, "left_behind": left})
            log(f"{stage} trial {i}: {sum(e['killed'] for e in result['events'])} kill(s), resumed from step "
                f"{result['resumed_from']}: " + ("OK" if not (diff or left) else f"FAILED {diff} {left}"))
        report[stage] = stats
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=10, help="kill trials per stage")
    ap.add_argument("--kills", default="1-3", help="kills per trial, a range lo-hi")
    ap.add_argument("--stages", default="judges,pretrain,sft")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=Path, default=None, help="project folder to keep (default: a temporary one)")
    args = ap.parse_args()
    lo, _, hi = args.kills.partition("-")
    with tempfile.TemporaryDirectory() as tmp:
        root = make_project(args.keep or Path(tmp) / "project")
        report = soak(root, args.stages.split(","), args.trials, (int(lo), int(hi or lo)), args.seed)
    print(json.dumps(report, indent=2))
    total = sum(s["kills"] for s in report.values())
    failed = sum(len(s["failures"]) for s in report.values())
    print(f"\n{total} kills in {sum(s['trials'] for s in report.values())} trials; {failed} trial(s) failed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
