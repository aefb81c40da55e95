"""Shared fixtures: telemetry off, tiny params, a throwaway project (git + DVC) and one
Prefect test harness per session (it costs ~20 s to start)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

for _k, _v in (("PREFECT_SERVER_ANALYTICS_ENABLED", "false"), ("MLFLOW_DISABLE_TELEMETRY", "true"),
               ("DVC_NO_ANALYTICS", "1"), ("GX_ANALYTICS_ENABLED", "false")):
    os.environ[_k] = _v

# Imported now so Prefect's and DVC's console log handlers bind to the session-wide streams,
# not to the buffers of whichever test's capsys imports them first (closed after that test).
import dvc.repo  # noqa: E402,F401
import prefect  # noqa: E402,F401

from components.pipeline.project import set_training  # noqa: E402,F401 - tests import it from here

REPO = Path(__file__).resolve().parents[1]
TINY = {"single": 24, "standardize": 12, "multi": 28, "bench_per_subset": 3, "bench_rows": {"Four": 4},
        "wild_per_subset": 2, "serial_identities": 3, "serial_prompts": 2, "grid_samples": 4}
# Judges that train in seconds: the flow tests check the plumbing, not judge quality.
TINY_JUDGES = {"width": 8, "embed_dim": 16, "batch_size": 16, "encoder_steps": 5, "grounder_steps": 5,
               "semantic_steps": 5, "aesthetic_steps": 5}
# A few steps of the real generator architecture: enough to produce a model folder and logs.
TINY_TRAIN = {"steps": 4, "batch_size": 4, "warmup_steps": 1, "log_every": 2, "sample_every": 2,
              "checkpoint_every": 2, "sample_steps": 2, "grid_rows": 2}
# Two RL iterations of two groups of two rollouts: enough for the rl stage's folder and logs.
TINY_RL = {"steps": 4, "probe_every": 2, "checkpoint_every": 2, "group_size": 2, "groups_per_batch": 1, "batches": 2, "grad_accum": 1,
           "rollout_steps": 3, "window_size": 1, "window_range": [0, 2], "probe_rows": 2}


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """accelerate keeps one process-wide state, and refuses a second Trainer whose mixed precision
    differs from the first's (a stage process only ever makes one): reset it after each test, as
    accelerate's own tests do."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def tiny_params(**synth) -> dict:
    """The repository's params.yaml shrunk to a few samples per dataset."""
    from components.pipeline.project import default_params

    params = default_params()
    params["synthesize"].update({**TINY, **synth})
    params["judges"].update(TINY_JUDGES)
    params["judges"]["grounding_threshold"] = 1e-6  # 5-step judges: always answer, so bootstrapping keeps pairs
    set_training(params, "pretrain", **TINY_TRAIN)
    params["multisubject"].update(threshold=-1.0, sample_steps=2, grid_rows=2, recompose={"Three": 2, "Four": 2},
                                  max_scenes=None, candidates=1)
    set_training(params, "sft", **TINY_TRAIN)
    set_training(params, "standardizer", **TINY_TRAIN)
    params["standardizer"].update(analyser_steps=4, eval_rows=4, grid_rows=2)
    params["rl"].update(TINY_RL)
    set_training(params, "patchdpo", **TINY_TRAIN)
    params["patchdpo"].update(rows=4)
    params["evaluate"].update(per_subset=1, grid_rows=2, sample_steps=2)
    params["resources"]["workers"] = 1
    params["pipeline"].update(retries=1, retry_delay_seconds=0, push=True,  # retries on: a data failure must still not retry
                              system_metrics_seconds=1)  # tiny stages last seconds
    params["promote"]["floors"] = {"SC": 0.0, "SA": 0.0, "AES": 0.0}  # a few training steps: the first one is champion
    return params


def make_project(dest: Path, params: dict) -> Path:
    """A fresh project (git + DVC + the code) with the given params."""
    from components.pipeline.project import scaffold

    return scaffold(dest, params)


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """One Prefect test server for the whole session, in its own PREFECT_HOME."""
    home = tmp_path_factory.mktemp("prefect-home")
    os.environ["PREFECT_HOME"] = str(home)
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def python_bin_on_path(monkeypatch):
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])


@pytest.fixture(scope="session")
def judge_world(tmp_path_factory):
    """A small synthesized world shared by the judge, reward and benchmark tests: the data
    folder, the judges' training data (multi + single) and the held-out benchmark."""
    from components.config import Params
    from components.judging import data as judge_data
    from components.synthesize import SynthesizePaths
    from components.synthesize import run as synthesize

    root = tmp_path_factory.mktemp("judge-world")
    params = Params.model_validate({"synthesize": {"single": 40, "standardize": 2, "multi": 40, "bench_per_subset": 2,
                                                   "bench_rows": {}, "serial_identities": 3, "serial_prompts": 2},
                                    "resources": {"workers": 1}})
    synthesize(params, SynthesizePaths(out=root / "data", reports=root / "reports"))
    train = judge_data.load([root / "data" / "multi", root / "data" / "single"])
    bench = judge_data.load([root / "data" / "bench"])
    return root / "data", train, bench


@pytest.fixture(scope="session")
def judged_world(judge_world, tmp_path_factory):
    """The shared world with tiny judges trained on it (``models/judges``, grounding threshold
    1e-6: 5-step judges always answer) and a tiny random 'SFT' generator (``models/sft``) that
    samples in 2 steps with CFG 2.5 in bf16: what the stages after SFT (rl, patchdpo) start from."""
    import yaml

    from components import judges as judges_stage
    from components.models.generator import SubjectGenerator
    from components.models.sampling import SamplingSettings
    from components.pipeline.project import default_params
    from tests.test_pretrain import SMALL_GEN

    data = judge_world[0]
    root = tmp_path_factory.mktemp("judged")
    params = default_params()
    params["judges"].update(TINY_JUDGES)
    params["judges"]["grounding_threshold"] = 1e-6
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert judges_stage.main(["--params", str(root / "params.yaml"), "--data", str(data), "--out",
                              str(root / "models" / "judges"), "--reports", str(root / "reports" / "judges"),
                              "--metrics", str(root / "metrics" / "judges.json")]) == 0
    sft = SubjectGenerator.tiny(**SMALL_GEN, seed=5)
    sft.save_pretrained(root / "models" / "sft")
    SamplingSettings(steps=2, guidance=2.5, precision="bf16").save(root / "models" / "sft")
    return root, data

