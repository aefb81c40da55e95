import pytest

from components.config import Params, ParamsError, TrainingParams, load_params
from tests.conftest import REPO


def test_repository_params_are_valid():
    p = load_params(REPO / "params.yaml")
    assert p.synthesize.resolution == 32 and p.validate_.decode_images


def test_misspelt_key_is_an_error_naming_it(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("synthesize:\n  singel: 10\n")
    with pytest.raises(ParamsError, match=r"synthesize\.singel: unknown key"):
        load_params(f)


def test_bad_value_names_key_and_value(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("synthesize:\n  resolution: 2\nvalidate:\n  min_samples: -1\n")
    with pytest.raises(ParamsError) as e:
        load_params(f)
    msg = str(e.value)
    assert "synthesize.resolution" in msg and "(got 2)" in msg and "validate.min_samples" in msg


def test_unknown_task_weight_and_section(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("synthesize:\n  multi_tasks: {Teleport: 1.0}\ntrain:\n  lr: 1\n")
    with pytest.raises(ParamsError) as e:
        load_params(f)
    assert "Teleport" in str(e.value) and "train: unknown key" in str(e.value)


def test_missing_file_says_where(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_the_code_defaults_are_the_shipped_params():
    """One source of defaults: a Params built in code runs the pipeline params.yaml ships."""
    assert Params() == load_params(REPO / "params.yaml")


def test_pretrain_and_sft_share_the_training_section():
    p = Params()
    pre, sft = p.train_config("pretrain"), p.train_config("sft")
    assert (pre.steps, pre.lr, sft.steps, sft.lr) == (3000, 2e-3, 600, 1e-3)
    shared = set(TrainingParams.model_fields)
    assert {k: getattr(pre, k) for k in shared} == {k: getattr(sft, k) for k in shared} == p.training.model_dump()
    assert (pre.sample_steps, pre.guidance) == (p.generator.sample_steps, p.generator.guidance)


@pytest.mark.parametrize("yaml_text, message", [
    ("synthesize:\n  resolution: 30\n", r"synthesize\.resolution 30 is not divisible by generator\.patch 4"),
    ("generator:\n  width: 100\n  heads: 3\n", r"width 100 must be divisible by heads 3"),
    ("multisubject:\n  judge_set: eval\n", r"multisubject\.judge_set must be 'reward'"),
    ("training:\n  mixed_precision: fp8\n", r"training\.mixed_precision"),
])
def test_rules_across_keys_fail_before_any_work_naming_the_keys(tmp_path, yaml_text, message):
    f = tmp_path / "params.yaml"
    f.write_text(yaml_text)
    with pytest.raises(ParamsError, match=message):
        load_params(f)


def test_an_unquoted_no_is_no_mixed_precision(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("training:\n  mixed_precision: no\n")  # YAML 1.1 reads this as false
    assert load_params(f).training.mixed_precision == "no"
