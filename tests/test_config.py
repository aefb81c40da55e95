import pytest

from components.config import ParamsError, load_params
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
