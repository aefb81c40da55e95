"""The promotion gate on a real MLflow registry (a SQLite store in a temporary folder): versions
carry per-row benchmark scores as the register stage logs them, and the gate bootstraps the
candidate against the champion on the same rows. A promotion that passes, one refused for SA, one
refused because another benchmark scored the versions, the floors for the first champion, a
promotion by hand, rollback, and two concurrent promotions in two processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

import components.pipeline.tracking  # noqa: F401 - reads $MLFLOW_TRACKING_URI once, before these tests set it
from components.config import load_params
from components.pipeline.project import default_params
from components.promote import PromotionError, promote
from components.pipeline.versions import SCORES_URI_TAG

NAME = "subjectflow-generator"
SUBSETS = ("Attribute", "Four", "Three")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def registry(tmp_path, monkeypatch):
    params = default_params()
    params["pipeline"]["tracking_uri"] = f"sqlite:///{tmp_path}/mlflow.db"
    params["pipeline"]["artifact_location"] = str(tmp_path / "mlartifacts")
    params["evaluate"].update(generators=["oracle"], compare=[])  # a registry without a pipeline that trains
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")  # mlflow.set_tracking_uri sets it: undone after the test
    loaded = load_params(tmp_path / "params.yaml")
    components.pipeline.tracking.setup(tmp_path, loaded)  # this store and its experiment
    yield tmp_path, loaded
    mlflow.set_tracking_uri(None)


def _rows(sc: float, sa: float, aes: float, seed: int, n: int = 40) -> pd.DataFrame:
    """Per-row scores around the given means, n rows per subset: SC with noise 0.05 drawn from
    ``seed``, SA and AES with the same noise for every version (equal means, equal rows)."""
    ids = [f"bench-{s.lower()}-{i:04d}" for s in SUBSETS for i in range(n)]
    own, shared = np.random.default_rng(seed), np.random.default_rng(12345)
    return pd.DataFrame({"generator": "g", "id": ids, "subset": [s for s in SUBSETS for _ in range(n)],
                         "n_subjects": 2, "SC": sc + own.normal(0, 0.05, len(ids)),
                         "SA": sa + shared.normal(0, 0.05, len(ids)), "AES": aes + shared.normal(0, 0.05, len(ids))})


def _version(root, rows: pd.DataFrame, judges: str = "judges-md5", alias: str | None = "candidate") -> int:
    """A registered version as the register stage leaves it: its per-row scores logged in a run
    and named by bench.scores_uri, its Overall scores and benchmark identity as tags."""
    client = mlflow.MlflowClient()
    if not client.search_registered_models(f"name = '{NAME}'"):
        client.create_registered_model(NAME)
    with mlflow.start_run() as run:
        mlflow.log_text(rows.to_csv(index=False), "benchmark/g.csv")
    tags = {SCORES_URI_TAG: f"runs:/{run.info.run_id}/benchmark/g.csv", "bench.dataset": "bench-md5",
            "bench.judges": judges, "bench.judge_set": "eval",
            **{f"bench.Overall.{d}": f"{rows.groupby('subset')[d].mean().mean():.4f}" for d in ("SC", "SA", "AES")}}
    v = client.create_model_version(NAME, source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id, tags=tags)
    if alias:
        client.set_registered_model_alias(NAME, alias, v.version)
    return int(v.version)


def _champion() -> int | None:
    from components.promote import aliased

    v = aliased(mlflow.MlflowClient(), NAME, "champion")
    return int(v.version) if v else None


def _tags(version: int) -> dict:
    return mlflow.MlflowClient().get_model_version(NAME, str(version)).tags


def test_the_first_candidate_becomes_champion_only_above_the_floors(registry):
    root, params = registry
    weak = _version(root, _rows(0.1, 0.6, 0.5, seed=0))  # SC below the floor 0.2
    d = promote(params, root)
    assert d.verdict == "refused" and _champion() is None
    assert {c["rule"]: c["passed"] for c in d.checks} == {"floor.SC": False, "floor.SA": True, "floor.AES": True}
    assert _tags(weak)["promotion.verdict"] == "refused" and "below the floor in SC" in _tags(weak)["promotion.reasons"]
    good = _version(root, _rows(0.3, 0.6, 0.5, seed=1))
    d = promote(params, root)
    assert (d.verdict, d.champion_before, d.champion_after, _champion()) == ("promoted", None, good, good)
    assert _tags(good)["promotion.champion_before"] == "none"
    assert promote(params, root).verdict == "unchanged"  # nothing new: nothing moves


def test_a_better_candidate_is_promoted_with_every_number_recorded(registry):
    root, params = registry
    first = _version(root, _rows(0.30, 0.6, 0.5, seed=0))
    promote(params, root)
    better = _version(root, _rows(0.36, 0.6, 0.5, seed=1))
    d = promote(params, root)
    assert (d.verdict, d.champion_before, _champion()) == ("promoted", first, better)
    overall = {c["dimension"]: c for c in d.comparison if c["subset"] == "Overall"}
    assert 0.03 < overall["SC"]["difference"] < 0.09 and overall["SC"]["low"] > 0
    assert {c["subset"] for c in d.comparison} == {*SUBSETS, "Overall"}
    tags = _tags(better)
    assert tags["promotion.verdict"] == "promoted" and tags["promotion.champion_before"] == str(first)
    assert float(tags["promotion.Overall.SC.low"]) == pytest.approx(overall["SC"]["low"], abs=1e-4)
    assert tags["promotion.check.SC.better"].endswith("passed")
    # the decision is in an MLflow run too, every number with it
    run = mlflow.search_runs(filter_string="tags.kind = 'promote'", output_format="list")[0]
    logged = json.loads(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/promotion/decision.json"))
    assert logged["comparison"] == d.comparison and logged["champion_before"] == first


def test_a_candidate_worse_on_sa_is_refused(registry):
    root, params = registry
    first = _version(root, _rows(0.30, 0.60, 0.5, seed=0))
    promote(params, root)
    trade = _version(root, _rows(0.40, 0.50, 0.5, seed=1))  # much better SC, much worse SA
    d = promote(params, root)
    assert (d.verdict, d.promoted, _champion()) == ("refused", False, first)
    checks = {c["rule"]: c for c in d.checks}
    assert checks["SC.better"]["passed"] and not checks["SA.not_worse"]["passed"]
    assert checks["SA.not_worse"]["bound"] == -params.promote.margins.SA
    assert "failed: SA.not_worse" in _tags(trade)["promotion.reasons"]


def test_versions_scored_by_other_judges_are_not_compared(registry):
    root, params = registry
    first = _version(root, _rows(0.30, 0.6, 0.5, seed=0))
    promote(params, root)
    other = _version(root, _rows(0.50, 0.7, 0.6, seed=1), judges="other-judges-md5")
    d = promote(params, root)
    assert d.verdict == "refused" and _champion() == first and not d.comparison
    assert "bench.judges: candidate other-judges-md5, champion judges-md5" in d.reasons[0]
    # by hand it goes through, and the record says what the gate thought
    d = promote(params, root, version=other)
    assert (d.verdict, d.action, _champion()) == ("promoted", "manual", other)
    assert "the gate would have refused it" in d.reasons[-1]


def test_rollback_restores_the_champion_it_replaced(registry):
    root, params = registry
    first = _version(root, _rows(0.30, 0.6, 0.5, seed=0))
    promote(params, root)
    with pytest.raises(PromotionError, match="first champion"):
        promote(params, root, rollback=True)
    second = _version(root, _rows(0.40, 0.6, 0.5, seed=1))
    promote(params, root)
    assert _champion() == second
    d = promote(params, root, rollback=True)
    assert (d.verdict, d.champion_before, d.champion_after, _champion()) == ("rolled back", second, first, first)
    assert _tags(second)["promotion.rolled_back"].startswith(f"to {first}")
    with pytest.raises(PromotionError, match="no version 99"):
        promote(params, root, version=99)


def test_the_gate_does_not_undo_a_rollback(registry):
    """After a rollback @candidate still names the rolled-back version: the next gate run (the
    nightly retrain's) refuses it; by hand it can be promoted again, and then it is not marked."""
    root, params = registry
    first = _version(root, _rows(0.30, 0.6, 0.5, seed=0))
    promote(params, root)
    second = _version(root, _rows(0.40, 0.6, 0.5, seed=1))
    promote(params, root)
    promote(params, root, rollback=True)
    d = promote(params, root)
    assert (d.verdict, d.version, _champion()) == ("refused", second, first)
    assert "was rolled back" in d.reasons[0] and not d.checks
    d = promote(params, root, version=second)
    assert (d.verdict, _champion()) == ("promoted", second) and "promotion.rolled_back" not in _tags(second)


def test_a_rollback_to_a_deleted_version_says_so(registry):
    root, params = registry
    first = _version(root, _rows(0.30, 0.6, 0.5, seed=0))
    promote(params, root)
    _version(root, _rows(0.40, 0.6, 0.5, seed=1))
    promote(params, root)
    mlflow.MlflowClient().delete_model_version(NAME, str(first))
    with pytest.raises(PromotionError, match=f"version {first}, which is no longer in the registry"):
        promote(params, root, rollback=True)


def test_a_registry_error_is_never_read_as_no_champion():
    """Only "no such model or alias" means no champion; any other error (the server down) is
    raised, so the gate never promotes over a champion it could not read."""
    from mlflow.exceptions import MlflowException

    from components.promote import aliased

    class Client:
        def __init__(self, code):
            self.code = code

        def get_model_version_by_alias(self, name, alias):
            from mlflow.protos import databricks_pb2

            raise MlflowException("boom", error_code=getattr(databricks_pb2, self.code))

    assert aliased(Client("RESOURCE_DOES_NOT_EXIST"), NAME, "champion") is None
    assert aliased(Client("INVALID_PARAMETER_VALUE"), NAME, "champion") is None
    with pytest.raises(MlflowException, match="boom"):
        aliased(Client("TEMPORARILY_UNAVAILABLE"), NAME, "champion")


def test_a_tracking_server_needs_a_prefect_server_for_the_lock():
    """Against an MLflow server the lock is a Prefect global concurrency limit; without
    PREFECT_API_URL each process would get an ephemeral server and a lock of its own."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from components.promote import promotion_lock

    with temporary_settings({PREFECT_API_URL: None}), pytest.raises(PromotionError, match="PREFECT_API_URL"):
        with promotion_lock("http://127.0.0.1:5000", 1):
            pass


RACE = """
import sys, time
import mlflow
from components.config import load_params
from components.promote import promote
original = mlflow.MlflowClient.set_registered_model_alias
def slow(self, *a, **k):  # widen the window between reading the champion and moving it
    time.sleep(1.5)
    return original(self, *a, **k)
mlflow.MlflowClient.set_registered_model_alias = slow
root = sys.argv[1]
d = promote(load_params(root + "/params.yaml"), __import__("pathlib").Path(root), version=int(sys.argv[2]))
print(d.champion_before, d.champion_after)
"""


def test_two_concurrent_promotions_leave_one_consistent_champion(registry):
    """Two processes promote two versions at once, each slowed between reading the champion and
    moving it: under the lock the second reads the first's result, so the champions chain
    (first -> a -> b, never first -> a and first -> b)."""
    root, params = registry
    first = _version(root, _rows(0.30, 0.6, 0.5, seed=0))
    promote(params, root)
    a = _version(root, _rows(0.35, 0.6, 0.5, seed=1), alias=None)
    b = _version(root, _rows(0.36, 0.6, 0.5, seed=2), alias=None)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db", "PYTHONPATH": REPO}
    procs = [subprocess.Popen([sys.executable, "-c", RACE, str(root), str(v)], env=env, stdout=subprocess.PIPE,
                              text=True) for v in (a, b)]
    results = [tuple(int(x) for x in p.communicate(timeout=300)[0].split()[-2:]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    befores = sorted(r[0] for r in results)
    last = next(r for r in results if r[0] != first)  # the one that went second
    assert befores[0] == first and befores[1] in (a, b) and befores[1] != first
    assert _champion() == last[1]
    assert _tags(last[1])["promotion.champion_before"] == str(last[0])


@pytest.mark.integration
def test_subjectflow_promote_decides_reports_and_rolls_back(registry, prefect_harness, capsys):
    """The command through its Prefect flow: exit 0 promoted, 1 refused, 0 rolled back, 2 for a
    version that does not exist; each decision a Prefect Markdown artifact."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from components.pipeline.cli import main

    root, _ = registry
    (root / "dvc.yaml").write_text("stages: {}\n")
    first = _version(root, _rows(0.30, 0.6, 0.5, seed=0))
    assert main(["promote", "--project", str(root)]) == 0
    assert f"Promotion of {NAME} version {first}: promoted" in capsys.readouterr().out
    worse = _version(root, _rows(0.25, 0.6, 0.5, seed=1))
    assert main(["promote", "--project", str(root)]) == 1
    out = capsys.readouterr().out
    assert f"version {worse}: refused" in out and "| SC.better |" in out and "| Overall | SC |" in out
    assert main(["promote", "--project", str(root), "--version", str(worse)]) == 0 and _champion() == worse
    assert main(["promote", "--project", str(root), "--rollback"]) == 0 and _champion() == first
    assert main(["promote", "--project", str(root), "--version", "42"]) == 2
    assert "has no version 42" in capsys.readouterr().err
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["promotion"])))
    verdicts = [a.description.split(": ", 1)[1] for a in sorted(artifacts, key=lambda a: a.created)]
    assert verdicts[-4:] == ["promoted", "refused", "promoted", "rolled back"]
