"""The shared training loop: checkpoints, a run killed after a checkpoint and resumed ends with
the weights of an uninterrupted run, and two CPU processes under ``accelerate launch`` keep
identical weights. The runs are real processes (tests/scripts/train_toy.py)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from components.training import EMA, LoopConfig, latest_checkpoint, schedule, step_randomness

SCRIPT = Path(__file__).parent / "scripts" / "train_toy.py"
REPO = Path(__file__).resolve().parents[1]


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _run(out: Path, *args: str) -> dict:
    subprocess.run([sys.executable, str(SCRIPT), str(out), *args], check=True, env=_env(), cwd=REPO,
                   capture_output=True)
    return json.loads((out / "result-rank0.json").read_text())


def _weights(out: Path, rank: int = 0) -> dict:
    return torch.load(out / f"weights-rank{rank}.pt")


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_schedule_warms_up_then_decays():
    f = schedule(LoopConfig(steps=10, batch_size=1, lr=1.0, warmup_steps=2))
    assert [round(f(s), 3) for s in (0, 1, 2)] == [0.5, 1.0, 1.0]
    assert f(10) == pytest.approx(0.1) and f(6) < f(3)


def test_ema_warms_up_and_round_trips():
    model = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = EMA(model, 0.999)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # first decay (1 + 0) / (10 + 0) = 0.1: the average is mostly the new weights
    assert torch.allclose(ema.shadow.weight, torch.full((1, 2), 0.9))
    assert ema.current_decay() == pytest.approx(2 / 11)
    ema.updates = 9000  # (1 + n) / (10 + n) passes 0.999 after 8991 updates: capped from there
    assert ema.current_decay() == 0.999
    clone = EMA(torch.nn.Linear(2, 1, bias=False), 0.999)
    clone.load_state_dict(ema.state_dict())
    assert clone.updates == ema.updates and torch.equal(clone.shadow.weight, ema.shadow.weight)


def test_step_randomness_is_a_function_of_its_coordinates():
    a, ga = step_randomness(1, 0, 5, 0)
    b, gb = step_randomness(1, 0, 5, 0)
    c, _ = step_randomness(1, 1, 5, 0)
    assert a.integers(1 << 30) == b.integers(1 << 30) != c.integers(1 << 30)
    assert torch.equal(torch.randn(3, generator=ga), torch.randn(3, generator=gb))


@pytest.mark.parametrize("mode", [[], ["--on-policy"]], ids=["offline", "on-policy"])
def test_killed_run_resumes_to_the_uninterrupted_weights(tmp_path, mode):
    """Offline batches, and on-policy collections (killed in the middle of one: the experience
    and the collector's state come back from the checkpoint)."""
    whole = _run(tmp_path / "whole", "--steps", "8", "--checkpoint-every", "2", *mode)
    assert whole["step"] == 8 and whole["resumed_from"] is None
    assert [h["step"] for h in whole["history"]] == list(range(1, 9))
    # The same run, killed (SIGKILL) once its step-4 checkpoint is on disk, then started again.
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(out), "--steps", "8", "--checkpoint-every", "2",
                             "--sleep", "0.4", *mode], env=_env(), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "checkpoints" / "step-0000004").is_dir():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its step-4 checkpoint"
        time.sleep(0.05)
    time.sleep(0.5)  # step 5 is under way
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "weights-rank0.pt").exists()
    resumed = _run(out, "--steps", "8", "--checkpoint-every", "2", *mode)
    assert resumed["resumed_from"] in (4, 6)
    assert _same(_weights(out)["raw"], _weights(tmp_path / "whole")["raw"])
    assert _same(_weights(out)["ema"], _weights(tmp_path / "whole")["ema"])
    # the resumed run's history is the whole run's, steps before the kill included: what the
    # uninterrupted run logged (loss and every objective term)
    terms = [k for k in whole["history"][0] if k not in ("samples_per_second",)]
    assert [{k: h[k] for k in terms} for h in resumed["history"]] == [{k: h[k] for k in terms} for h in whole["history"]]
    # older checkpoints are pruned (keep 2)
    assert latest_checkpoint(out).name == "step-0000008"
    assert len(list((out / "checkpoints").iterdir())) == 2


def test_a_run_killed_while_writing_a_checkpoint_resumes_from_the_last_whole_one(tmp_path):
    """Killed (SIGKILL) inside the step-4 checkpoint write, after its files are on disk but before
    the rename that completes it: the rerun resumes from step 2, removes the partial step-4 folder
    and ends with the weights of an uninterrupted run."""
    whole = _run(tmp_path / "whole", "--steps", "6", "--checkpoint-every", "2")
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(out), "--steps", "6", "--checkpoint-every", "2",
                             "--stall-checkpoint", "4"], env=_env(), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    partial = out / "checkpoints" / "step-0000004.tmp"
    deadline = time.time() + 120
    while not (partial / "model.safetensors").is_file():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its step-4 checkpoint"
        time.sleep(0.05)
    time.sleep(1.0)  # inside the stall: every file written, the folder not yet renamed
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert latest_checkpoint(out).name == "step-0000002" and partial.is_dir()
    # (no checkpoint on the way this time, so only the clean-up can remove the partial one)
    resumed = _run(out, "--steps", "6", "--checkpoint-every", "0")
    assert resumed["resumed_from"] == 2 and not partial.exists()
    assert _same(_weights(out)["raw"], _weights(tmp_path / "whole")["raw"])
    assert _same(_weights(out)["ema"], _weights(tmp_path / "whole")["ema"])
    assert whole["step"] == resumed["step"] == 6


def test_on_policy_collects_from_the_current_weights_and_logs_every_term(tmp_path):
    """Each collection comes from the weights of the moment: the first micro-batch after a
    collection has ratio exactly 1 (6 optimizer steps per collection of 3 batches x 2 inner
    epochs), later ones drift from 1 as the weights move; every term of the objective is logged."""
    res = _run(tmp_path / "rl", "--steps", "12", "--checkpoint-every", "0", "--on-policy")
    hist = res["history"]
    assert {"loss", "ratio", "clipfrac", "reward", "lr", "samples_per_second"} <= set(hist[0])
    fresh = [h for h in hist if h["step"] in (1, 7)]  # the first step after each collection
    assert all(h["ratio"] == pytest.approx(1.0, abs=1e-6) and h["clipfrac"] == 0 for h in fresh)
    assert any(abs(h["ratio"] - 1) > 1e-4 for h in hist if h["step"] not in (1, 7))


def test_gradient_accumulation_runs_and_logs(tmp_path):
    res = _run(tmp_path / "acc", "--steps", "3", "--grad-accum", "2", "--checkpoint-every", "0")
    assert res["step"] == 3 and all(np.isfinite(h["loss"]) for h in res["history"])
    assert all(h["samples_per_second"] > 0 and h["lr"] > 0 for h in res["history"])


@pytest.mark.integration
def test_two_processes_keep_identical_weights(tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` on CPU: two ranks, gloo DDP; each rank
    draws its own batches, gradients are averaged, weights stay equal."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
           "0", str(SCRIPT), str(out), "--steps", "4", "--checkpoint-every", "2"]
    done = subprocess.run(cmd, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    r0 = json.loads((out / "result-rank0.json").read_text())
    r1 = json.loads((out / "result-rank1.json").read_text())
    assert r0["world_size"] == r1["world_size"] == 2
    # Each rank trained on its own batches (two independent single-process runs would see the
    # same ones and also end equal), and the logged loss is their mean.
    l0, l1 = [h["local_loss"] for h in r0["history"]], [h["local_loss"] for h in r1["history"]]
    assert all(a != b for a, b in zip(l0, l1))
    assert [h["loss"] for h in r0["history"]] == pytest.approx([(a + b) / 2 for a, b in zip(l0, l1)], rel=1e-5)
    assert _same(_weights(out, 0)["raw"], _weights(out, 1)["raw"])
    assert _same(_weights(out, 0)["ema"], _weights(out, 1)["ema"])
    # ...and they moved: not two copies of the initial weights
    torch.manual_seed(0)
    init = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).state_dict()
    assert not _same({f"{k}": v for k, v in init.items()}, _weights(out, 0)["raw"])


def _launch2(out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
            "0", str(SCRIPT), str(out), *args]


@pytest.mark.integration
def test_two_processes_killed_on_policy_resume_each_ranks_own_state(tmp_path):
    """Two on-policy ranks collect different experience; killed (SIGKILL to the launcher's process
    group) inside the step-4 checkpoint write, the rerun resumes from step 2 with each rank's own
    experience, collector state and history (accelerate alone would give both rank 0's) and ends
    with the uninterrupted run's weights and per-rank logs."""
    args = ("--steps", "6", "--checkpoint-every", "2", "--on-policy")
    whole = tmp_path / "whole"
    done = subprocess.run(_launch2(whole, *args), env=_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "killed"
    proc = subprocess.Popen(_launch2(out, *args, "--stall-checkpoint", "4"), env=_env(), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while not (out / "checkpoints" / "step-0000004.tmp" / "custom_checkpoint_0.pkl").is_file():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its step-4 checkpoint"
        time.sleep(0.05)
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = subprocess.run(_launch2(out, *args), env=_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        resumed = json.loads((out / f"result-rank{rank}.json").read_text())
        uninterrupted = json.loads((whole / f"result-rank{rank}.json").read_text())
        assert resumed["resumed_from"] == 2
        assert [h["local_loss"] for h in resumed["history"]] == [h["local_loss"] for h in uninterrupted["history"]]
        assert _same(_weights(out, rank)["raw"], _weights(whole, rank)["raw"])


@pytest.mark.slow
def test_compiled_training_is_the_eager_training(tmp_path):
    """``LoopConfig.compile`` (pretrain's default): the transformer compiled in place trains to the
    eager run's losses up to rounding, keeps the eager parameter names (its checkpoint resumes an
    eager trainer), draws its sample grids and hands back its models without compiling anything
    more, and the model it returns is eager. Slow: one compilation of the tiny generator's forward
    and backward."""
    from torch._dynamo.utils import counters

    from components import world
    from components.models.generator import SubjectGenerator
    from components.objectives import FlowMatching, FlowMatchingBatch
    from components.training import Trainer

    rng = np.random.default_rng(0)
    pool = world.identity_pool("train", 0.1, "subjectflow-v1")
    samples = [world.sample_single(rng, pool) for _ in range(4)]
    rendered = [world.render(s.target) for s in samples]
    refs = [[world.render(s.refs[0]).image] for s in samples]
    batch = FlowMatchingBatch(np.stack([r.image for r in rendered]), [s.prompt for s in samples], refs,
                              np.stack([r.labels for r in rendered]))
    drawn = []

    def on_sample(model, step):  # a sample grid: other shapes, no gradients
        drawn.append(model.sample([s.prompt for s in samples[:2]], refs[:2], steps=2, seed=0)["images"])

    def trainer(out: Path, compiled: bool, ema: float | None = 0.9) -> Trainer:
        model = SubjectGenerator.tiny(width=32, heads=2, double_blocks=1, single_blocks=1, text_hidden=16, text_layers=1)
        loop = LoopConfig(steps=3, batch_size=4, lr=1e-3, ema_decay=ema, log_every=1, sample_every=2, compile=compiled)
        return Trainer(model, FlowMatching(0.1, 0.05, 0.05, 5.0), loop, out, make_batch=lambda r, g: batch,
                       on_sample=on_sample)

    eager = trainer(tmp_path / "eager", False).run()
    compiled = trainer(tmp_path / "compiled", True)
    graphs = counters["stats"]["unique_graphs"]
    done = compiled.run()
    assert counters["stats"]["unique_graphs"] > graphs  # it did compile (the training step)
    assert [h["loss"] for h in done.history] == pytest.approx([h["loss"] for h in eager.history], rel=1e-4)
    assert done.raw_model.transformer._compiled_call_impl is None  # handed back eager
    assert list(done.raw_model.state_dict()) == list(eager.raw_model.state_dict())
    resumed = trainer(tmp_path / "compiled", False)  # its final checkpoint into an eager trainer
    resumed.acc.load_state(str(latest_checkpoint(tmp_path / "compiled")))
    assert resumed.progress.step == 3 and _same(resumed.model.state_dict(), done.raw_model.state_dict())
    # Without EMA the grids are drawn from the compiled weights themselves: eagerly, nothing compiled.
    no_ema = trainer(tmp_path / "no-ema", True, ema=None)
    no_ema.step()  # compiles the training step
    graphs = counters["stats"]["unique_graphs"]
    no_ema.step()  # trains, then draws the grid of step 2
    assert counters["stats"]["unique_graphs"] == graphs and len(drawn) == 3
    assert no_ema.model.transformer._compiled_call_impl is not None  # compiled again after the grid
