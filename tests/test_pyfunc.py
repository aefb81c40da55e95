"""The generator's pyfunc model is logged from code (MLflow's models-from-code): the logged model
holds the code file and the generator folder, nothing pickled, and it loads by every kind of URI
(registry alias, run, logged model, local folder) with the same images as the folder itself."""
from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml

import components.pipeline.tracking  # noqa: F401 - reads $MLFLOW_TRACKING_URI once, before these tests set it
from components.models import layout, pyfunc
from components.models.generator import SubjectGenerator

SMALL_GEN = {"width": 32, "heads": 2, "double_blocks": 1, "single_blocks": 1, "text_hidden": 16, "text_layers": 1}


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:  # mlflow.set_tracking_uri sets $MLFLOW_TRACKING_URI: undo it after
        mp.setenv("MLFLOW_TRACKING_URI", "")
        yield _log(tmp_path_factory.mktemp("pyfunc"))
        mlflow.set_tracking_uri(None)


def _log(tmp):
    folder = tmp / "gen"
    SubjectGenerator.tiny(**SMALL_GEN, seed=0).save_pretrained(folder)
    layout.save_layout(folder, "slots")
    mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
    exp = mlflow.create_experiment("pyfunc", artifact_location=(tmp / "artifacts").as_uri())
    mlflow.set_experiment(experiment_id=exp)
    with mlflow.start_run() as run:
        info = pyfunc.log_generator(folder, name="generator", registered_model_name="gen")
    mlflow.MlflowClient().set_registered_model_alias("gen", "candidate", info.registered_model_version)
    return tmp, folder, run.info.run_id, info


def test_the_logged_model_is_code_and_the_folder_not_a_pickle(logged, tmp_path):
    _, folder, _, info = logged
    local = mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path))
    files = {p.relative_to(local).as_posix() for p in Path(local).rglob("*") if p.is_file()}
    assert "pyfunc_model.py" in files
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle"))], files
    flavor = yaml.safe_load((Path(local) / "MLmodel").read_text())["flavors"]["python_function"]
    stored = flavor["artifacts"][pyfunc.ARTIFACT]["path"]  # the generator folder, whole
    assert {f"{stored}/{p.relative_to(folder).as_posix()}" for p in folder.rglob("*") if p.is_file()} <= files
    assert flavor["model_code_path"].endswith("pyfunc_model.py") and "python_model" not in flavor
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model"


def test_it_loads_by_alias_run_model_id_and_folder_with_the_same_images(logged, monkeypatch):
    _, folder, run_id, info = logged
    monkeypatch.delenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", raising=False)  # nothing to unpickle
    image = np.full((40, 40, 3), 90, np.uint8)
    refs = [image, np.full((32, 32, 3), 200, np.uint8), image]  # three references: packed into their slots
    prompt = "the cat from image 1, the moon from image 2 and the tree from image 3 in a forest"
    expected = pyfunc.generate(str(folder), prompt, refs, seed=3, steps=2, guidance=2.0)
    assert expected.shape == (32, 32, 3) and expected.dtype == np.uint8
    for uri in ("models:/gen@candidate", f"runs:/{run_id}/generator", info.model_uri):
        sample = pyfunc.load(uri)
        assert np.array_equal(sample(prompt, refs, seed=3, steps=2, guidance=2.0), expected), uri
    # the pyfunc contract itself: a list of GenerationRequest in, base64 PNGs out
    model = mlflow.pyfunc.load_model("models:/gen@candidate")
    req = pyfunc.GenerationRequest(prompt=prompt, refs=[pyfunc.png_b64(r) for r in refs], seed=3, steps=2,
                                   guidance=2.0)
    out = model.predict([req.model_dump()])
    assert isinstance(out, list) and len(out) == 1 and np.array_equal(pyfunc.from_png_b64(out[0]), expected)
