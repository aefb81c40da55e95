"""Scoring a registered version again on the project's benchmark as it is today, for the promotion
gate: when the benchmark data, the judges, the scoring settings or the scoring code changed since
``@champion`` was scored, and its weights are in no folder of the project any more (so the
register stage cannot retag it), its per-row scores cannot be compared with a new candidate's.
``rescore_champion`` (run by ``promote.promote`` before the gate, ``promote.rescore``) draws and
scores the champion's registered model on today's rows and replaces its ``bench.*`` tags, as the
register stage would have; the gate then compares the two row by row."""
from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path

import mlflow
import pandas as pd

from .benchmark.scoring import benchmark
from .config import Params
from .pipeline.versions import BENCH_IDENTITY, bench_identity, bench_tags, retag, score_tags
from .promote import PromotionError, aliased, existing_version


def rescore(params: Params, root: Path, client, version, run, identity: dict[str, str]) -> dict[str, str]:
    """Score a registered version's model on the project's benchmark as it is today (data/bench,
    the judge set under models/judges, params.evaluate; no cache), log its per-row scores in
    ``run`` and replace its ``bench.*`` tags, as the register stage would have (``identity``: the
    project's ``bench_identity``); returns them."""
    model_name, number = version.name, str(version.version)
    bench_dir, judges_dir = root / "data" / "bench", root / "models" / "judges"
    if not (bench_dir.is_dir() and (judges_dir / params.evaluate.judge_set).is_dir()):
        raise FileNotFoundError(f"{root}: no data/bench or models/judges/{params.evaluate.judge_set} to score version "
                                f"{number} on (run the pipeline, or `dvc pull`)")
    name = version.tags.get("generator") or "generator"
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model_name}/{number}",
                                                         dst_path=f"{tmp}/download"))
        config = next(local.rglob("generator_config.json"), None)
        if config is None:
            raise FileNotFoundError(f"version {number} of {model_name} holds no generator folder")
        (Path(tmp) / "models").mkdir()
        (Path(tmp) / "models" / name).symlink_to(config.parent, target_is_directory=True)
        scores = benchmark(params, bench_dir, judges_dir, Path(tmp) / "reports", generators=[name],
                           models=Path(tmp) / "models")
        rows = pd.read_csv(Path(tmp) / "reports" / "scores.csv")
    rows_path = f"benchmark/{name}-version-{number}.csv"
    mlflow.log_text(rows.to_csv(index=False), rows_path, run_id=run.info.run_id)
    tags = {**bench_tags(score_tags(scores, name), identity, rows,
                         f"runs:/{run.info.run_id}/{rows_path}"),
            "bench.rescored": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    retag(client, model_name, number, version.tags, tags)
    return tags


def rescore_champion(params: Params, root: Path, client, version: int | None = None) -> dict | None:
    """Before the gate: when the candidate (``version``, else ``@candidate``) was scored by the
    project's benchmark as it is today and ``@champion`` by another one (new benchmark data, judges,
    scoring settings or code), score the champion's model on today's benchmark
    (``rescore``) so the two can be compared row by row. Returns the champion's new tags,
    None when nothing needed it (the gate then decides, or refuses and says why)."""
    name = params.register_.model_name
    champion = aliased(client, name, params.promote.alias)
    candidate = existing_version(client, name, version) if version is not None else \
        aliased(client, name, params.register_.alias)
    if champion is None or candidate is None or champion.version == candidate.version or \
            all(candidate.tags.get(k) == champion.tags.get(k) for k in BENCH_IDENTITY):
        return None
    today = bench_identity(root, params)
    if any(candidate.tags.get(k) != today[k] for k in BENCH_IDENTITY):
        return None
    print(f"promote: @{params.promote.alias} (version {champion.version}) was scored by another benchmark than "
          f"version {candidate.version}; scoring it on the project's benchmark", flush=True)
    opened = contextlib.nullcontext(mlflow.active_run()) if mlflow.active_run() else \
        mlflow.start_run(run_name=f"rescore-version-{champion.version}", tags={"kind": "rescore"})
    with opened as run:
        try:
            tags = rescore(params, root, client, champion, run, today)
        except FileNotFoundError as e:
            raise PromotionError(f"cannot score @{params.promote.alias} on the project's benchmark: {e}") from None
        mlflow.set_tags({"rescored.version": str(champion.version),
                         **{f"rescored.{k}": v for k, v in tags.items() if k.startswith("bench.Overall.")}})
    return tags
