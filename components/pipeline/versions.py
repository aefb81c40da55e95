"""What a registered generator version carries (the register stage writes it, the promotion gate
reads it): benchmark scores, per-row scores, the benchmark that scored it, lineage."""
from __future__ import annotations

import contextlib
from pathlib import Path

from ..config import Params
from ..io import folder_hash

# What a registered generator was made from: dvc.lock outputs recorded on its version (with the
# model's own folder).
LINEAGE = ("models/sft", "data/multisubject", "models/pretrain", "models/standardizer", "models/judges", "data/single",
           "data/standardize", "data/multi", "data/bench")
MODEL_HASH_TAG = "model.sha256"
# Which benchmark scored a version: the gate compares two versions' per-row scores only when all of
# these agree (the rows, the judge set's files, its name, the scoring settings, the scoring code).
BENCH_IDENTITY = ("bench.dataset", "bench.judges", "bench.judge_set", "bench.settings", "bench.code")
# The settings a benchmark row's score depends on besides the generator's weights and its own
# sampling.json: the evaluate section without the list of generators and comparisons, and the
# judges section (crop size; its training settings are in the judge files already).
SETTINGS_LEFT_OUT = ("generators", "compare", "grid_rows", "bootstrap")
SCORING_CODE = ("benchmark", "judging")  # packages of components/ that draw and score the rows
SCORES_URI_TAG = "bench.scores_uri"


def lineage_tags(root: Path, model: str) -> dict[str, str]:
    """``dvc.<path>`` -> md5 for the model folder ``model`` and every LINEAGE path in dvc.lock,
    plus the git commit."""
    from .lineage import locked_outs
    from .tracking import git_tags

    outs = locked_outs(root)
    return {**git_tags(root), **{f"dvc.{p}": outs[p] for p in (model, *LINEAGE) if p in outs}}


def bench_identity(root: Path, params: Params, judges_dir: Path | None = None) -> dict[str, str]:
    """What makes two versions' benchmark scores comparable (BENCH_IDENTITY): the benchmark data
    (its dvc.lock hash, "unversioned" outside a DVC project), the files of the judge set that
    scored them (under ``judges_dir``, default models/judges), its name, a hash of the scoring
    settings and one of the scoring code."""
    import hashlib
    import json

    from ..benchmark.cache import PACKAGE, code_hash
    from .lineage import locked_outs

    judge_set = (judges_dir or root / "models" / "judges") / params.evaluate.judge_set
    settings = {"evaluate": params.evaluate.model_dump(exclude=set(SETTINGS_LEFT_OUT)), "judges": params.judges.model_dump()}
    code = hashlib.sha256("".join(code_hash(PACKAGE / p) for p in SCORING_CODE).encode()).hexdigest()
    return {"bench.dataset": locked_outs(root).get("data/bench", "unversioned"),
            "bench.judges": folder_hash(judge_set)[:16] if judge_set.is_dir() else "missing",
            "bench.judge_set": params.evaluate.judge_set,
            "bench.settings": hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16],
            "bench.code": code[:16]}


def registered_version(client, model_name: str, model_hash: str):
    """The newest version of ``model_name`` holding the model whose folder hash is ``model_hash``."""
    found = client.search_model_versions(f"name = '{model_name}' and tags.`{MODEL_HASH_TAG}` = '{model_hash}'")
    return max(found, key=lambda v: int(v.version), default=None)


def score_tags(scores: dict, generator: str) -> dict[str, float]:
    """The generator's benchmark scores from metrics/evaluate.json, flattened:
    ``bench.Overall.SC``, ``bench.Four.SC``, ... (timings, which the file no longer holds, left
    out), and its paired comparisons with baselines (evaluate.compare): ``bench.vs.pretrain.Four.SC.low``, ..."""
    from .tracking import numeric_metrics

    mine = {k: v for k, v in scores.get(generator, {}).items() if k not in ("timing", "timings")}
    if not mine:
        raise KeyError(f"{generator!r} has no benchmark scores: list it in evaluate.generators")
    for baseline, diffs in scores.get("compare", {}).get(generator, {}).items():
        mine[f"vs.{baseline}"] = diffs
    return {f"bench.{k}": v for k, v in numeric_metrics(mine).items()}


def bench_tags(scores: dict, identity: dict, rows, scores_uri: str) -> dict[str, str]:
    """A version's ``bench.*`` tags: its scores (score_tags), the benchmark that scored it, how
    many rows, where its per-row scores are."""
    return {**{k: f"{v:.4f}" for k, v in scores.items()}, **identity, "bench.rows": str(len(rows)),
            SCORES_URI_TAG: scores_uri}


def retag(client, model_name: str, version: str, old: dict, bench: dict[str, str]) -> None:
    """Replace a version's ``bench.*`` tags (``old``: its tags now) by ``bench``: today's first, so
    a gate reading meanwhile never finds none, then the ones today's benchmark no longer has."""
    for k, v in bench.items():
        client.set_model_version_tag(model_name, version, k, v)
    for k in old:
        if k.startswith("bench.") and k not in bench:
            client.delete_model_version_tag(model_name, version, k)


@contextlib.contextmanager
def uploading(what: str):
    """Turn a failed upload to the artifact store into an error that says what and where, after
    MLflow's bounded retries (pipeline.http_retries)."""
    from mlflow.exceptions import MlflowException

    from .tracking import redact_uri

    try:
        yield
    except (MlflowException, OSError) as e:
        import mlflow

        raise RuntimeError(f"{what} could not be uploaded to the MLflow artifact store (tracking server "
                           f"{redact_uri(mlflow.get_tracking_uri())}): {redact_uri(str(e).splitlines()[0])[:400]}. "
                           "No model version was registered from it; check the artifact store (the tracking "
                           "server's --artifacts-destination) and run the stage again.") from e


def register_one(client, cfg, root: Path, folder: Path, scores: dict, rows, identity: dict, run) -> dict:
    """Log (or reuse) the version holding ``folder`` and tag it; returns its record."""
    import mlflow

    from ..models.pyfunc import log_generator

    name = folder.name
    rows = rows[rows["generator"] == name]
    if rows.empty:
        raise KeyError(f"{name!r} has no per-row benchmark scores: list it in evaluate.generators")
    rows_path = f"benchmark/{name}.csv"
    with uploading(f"{name}'s per-row scores"):
        mlflow.log_text(rows.to_csv(index=False), rows_path)
    model_hash = folder_hash(folder)
    existing = registered_version(client, cfg.model_name, model_hash)
    if existing is None:
        with uploading(f"the {name} model"):  # MLflow registers a version only once its files are up
            info = log_generator(folder, name=name, registered_model_name=cfg.model_name)
        version, model_uri = str(info.registered_model_version), info.model_uri
        lineage = {**lineage_tags(root, folder.relative_to(root).as_posix() if folder.is_relative_to(root) else name),
                   "generator": name, MODEL_HASH_TAG: model_hash, "run_id": run.info.run_id}
    else:  # its lineage stays that of the run that logged it; its scores are today's benchmark
        version, model_uri, lineage = str(existing.version), existing.source, {}
    for k, v in lineage.items():
        client.set_model_version_tag(cfg.model_name, version, k, v)
    retag(client, cfg.model_name, version, existing.tags if existing is not None else {},
          bench_tags(scores, identity, rows, f"runs:/{run.info.run_id}/{rows_path}"))
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
