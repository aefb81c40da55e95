"""The register stage through its command line: it logs and registers a generator once; run again
on the same model folder (whatever its benchmark timings or scores) it moves the alias to the
version already holding it instead of creating another; a changed model gets a new version."""
from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest
import yaml

import components.pipeline.tracking  # noqa: F401 - reads $MLFLOW_TRACKING_URI once, before these tests set it
from components import register
from components.pipeline import versions
from components.io import folder_hash
from components.models.generator import SubjectGenerator
from components.pipeline.project import default_params
from components.pipeline.stage import RECORD_ENV

SMALL_GEN = {"width": 32, "heads": 2, "double_blocks": 1, "single_blocks": 1, "text_hidden": 16, "text_layers": 1}
NAME = "subjectflow-generator"


def _scores(sc: float, rl_sc: float = 0.7) -> dict:
    overall = {"SC": sc, "SA": 0.5, "AES": 0.25, "missing_rate": 0.0}
    return {"judge_set": "eval", "samples": 7, "sft": {"Overall": overall, "Four": overall},
            "rl": {"Overall": {**overall, "SC": rl_sc}, "Four": {**overall, "SC": rl_sc}},
            "compare": {"sft": {"pretrain": {"Overall": {"SC": {"difference": 0.1, "low": 0.0, "high": 0.2}}}}}}


@pytest.fixture
def project(tmp_path, monkeypatch):
    params = default_params()
    params["pipeline"]["tracking_uri"] = f"sqlite:///{tmp_path}/mlflow.db"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    SubjectGenerator.tiny(**SMALL_GEN, seed=0).save_pretrained(tmp_path / "models" / "sft")
    SubjectGenerator.tiny(**SMALL_GEN, seed=2).save_pretrained(tmp_path / "models" / "rl")
    (tmp_path / "metrics").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SUBJECTFLOW_MLFLOW_RUN_ID", raising=False)
    monkeypatch.setenv(RECORD_ENV, str(tmp_path / "record.json"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")  # mlflow.set_tracking_uri sets it: undone after the test
    mlflow.set_tracking_uri(params["pipeline"]["tracking_uri"])
    yield tmp_path
    mlflow.set_tracking_uri(None)


ARGS = ["--params", "params.yaml", "--model", "models/sft", "models/rl", "--scores", "metrics/evaluate.json",
        "--bench-scores", "reports/evaluate/scores.csv", "--judges", "models/judges", "--reports", "reports/register",
        "--project", ".",
        "--metrics", "metrics/register.json"]


def _register(root, sc=0.75, rl_sc=0.7):
    (root / "metrics" / "evaluate.json").write_text(json.dumps(_scores(sc, rl_sc)))
    rows = pd.DataFrame([{"generator": g, "id": f"bench-four-{i:04d}", "subset": "Four", "n_subjects": 4,
                          "SC": s + 0.01 * i, "SA": 0.5, "AES": 0.25} for g, s in (("sft", sc), ("rl", rl_sc))
                         for i in range(3)])
    (root / "reports" / "evaluate").mkdir(parents=True, exist_ok=True)
    rows.to_csv(root / "reports" / "evaluate" / "scores.csv", index=False)
    assert register.main(ARGS) == 0
    return json.loads((root / "reports" / "register" / "registered.json").read_text())


def _versions():
    return sorted(int(v.version) for v in mlflow.MlflowClient().search_model_versions(f"name = '{NAME}'"))


def _candidate() -> str:
    return str(mlflow.MlflowClient().get_model_version_by_alias(NAME, "candidate").version)


def test_every_scored_generator_is_registered_once_and_the_best_is_the_candidate(project, capsys):
    first = _register(project)
    assert (first["candidate"], first["version"]) == ("sft", 1)  # SC 0.75 beats rl's 0.70
    assert [(v["generator"], v["version"], v["reused"]) for v in first["versions"]] == [("sft", 1, False),
                                                                                         ("rl", 2, False)]
    client = mlflow.MlflowClient()
    v1, v2 = client.get_model_version(NAME, "1"), client.get_model_version(NAME, "2")
    assert v1.tags[versions.MODEL_HASH_TAG] == folder_hash(project / "models" / "sft")
    assert v2.tags[versions.MODEL_HASH_TAG] == folder_hash(project / "models" / "rl")
    assert v1.tags["bench.Overall.SC"] == "0.7500" and v2.tags["bench.Overall.SC"] == "0.7000"
    assert v1.tags["run_id"] == first["run_id"] and v1.tags["generator"] == "sft"
    # what the promotion gate reads: the rows that scored it, and which benchmark that was
    rows = pd.read_csv(mlflow.artifacts.download_artifacts(v2.tags[versions.SCORES_URI_TAG], dst_path=str(project / "dl")))
    assert set(rows["generator"]) == {"rl"} and rows["SC"].tolist() == pytest.approx([0.70, 0.71, 0.72])
    assert v2.tags["bench.rows"] == "3" and v2.tags["bench.judge_set"] == "eval"
    assert v2.tags["bench.dataset"] == "unversioned" and v2.tags["bench.judges"] == "missing"  # no dvc.lock, no judges
    # the register metrics file holds no timings: they went to the run record
    assert "peak_rss_mb" not in json.loads((project / "metrics" / "register.json").read_text())
    assert json.loads((project / "record.json").read_text())["timings"]["peak_rss_mb"] > 0

    again = _register(project, sc=0.8, rl_sc=0.9)  # same folders, a new benchmark: no new version
    assert (again["candidate"], again["version"]) == ("rl", 2) and _versions() == [1, 2]
    assert all(v["reused"] for v in again["versions"])
    assert "no new version" in capsys.readouterr().out
    v1 = client.get_model_version(NAME, "1")
    assert v1.tags["bench.Overall.SC"] == "0.8000"  # today's scores
    assert v1.tags["run_id"] == first["run_id"]  # lineage: the run that logged it
    assert v1.tags[versions.SCORES_URI_TAG].startswith(f"runs:/{again['run_id']}/")  # today's rows
    assert _candidate() == "2"
    assert len(mlflow.search_logged_models(output_format="list")) == 2  # one logged model each

    SubjectGenerator.tiny(**SMALL_GEN, seed=1).save_pretrained(project / "models" / "sft")  # retrained
    assert _register(project)["version"] == 3 and _versions() == [1, 2, 3] and _candidate() == "3"

    SubjectGenerator.tiny(**SMALL_GEN, seed=0).save_pretrained(project / "models" / "sft")  # back to the first
    back = _register(project)
    assert back["version"] == 1 and back["versions"][0]["reused"] and _versions() == [1, 2, 3]
    assert _candidate() == "1"


@pytest.mark.parametrize("alias", ["latest", "v3", "release candidate"])
def test_an_alias_mlflow_refuses_fails_before_anything_is_registered(project, capsys, alias):
    """Found at the end, after the version was created, it left a version without an alias on
    every attempt; now params.yaml is refused when the stage starts."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["register"]["alias"] = alias
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (project / "metrics" / "evaluate.json").write_text(json.dumps(_scores(0.75)))
    assert register.main(ARGS) == 2
    assert "register.alias" in capsys.readouterr().err
    assert not (project / "mlflow.db").exists() and not (project / "reports" / "register").exists()


def test_folder_hash_follows_names_and_contents(tmp_path):
    a = tmp_path / "a"
    (a / "sub").mkdir(parents=True)
    (a / "sub" / "x.bin").write_bytes(b"1")
    (a / "y.json").write_text("{}")
    h = folder_hash(a)
    assert folder_hash(a) == h
    (a / "sub" / "x.bin").write_bytes(b"2")
    assert folder_hash(a) != h
    (a / "sub" / "x.bin").write_bytes(b"1")
    (a / "sub" / "x.bin").rename(a / "sub" / "z.bin")
    assert folder_hash(a) != h


def test_score_tags_leave_timings_out():
    scores = {**_scores(0.7), "timings": {"sft": {"generate_seconds": 3.0}}}
    scores["sft"]["timing"] = {"generate_seconds": 3.0}  # the old layout of metrics/evaluate.json
    tags = versions.score_tags(scores, "sft")
    assert tags["bench.Overall.SC"] == 0.7 and tags["bench.vs.pretrain.Overall.SC.low"] == 0.0
    assert not [k for k in tags if "seconds" in k or "timing" in k]


def test_the_benchmark_identity_follows_what_a_row_score_depends_on(tmp_path):
    """bench.settings changes with a setting that changes a row's score (the seed, the sampling
    overrides, the judges' crop) and not with the list of generators; bench.judges hashes the
    judge set that scored, not the other one."""
    from components.config import Params
    from components.pipeline.project import default_params
    from components.pipeline.versions import bench_identity

    def identity(**evaluate):
        raw = default_params()
        raw["evaluate"].update(evaluate)
        return bench_identity(tmp_path, Params.model_validate(raw), tmp_path / "judges")

    for judge_set in ("eval", "reward"):
        (tmp_path / "judges" / judge_set).mkdir(parents=True)
        (tmp_path / "judges" / judge_set / "w.bin").write_bytes(judge_set.encode())
    base = identity()
    assert identity(generators=["oracle"], compare=[])["bench.settings"] == base["bench.settings"]
    assert identity(seed=1)["bench.settings"] != base["bench.settings"]
    assert identity(sample_steps=3)["bench.settings"] != base["bench.settings"]
    before = base["bench.judges"]
    (tmp_path / "judges" / "reward" / "w.bin").write_bytes(b"retrained")
    assert identity()["bench.judges"] == before
    (tmp_path / "judges" / "eval" / "w.bin").write_bytes(b"retrained")
    assert identity()["bench.judges"] != before


def test_a_stage_shorter_than_the_sampling_interval_still_gets_system_metrics(tmp_path, monkeypatch):
    """MLflow's monitor drops the window it is in when stopped; tracking.system_metrics logs it."""
    import time

    from components.pipeline.tracking import system_metrics

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    try:
        with mlflow.start_run(experiment_id=mlflow.create_experiment("system-metrics")) as run:
            with system_metrics(run.info.run_id, 60):
                time.sleep(0.5)
        metrics = mlflow.get_run(run.info.run_id).data.metrics
        assert metrics["system/system_memory_usage_megabytes"] > 0 and "system/cpu_utilization_percentage" in metrics
    finally:
        mlflow.set_tracking_uri(None)
