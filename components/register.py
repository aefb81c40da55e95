"""register stage: the SFT generator becomes a registered MLflow model.

The trained folder (``models/sft``) is logged as a pyfunc model (prompt + reference images ->
PNG), registered as ``register.model_name`` and given the alias ``register.alias``
(``@candidate``: promotion to ``@champion`` is a person's or a later gate's decision). The version
carries what a reviewer needs to trust it: the generator's benchmark scores (overall and per
subset, from the evaluate stage), and its lineage: the DVC hashes of the model folder, of the data
and models it was trained from, the git commit, and the flow run that produced it.

An unchanged model is never registered twice: every version records a hash of the folder's files
(``model.sha256``, independent of dvc.lock), and when a version with the same hash exists the
alias moves to it (its benchmark tags refreshed) instead of a new version being created.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .config import Params
from .io import folder_hash, read_json, write_json_atomic
from .pipeline.stage import path_field, stage_main

# What the registered generator was made from: dvc.lock outputs recorded on the version.
LINEAGE = ("models/sft", "data/multisubject", "models/pretrain", "models/judges", "data/single", "data/multi",
           "data/bench")
MODEL_HASH_TAG = "model.sha256"


@dataclass
class RegisterPaths:
    model: Path = path_field("the generator folder to register (models/sft)")
    scores: Path = path_field("the evaluate stage's metrics (metrics/evaluate.json)")
    reports: Path = path_field("folder receiving registered.json")
    project: Path = path_field("the project folder: its dvc.lock gives the lineage tags, its default MLflow store "
                               "the registry (.)")


def lineage_tags(root: Path) -> dict[str, str]:
    """``dvc.<path>`` -> md5 for every LINEAGE path in dvc.lock, plus the git commit."""
    from .pipeline.lineage import locked_outs
    from .pipeline.tracking import git_tags

    outs = locked_outs(root)
    return {**git_tags(root), **{f"dvc.{p}": outs[p] for p in LINEAGE if p in outs}}


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


def run(params: Params, paths: RegisterPaths) -> dict:
    """Log ``paths.model`` as a pyfunc model, register it and set the alias; returns the version.
    A model already registered (same folder hash) is not logged again: the alias moves to it."""
    import mlflow

    from .models.pyfunc import log_generator
    from .pipeline import tracking

    cfg = params.register_
    root = paths.project.resolve()
    tracking.setup(root, params)
    client = mlflow.MlflowClient()
    scores = score_tags(read_json(paths.scores), paths.model.name)
    model_hash = folder_hash(paths.model)
    tags = {**lineage_tags(root), "generator": paths.model.name, MODEL_HASH_TAG: model_hash}
    existing = registered_version(client, cfg.model_name, model_hash)
    flow_run = os.environ.get(tracking.STAGE_RUN_ENV)  # under the flow: log into its register run
    opened = mlflow.start_run(run_id=flow_run) if flow_run else \
        mlflow.start_run(run_name=f"register-{paths.model.name}", tags={"kind": "register"})
    with opened as run:
        mlflow.set_tags(tags)
        mlflow.log_metrics(scores)
        if existing is None:
            info = log_generator(paths.model, name="generator", registered_model_name=cfg.model_name)
            version, model_uri = str(info.registered_model_version), info.model_uri
        else:
            version, model_uri = str(existing.version), existing.source
        mlflow.set_tags({"registered.version": version, "registered.reused": str(existing is not None).lower()})
    if existing is None:
        version_tags = {**tags, "run_id": run.info.run_id}
    else:  # its lineage stays that of the run that logged it; its scores are today's benchmark
        version_tags = {}
        for k in existing.tags:
            if k.startswith("bench.") and k not in scores:
                client.delete_model_version_tag(cfg.model_name, version, k)
    for k, v in {**version_tags, **{k: f"{v:.4f}" for k, v in scores.items()}}.items():
        client.set_model_version_tag(cfg.model_name, version, k, v)
    client.update_model_version(cfg.model_name, version, description=(
        f"{paths.model.name} generator; benchmark Overall SC {scores.get('bench.Overall.SC', float('nan')):.3f}, "
        f"SA {scores.get('bench.Overall.SA', float('nan')):.3f}, AES {scores.get('bench.Overall.AES', float('nan')):.3f}"))
    client.set_registered_model_alias(cfg.model_name, cfg.alias, version)
    record = {"model_name": cfg.model_name, "version": int(version), "alias": cfg.alias, "reused": existing is not None,
              "uri": f"models:/{cfg.model_name}@{cfg.alias}", "model_uri": model_uri, "run_id": run.info.run_id,
              "tracking_uri": tracking.redact_uri(mlflow.get_tracking_uri()), "scores": scores, "lineage": tags}
    write_json_atomic(paths.reports / "registered.json", record)
    if existing is None:
        print(f"registered {cfg.model_name} version {version} as @{cfg.alias} ({model_uri})", flush=True)
    else:
        print(f"{paths.model} is unchanged ({MODEL_HASH_TAG} {model_hash[:12]}): version {version} of "
              f"{cfg.model_name} already holds it; @{cfg.alias} now points to it, no new version", flush=True)
    return {"version": int(version), "reused": existing is not None, **scores}


def main(argv=None) -> int:
    return stage_main("register", run, RegisterPaths, argv)


if __name__ == "__main__":
    raise SystemExit(main())
