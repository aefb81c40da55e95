"""The pretrain stage on a tiny world: it trains the generator with the shared loop, writes a
loadable generator folder, its history and sample grids, logs its steps into the MLflow run it is
given, resumes from its checkpoints, and the benchmark can score what it trained."""
from __future__ import annotations

import json
import shutil

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from components.benchmark import scoring
from components.benchmark.generators import TrainedGenerator, make_generator
from components.models.generator import SubjectGenerator
from components.pipeline.project import default_params
from components.pipeline.tracking import STAGE_RUN_ENV
from components.pretrain import main as pretrain_main
from components.training.fit import load_pairs
from tests.conftest import set_training

SMALL_GEN = {"width": 32, "heads": 2, "double_blocks": 1, "single_blocks": 1, "text_hidden": 16, "text_layers": 1}


@pytest.fixture(scope="module")
def trained(judge_world, tmp_path_factory):
    data = judge_world[0]
    root = tmp_path_factory.mktemp("pretrain")
    params = default_params()
    params["generator"].update(SMALL_GEN)
    set_training(params, "pretrain", steps=6, batch_size=4, warmup_steps=1, log_every=2, sample_every=3,
                 checkpoint_every=3, sample_steps=2, grid_rows=3)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root, data


def _pretrain(root, data, monkeypatch, run_id=None):
    monkeypatch.chdir(root)  # checkpoints live in the project's .checkpoints/
    if run_id:
        monkeypatch.setenv(STAGE_RUN_ENV, run_id)
    return pretrain_main(["--params", "params.yaml", "--data", str(data / "single"), "--out", "models/pretrain",
                          "--reports", "reports/pretrain", "--checkpoints", ".checkpoints", "--metrics", "metrics/pretrain.json"])


def test_pretrain_writes_a_generator_history_and_grids(trained, monkeypatch):
    root, data = trained
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    run_id = mlflow.MlflowClient().create_run(mlflow.create_experiment("t")).info.run_id
    # What crashes left: checkpoints of a configuration since changed, a half-written model folder.
    abandoned = root / ".checkpoints" / "pretrain-0123456789ab" / "checkpoints" / "step-0000002"
    abandoned.mkdir(parents=True)
    half = root / "models" / ".pretrain.tmp-999999999-x1"  # its writer (no such pid) is gone
    half.mkdir(parents=True)
    assert _pretrain(root, data, monkeypatch, run_id) == 0
    assert not half.exists() and not list((root / "models").glob(".pretrain.*"))
    m = json.loads((root / "metrics" / "pretrain.json").read_text())
    assert m["steps"] == 6 and m["rows"] == 40 and m["ref_counts"] == {"1": 40} and m["resumed_from_step"] == 0
    assert np.isfinite(m["final_loss"]) and "timings" not in m and "samples_per_second" not in m  # timings go to MLflow
    gen = SubjectGenerator.from_pretrained(root / "models" / "pretrain")
    assert gen.transformer.config.num_layers == 1 and gen.config.resolution == 32
    hist = pd.read_csv(root / "reports" / "pretrain" / "history.csv")
    assert list(hist.step) == [2, 4, 6] and {"loss", "lr", "samples_per_second"} <= set(hist.columns)
    samples = sorted(p.name for p in (root / "reports" / "pretrain" / "samples").iterdir())
    assert samples == ["step-0000003.png", "step-0000006.png"]
    assert (root / "reports" / "pretrain" / "samples.png").stat().st_size > 0
    assert not list((root / ".checkpoints").iterdir())  # finished: nothing left to resume
    client = mlflow.MlflowClient()
    assert [x.step for x in client.get_metric_history(run_id, "train/loss")] == [2, 4, 6]
    logged = {a.path for a in client.list_artifacts(run_id, "reports/pretrain/samples")}
    assert logged == {f"reports/pretrain/samples/{s}" for s in samples}


@pytest.mark.parametrize("hook, step, resumed_from", [("on_log", 4, 3), ("on_sample", 3, 0)],
                         ids=["after-checkpoint", "while-sampling"])
def test_a_crashed_pretrain_resumes_from_its_checkpoint(trained, monkeypatch, tmp_path, hook, step, resumed_from):
    """The stage dies after its step-3 checkpoint, or while drawing the step-3 grid (before that
    checkpoint); run again (as DVC would), it resumes from the last checkpoint and ends with the
    weights and the reports (history, every grid) of an uninterrupted run."""
    root, data = trained
    import components.training.fit as fit

    real = fit.Trainer

    class Crash(real):
        def __init__(self, *args, **kwargs):
            wrapped = kwargs[hook]

            def crash(*args):
                if (args[1] if hook == "on_sample" else args[0]) == step:  # on_sample(model, step), on_log(step, ..)
                    raise KeyboardInterrupt("killed")
                wrapped(*args)
            super().__init__(*args, **{**kwargs, hook: crash})

    monkeypatch.setattr(fit, "Trainer", Crash)
    with pytest.raises(KeyboardInterrupt):
        _pretrain(root, data, monkeypatch)
    assert [p.name for p in (root / ".checkpoints").glob("pretrain-*/checkpoints/*")] == \
        ([f"step-{resumed_from:07d}"] if resumed_from else [])
    monkeypatch.setattr(fit, "Trainer", real)
    shutil.rmtree(root / "reports" / "pretrain")  # as DVC does before it reruns a stage
    assert _pretrain(root, data, monkeypatch) == 0
    m = json.loads((root / "metrics" / "pretrain.json").read_text())
    assert m["resumed_from_step"] == resumed_from
    resumed = SubjectGenerator.from_pretrained(root / "models" / "pretrain").state_dict()
    reports = _whole_run_reports(root)
    # An uninterrupted run of the same params and data.
    (root / "models" / "pretrain").rename(tmp_path / "resumed")
    shutil.rmtree(root / "reports" / "pretrain")
    assert _pretrain(root, data, monkeypatch) == 0
    whole = SubjectGenerator.from_pretrained(root / "models" / "pretrain").state_dict()
    assert all(np.array_equal(resumed[k].numpy(), whole[k].numpy()) for k in whole)
    # The resumed run's reports cover the whole run, as the uninterrupted run's do.
    m_whole = json.loads((root / "metrics" / "pretrain.json").read_text())
    assert {k: v for k, v in m.items() if k != "resumed_from_step"} == \
        {k: v for k, v in m_whole.items() if k != "resumed_from_step"}
    assert sum(m["batches_by_ref_count"].values()) == 6
    assert reports == _whole_run_reports(root)


def _whole_run_reports(root):
    """The history (without throughput) and the names of the sample grids."""
    hist = pd.read_csv(root / "reports" / "pretrain" / "history.csv").drop(columns="samples_per_second")
    return hist.to_dict("list"), sorted(p.name for p in (root / "reports" / "pretrain" / "samples").iterdir())


def test_the_benchmark_scores_a_trained_generator(trained):
    root, data = trained
    gen = make_generator("pretrain", models=root / "models", steps=2)
    assert isinstance(gen, TrainedGenerator) and gen.name == "pretrain"
    rows, side = scoring.load_bench(data / "bench", per_subset=1)
    images = scoring.generate_all(gen, rows, side, seed=0)
    assert len(images) == len(rows) and all(im.shape == (32, 32, 3) and im.dtype == np.uint8 for im in images)
    # batched by reference count = one call per row, same seeds
    assert np.array_equal(images[0], scoring.generate_all(gen, rows[:1], side, seed=0)[0])
    with pytest.raises(ValueError, match="draws 32x32"):
        gen.generate(rows[0].prompt, rows[0].refs, height=64, width=64, seed=0)
    with pytest.raises(KeyError, match="unknown generator"):
        make_generator("sft", models=root / "models")


def test_load_pairs_reads_every_row(judge_world):
    pairs = load_pairs(judge_world[0] / "multi")
    assert len(pairs) == 40 and pairs.targets.shape == (40, 32, 32, 3)
    assert set(pairs.by_ref_count()) <= {2, 3, 4} and sum(map(len, pairs.by_ref_count().values())) == 40


def test_a_saved_folder_does_not_depend_on_whether_the_model_encoded_a_prompt(tmp_path):
    """A run resumed from its final checkpoint saves without having encoded anything: its folder
    must equal the uninterrupted run's (the kill soak found the tokenizer's padding state saved)."""
    from components.io import folder_hash

    model = SubjectGenerator.tiny(**SMALL_GEN)
    model.save_pretrained(tmp_path / "fresh")
    model.encode_text(["the cat from image 1 on a beach"])
    model.save_pretrained(tmp_path / "used")
    assert folder_hash(tmp_path / "used") == folder_hash(tmp_path / "fresh")
    back = SubjectGenerator.from_pretrained(tmp_path / "used")
    assert torch.equal(back.encode_text(["a cat"])[0], model.encode_text(["a cat"])[0])
