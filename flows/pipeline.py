"""The Prefect flow: every dvc.yaml stage in DAG order, one task each.

DVC decides whether a stage is stale (a rerun with nothing changed skips everything); Prefect
gives retries, logs, UI and schedules; MLflow records a parent run for the flow and a nested run
per stage. A stage failing its data gate stops the flow at once (no retry: bad data stays bad)
and nothing downstream runs.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import mlflow  # noqa: E402
from prefect import flow, get_run_logger, runtime, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.artifacts import create_markdown_artifact, create_table_artifact  # noqa: E402

from components.config import load_params  # noqa: E402
from components.pipeline import lineage, tracking  # noqa: E402
from components.pipeline.stage import EXIT_DATA_INVALID, RECORD_ENV  # noqa: E402


class StageFailed(RuntimeError):
    """A stage's command failed."""


class DataGateFailed(StageFailed):
    """A stage rejected its input data; retrying cannot help."""


def _retry_unless_data_invalid(task, task_run, state) -> bool:
    exc = state.result(raise_on_failure=False)
    return not isinstance(exc, DataGateFailed)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _gate_report(root: Path, info: lineage.StageInfo) -> str:
    """The human summary a gate stage left in its reports folder, if any."""
    for rel in info.outs:
        summary = root / rel / "summary.md"
        if summary.exists():
            return summary.read_text()
    return ""


def _publish_tables(root: Path, info: lineage.StageInfo) -> None:
    """A stage's result table (reports/<stage>/table.csv) becomes a Prefect table artifact, its
    comparisons (compare.md, evaluate) a Markdown one."""
    import pandas as pd

    for rel in info.outs:
        table = root / rel / "table.csv"
        if table.exists():
            records = pd.read_csv(table).round(4).to_dict(orient="records")
            create_table_artifact(records, key=f"{info.name}-table", description=f"{info.name} results")
        compare = root / rel / "compare.md"
        if compare.exists():
            create_markdown_artifact(compare.read_text(), key=f"{info.name}-compare",
                                     description=f"{info.name}: paired differences with bootstrap intervals")


@task(retry_condition_fn=_retry_unless_data_invalid)
def run_stage(project: str, name: str, parent_run_id: str, force: bool = False) -> dict:
    """Reproduce one DVC stage if stale, then record it in MLflow. Returns what happened."""
    log = get_run_logger()
    root = Path(project)
    params = load_params(root / "params.yaml")
    info = next(s for s in lineage.stages(root) if s.name == name)
    reasons = lineage.status(root, [name]).get(name, [])
    with tempfile.TemporaryDirectory() as tmp:
        record_path = Path(tmp) / "record.json"
        stage_run = tracking.open_stage_run(parent_run_id, name)
        env = {RECORD_ENV: str(record_path), "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(),
               tracking.STAGE_RUN_ENV: stage_run}
        log.info("stage %s: %s", name, "; ".join(reasons) if reasons else "up to date")
        reproduced, error = False, None
        if reasons or force:  # DVC already said "up to date": asking it again costs seconds
            try:
                with tracking.system_metrics(stage_run, params.pipeline.system_metrics_seconds):
                    reproduced = lineage.reproduce(root, name, env=env, force=force)
            except Exception as e:  # DVC wraps the command's failure
                error = e
        record = _read_json(record_path)
    seconds = record["seconds"] if record else 0.0
    timings = record.get("timings") if record else None  # wall clock and peak memory, kept out of metrics files
    state = "failed" if error else ("ran" if record else ("restored" if reproduced else "skipped"))
    metrics = {}
    for rel in info.metrics:
        m = _read_json(root / rel) if not error else None
        if m:
            metrics.update(m)
    run_id = tracking.log_stage(root, params, info, parent_run_id, state, metrics, seconds,
                                {"dvc.stale_reasons": "; ".join(reasons)[:4000] or "none"}, run_id=stage_run,
                                timings=timings)
    if error is not None:
        code = lineage.stage_failure_code(error)
        report = _gate_report(root, info)
        if code == EXIT_DATA_INVALID:
            create_markdown_artifact(f"# {name}: data rejected\n\n{report}", key=f"{name}-gate-failure",
                                     description=f"why {name} stopped the pipeline")
            raise DataGateFailed(f"{name} rejected the data; report in {root / info.outs[0]}\n{report}") from error
        raise StageFailed(f"stage {name} failed: {tracking.redact_uri(str(error))}") from error
    _publish_tables(root, info)
    log.info("stage %s %s in %.1fs", name, state, seconds)
    return {"stage": name, "state": state, "seconds": seconds, "reasons": reasons, "run_id": run_id,
            "metrics": tracking.numeric_metrics(metrics)}


def _summary_markdown(results: list[dict], wall: float, url: str, pushed: int | None, promoted: dict | None) -> str:
    lines = ["# subjectflow pipeline run", "", f"MLflow: {url}", "",
             "| stage | state | compute (s) | why |", "|---|---|---|---|"]
    for r in results:
        why = "; ".join(r.get("reasons", []))[:200] or "-"
        lines.append(f"| {r['stage']} | {r['state']} | {r.get('seconds', 0):.1f} | {why} |")
    compute = sum(r.get("seconds", 0.0) for r in results)
    lines += ["", f"Flow wall time {wall:.1f}s, stage compute {compute:.1f}s."]
    if pushed is not None:
        lines.append(f"DVC push: {pushed} file(s) sent to the default remote.")
    if promoted is not None:
        lines.append(f"Promotion failed: {promoted['error']}" if promoted["verdict"] == "error" else
                     f"Promotion: {promoted['verdict']} (version {promoted['version']}; champion "
                     f"{promoted['champion_before']} -> {promoted['champion_after']}); see the artifact `promotion`.")
    return "\n".join(lines) + "\n"


@task(cache_policy=NO_CACHE)
def promote_task(project: str, version: int | None = None, rollback: bool = False) -> dict:
    """The promotion gate (components/promote.py) on the project's registry; its decision goes to
    the active MLflow run, the version's tags and the Prefect artifact ``promotion``."""
    from components.promote import promote

    root = Path(project)
    decision = promote(load_params(root / "params.yaml"), root, version, rollback)
    get_run_logger().info("promotion: %s (version %s, champion %s -> %s)", decision.verdict, decision.version,
                          decision.champion_before, decision.champion_after)
    return decision.as_dict()


@flow(name="subjectflow-promote", log_prints=True)
def promotion(project: str = ".", version: int | None = None, rollback: bool = False) -> dict:
    """The gate alone (``subjectflow promote``): @candidate against @champion, or promote
    ``version`` by hand, or roll back."""
    return promote_task(str(Path(project).resolve()), version, rollback)


@flow(name="subjectflow-pipeline", log_prints=True)
def pipeline(project: str = ".", stages: list[str] | None = None, force: bool = False,
             push: bool | None = None) -> dict:
    """Run the dvc.yaml stages (all, or only ``stages``) in DAG order; returns a summary."""
    root = Path(project).resolve()
    params = load_params(root / "params.yaml")
    tracking.setup(root, params)
    if lineage.configure_remote(root, params.pipeline.dvc_remote, params.pipeline.s3_endpoint_url):
        print(f"DVC remote {lineage.REMOTE!r}: {params.pipeline.dvc_remote} (.dvc/config; commit it so clones pull "
              "from it)")
    order = lineage.stages(root)
    unknown = sorted(set(stages or []) - {s.name for s in order})
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; dvc.yaml has {[s.name for s in order]}")
    selected = [s for s in order if not stages or s.name in stages]
    flow_run = runtime.flow_run.get_id()
    tags = {**tracking.run_tags(root), "prefect.flow_run_id": str(flow_run or ""), "kind": "pipeline"}
    results: list[dict] = []
    t0 = time.perf_counter()
    with mlflow.start_run(run_name=f"pipeline-{runtime.flow_run.name or 'local'}", tags=tags) as parent:
        pushed = promoted = None
        try:
            for info in selected:
                stage_task = run_stage.with_options(task_run_name=info.name, retries=params.pipeline.retries,
                                                    retry_delay_seconds=params.pipeline.retry_delay_seconds)
                try:
                    results.append(stage_task(str(root), info.name, parent.info.run_id, force))
                except Exception as e:
                    results.append({"stage": info.name, "state": "failed", "seconds": 0.0,
                                    "reasons": [tracking.redact_uri(str(e))[:200]]})
                    raise
            changed = any(r["state"] in ("ran", "restored") for r in results)
            if changed and (push if push is not None else params.pipeline.push):
                pushed = lineage.push(root)
            if stages is None and params.promote.auto and any(info.name == "register" for info in selected):
                try:
                    promoted = promote_task(str(root))
                except Exception as e:  # the retrain fails, and its MLflow run says why
                    promoted = {"verdict": "error", "version": None, "champion_before": None, "champion_after": None,
                                "error": tracking.redact_uri(str(e))[:500]}
                    mlflow.set_tags({"promotion.verdict": "error", "promotion.error": promoted["error"]})
                    raise
        finally:
            wall = time.perf_counter() - t0
            compute = sum(r.get("seconds", 0.0) for r in results)
            mlflow.log_metrics({"flow.seconds": wall, "flow.stage_compute_seconds": compute,
                                "flow.stages_ran": sum(r["state"] == "ran" for r in results)})
            url = tracking.run_url(parent)
            md = _summary_markdown(results, wall, url, pushed, promoted)
            mlflow.log_text(md, "summary.md")
            failed = any(r["state"] == "failed" for r in results) or (promoted or {}).get("verdict") == "error"
            mlflow.set_tag("flow.state", "failed" if failed else "completed")
            create_markdown_artifact(md, key="subjectflow-pipeline", description="stages, states and the MLflow run")
    return {"parent_run_id": parent.info.run_id, "stages": results, "seconds": wall, "mlflow_url": url,
            "promotion": promoted}
