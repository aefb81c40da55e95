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
    ("synthesize:\n  resolution: 30\ngenerator:\n  patch: 2\n",
     r"synthesize\.resolution 30 is not divisible by 4: the judges stage trains a grounder"),
    ("judges:\n  crop_size: 30\n", r"judges\.crop_size: Input should be a multiple of 4"),
    ("generator:\n  width: 100\n  heads: 3\n", r"width 100 must be divisible by heads 3"),
    ("multisubject:\n  judge_set: eval\n", r"multisubject\.judge_set must be 'reward'"),
    ("training:\n  mixed_precision: fp8\n", r"training\.mixed_precision"),
    ("evaluate:\n  generators: [oracle, noise, oracle]\n  compare: []\n", r"evaluate\.generators: .*\['oracle'\] listed more"),
    ("evaluate:\n  generators: [oracle, models/sft]\n  compare: []\n", r"evaluate\.generators: .*are paths"),
    ("evaluate:\n  generators: []\n  compare: []\n", r"evaluate\.generators: List should have at least 1 item"),
    ("evaluate:\n  compare: [[sft, sft]]\n", r"evaluate\.compare: .*pairs 'sft' with itself"),
    ("sft:\n  ref_count_probs: {2: 0.5, 5: 0.5}\n", r"sft\.ref_count_probs: .*no data holds pairs with \[5\] references"),
    ("synthesize:\n  multi_tasks: {Three: 1.0, Four: 1.0}\n",
     r"sft\.ref_count_probs gives 2 reference\(s\) probability 0\.2, but no data holds such pairs"),
    ("synthesize:\n  single: 0\n", r"sft\.ref_count_probs gives 1 reference\(s\).*synthesize\.single is 0"),
    ("synthesize:\n  standardize: 5\nvalidate:\n  min_samples: 10\n",
     r"synthesize\.standardize gives 5 rows, fewer than validate\.min_samples 10"),
    ("register:\n  alias: latest\n", r"register\.alias: .*MLflow reserves 'latest'"),
    ("register:\n  alias: v2\n", r"register\.alias: .*MLflow reserves 'v2'"),
    ("register:\n  alias: my candidate\n", r"register\.alias: .*only hold letters, digits"),
    ("register:\n  model_name: team/generator\n", r"register\.model_name: .*refuses \['/'\]"),
    ("promote:\n  alias: v1\n", r"promote\.alias: .*MLflow reserves 'v1'"),
    ("promote:\n  alias: candidate\n", r"promote\.alias and register\.alias are both 'candidate'"),
    ("promote:\n  margins: {SC: 0.0, SA: -0.1, AES: 0.01}\n", r"promote\.margins: .*0 or more"),
    ("promote:\n  floors: {SC: 0.2, SA: 0.4}\n", r"promote\.floors\.AES: Field required"),
    ("pipeline:\n  experiment: ''\n", r"pipeline\.experiment: .*needs a name"),
    ("pipeline:\n  tracking_uri: ftp://host/mlflow\n", r"pipeline\.tracking_uri: .*no MLflow tracking store has the scheme 'ftp'"),
    ("pipeline:\n  tracking_uri: sqlite:///mlflow.db\n", r"pipeline\.tracking_uri: .*write it absolute"),
    ("pipeline:\n  tracking_uri: mlruns\n", r"pipeline\.tracking_uri: .*'mlruns' is relative"),
    ("pipeline:\n  artifact_location: runs:/abc/artifacts\n", r"pipeline\.artifact_location: .*runs:/ URI"),
    ("pipeline:\n  artifact_location: mlartifacts\n", r"pipeline\.artifact_location: .*give an absolute folder"),
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


def test_rules_across_sections_are_reported_together(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("synthesize:\n  resolution: 30\nmultisubject:\n  judge_set: eval\n")
    with pytest.raises(ParamsError) as e:
        load_params(f)
    assert [line for line in str(e.value).splitlines()[1:] if line.startswith("  synthesize.resolution")] != []
    assert "multisubject.judge_set" in str(e.value) and "not divisible by 4" in str(e.value)


@pytest.mark.parametrize("uri", ["sqlite:////abs/mlflow.db", "postgresql+psycopg2://u@h/db", "http://host:5000",
                                 "https://mlflow.example.com", "databricks", "file:///abs/mlruns", "/abs/mlruns"])
def test_tracking_uris_mlflow_takes_are_taken(uri):
    from components.config import PipelineParams

    assert PipelineParams(tracking_uri=uri).tracking_uri == uri


NAMES = ["subjectflow-generator", "gen_1", "Génération", "a b", "a.b", "a/b", "a:b", "50%", "..", ".", "..x", "",
         " ", "x" * 256, "a@b"]
ALIASES = ["candidate", "champion", "cand_2-b", "Génial", "latest", "LATEST", "v1", "V22", "v1x", "va", "", "a b",
           "a.b", "a/b", "x" * 255, "x" * 256]


def _accepts(validate, value) -> bool:
    from mlflow.exceptions import MlflowException
    from pydantic import ValidationError

    try:
        validate(value)
    except (ValidationError, MlflowException):
        return False
    return True


@pytest.mark.parametrize("name", NAMES)
def test_register_model_name_follows_mlflows_rules(name):
    from mlflow.store.model_registry.file_store import _validate_model_name as file_store_rule
    from mlflow.utils.validation import _validate_model_name as db_store_rule

    from components.config import RegisterParams

    mine = _accepts(lambda v: RegisterParams(model_name=v), name)
    theirs = _accepts(file_store_rule, name) and _accepts(db_store_rule, name) and len(name) <= 256
    assert mine == theirs


@pytest.mark.parametrize("alias", ALIASES)
def test_register_alias_follows_mlflows_rules(alias):
    from mlflow.utils.validation import _validate_model_alias_name, _validate_model_alias_name_reserved

    from components.config import RegisterParams

    mine = _accepts(lambda v: RegisterParams(alias=v), alias)
    assert mine == (_accepts(_validate_model_alias_name, alias) and _accepts(_validate_model_alias_name_reserved, alias))


def test_a_refused_tracking_uri_is_not_echoed_with_its_password(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("pipeline:\n  tracking_uri: ftp://user:hunter2@host/mlflow\n")
    with pytest.raises(ParamsError, match="scheme 'ftp'") as e:
        load_params(f)
    assert "hunter2" not in str(e.value)
