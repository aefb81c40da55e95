"""The rl stage end to end on a tiny world: it trains from the SFT generator with the reward
judges, logs what makes RL debuggable, resumes a killed run to the uninterrupted run's weights,
guards against reward hacking; and the real profile's LoRA path on a tiny random FLUX."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from components import rl
from components.grpo.collect import Collector
from components.grpo.probe import Probe
from components.judging.rewards import RewardOutput
from components.models.generator import SubjectGenerator
from components.models.sampling import SamplingSettings
from components.objectives.grpo import FlowGRPO
from components.pipeline.project import default_params
from tests.conftest import TINY_JUDGES, TINY_RL
from tests.test_flux_profile import flux_dir  # noqa: F401  (fixture)
from tests.test_pretrain import SMALL_GEN

TINY = {**TINY_RL, "steps": 6, "probe_rows": 4, "lr": 1e-3, "lora_rank": 4}


@pytest.fixture(scope="module")
def world(judged_world):
    """Tiny judges trained on the shared world, and a tiny 'SFT' generator folder."""
    return judged_world


def _rl(root, data, name, **cfg):
    params = default_params()
    params["generator"].update(SMALL_GEN)
    params["judges"].update(TINY_JUDGES)
    params["judges"]["grounding_threshold"] = 1e-6
    params["rl"] = {**TINY, **cfg}
    (root / f"{name}.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    code = rl.main(["--params", str(root / f"{name}.yaml"), "--data", str(data / "multi"), "--init",
                    str(root / "models" / "sft"), "--judges", str(root / "models" / "judges"), "--out",
                    str(root / name / "model"), "--reports", str(root / name / "reports"), "--checkpoints",
                    str(root / name / ".checkpoints"), "--metrics", str(root / name / "metrics.json")])
    assert code == 0
    return json.loads((root / name / "metrics.json").read_text())


def test_params_know_every_reward_of_the_registry():
    from components.config.training import RL_REWARDS
    from components.judging.rewards import available

    assert sorted(RL_REWARDS) == sorted(set(available()) - {"mix"})


def test_rl_trains_and_logs_every_iteration(world):
    root, data = world
    m = _rl(root, data, "plain")
    assert m["steps"] == 6 and m["iterations"] == 3 and m["reward_hacking_flagged_at"] is None
    out = root / "plain"
    model = SubjectGenerator.from_pretrained(out / "model")  # a generator folder the benchmark samples
    assert SamplingSettings.load(out / "model") == SamplingSettings.load(root / "models" / "sft")
    sft = SubjectGenerator.from_pretrained(root / "models" / "sft")
    # a LoRA adapter on the attention projections, merged into the saved weights: those moved, nothing else
    assert not torch.equal(model.transformer.transformer_blocks[0].attn.to_q.weight,
                           sft.transformer.transformer_blocks[0].attn.to_q.weight)
    assert torch.equal(model.transformer.proj_out.weight, sft.transformer.proj_out.weight)
    assert torch.equal(model.text_encoder.get_input_embeddings().weight,  # frozen: rollouts store its encodings
                       sft.text_encoder.get_input_embeddings().weight)
    it = pd.read_csv(out / "reports" / "iterations.csv")
    for col in ("reward", "reward_std", "advantage_std", "groups_kept", "psr_mean", "psr_std", "psr_miss_rate",
                "semantic_mean", "semantic_std", "aesthetic_mean", "aesthetic_std", "seconds_sampling",
                "seconds_scoring", "seconds_training"):
        assert col in it.columns, col
    assert len(it) == 3 and it.seconds_training.iloc[1:].gt(0).all()
    hist = pd.read_csv(out / "reports" / "history.csv")
    for col in ("kl", "ratio", "clipfrac_above", "clipfrac_below", "policy_loss"):
        assert col in hist.columns
    assert hist.ratio.iloc[0] == 1.0  # the first minibatch is on-policy: sampler and trainer agree exactly
    probe = pd.read_csv(out / "reports" / "probe.csv")
    assert probe.step.tolist() == [0, 2, 4, 6]
    for col in ("eval_judges/SC", "eval_judges/SA", "eval_judges/AES", "eval_judges/mix", "reward_judges/mix",
                "reward_judges/psr", "guard/hacking"):
        assert probe[col].notna().all(), col
    assert (out / "reports" / "curves.png").is_file() and (out / "reports" / "probe_grid.png").is_file()


def test_without_lora_the_whole_transformer_trains_against_a_frozen_copy(world):
    root, data = world
    m = _rl(root, data, "full", lora_rank=None, steps=2)
    model = SubjectGenerator.from_pretrained(root / "full" / "model")
    sft = SubjectGenerator.from_pretrained(root / "models" / "sft")
    assert m["steps"] == 2 and not torch.equal(model.transformer.proj_out.weight, sft.transformer.proj_out.weight)
    assert pd.read_csv(root / "full" / "reports" / "history.csv").kl.iloc[-1] > 0  # the policy left its reference


def test_a_killed_rl_run_resumes_to_the_uninterrupted_weights(world, monkeypatch):
    root, data = world
    whole = _rl(root, data, "whole")
    real = Collector.__call__

    def dies_at_iteration_2(self, *a, **k):  # after the step-4 checkpoint, inside a collection
        if self.iteration == 2:
            raise KeyboardInterrupt("killed")
        return real(self, *a, **k)

    monkeypatch.setattr(Collector, "__call__", dies_at_iteration_2)
    with pytest.raises(KeyboardInterrupt):
        _rl(root, data, "killed")
    monkeypatch.setattr(Collector, "__call__", real)
    resumed = _rl(root, data, "killed")
    assert resumed["resumed_from_step"] == 4
    a = SubjectGenerator.from_pretrained(root / "whole" / "model").state_dict()
    b = SubjectGenerator.from_pretrained(root / "killed" / "model").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    for report in ("iterations.csv", "probe.csv"):  # the whole run's logs, the part before the kill included
        x, y = (pd.read_csv(root / r / "reports" / report) for r in ("whole", "killed"))
        timing = [c for c in x.columns if "seconds" in c]
        pd.testing.assert_frame_equal(x.drop(columns=timing), y.drop(columns=timing))
    assert {k: v for k, v in whole.items() if k != "resumed_from_step"} == \
        {k: v for k, v in resumed.items() if k != "resumed_from_step"}


def _scripted(values):
    """A reward whose mean over the probe follows ``values``, one per call."""
    calls = iter(values)

    def reward(images, prompts, meta):
        return RewardOutput(np.full(len(images), next(calls), np.float32))
    return reward


def test_the_guard_flags_reward_up_while_the_evaluation_falls_and_keeps_the_best_weights(world):
    _, data = world
    model = SubjectGenerator.tiny(**SMALL_GEN, seed=5).eval()
    rows = rl.load_rows(data / "multi").take(range(2))
    reward = [0.50, 0.60, 0.70, 0.80]  # rising by more than the threshold
    evals = [0.50, 0.55, 0.50, 0.45]  # best at the second probe, then falling while the reward rises
    probe = Probe(rows, SamplingSettings(steps=1), {"psr": _scripted(reward)}, {"psr": 1.0},
                  {n: _scripted(evals) for n in ("psr", "semantic", "aesthetic")}, threshold=0.02,
                  trained={n for n, _ in model.named_parameters()})
    states = []
    for step in (0, 10, 20, 30):
        with torch.no_grad():
            model.transformer.proj_out.bias.add_(1.0)  # the weights the probe sees at each step
        states.append(model.transformer.proj_out.bias.clone())
        rec = probe(model, step)
    assert probe.flagged_at == 20 and rec["guard/hacking"] == 1.0 and probe.best["step"] == 10
    assert rl.choose_output("guarded", probe, 30) == 10 and rl.choose_output("last", probe, 30) == 30
    assert torch.equal(probe.best["state"]["transformer.proj_out.bias"], states[1])
    # the reward and the evaluation rising together is no hacking
    calm = Probe(rows, SamplingSettings(steps=1), {"psr": _scripted(reward)}, {"psr": 1.0},
                 {n: _scripted(reward) for n in ("psr", "semantic", "aesthetic")}, 0.02, set())
    for step in (0, 10, 20, 30):
        calm(model, step)
    assert calm.flagged_at is None and rl.choose_output("guarded", calm, 30) == 30


def test_the_lora_path_trains_an_rl_adapter_over_the_frozen_sft_adapter(flux_dir, tmp_path):  # noqa: F811
    from components.grpo.rollout import rollout
    from components.models.flux import from_flux
    from tests.test_grpo import _batch

    policy = from_flux(flux_dir, resolution=32, lora_rank=4)
    with torch.no_grad():  # an SFT adapter that does something
        for n, p in policy.transformer.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    x = torch.randn(2, policy.config.grid ** 2, policy.config.channels)
    t, text = torch.full((2,), 0.6), policy.encode_text(["a cat", "a dog"])
    refs = torch.randn(2, 1, policy.config.grid ** 2, policy.config.channels)
    with torch.no_grad():
        sft_v = policy.velocity(x, t, text, refs)
    reference = rl.attach_rl_adapter(policy, rank=2, seed=0)
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all(".rl." in n for n in trainable)
    with torch.no_grad():
        assert torch.equal(policy.velocity(x, t, text, refs), sft_v)  # the RL adapter starts at zero
        with reference(policy) as ref_model:  # the same network, RL adapter off: no second copy
            assert ref_model is policy
    r = rollout(policy, ["a cat"], [[np.zeros((32, 32, 3), np.uint8)]], group_size=2, steps=3, window_start=0,
                window_size=1, eta=0.7, guidance=1.0, precision="fp32", generator=torch.Generator().manual_seed(0))
    objective = FlowGRPO(clip_range=0.2, beta=0.5, reference=reference)
    loss, terms = objective(policy, _batch(r, [1.0, -1.0]), torch.Generator())
    assert float(terms["ratio"]) == 1.0 and float(terms["kl"]) == 0.0
    assert [n for n, p in policy.named_parameters() if p.requires_grad] == trainable  # the KL pass kept them
    opt = torch.optim.SGD([p for p in policy.parameters() if p.requires_grad], lr=1.0)
    loss.backward()
    opt.step()
    with torch.no_grad():
        moved = policy.velocity(x, t, text, refs)
        assert not torch.allclose(moved, sft_v)
        with reference(policy):
            assert torch.equal(policy.velocity(x, t, text, refs), sft_v)  # the SFT adapter did not move
    _, terms = objective(policy, _batch(r, [1.0, -1.0]), torch.Generator())
    assert float(terms["kl"]) > 0
    rl.save_policy(policy, tmp_path / "rl")
    loaded = SubjectGenerator.from_pretrained(tmp_path / "rl")  # one adapter of rank 4 + 2
    assert loaded.config.lora_rank == 6
    with torch.no_grad():
        torch.testing.assert_close(loaded.velocity(x, t, text, refs), moved, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("value,expected", [(None, 2.5), (1.0, 1.0)])
def test_rollouts_use_the_sft_models_guidance_unless_rl_sets_one(world, tmp_path, value, expected):
    from components.config import Params
    from components.grpo.train import build_rl

    root, data = world
    params = default_params()
    params["generator"].update(SMALL_GEN)
    params["judges"].update(TINY_JUDGES)
    params["rl"] = {**TINY, "rollout_guidance": value}
    paths = rl.RLPaths(data / "multi", root / "models" / "sft", root / "models" / "judges", tmp_path / "o",
                       tmp_path / "r", tmp_path / "c")
    assert build_rl(Params.model_validate(params), paths).collector.s.guidance == expected
