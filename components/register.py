"""register stage: every trained generator the benchmark scored becomes a version of one
registered MLflow model, and ``@candidate`` points at the best of them.

Each folder (``models/sft``, ``models/rl``, ...) is logged as a pyfunc model (prompt + reference
images -> PNG) and registered as ``register.model_name``. Its version carries what a reviewer
and the promotion gate need:
- its benchmark scores (overall and per subset, from the evaluate stage) and its paired
  comparisons with baselines, as ``bench.*`` tags;
- its per-row benchmark scores, logged as ``benchmark/<name>.csv`` in the register run and named
  by the tag ``bench.scores_uri``: the gate (``promote.py``) bootstraps a candidate against the
  champion on the same rows from them;
- which benchmark scored it: ``bench.dataset`` (the DVC hash of data/bench), ``bench.judges``
  (a hash of the judge set's files), ``bench.judge_set``, ``bench.settings`` (the evaluate and
  judges settings a row's score depends on), ``bench.code`` (the scoring code) and
  ``bench.rows``; the gate compares only versions scored alike;
- its lineage: the DVC hashes of the model folder and of the data and models it was trained
  from, the git commit, and the flow run that produced it.

``@candidate`` (``register.alias``) goes to the version with the best Overall
``register.candidate_by`` score (SC by default) among those registered here; moving
``@champion`` is the gate's decision (``promote.py``), never this stage's.

An unchanged model is never registered twice: every version records a hash of the folder's files
(``model.sha256``, independent of dvc.lock), and when a version with the same hash exists it is
reused: its benchmark tags are refreshed (the judges or the benchmark may have changed), its
lineage stays that of the run that logged it.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from .config import Params
from .io import read_json, write_json_atomic
from .pipeline.stage import path_field, stage_main
from .pipeline.versions import bench_identity, register_one, score_tags

@dataclass
class RegisterPaths:
    model: list[Path] = path_field("the generator folders to register (models/sft models/rl), each scored by "
                                   "the benchmark", many=True)
    scores: Path = path_field("the evaluate stage's metrics (metrics/evaluate.json)")
    bench_scores: Path = path_field("the evaluate stage's per-row scores (reports/evaluate/scores.csv)")
    judges: Path = path_field("folder holding the judge sets (models/judges): the set that scored the benchmark is "
                              "hashed into the versions' bench.judges tag")
    reports: Path = path_field("folder receiving registered.json")
    project: Path = path_field("the project folder: its dvc.lock gives the lineage tags, its default MLflow store "
                               "the registry (.)")


def run(params: Params, paths: RegisterPaths) -> dict:
    """Register every folder in ``paths.model`` (a folder already registered, same hash, is not
    logged again) and point the alias at the best by ``register.candidate_by``."""
    import mlflow
    import pandas as pd

    from .pipeline import tracking

    cfg = params.register_
    root = paths.project.resolve()
    tracking.setup(root, params)
    client = mlflow.MlflowClient()
    evaluated = read_json(paths.scores)
    rows = pd.read_csv(paths.bench_scores)
    identity = bench_identity(root, params, paths.judges)
    flow_run = os.environ.get(tracking.STAGE_RUN_ENV)  # under the flow: log into its register run
    opened = mlflow.start_run(run_id=flow_run) if flow_run else \
        mlflow.start_run(run_name="register", tags={"kind": "register"})
    with opened as run:
        mlflow.set_tags({**tracking.git_tags(root), **identity})
        records = []
        for folder in paths.model:
            scores = score_tags(evaluated, folder.name)
            mlflow.log_metrics({f"{folder.name}.{k}": v for k, v in scores.items()})
            records.append(register_one(client, cfg, root, (root / folder) if not folder.is_absolute() else folder,
                                         scores, rows, identity, run))
        key = f"bench.Overall.{cfg.candidate_by}"
        # the first of equals; a missing or NaN score ranks last (NaN would compare False with everything)
        def rank(record) -> float:
            score = record["scores"].get(key, float("-inf"))
            return score if math.isfinite(score) else float("-inf")
        best = max(records, key=rank)
        mlflow.set_tags({"registered.candidate": best["generator"], "registered.version": str(best["version"])})
    client.set_registered_model_alias(cfg.model_name, cfg.alias, str(best["version"]))
    print(f"@{cfg.alias} -> version {best['version']} ({best['generator']}, best Overall {cfg.candidate_by} "
          f"{best['scores'].get(key, float('nan')):.3f} of {', '.join(r['generator'] for r in records)})", flush=True)
    record = {"model_name": cfg.model_name, "alias": cfg.alias, "candidate": best["generator"],
              "version": best["version"], "candidate_by": cfg.candidate_by,
              "uri": f"models:/{cfg.model_name}@{cfg.alias}", "run_id": run.info.run_id,
              "tracking_uri": tracking.redact_uri(mlflow.get_tracking_uri()), "benchmark": identity,
              "versions": records}
    write_json_atomic(paths.reports / "registered.json", record)
    return {"version": best["version"], **{f"{r['generator']}.version": r["version"] for r in records},
            **{f"{r['generator']}.reused": r["reused"] for r in records}}


def main(argv=None) -> int:
    return stage_main("register", run, RegisterPaths, argv)


if __name__ == "__main__":
    raise SystemExit(main())
