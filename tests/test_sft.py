"""The sft stage: it starts from the pretrained generator (not from scratch), trains on
multi-subject pairs with 2/3/4 references drawn with the configured probabilities, and writes a
generator folder the benchmark can load."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from components.data.manifest import read_manifest
from components.models.generator import SubjectGenerator
from components.pipeline.project import default_params
from components.sft import main as sft_main
from tests.conftest import set_training
from tests.test_pretrain import SMALL_GEN


@pytest.fixture(scope="module")
def setup(judge_world, tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    init = SubjectGenerator.tiny(**{k: v for k, v in SMALL_GEN.items()}, seed=3)
    init.save_pretrained(root / "models" / "pretrain")
    return root, judge_world[0], init


def _sft(root, data, monkeypatch, **cfg):
    params = default_params()
    params["generator"].update(SMALL_GEN)
    set_training(params, "sft", **{**dict(steps=6, batch_size=2, warmup_steps=1, log_every=2, sample_every=0,
                                          checkpoint_every=3, sample_steps=2, grid_rows=2), **cfg})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.chdir(root)
    code = sft_main(["--params", "params.yaml", "--data", str(data / "multi"), "--single", str(data / "single"), "--init", "models/pretrain",
                     "--standardizer", "models/standardizer",
                     "--out", "models/sft", "--reports", "reports/sft", "--checkpoints", ".checkpoints", "--metrics", "metrics/sft.json"])
    assert code == 0
    return json.loads((root / "metrics" / "sft.json").read_text()), SubjectGenerator.from_pretrained(root / "models" / "sft")


def test_sft_starts_from_the_pretrained_weights(setup, monkeypatch):
    root, data, init = setup
    _, tuned = _sft(root, data, monkeypatch, lr=1e-12)  # steps that cannot move the weights
    fresh = SubjectGenerator.tiny(**SMALL_GEN, seed=0)
    start, end, other = init.state_dict(), tuned.state_dict(), fresh.state_dict()
    assert all(np.allclose(start[k].numpy(), end[k].numpy(), atol=1e-6) for k in start)
    assert not all(np.allclose(other[k].numpy(), end[k].numpy(), atol=1e-6) for k in other)


def test_sft_draws_reference_counts_with_the_configured_probabilities(setup, monkeypatch):
    root, data, init = setup
    m, tuned = _sft(root, data, monkeypatch, steps=10, batch_size=1, ref_count_probs={4: 1.0})
    assert m["batches_by_ref_count"] == {"2": 0, "3": 0, "4": 10}
    m, tuned = _sft(root, data, monkeypatch, steps=120, batch_size=1, log_every=40,
                    ref_count_probs={2: 0.5, 3: 0.25, 4: 0.25})
    drawn = m["batches_by_ref_count"]  # binomial: each bound is > 3.5 standard deviations away
    assert sum(drawn.values()) == 120 and 40 <= drawn["2"] <= 80 and drawn["3"] > 12 and drawn["4"] > 12
    assert tuned.transformer.config.num_layers == SMALL_GEN["double_blocks"]
    assert (root / "reports" / "sft" / "samples.png").is_file()
    # multi-reference sampling from the tuned model
    out = tuned.sample(["the cat from image 1 and the moon from image 2 in a forest"],
                       [[np.zeros((32, 32, 3), np.uint8)] * 2], steps=2)["images"]
    assert out.shape == (1, 32, 32, 3)


def test_sft_says_when_the_data_lacks_a_reference_count(setup, monkeypatch, tmp_path):
    """A count no data can hold is refused with params.yaml; one the data happens to lack (the
    filter kept no such pair) is said, and its probability goes to the others."""
    from components.config import ParamsError, load_params
    from components.sft import SftPaths, run

    root, data, _ = setup
    _sft(root, data, monkeypatch, steps=4, ref_count_probs={2: 0.5, 4: 0.5})  # leaves a valid params.yaml
    params = load_params(root / "params.yaml")
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["sft"]["ref_count_probs"] = {2: 0.5, 5: 0.5}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=r"sft\.ref_count_probs: .*no data holds pairs with \[5\] references"):
        load_params(tmp_path / "params.yaml")
    lacking = params.model_copy(update={"sft": params.sft.model_copy(update={"ref_count_probs": {2: 0.5, 5: 0.5}})})
    paths = SftPaths(data=data / "multi", single=data / "single", init=root / "models" / "pretrain",
                     standardizer=root / "models" / "standardizer",
                     out=tmp_path / "sft", reports=tmp_path / "reports", checkpoints=tmp_path / "ckpt")
    m = run(lacking, paths)
    assert m["ref_counts_missing"] == [5] and m["batches_by_ref_count"]["2"] == 4
    only = params.model_copy(update={"sft": params.sft.model_copy(update={"ref_count_probs": {5: 1.0}})})
    with pytest.raises(ValueError, match=r"no rows with \[5\] references"):
        run(only, paths)


def test_sft_replays_single_subject_pairs_as_one_reference_batches(setup, monkeypatch):
    root, data, _ = setup
    m, _ = _sft(root, data, monkeypatch, steps=40, batch_size=1, log_every=40, ref_count_probs={1: 0.5, 2: 0.5})
    drawn = m["batches_by_ref_count"]
    assert 8 <= drawn["1"] <= 32 and drawn["1"] + drawn["2"] == 40  # binomial(40, 0.5): > 3.5 sd inside
    n_single = len(read_manifest(data / "single"))
    assert m["ref_counts"]["1"] == n_single and m["rows"] == n_single + len(read_manifest(data / "multi"))
    m, _ = _sft(root, data, monkeypatch, steps=4, ref_count_probs={2: 1.0})  # without count 1: no replay rows
    assert "1" not in m["ref_counts"] and m["rows"] == len(read_manifest(data / "multi"))


def test_sft_records_how_the_model_samples_with_the_datas_reference_layout(setup, monkeypatch, tmp_path):
    """models/sft/sampling.json: the generator's sample_steps and guidance, and the reference
    layout of the data it was tuned on."""
    import shutil

    from components.models import layout
    from components.models.sampling import SamplingSettings

    root, data, _ = setup
    m, _ = _sft(root, data, monkeypatch, steps=2, guidance=3.0)
    assert SamplingSettings.load(root / "models" / "sft") == SamplingSettings(2, 3.0, "as_given", "bf16")
    assert m["sampling"] == {"steps": 2, "guidance": 3.0, "reference_layout": "as_given", "precision": "bf16"}
    copy = tmp_path / "data"
    for name in ("multi", "single"):
        shutil.copytree(data / name, copy / name)
    layout.save_layout(copy / "multi", "slots")
    m, _ = _sft(root, copy, monkeypatch, steps=2)
    assert SamplingSettings.load(root / "models" / "sft").reference_layout == "slots"
