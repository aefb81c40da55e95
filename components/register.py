"""register stage: the SFT generator becomes a registered MLflow model.

The trained folder (``models/sft``) is logged as a pyfunc model (prompt + reference images ->
PNG), registered as ``register.model_name`` and given the alias ``register.alias``
(``@candidate``: promotion to ``@champion`` is a person's or a later gate's decision). The version
carries what a reviewer needs to trust it: the generator's benchmark scores (overall and per
subset, from the evaluate stage), and its lineage: the DVC hashes of the model folder, of the data
and models it was trained from, the git commit, and the flow run that produced it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .config import Params
from .io import read_json, write_json_atomic
from .stage import path_field, stage_main

# What the registered generator was made from: dvc.lock outputs recorded on the version.
LINEAGE = ("models/sft", "data/multisubject", "models/pretrain", "models/judges", "data/single", "data/multi",
           "data/bench")


@dataclass
class RegisterPaths:
    model: Path = path_field("the generator folder to register (models/sft)")
    scores: Path = path_field("the evaluate stage's metrics (metrics/evaluate.json)")
    reports: Path = path_field("folder receiving registered.json")


def lineage_tags(root: Path) -> dict[str, str]:
    """``dvc.<path>`` -> md5 for every LINEAGE path in dvc.lock, plus the git commit."""
    from .lineage import locked_outs
    from .tracking import git_tags

    outs = locked_outs(root)
    return {**git_tags(root), **{f"dvc.{p}": outs[p] for p in LINEAGE if p in outs}}


def score_tags(scores: dict, generator: str) -> dict[str, float]:
    """The generator's benchmark scores from metrics/evaluate.json, flattened:
    ``bench.Overall.SC``, ``bench.Four.SC``, ... (timings left out), and its paired comparisons
    with baselines (evaluate.compare): ``bench.vs.pretrain.Four.SC.low``, ..."""
    from .tracking import numeric_metrics

    mine = {k: v for k, v in scores.get(generator, {}).items() if k != "timing"}
    if not mine:
        raise KeyError(f"{generator!r} has no benchmark scores: list it in evaluate.generators")
    for baseline, diffs in scores.get("compare", {}).get(generator, {}).items():
        mine[f"vs.{baseline}"] = diffs
    return {f"bench.{k}": v for k, v in numeric_metrics(mine).items()}


def run(params: Params, paths: RegisterPaths) -> dict:
    """Log ``paths.model`` as a pyfunc model, register it and set the alias; returns the version."""
    import mlflow

    from . import tracking
    from .models.pyfunc import log_generator

    cfg = params.register_
    root = Path.cwd()
    tracking.setup(root, params)
    scores = score_tags(read_json(paths.scores), paths.model.name)
    tags = {**lineage_tags(root), "generator": paths.model.name}
    flow_run = os.environ.get(tracking.STAGE_RUN_ENV)  # under the flow: log into its register run
    opened = mlflow.start_run(run_id=flow_run) if flow_run else \
        mlflow.start_run(run_name=f"register-{paths.model.name}", tags={"kind": "register"})
    with opened as run:
        mlflow.set_tags(tags)
        mlflow.log_metrics(scores)
        info = log_generator(paths.model, name="generator", registered_model_name=cfg.model_name)
    client = mlflow.MlflowClient()
    version = str(info.registered_model_version)
    tags["run_id"] = run.info.run_id
    for k, v in {**tags, **{k: f"{v:.4f}" for k, v in scores.items()}}.items():
        client.set_model_version_tag(cfg.model_name, version, k, v)
    client.update_model_version(cfg.model_name, version, description=(
        f"{paths.model.name} generator; benchmark Overall SC {scores.get('bench.Overall.SC', float('nan')):.3f}, "
        f"SA {scores.get('bench.Overall.SA', float('nan')):.3f}, AES {scores.get('bench.Overall.AES', float('nan')):.3f}"))
    client.set_registered_model_alias(cfg.model_name, cfg.alias, version)
    record = {"model_name": cfg.model_name, "version": int(version), "alias": cfg.alias,
              "uri": f"models:/{cfg.model_name}@{cfg.alias}", "model_uri": info.model_uri, "run_id": run.info.run_id,
              "tracking_uri": mlflow.get_tracking_uri(), "scores": scores, "lineage": tags}
    write_json_atomic(paths.reports / "registered.json", record)
    print(f"registered {cfg.model_name} version {version} as @{cfg.alias} ({info.model_uri})", flush=True)
    return {"version": int(version), **scores}


def main(argv=None) -> int:
    return stage_main("register", run, RegisterPaths, argv)


if __name__ == "__main__":
    raise SystemExit(main())
