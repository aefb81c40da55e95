"""params.yaml resolved in its project when it is loaded: generator names against dvc.yaml and
models/, models named by path or hub id, the MLflow store's folder. Each case would otherwise fail
in a stage hours into a run; here it fails in load_params, naming the key and the fix. Nothing
touches the network: the hub check is replaced wherever an id is not cached."""
from __future__ import annotations

import re

import json

import pytest
import yaml

from components.config import ParamsError, load_params, resolve
from components.config.data import REFERENCE_GENERATORS
from components.pipeline.project import default_params
from tests.conftest import REPO

VIT = {"image_size": 32, "patch_size": 8, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
       "intermediate_size": 32}


def _project(root, dvc=True, **sections) -> str:
    """A project folder: the shipped params with ``sections`` updated, and the shipped dvc.yaml."""
    params = default_params()
    for name, values in sections.items():
        params[name].update(values)
    if dvc:
        (root / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root / "params.yaml"


@pytest.fixture
def no_hub(monkeypatch):
    """The hub check, replaced: it answers "unreachable" and records what it was asked."""
    asked = []

    def unreachable(repo_id, filename):
        asked.append((repo_id, filename))
        return "the hub cannot be reached (ConnectError)"

    monkeypatch.setattr(resolve, "hub_problem", unreachable)
    return asked


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    """A tiny random ViT saved with save_pretrained: what judges.encoder_model names."""
    import transformers as tf

    folder = tmp_path_factory.mktemp("hf") / "vit"
    tf.ViTModel(tf.ViTConfig(**VIT)).save_pretrained(folder)
    return folder


# --- generators ------------------------------------------------------------------------------

def test_an_unknown_generator_fails_at_load_naming_it_and_the_known_ones(tmp_path):
    f = _project(tmp_path, evaluate={"generators": ["oracle", "pretrian", "sft"], "compare": []})
    with pytest.raises(ParamsError) as e:
        load_params(f)
    line = next(x for x in str(e.value).splitlines() if "pretrian" in x)
    assert line.strip().startswith("evaluate.generators: unknown generator(s) ['pretrian']")
    assert all(name in line for name in [*REFERENCE_GENERATORS, "'pretrain'", "'sft'"])


def test_the_shipped_project_resolves_and_so_does_a_folder_outside_one(tmp_path):
    assert load_params(REPO / "params.yaml").evaluate.generators[-4:] == ["sft", "sft_std", "rl", "patchdpo"]
    # no dvc.yaml beside params.yaml: what the pipeline trains is unknown, names are not checked
    assert load_params(_project(tmp_path, dvc=False, evaluate={"generators": ["ipadapter"], "compare": []}))


def test_a_trained_generator_is_known_by_its_stage_or_its_folder(tmp_path):
    f = _project(tmp_path, evaluate={"generators": ["oracle", "sft", "sft_std", "rl", "patchdpo", "ipadapter"], "compare": []})
    with pytest.raises(ParamsError, match=r"unknown generator\(s\) \['ipadapter'\]"):
        load_params(f)
    (tmp_path / "models" / "ipadapter").mkdir(parents=True)
    (tmp_path / "models" / "ipadapter" / "generator_config.json").write_text("{}")
    assert load_params(f).evaluate.generators[-1] == "ipadapter"  # already trained, outside the pipeline
    (tmp_path / "models" / "ipadapter" / "generator_config.json").unlink()
    dvc = yaml.safe_load((tmp_path / "dvc.yaml").read_text())
    dvc["stages"]["ipadapter"] = {"cmd": "python -m components.ipadapter --out models/ipadapter", "outs": ["models/ipadapter"],
                           "deps": ["models/sft", "components/models/generator.py"]}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(dvc, sort_keys=False))
    with pytest.raises(ParamsError, match=r"'ipadapter' is trained by stage 'ipadapter'.*add models/ipadapter to evaluate's deps"):
        load_params(f)
    dvc["stages"]["evaluate"]["deps"].append("models/ipadapter")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(dvc, sort_keys=False))
    assert load_params(f).evaluate.generators == ["oracle", "sft", "sft_std", "rl", "patchdpo", "ipadapter"]


def test_every_registered_generator_must_be_scored(tmp_path):
    f = _project(tmp_path, evaluate={"generators": ["oracle", "pretrain"], "compare": []})
    with pytest.raises(ParamsError) as e:
        load_params(f)
    for name in ("sft", "sft_std", "rl", "patchdpo"):
        assert re.search(rf"registers models/{name}.*add '{name}' to evaluate\.generators", str(e.value))


def test_the_reference_generator_names_are_the_benchmarks():
    from components.benchmark.generators import available

    assert available() == sorted(REFERENCE_GENERATORS)


def test_the_size_rules_match_the_judge_networks():
    from components.config.data import ENCODER_PATCH
    from components.judging.encoder import PATCH

    assert PATCH == ENCODER_PATCH


# --- models by path or hub id ------------------------------------------------------------------

def test_a_missing_encoder_path_fails_at_load_with_the_fix(tmp_path, no_hub):
    f = _project(tmp_path, judges={"encoder_model": "/nowhere/dino-vits16"})
    with pytest.raises(ParamsError) as e:
        load_params(f)
    msg = str(e.value)
    assert "judges.encoder_model: '/nowhere/dino-vits16' is not a folder" in msg
    assert "save_pretrained" in msg and not no_hub  # a path: the hub is not asked


def test_an_encoder_folder_resolves_from_the_project_whatever_the_cwd(tmp_path, vit, monkeypatch):
    import shutil

    shutil.copytree(vit, tmp_path / "models" / "dino")
    f = _project(tmp_path, judges={"encoder_model": "models/dino"})
    monkeypatch.chdir(tmp_path.parent)
    assert load_params(f).judges.encoder_model == "models/dino"  # kept as written: DVC runs stages in the project
    (tmp_path / "models" / "dino" / "model.safetensors").unlink()
    with pytest.raises(ParamsError, match=r"judges\.encoder_model: 'models/dino': .* has no weights"):
        load_params(f)
    (tmp_path / "models" / "dino" / "config.json").unlink()
    with pytest.raises(ParamsError, match=r"has no config\.json: it is not a transformers vision encoder"):
        load_params(f)


def test_a_model_of_the_wrong_kind_is_named(tmp_path, vit):
    f = _project(tmp_path, judges={"grounder_model": str(vit)})
    with pytest.raises(ParamsError, match=r"judges\.grounder_model: .*model_type 'vit'.*zero-shot detector"):
        load_params(f)


def test_an_uncached_hub_id_fails_at_load_when_the_hub_cannot_serve_it(tmp_path, no_hub):
    f = _project(tmp_path, judges={"grounder_model": "nobody-org/no-such-owlvit"})
    with pytest.raises(ParamsError) as e:
        load_params(f)
    msg = str(e.value)
    assert "judges.grounder_model: 'nobody-org/no-such-owlvit' is neither a folder" in msg
    assert "nor in the local Hugging Face cache, and the hub cannot be reached" in msg
    assert "hf download nobody-org/no-such-owlvit" in msg and no_hub == [("nobody-org/no-such-owlvit", "config.json")]


def test_an_uncached_hub_id_the_hub_serves_is_left_to_the_stage(tmp_path, monkeypatch):
    monkeypatch.setattr(resolve, "hub_problem", lambda repo_id, filename: None)
    assert load_params(_project(tmp_path, judges={"encoder_model": "facebook/dino-vits16"}))


def test_a_cached_hub_id_resolves_without_the_hub(tmp_path, vit, monkeypatch):
    import shutil

    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    snapshot = cache / "models--facebook--dino-vits16" / "snapshots" / "0123abcd"
    shutil.copytree(vit, snapshot)
    (cache / "models--facebook--dino-vits16" / "refs").mkdir()
    (cache / "models--facebook--dino-vits16" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(resolve, "hub_problem", lambda *a: pytest.fail("the hub was asked for a cached model"))
    project = tmp_path / "p"
    project.mkdir()
    assert load_params(_project(project, judges={"encoder_model": "facebook/dino-vits16"}))
    with pytest.raises(ParamsError, match=r"judges\.grounder_model: 'facebook/dino-vits16': .*model_type 'vit'"):
        load_params(_project(project, judges={"grounder_model": "facebook/dino-vits16"}))


def test_a_missing_flux_folder_is_named(tmp_path, no_hub):
    f = _project(tmp_path, generator={"pretrained": "flux-kontext"})
    with pytest.raises(ParamsError, match=r"generator\.pretrained: 'flux-kontext' is neither a folder .* nor in the "
                                          r"local Hugging Face cache.*hf download flux-kontext"):
        load_params(f)


def test_every_problem_is_one_line(tmp_path, no_hub):
    f = _project(tmp_path, judges={"encoder_model": "./dino", "grounder_model": "org/owl"},
                 evaluate={"generators": ["oracle", "sft", "sft_std", "rl", "patchdpo", "dalle"], "compare": []},
                 pipeline={"tracking_uri": f"sqlite:///{tmp_path}/no/such/folder/mlflow.db"})
    with pytest.raises(ParamsError) as e:
        load_params(f)
    lines = str(e.value).splitlines()
    assert lines[0].endswith("4 setting(s) name what cannot be found") and len(lines) == 5
    keys = [line.strip().split(":")[0] for line in lines[1:]]
    assert keys == ["evaluate.generators", "judges.encoder_model", "judges.grounder_model", "pipeline.tracking_uri"]


def test_a_params_file_with_nothing_to_resolve_never_asks_the_hub(tmp_path, monkeypatch):
    monkeypatch.setattr(resolve, "hub_problem", lambda *a: pytest.fail("the hub was asked"))
    assert load_params(_project(tmp_path))


def test_the_hub_check_says_why_without_raising(monkeypatch):
    """The real check, with the network taken away: a reason, never an exception."""
    from huggingface_hub import constants

    resolve.hub_problem.cache_clear()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert "HF_HUB_OFFLINE" in resolve.hub_problem("org/name", "config.json")
    resolve.hub_problem.cache_clear()


def test_json_configs_are_read_not_trusted(tmp_path):
    (tmp_path / "enc").mkdir()
    (tmp_path / "enc" / "config.json").write_text(json.dumps(["not", "a", "config"]))
    assert "not a transformers config" in resolve.folder_problem(resolve.ENCODER, tmp_path / "enc")
