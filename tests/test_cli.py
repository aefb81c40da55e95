import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import mlflow
import pytest

import components.pipeline.tracking  # noqa: F401 - reads $MLFLOW_TRACKING_URI before a test sets it
from components.pipeline import lineage
from components.pipeline.cli import main
from tests.conftest import make_project, tiny_params


@pytest.fixture
def fresh(tmp_path):
    return make_project(tmp_path / "p", tiny_params())


def test_status_says_which_stages_are_stale_and_why(fresh, capsys):
    assert main(["status", "--project", str(fresh)]) == 0
    out = capsys.readouterr().out
    assert all(f"{s}: stale" in out for s in ("synthesize", "validate", "judges", "pretrain", "evaluate"))
    assert "changed outs: data/multi deleted" in out


def test_a_params_typo_fails_with_the_key_named(fresh, capsys):
    (fresh / "params.yaml").write_text((fresh / "params.yaml").read_text().replace("report_rows", "report_row"))
    assert main(["stage", "validate", "--project", str(fresh)]) == 2
    assert "validate.report_row: unknown key" in capsys.readouterr().err


def test_not_a_project_folder(tmp_path, capsys):
    assert main(["status", "--project", str(tmp_path)]) == 2
    assert "no dvc.yaml here" in capsys.readouterr().err


@pytest.mark.integration
def test_stage_runs_one_stage_through_the_flow(fresh, prefect_harness, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # restored after: mlflow.set_tracking_uri sets it
    # No capsys here: Prefect's console log handler keeps the stream it first saw.
    assert main(["stage", "synthesize", "--project", str(fresh), "--no-push"]) == 0
    assert set(lineage.status(fresh)) == {"validate", "judges", "pretrain", "standardizer", "multisubject", "sft", "sft_std", "rl",
                                               "patchdpo_data", "patchdpo", "evaluate", "register"}  # downstream
    assert (fresh / "data" / "multi" / "manifest.parquet").exists()
    assert not (fresh / "reports" / "validate").exists()
    assert not (fresh / ".dvc-storage").exists()
    # timings went to the stage's MLflow run, not to the metrics file DVC tracks
    metrics = json.loads((fresh / "metrics" / "synthesize.json").read_text())
    assert metrics["samples"] > 0 and not {"seconds", "samples_per_second", "peak_rss_mb", "timings"} & set(metrics)
    mlflow.set_tracking_uri(f"sqlite:///{fresh}/mlflow.db")
    [run] = mlflow.search_runs(search_all_experiments=True, output_format="list",
                               filter_string="tags.stage = 'synthesize'")
    assert run.data.metrics["timing.seconds"] > 0 and run.data.metrics["timing.peak_rss_mb"] > 0


def test_generate_loads_a_model_logged_from_code_by_run_and_model_id(fresh, tmp_path, capsys, monkeypatch):
    """`subjectflow generate` on MLflow URIs of a pyfunc model logged from code (the registry alias
    and the local folder are exercised by the flow test)."""
    import numpy as np
    from PIL import Image

    from components.models import pyfunc
    from components.models.generator import SubjectGenerator

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # restored after: mlflow.set_tracking_uri sets it
    folder = fresh / "models" / "tiny"
    SubjectGenerator.tiny(width=32, heads=2, double_blocks=1, single_blocks=1, text_hidden=16, text_layers=1,
                          seed=0).save_pretrained(folder)
    mlflow.set_tracking_uri(f"sqlite:///{fresh}/mlflow.db")  # the project's store, where generate looks
    mlflow.set_experiment(experiment_id=mlflow.create_experiment("t", artifact_location=(fresh / "art").as_uri()))
    with mlflow.start_run() as run:
        info = pyfunc.log_generator(folder, name="generator")
    ref = tmp_path / "ref.png"
    Image.fromarray(np.full((48, 48, 3), 120, np.uint8)).save(ref)
    outs = []
    for uri in (f"runs:/{run.info.run_id}/generator", info.model_uri, str(folder)):
        outs.append(tmp_path / f"out{len(outs)}.png")
        assert main(["generate", "--project", str(fresh), "--model", uri, "--ref", str(ref),
                     "the cat from image 1 in a forest", "--steps", "2", "--seed", "1", "--out", str(outs[-1])]) == 0
        assert f"from {uri}" in capsys.readouterr().out
    images = [np.asarray(Image.open(o)) for o in outs]
    assert images[0].shape == (32, 32, 3) and all(np.array_equal(images[0], im) for im in images[1:])


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url, proc, timeout=90):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "ui exited early"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.status
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(url)


@pytest.mark.integration
def test_ui_serves_mlflow_and_prefect_on_localhost(fresh, tmp_path):
    mport, pport = _free_port(), _free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "components.pipeline.cli", "ui", "--project", str(fresh),
                             "--mlflow-port", str(mport), "--prefect-port", str(pport)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert _wait_for(f"http://127.0.0.1:{mport}/health", proc) == 200
        assert _wait_for(f"http://127.0.0.1:{pport}/api/health", proc) == 200
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()  # leave no server behind, then fail
            raise
    assert f"http://127.0.0.1:{mport}" in out and f"http://127.0.0.1:{pport}" in out
    assert proc.returncode == 0
    for name in ("mlflow", "prefect"):  # the servers talk to their logs, not to our pipe
        assert (fresh / ".ui-logs" / f"{name}.log").stat().st_size > 0


# Inputs checked at the door: a user's mistake gets one line on stderr and exit code 2, before
# any model loads or any server starts.

GOOD_PROMPT = "the cat from image 1 left of the moon from image 2, in a forest"
# case: (what differs from a good call, what the line says)
GENERATE_MISTAKES = {
    "zero steps": ({"extra": ["--steps", "0"]}, "steps must be at least 1, got 0"),
    "guidance below 1": ({"extra": ["--guidance", "-5"]}, "guidance must be a number >= 1"),
    "more references than the generator takes": (
        {"refs": 5, "prompt": "image 1, image 2, image 3, image 4 and image 5"},
        "5 reference images, but this generator takes at most 4"),
    "an image the references lack": ({"prompt": "the cat from image 1 left of the moon from image 3"},
                                     'names "image 3" but there are 2 reference images'),
    "a reference the prompt never names": ({"prompt": "the cat from image 1 in a forest"},
                                           'reference 2 is never named in the prompt: say "image 2"'),
    "a reference file that does not exist": ({"ref": "missing.png"}, "missing.png: no such file"),
    "a reference file that does not decode": ({"ref": "broken.png"}, "broken.png: not an image Pillow can decode"),
    "an output folder that cannot be made": ({"out": "a-file/out.png"}, "is a file, so no folder can be made in it"),
    "a model folder that does not exist": ({"model": "no-such-folder"}, "no-such-folder: no such generator folder"),
}


@pytest.fixture(scope="module")
def tiny_generator(tmp_path_factory):
    from components.models.generator import SubjectGenerator

    folder = tmp_path_factory.mktemp("generator") / "tiny"
    SubjectGenerator.tiny(width=32, heads=2, double_blocks=1, single_blocks=1, text_hidden=16, text_layers=1,
                          seed=0).save_pretrained(folder)
    return folder


def _one_line(err: str) -> str:
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("case", GENERATE_MISTAKES)
def test_generate_answers_a_mistake_with_one_line(case, tiny_generator, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    change, says = GENERATE_MISTAKES[case]
    good_ref = tmp_path / "ref.png"
    Image.fromarray(np.full((48, 48, 3), 120, np.uint8)).save(good_ref)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 30)  # a PNG signature, then nothing
    (tmp_path / "a-file").write_text("")
    refs = [good_ref] * change.get("refs", 2)
    if "ref" in change:
        refs[-1] = tmp_path / change["ref"]
    out = tmp_path / change.get("out", "out.png")
    model = tmp_path / change["model"] if "model" in change else tiny_generator
    argv = ["generate", "--project", str(tmp_path), "--model", str(model), change.get("prompt", GOOD_PROMPT),
            "--out", str(out), *change.get("extra", [])]
    for ref in refs:
        argv += ["--ref", str(ref)]
    assert main(argv) == 2
    assert says in _one_line(capsys.readouterr().err)
    assert not out.exists()


def test_generate_names_a_model_uri_that_does_not_resolve(tmp_path, capsys, monkeypatch):
    import numpy as np
    import yaml
    from PIL import Image

    from components.pipeline.project import default_params

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")  # mlflow.set_tracking_uri sets it: undone after the test
    params = default_params()
    params["pipeline"]["tracking_uri"] = f"sqlite:///{tmp_path}/mlflow.db"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "ref.png")
    try:
        assert main(["generate", "--project", str(tmp_path), "--model", "models:/no-such-model@candidate", "--ref",
                     str(tmp_path / "ref.png"), "the cat from image 1", "--out", str(tmp_path / "out.png")]) == 2
    finally:
        mlflow.set_tracking_uri(None)
    err = capsys.readouterr().err.splitlines()[-1]  # MLflow logs its new database's creation first
    assert err == "subjectflow generate: --model models:/no-such-model@candidate: " \
                  "Registered Model with name=no-such-model not found"


def test_stage_refuses_an_unknown_name_before_prefect_starts(fresh, capsys, monkeypatch):
    import flows.pipeline

    def no_flow(**kw):
        raise AssertionError("the flow started")
    monkeypatch.setattr(flows.pipeline, "pipeline", no_flow)
    assert main(["stage", "synthesise", "--project", str(fresh)]) == 2
    err = _one_line(capsys.readouterr().err)
    assert "unknown stage 'synthesise'; dvc.yaml has synthesize, validate" in err


def _no_servers(monkeypatch):
    from components.pipeline import cli

    def popen(*a, **kw):
        raise AssertionError("a server started")
    monkeypatch.setattr(cli.subprocess, "Popen", popen)


@pytest.mark.parametrize("argv", [["status"], ["run"], ["stage", "synthesize"], ["benchmark", "--generator", "oracle"],
                                  ["ui"]], ids=lambda a: a[0])
def test_a_project_without_params_yaml_is_refused(argv, tmp_path, capsys, monkeypatch):
    from tests.conftest import REPO

    (tmp_path / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    _no_servers(monkeypatch)
    assert main([*argv, "--project", str(tmp_path)]) == 2
    assert f"{tmp_path}: no params.yaml here" in _one_line(capsys.readouterr().err)


def test_benchmark_rows_per_subset_must_be_positive(fresh, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["benchmark", "--generator", "oracle", "--per-subset", "0", "--project", str(fresh)])
    assert exit_.value.code == 2
    assert "argument --per-subset: must be a whole number >= 1, got '0'" in capsys.readouterr().err


@pytest.mark.parametrize("port", ["0", "70000", "http"])
def test_ui_refuses_a_port_out_of_range(port, fresh, capsys, monkeypatch):
    _no_servers(monkeypatch)
    with pytest.raises(SystemExit) as exit_:
        main(["ui", "--project", str(fresh), "--prefect-port", port])
    assert exit_.value.code == 2
    assert f"argument --prefect-port: a port is a whole number from 1 to 65535, got '{port}'" in capsys.readouterr().err


def test_ui_refuses_a_port_in_use_or_given_twice(fresh, capsys, monkeypatch):
    _no_servers(monkeypatch)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["ui", "--project", str(fresh), "--mlflow-port", str(port),
                     "--prefect-port", str(_free_port())]) == 2
        assert f"--mlflow-port {port}: cannot listen on 127.0.0.1:{port}" in _one_line(capsys.readouterr().err)
    assert main(["ui", "--project", str(fresh), "--mlflow-port", "5123", "--prefect-port", "5123"]) == 2
    assert "--mlflow-port and --prefect-port are both 5123" in _one_line(capsys.readouterr().err)


def test_init_creates_a_project_of_the_profile_and_refuses_a_used_folder(tmp_path, capsys):
    from components.config import load_params

    assert main(["init", str(tmp_path / "q"), "--profile", "quick"]) == 0
    root = tmp_path / "q"
    for name in ("dvc.yaml", "params.yaml", "prefect.yaml", "components/promote.py", "flows/pipeline.py", ".dvc/config"):
        assert (root / name).exists(), name
    params = load_params(root / "params.yaml")
    assert params.sft.steps == 30 and params.synthesize.multi == 48 and params.promote.floors.SC == 0.0
    assert params.sft.compile is False and params.generator.sample_steps == 4
    log = subprocess.run(["git", "log", "--oneline"], cwd=root, capture_output=True, text=True).stdout
    assert len(log.splitlines()) == 1 and lineage.status(root)  # one commit, everything to run
    assert main(["init", str(root)]) == 2
    assert "is not an empty folder" in capsys.readouterr().err
    assert main(["init", str(tmp_path / "r"), "--profile", "huge"]) == 2
    assert "profiles: default, quick" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.integration
def test_a_quick_project_runs_every_stage_and_leaves_a_champion(tmp_path, monkeypatch):
    """`subjectflow init DIR --profile quick && subjectflow run --project DIR`, as a newcomer
    types it (its time against the 5-minute budget: perf/quick_profile.py)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = tmp_path / "q"
    cli = [sys.executable, "-m", "components.pipeline.cli"]
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    subprocess.run([*cli, "init", str(root), "--profile", "quick"], check=True, env=env)
    done = subprocess.run([*cli, "run", "--project", str(root)], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "promote      promoted" in done.stdout
    assert lineage.status(root) == {}
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    champion = mlflow.MlflowClient().get_model_version_by_alias("subjectflow-generator", "champion")
    assert champion.tags["promotion.verdict"] == "promoted"
    mlflow.set_tracking_uri(None)
