"""The spine end to end: the Prefect flow runs the DVC stages, DVC decides what is stale, MLflow
records a parent run with a nested run per stage. Runs against one Prefect test server."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from PIL import Image

from components.pipeline import lineage
from tests.conftest import make_project, tiny_params

pytestmark = pytest.mark.integration
STAGES = ("synthesize", "validate", "judges", "pretrain", "standardizer", "multisubject", "sft", "sft_std", "rl", "patchdpo_data",
          "patchdpo", "evaluate", "register")


def _skipped_but(**states):
    return {s: states.get(s, "skipped") for s in STAGES}


def _flow(root, **kw):
    from flows.pipeline import pipeline

    return pipeline(project=str(root), **kw)


def _states(summary):
    return {r["stage"]: r["state"] for r in summary["stages"]}


def _children(parent_run_id):
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list",
                              filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")
    return {r.info.run_name: r for r in runs}


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_harness):
    root = make_project(tmp_path_factory.mktemp("project"), tiny_params())
    first = _flow(root)
    return root, first


def test_first_run_runs_every_stage_and_records_it(project):
    root, summary = project
    assert _states(summary) == {s: "ran" for s in STAGES}
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    parent = mlflow.get_run(summary["parent_run_id"])
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    assert parent.data.tags["git.commit"] == head and parent.data.tags["flow.state"] == "completed"
    assert parent.data.metrics["flow.seconds"] >= parent.data.metrics["flow.stage_compute_seconds"] > 0
    kids = _children(summary["parent_run_id"])
    assert set(kids) == set(STAGES)
    client = mlflow.MlflowClient()
    for name, run in kids.items():
        tags = run.data.tags
        assert tags["stage.state"] == "ran" and tags["git.commit"] == head
        for out, md5 in lineage.locked_outs(root, name).items():
            assert tags[f"dvc.out.{out}"] == md5 and md5
    for name in ("sft", "rl"):  # sampled while the stage ran (stages shorter than a sample have none)
        metrics = kids[name].data.metrics
        assert metrics["system/cpu_utilization_percentage"] >= 0 and metrics["system/system_memory_usage_megabytes"] > 0
    syn = kids["synthesize"]
    assert syn.data.params["synthesize.single"] == str(tiny_params()["synthesize"]["single"])
    assert syn.data.metrics["multi.samples"] == tiny_params()["synthesize"]["multi"]
    grids = {a.path for a in client.list_artifacts(syn.info.run_id, "reports/synthesize")}
    assert grids == {f"reports/synthesize/grid_{s}.png" for s in ("single", "standardize", "multi", "bench", "wild", "serial")}
    inputs = {(d.dataset.name, d.dataset.digest) for d in syn.inputs.dataset_inputs}
    outs = lineage.locked_outs(root, "synthesize")
    assert inputs == {(s, outs[f"data/{s}"].removesuffix(".dir")) for s in ("single", "standardize", "multi", "bench", "wild", "serial")}
    val = kids["validate"]
    assert val.data.params["validate.decode_images"] == "True"
    assert val.data.metrics["success"] == 1.0
    reports = {a.path for a in client.list_artifacts(val.info.run_id, "reports/validate")}
    assert "reports/validate/summary.md" in reports and "reports/validate/multi.json" in reports
    # GX data docs, built although DVC hands the stage relative paths
    assert "reports/validate/html" in reports and (root / "reports" / "validate" / "html" / "index.html").is_file()
    assert {d.dataset.name for d in val.inputs.dataset_inputs} == {"single", "standardize", "multi", "bench", "wild", "serial"}
    judges = kids["judges"]
    for set_name in ("reward", "eval"):  # every held-out judge accuracy is in MLflow
        for key in ("encoder.retrieval_top1", "grounder.mean_iou", "grounder.miss_rate", "semantic.background_acc",
                    "semantic.size_acc", "semantic.action_acc", "aesthetic.pairwise_acc"):
            assert f"{set_name}.{key}" in judges.data.metrics
    assert judges.data.metrics["independence.shared_training_samples"] == 0
    pre = kids["pretrain"]  # the stage logged its steps into the run the flow opened for it
    history = client.get_metric_history(pre.info.run_id, "train/loss")
    assert [m.step for m in history] == [2, 4]
    assert {"train/lr", "train/samples_per_second"} <= set(pre.data.metrics) and pre.data.metrics["steps"] == 4
    samples = {a.path for a in client.list_artifacts(pre.info.run_id, "reports/pretrain/samples")}
    assert "reports/pretrain/samples/step-0000002.png" in samples
    assert (root / "models" / "pretrain" / "generator_config.json").is_file()
    assert not any((root / ".checkpoints").iterdir())  # removed once the stage finished
    boot = kids["multisubject"]
    assert boot.data.metrics["kept"] == tiny_params()["synthesize"]["multi"]  # threshold -1: every pair
    assert boot.data.metrics["gate.success"] == 1.0
    assert {d.dataset.name for d in boot.inputs.dataset_inputs} >= {"multi", "multisubject"}
    assert "reports/multisubject/validate/summary.md" in {
        a.path for a in client.list_artifacts(boot.info.run_id, "reports/multisubject/validate")}
    sft = kids["sft"]
    assert [m.step for m in client.get_metric_history(sft.info.run_id, "train/loss")] == [2, 4]
    assert (root / "models" / "sft" / "generator_config.json").is_file()
    ev = kids["evaluate"]
    for gen in ("oracle", "copy_paste", "background_only", "noise", "pretrain", "sft"):
        for dim in ("SC", "SA", "AES"):
            assert 0 <= ev.data.metrics[f"{gen}.Overall.{dim}"] <= 1
    reports = {a.path for a in client.list_artifacts(ev.info.run_id, "reports/evaluate")}
    assert {"reports/evaluate/table.csv", "reports/evaluate/radar_SC.png", "reports/evaluate/grid_oracle.png",
            "reports/evaluate/compare.md"} <= reports
    sc = ev.data.metrics["compare.sft.pretrain.Overall.SC.difference"]  # params.yaml compares [pretrain, sft]
    assert sc == pytest.approx(ev.data.metrics["sft.Overall.SC"] - ev.data.metrics["pretrain.Overall.SC"], abs=1e-3)
    assert ev.data.metrics["compare.sft.pretrain.Overall.SC.low"] <= sc <= ev.data.metrics["compare.sft.pretrain.Overall.SC.high"]
    # outputs were pushed to the local DVC remote
    assert any((root / ".dvc-storage").rglob("*"))


# Wall-clock figures: in MLflow (``timing.*``), never in a metrics file DVC tracks.
TIMING_KEYS = {"timing", "timings", "seconds", "train_seconds", "samples_per_second", "generate_seconds",
               "score_seconds", "peak_rss_mb", "regenerations_per_second"}


def test_metrics_files_hold_no_timings_and_mlflow_has_them(project):
    from components.pipeline.tracking import flatten

    root, summary = project
    for name in STAGES:
        keys = {part for key in flatten(json.loads((root / "metrics" / f"{name}.json").read_text()))
                for part in key.split(".")}
        assert not keys & TIMING_KEYS, (name, keys & TIMING_KEYS)
        assert "peak_rss_mb" not in keys and "timings" not in keys, name
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    kids = _children(summary["parent_run_id"])
    for name, run in kids.items():
        assert run.data.metrics["timing.peak_rss_mb"] > 0, name
    assert kids["synthesize"].data.metrics["timing.seconds"] > 0
    assert kids["synthesize"].data.metrics["timing.samples_per_second"] > 0
    assert kids["validate"].data.metrics["timing.seconds"] > 0
    assert kids["multisubject"].data.metrics["timing.seconds"] > 0
    assert kids["judges"].data.metrics["timing.reward.encoder.train_seconds"] >= 0
    for gen in ("oracle", "sft"):
        assert {f"timing.{gen}.generate_seconds", f"timing.{gen}.score_seconds"} <= set(kids["evaluate"].data.metrics)


def test_the_trained_generators_are_registered_with_scores_and_lineage_and_one_promoted(project, tmp_path):
    from components.models.pyfunc import generate
    from components.pipeline.cli import main as cli_main

    root, summary = project
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    client = mlflow.MlflowClient()
    versions = {v.tags["generator"]: v for v in client.search_model_versions("name = 'subjectflow-generator'")}
    assert sorted(versions) == ["patchdpo", "rl", "sft", "sft_std"]
    assert versions["rl"].tags["dvc.models/rl"] == lineage.locked_outs(root, "rl")["models/rl"]
    # @candidate is the better of the two by Overall SC, and the gate made it champion (floors 0 here)
    registered = json.loads((root / "reports" / "register" / "registered.json").read_text())
    best = max(("sft", "sft_std", "rl", "patchdpo"), key=lambda g: float(versions[g].tags["bench.Overall.SC"]))  # first among equals
    candidate = client.get_model_version_by_alias("subjectflow-generator", "candidate")
    assert registered["candidate"] == best and candidate.version == versions[best].version
    assert summary["promotion"]["verdict"] == "promoted" and summary["promotion"]["champion_before"] is None
    champion = client.get_model_version_by_alias("subjectflow-generator", "champion")
    assert champion.version == candidate.version and champion.tags["promotion.verdict"] == "promoted"
    assert mlflow.get_run(summary["parent_run_id"]).data.tags["promotion.verdict"] == "promoted"
    version = client.get_model_version("subjectflow-generator", versions["sft"].version)
    tags = version.tags
    assert tags["dvc.models/sft"] == lineage.locked_outs(root, "sft")["models/sft"]
    assert tags["dvc.data/multisubject"] == lineage.locked_outs(root, "multisubject")["data/multisubject"]
    register_run = _children(summary["parent_run_id"])["register"].info.run_id  # logged in the flow's run
    assert tags["git.commit"] and version.run_id == tags["run_id"] == register_run
    evaluated = json.loads((root / "metrics" / "evaluate.json").read_text())["sft"]
    assert float(tags["bench.Overall.SC"]) == pytest.approx(evaluated["Overall"]["SC"], abs=1e-4)
    assert "bench.Four.SA" in tags and "bench.vs.pretrain.Four.SC.low" in tags
    from components.io import folder_hash
    from components.pipeline.versions import MODEL_HASH_TAG

    assert tags[MODEL_HASH_TAG] == folder_hash(root / "models" / "sft")
    # logged from code: the model holds pyfunc_model.py, no pickled Python object
    model_dir = Path(mlflow.artifacts.download_artifacts(version.source, dst_path=str(tmp_path / "model")))
    files = {p.name for p in model_dir.iterdir()}
    assert "pyfunc_model.py" in files and "MLmodel" in files and not [f for f in files if f.endswith(".pkl")]
    image = generate("models:/subjectflow-generator@candidate", "the cat from image 1 in a forest",
                     [np.zeros((32, 32, 3), np.uint8)], steps=2)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    # the command line, by alias and by local folder, with two references of another size
    refs = []
    for k in range(2):
        refs.append(tmp_path / f"ref{k}.png")
        Image.fromarray(np.full((64, 64, 3), 40 * k, np.uint8)).save(refs[-1])
    for model in ("models:/subjectflow-generator@candidate", str(root / "models" / "sft")):
        out = tmp_path / "out.png"
        assert cli_main(["generate", "--project", str(root), "--model", model, "--ref", str(refs[0]), "--ref",
                         str(refs[1]), "the cat from image 1 left of the moon from image 2, in a forest",
                         "--steps", "2", "--out", str(out)]) == 0
        with Image.open(out) as im:
            assert im.size == (32, 32)


def test_prefect_run_ends_with_a_summary_artifact(project):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    root, summary = project
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["subjectflow-pipeline"])))
    assert arts and any(summary["parent_run_id"] in (a.data or "") for a in arts)
    with get_client(sync_client=True) as client:
        tables = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["evaluate-table"])))
    assert tables and tables[0].type == "table"
    assert {"oracle", "noise"} <= {row["generator"] for row in json.loads(tables[0].data)}
    with get_client(sync_client=True) as client:
        compared = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["evaluate-compare"])))
    assert compared and "sft − pretrain" in compared[0].data


def test_rerun_with_nothing_changed_skips_every_stage(project):
    root, first = project
    again = _flow(root)
    assert _states(again) == _skipped_but()
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    kids = _children(again["parent_run_id"])
    assert {k: r.data.tags["stage.state"] for k, r in kids.items()} == _skipped_but()
    # a skipped stage's run links to the run that produced its reports, and uploads nothing
    ran = _children(first["parent_run_id"])
    client = mlflow.MlflowClient()
    for name, run in kids.items():
        assert run.data.tags["reports_run_id"] == ran[name].info.run_id, name
        assert ran[name].info.run_id in run.data.tags["reports_run_url"]
        assert ran[name].info.run_id in run.data.tags["mlflow.note.content"]
        assert client.list_artifacts(run.info.run_id) == [], name
        assert client.list_artifacts(ran[name].info.run_id, f"reports/{name}"), name
    assert "timing.peak_rss_mb" not in kids["synthesize"].data.metrics  # nothing ran, nothing timed


def test_an_unchanged_model_is_never_registered_twice(project):
    """Evaluate rerun (forced): its metrics file is unchanged (no timings), so register is not
    stale; register rerun (forced) on the same model folder moves the alias, adds no version."""
    root, _ = project
    before = (root / "metrics" / "evaluate.json").read_text()
    summary = _flow(root, stages=["evaluate"], force=True)
    assert _states(summary) == {"evaluate": "ran"}
    assert (root / "metrics" / "evaluate.json").read_text() == before
    assert "register" not in lineage.status(root)
    summary = _flow(root, stages=["register"], force=True)
    assert _states(summary) == {"register": "ran"}
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    client = mlflow.MlflowClient()
    assert sorted(str(v.version) for v in client.search_model_versions("name = 'subjectflow-generator'")) == ["1", "2", "3", "4"]
    registered = json.loads((root / "reports" / "register" / "registered.json").read_text())
    assert all(v["reused"] for v in registered["versions"]) and registered["version"] in (1, 2, 3, 4)
    assert str(client.get_model_version_by_alias("subjectflow-generator", "candidate").version) == str(registered["version"])
    assert _children(summary["parent_run_id"])["register"].data.tags["registered.sft.reused"] == "true"
    assert summary["promotion"] is None  # one stage asked for: no promotion
    assert lineage.status(root) == {}


def test_changing_a_validate_param_reruns_only_validate(project):
    root, _ = project
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["validate"]["report_rows"] = 7
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert set(lineage.status(root)) == {"validate"}
    summary = _flow(root)
    assert _states(summary) == _skipped_but(validate="ran")
    assert lineage.status(root) == {}


def test_changing_only_sft_reruns_sft_and_benchmarks_only_sft_and_rl(project):
    """Issue 21: a changed sft parameter reruns sft (and sft_std, which trains with the sft section)
    and what follows them (rl and PatchDPO train from sft); the evaluate stage samples and scores those alone,
    the reference generators and pretrain come from its cache."""
    root, _ = project
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["sft"]["lr"] *= 0.5
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert set(lineage.status(root)) == {"sft", "sft_std"}
    summary = _flow(root)
    assert _states(summary) == _skipped_but(sft="ran", sft_std="ran", rl="ran", patchdpo_data="ran", patchdpo="ran",
                                                  evaluate="ran", register="ran")
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    timing = _children(summary["parent_run_id"])["evaluate"].data.metrics
    generators = params["evaluate"]["generators"]
    assert {g: timing[f"timing.{g}.cached"] for g in generators} == {g: float(g not in ("sft", "sft_std", "rl", "patchdpo"))
                                                                     for g in generators}
    assert lineage.status(root) == {}


def test_changing_a_judges_param_retrains_the_judges_and_rescores(project):
    """New judges: everything they scored is scored again, and the champion too. The champion is
    made version 1 by hand first, whose sft weights were retrained away (no folder of the project
    holds them, so register cannot retag it): the gate scores it on today's benchmark before
    comparing, rather than refusing forever."""
    from components.config import load_params
    from components.promote import BENCH_IDENTITY, promote

    root, _ = project
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    client = mlflow.MlflowClient()
    promote(load_params(root / "params.yaml"), root, version=1)
    old = client.get_model_version("subjectflow-generator", "1")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["judges"]["aesthetic_steps"] += 1
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # the rest goes stale once the judges change (register records the judges' settings itself)
    assert set(lineage.status(root)) == {"judges", "register"}
    summary = _flow(root)
    states = _states(summary)
    assert [states[s] for s in ("synthesize", "validate", "pretrain")] == ["skipped"] * 3  # not downstream of judges
    assert states["judges"] == states["multisubject"] == states["evaluate"] == "ran"
    candidate = client.get_model_version_by_alias("subjectflow-generator", "candidate")
    rescored = client.get_model_version("subjectflow-generator", "1")
    assert candidate.version != "1" and old.tags["bench.judges"] != candidate.tags["bench.judges"]
    assert {k: rescored.tags[k] for k in BENCH_IDENTITY} == {k: candidate.tags[k] for k in BENCH_IDENTITY}
    assert "bench.rescored" in rescored.tags and rescored.tags["bench.scores_uri"] != old.tags["bench.scores_uri"]
    assert rescored.tags["bench.rows"] == candidate.tags["bench.rows"]
    rows = mlflow.artifacts.load_text(rescored.tags["bench.scores_uri"])
    assert rows.count("\n") == int(rescored.tags["bench.rows"]) + 1
    assert summary["promotion"]["verdict"] in ("promoted", "refused") and summary["promotion"]["comparison"]
    assert mlflow.get_run(summary["parent_run_id"]).data.tags["rescored.version"] == "1"


def test_a_promotion_that_cannot_run_fails_the_retrain_and_says_so(project):
    """Another promotion holds the lock past promote.lock_timeout_seconds: the flow fails, and its
    MLflow run says so (flow.state failed, promotion.verdict error with the reason)."""
    from filelock import FileLock

    from components.promote import PromotionError

    root, _ = project
    text = (root / "params.yaml").read_text()
    params = yaml.safe_load(text)
    params["promote"]["lock_timeout_seconds"] = 1  # not a DVC parameter: nothing goes stale
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        with FileLock(str(root / "mlflow.db.promotion.lock")), pytest.raises(PromotionError, match="another promotion"):
            _flow(root)
    finally:
        (root / "params.yaml").write_text(text)
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    last = mlflow.search_runs(search_all_experiments=True, output_format="list", filter_string="tags.kind = 'pipeline'",
                              order_by=["attributes.start_time DESC"])[0]
    assert last.data.tags["flow.state"] == "failed" and last.data.tags["promotion.verdict"] == "error"
    assert "another promotion held" in last.data.tags["promotion.error"]


def test_outputs_edited_by_hand_are_restored_by_dvc(project):
    root, _ = project
    victim = sorted((root / "data" / "multi" / "images").glob("*_ref1.png"))[0]
    good = victim.read_bytes()
    victim.unlink()  # a new file, not an edit: the old one may be a hard link into the DVC cache
    victim.write_bytes(good[: len(good) // 2])
    summary = _flow(root)
    assert _states(summary) == _skipped_but(synthesize="restored")
    assert victim.read_bytes() == good


def test_bad_data_stops_the_pipeline_with_a_report(project):
    """A bug in synthesis (planted in the project's copy of the library) truncates one reference
    PNG: synthesize reruns (its code changed), the gate rejects the data, the flow fails
    without retrying the gate, and the report names the file."""
    from flows.pipeline import DataGateFailed

    root, _ = project
    code = root / "components" / "data" / "synthesis.py"
    src = code.read_text()
    anchor = "        manifest.to_parquet(tmp / MANIFEST, index=False)\n"
    assert anchor in src
    bug = ('        if split == "multi":\n'
           '            victim = tmp / rows[-1]["refs"][0]  # past the sample grid\n'
           '            victim.write_bytes(victim.read_bytes()[:40])\n')
    code.write_text(src.replace(anchor, bug + anchor))
    with pytest.raises(DataGateFailed) as err:
        _flow(root)
    assert "multi-000027_ref1.png" in str(err.value)
    summary = (root / "reports" / "validate" / "summary.md").read_text()
    assert "FAIL" in summary and "multi-000027_ref1.png undecodable" in summary
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    failed = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                filter_string="tags.`stage.state` = 'failed'")
    assert [r.info.run_name for r in failed] == ["validate"]  # retries are on, but not for bad data
    assert failed[0].info.status == "FAILED"  # the run's status says so too, not only its tag
    parents = mlflow.search_runs(search_all_experiments=True, output_format="list", filter_string="tags.kind = 'pipeline'",
                                 order_by=["attributes.start_time DESC"])
    assert parents[0].data.tags["flow.state"] == "failed" and parents[0].info.status == "FAILED"
    assert set(_children(parents[0].info.run_id)) == {"synthesize", "validate"}  # nothing past the gate ran
