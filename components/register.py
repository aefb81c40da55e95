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
  (of models/judges), ``bench.judge_set`` and ``bench.rows``; the gate compares only versions
  scored alike;
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

import os
from dataclasses import dataclass
from pathlib import Path

from .config import Params
from .io import folder_hash, read_json, write_json_atomic
from .pipeline.stage import path_field, stage_main

# What a registered generator was made from: dvc.lock outputs recorded on its version (with the
# model's own folder).
LINEAGE = ("models/sft", "data/multisubject", "models/pretrain", "models/judges", "data/single", "data/multi",
           "data/bench")
MODEL_HASH_TAG = "model.sha256"
# Which benchmark scored a version: the gate refuses to compare versions that differ in these.
BENCH_IDENTITY = ("bench.dataset", "bench.judges", "bench.judge_set")
SCORES_URI_TAG = "bench.scores_uri"


@dataclass
class RegisterPaths:
    model: list[Path] = path_field("the generator folders to register (models/sft models/rl), each scored by "
                                   "the benchmark", many=True)
    scores: Path = path_field("the evaluate stage's metrics (metrics/evaluate.json)")
    bench_scores: Path = path_field("the evaluate stage's per-row scores (reports/evaluate/scores.csv)")
    reports: Path = path_field("folder receiving registered.json")
    project: Path = path_field("the project folder: its dvc.lock gives the lineage tags, its default MLflow store "
                               "the registry (.)")


def lineage_tags(root: Path, model: str) -> dict[str, str]:
    """``dvc.<path>`` -> md5 for the model folder ``model`` and every LINEAGE path in dvc.lock,
    plus the git commit."""
    from .pipeline.lineage import locked_outs
    from .pipeline.tracking import git_tags

    outs = locked_outs(root)
    return {**git_tags(root), **{f"dvc.{p}": outs[p] for p in (model, *LINEAGE) if p in outs}}


def bench_identity(root: Path, params: Params) -> dict[str, str]:
    """What makes two versions' benchmark scores comparable: the benchmark data, the judges and
    the judge set that scored them ("unversioned" outside a DVC project)."""
    from .pipeline.lineage import locked_outs

    outs = locked_outs(root)
    return {"bench.dataset": outs.get("data/bench", "unversioned"), "bench.judges": outs.get("models/judges", "unversioned"),
            "bench.judge_set": params.evaluate.judge_set}


def registered_version(client, model_name: str, model_hash: str):
    """The newest version of ``model_name`` holding the model whose folder hash is ``model_hash``."""
    found = client.search_model_versions(f"name = '{model_name}' and tags.`{MODEL_HASH_TAG}` = '{model_hash}'")
    return max(found, key=lambda v: int(v.version), default=None)


def score_tags(scores: dict, generator: str) -> dict[str, float]:
    """The generator's benchmark scores from metrics/evaluate.json, flattened:
    ``bench.Overall.SC``, ``bench.Four.SC``, ... (timings, which the file no longer holds, left
    out), and its paired comparisons with baselines (evaluate.compare): ``bench.vs.pretrain.Four.SC.low``, ..."""
    from .pipeline.tracking import numeric_metrics

    mine = {k: v for k, v in scores.get(generator, {}).items() if k not in ("timing", "timings")}
    if not mine:
        raise KeyError(f"{generator!r} has no benchmark scores: list it in evaluate.generators")
    for baseline, diffs in scores.get("compare", {}).get(generator, {}).items():
        mine[f"vs.{baseline}"] = diffs
    return {f"bench.{k}": v for k, v in numeric_metrics(mine).items()}


def _register_one(client, cfg, root: Path, folder: Path, scores: dict, rows, identity: dict, run) -> dict:
    """Log (or reuse) the version holding ``folder`` and tag it; returns its record."""
    import mlflow

    from .models.pyfunc import log_generator

    name = folder.name
    rows = rows[rows["generator"] == name]
    if rows.empty:
        raise KeyError(f"{name!r} has no per-row benchmark scores: list it in evaluate.generators")
    rows_path = f"benchmark/{name}.csv"
    mlflow.log_text(rows.to_csv(index=False), rows_path)
    model_hash = folder_hash(folder)
    existing = registered_version(client, cfg.model_name, model_hash)
    if existing is None:
        info = log_generator(folder, name=name, registered_model_name=cfg.model_name)
        version, model_uri = str(info.registered_model_version), info.model_uri
        lineage = {**lineage_tags(root, folder.relative_to(root).as_posix() if folder.is_relative_to(root) else name),
                   "generator": name, MODEL_HASH_TAG: model_hash, "run_id": run.info.run_id}
    else:  # its lineage stays that of the run that logged it; its scores are today's benchmark
        version, model_uri, lineage = str(existing.version), existing.source, {}
        for k in existing.tags:
            if k.startswith("bench.") and k not in scores:
                client.delete_model_version_tag(cfg.model_name, version, k)
    bench = {**{k: f"{v:.4f}" for k, v in scores.items()}, **identity, "bench.rows": str(len(rows)),
             SCORES_URI_TAG: f"runs:/{run.info.run_id}/{rows_path}"}
    for k, v in {**lineage, **bench}.items():
        client.set_model_version_tag(cfg.model_name, version, k, v)
    client.update_model_version(cfg.model_name, version, description=(
        f"{name} generator; benchmark Overall SC {scores.get('bench.Overall.SC', float('nan')):.3f}, "
        f"SA {scores.get('bench.Overall.SA', float('nan')):.3f}, AES {scores.get('bench.Overall.AES', float('nan')):.3f}"))
    mlflow.set_tags({f"registered.{name}.version": version, f"registered.{name}.reused": str(existing is not None).lower()})
    if existing is None:
        print(f"registered {name} as {cfg.model_name} version {version} ({model_uri})", flush=True)
    else:
        print(f"{folder} is unchanged ({MODEL_HASH_TAG} {model_hash[:12]}): version {version} of {cfg.model_name} "
              f"already holds it; its benchmark tags are refreshed, no new version", flush=True)
    return {"generator": name, "version": int(version), "reused": existing is not None, "model_uri": model_uri,
            "scores": scores}


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
    identity = bench_identity(root, params)
    flow_run = os.environ.get(tracking.STAGE_RUN_ENV)  # under the flow: log into its register run
    opened = mlflow.start_run(run_id=flow_run) if flow_run else \
        mlflow.start_run(run_name="register", tags={"kind": "register"})
    with opened as run:
        mlflow.set_tags({**tracking.git_tags(root), **identity})
        records = []
        for folder in paths.model:
            scores = score_tags(evaluated, folder.name)
            mlflow.log_metrics({f"{folder.name}.{k}": v for k, v in scores.items()})
            records.append(_register_one(client, cfg, root, (root / folder) if not folder.is_absolute() else folder,
                                         scores, rows, identity, run))
        key = f"bench.Overall.{cfg.candidate_by}"
        best = max(records, key=lambda r: r["scores"].get(key, float("-inf")))  # the first of equals
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
