"""The generator's pyfunc model is logged from code (MLflow's models-from-code): the logged model
holds the code file and the generator folder, nothing pickled, and it loads by every kind of URI
(registry alias, run, logged model, local folder) with the same images as the folder itself."""
from __future__ import annotations

import re
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


# A request the generator cannot draw is refused, with what to fix, by every way in: the function
# (pyfunc.generate, local folder or MLflow URI), the pyfunc model's predict and a served model.

@pytest.mark.parametrize("prompt, n_refs, kw, says", [
    ("the cat from image 1", 1, {"steps": 0}, "steps must be at least 1, got 0"),
    ("the cat from image 1", 1, {"guidance": -5.0}, "guidance must be a number >= 1"),
    ("the cat from image 1", 1, {"guidance": float("inf")}, "guidance must be a number >= 1"),
    ("the cat from image 1", 1, {"seed": -1}, "seed must be between 0 and"),
    ("image 1, image 2, image 3, image 4 and image 5", 5, {"max_refs": 4},
     "5 reference images, but this generator takes at most 4"),
    ("the cat from image 1 left of the moon from image 3", 2, {}, '"image 3" but there are 2 reference images'),
    ("the cat from image 0", 1, {}, '"image 0" but there is 1 reference image'),
    ("the cat from image 1 in a forest", 2, {}, 'reference 2 is never named in the prompt: say "image 2"'),
    ("the cat in a forest", 0, {}, "no reference image"),
    ("  ", 1, {}, "the prompt is empty"),
])
def test_check_request_refuses_what_the_generator_cannot_draw(prompt, n_refs, kw, says):
    with pytest.raises(pyfunc.RequestError, match=re.escape(says)):
        pyfunc.check_request(prompt, n_refs, **kw)


def test_check_request_takes_what_the_world_writes():
    pyfunc.check_request("the moon from image 2 above the cat from image 1, in a forest", 2, steps=1, guidance=1.0,
                         max_refs=4)
    pyfunc.check_request("a small cat from image 1, a big moon from image 2, a tree from image 3 and a robot from "
                         "Image 4 on a beach", 4, max_refs=4)  # any case; None: the generator's own settings
    assert pyfunc.named_images("the cat from image 2 left of image 1, image 2 again") == [2, 1, 2]


def test_every_way_in_refuses_a_bad_request(logged, monkeypatch):
    _, folder, _, _ = logged
    ref = np.full((32, 32, 3), 90, np.uint8)
    with pytest.raises(pyfunc.RequestError, match='"image 3" but there are 2'):
        pyfunc.generate(str(folder), "the cat from image 1 left of the moon from image 3", [ref, ref], steps=2)
    with pytest.raises(pyfunc.RequestError, match="at most 4"):
        pyfunc.generate(str(folder), "image 1, image 2, image 3, image 4 and image 5", [ref] * 5, steps=2)
    sample = pyfunc.load("models:/gen@candidate")
    with pytest.raises(pyfunc.RequestError, match="steps must be at least 1"):  # not the pydantic model's error
        sample("the cat from image 1", [ref], steps=0)
    model = mlflow.pyfunc.load_model("models:/gen@candidate")
    five = pyfunc.GenerationRequest(prompt="image 1, image 2, image 3, image 4 and image 5",
                                    refs=[pyfunc.png_b64(ref)] * 5, steps=2)
    with pytest.raises(pyfunc.RequestError, match="at most 4"):
        model.predict([five.model_dump()])
    garbled = pyfunc.GenerationRequest(prompt="the cat from image 1", refs=["bm90IGFuIGltYWdl"], steps=2)
    with pytest.raises(pyfunc.RequestError, match=re.escape('reference 1 ("image 1"): not an image')):
        model.predict([garbled.model_dump()])
    # served (`mlflow models serve`'s app, in process): 400 and the message, not a 500
    from fastapi.testclient import TestClient
    from mlflow.pyfunc import scoring_server

    monkeypatch.setenv("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", "false")  # init() sets it: undone after the test
    client = TestClient(scoring_server.init(model))
    bad = client.post("/invocations", json={"inputs": [five.model_dump()]})
    assert bad.status_code == 400 and "this generator takes at most 4" in bad.json()["message"]
    good = client.post("/invocations", json={"inputs": [{**five.model_dump(), "prompt": "the cat from image 1",
                                                         "refs": five.refs[:1]}]})
    assert good.status_code == 200, good.text
