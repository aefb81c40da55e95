"""PatchDPO: the patch-quality estimator on hand-made features and on a hand-made two-subject
image (each subject read against its own reference), the weights, the loss on hand-made tensors
(every weight 1 is flow matching; a negative weight pushes away), the weights of PatchDPO and of
its same-compute control, image-level DPO, and the two
stages end to end on the tiny world."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml

from components import patchdpo, patchdpo_data
from components.judging.base import Grounding, JudgeSet
from components.models.generator import SubjectGenerator
from components.models.sampling import SamplingSettings
from components.objectives.patchdpo import PairBatch, PatchDPO, dpo_loss, patch_weighted_loss
from components.pipeline.project import default_params
from components.config import load_params
from components.preference.data import MAPS, pair_weights
from components.preference.train import load_pairs
from components.preference.quality import paint, patch_quality, quality_maps, reference_weights, weights
from tests.conftest import TINY_JUDGES
from tests.test_pretrain import SMALL_GEN


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_a_patch_copied_from_the_reference_scores_one_and_a_foreign_patch_low():
    rng = np.random.default_rng(0)
    ref = _unit(rng.normal(size=(16, 64)))
    basis, _ = np.linalg.qr(ref.T)  # the reference patches' span; a foreign patch lies outside it
    foreign = _unit(rng.normal(size=64) - basis @ (basis.T @ rng.normal(size=64)))
    foreign = _unit(foreign - basis @ (basis.T @ foreign))
    gen = np.stack([ref[5], foreign, ref[9]])
    q_gen, q_ref = patch_quality(gen, ref)
    assert q_gen[0] == pytest.approx(1.0, abs=1e-6) and q_gen[2] == pytest.approx(1.0, abs=1e-6)
    assert abs(q_gen[1]) < 1e-6  # orthogonal to every reference patch
    assert q_ref[5] == pytest.approx(1.0, abs=1e-6) and q_ref[9] == pytest.approx(1.0, abs=1e-6)
    assert np.delete(q_ref, [5, 9]).max() < 0.9  # reference patches the output never drew


def test_a_crops_patches_are_painted_where_the_crop_was_taken():
    values = np.arange(4, dtype=np.float32)  # a 2x2 patch grid
    m = paint(values, (8, 8, 16, 16), (32, 32), pad=0.0)
    assert np.isnan(m[:8]).all() and np.isnan(m[:, 16:]).all()
    assert m[8, 8] == 0 and m[8, 15] == 1 and m[15, 8] == 2 and m[15, 15] == 3


def test_weights_good_positive_bad_negative_and_clamped_background_as_set():
    q = np.array([[1.0, 0.75, 0.5, 0.2, 0.0, np.nan]])
    w = weights(q, threshold=0.5, clamp=0.3, background=0.7)
    assert w[0, 0] == pytest.approx(1.0) and w[0, 1] == pytest.approx(0.5) and w[0, 2] == 0
    assert w[0, 3] == pytest.approx(-0.3) and w[0, 4] == pytest.approx(-0.3)  # clamped
    assert w[0, 5] == pytest.approx(0.7)
    assert list(weights(q, 0.5, 0.3, 0.7, subject=5.0)[0]) == pytest.approx([5, 2.5, 0, -1.5, -1.5, 0.7])
    # the reference: 0 where the output reproduced it perfectly, 1 at the threshold, up to 1 + clamp
    r = reference_weights(np.array([1.0, 0.75, 0.5, 0.0, np.nan]), threshold=0.5, clamp=0.3)
    assert list(r) == pytest.approx([0.0, 0.5, 1.0, 1.3, 0.0])
    # raw: 1 - the quality, clipped to [0, 1], whatever the threshold
    raw = reference_weights(np.array([1.0, 0.75, 0.5, -0.2, np.nan]), threshold=0.5, clamp=0.3, calibrated=False)
    assert list(raw) == pytest.approx([0.0, 0.25, 0.5, 1.0, 0.0])


class _ColourGrounder:
    """Finds a category by its colour channel (the cat red, the dog blue): the box around the
    pixels where that channel leads."""

    COLOURS = {"cat": (220, 30, 30), "dog": (30, 30, 220)}
    CHANNEL = {"cat": 0, "dog": 2}

    def ground(self, images, categories):
        out = []
        for img, cat in zip(images, categories):
            x = img.astype(int)
            c = self.CHANNEL[cat]
            ys, xs = np.nonzero((x[..., c] > 90) & (x[..., c] >= np.delete(x, c, -1).max(-1) + 20))
            out.append(Grounding((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1), 1.0) if len(xs) else
                       Grounding(None, 0.0))
        return out


class _PatchColourEncoder:
    """Patch features: each 4-pixel patch's mean colour with a stripe pattern's phase, normalised
    (so two patches agree when their colour and their pattern do)."""

    def patch_features(self, crops):
        feats = []
        for c in crops:
            x = c.astype(np.float32) / 255 - 0.5
            g = x.reshape(8, 4, 8, 4, 3).mean((1, 3)).reshape(64, 3)
            feats.append(_unit(np.concatenate([g, np.full((64, 1), 0.05)], 1)))
        return np.stack(feats)


def _square(colour, box, size=32, background=(128, 128, 128)):
    img = np.full((size, size, 3), background, np.uint8)
    x0, y0, x1, y1 = box
    img[y0:y1, x0:x1] = colour
    img[y0:y1:2, x0:x1] = np.asarray(colour) // 2  # stripes: the inside of a subject is not one colour
    return img


def test_the_estimator_reads_each_subject_against_its_own_reference():
    judges = JudgeSet(_PatchColourEncoder(), _ColourGrounder(), None, None)
    red, blue = _ColourGrounder.COLOURS["cat"], _ColourGrounder.COLOURS["dog"]
    out = _square(red, (2, 4, 12, 14))
    out[4:14, 18:28] = _square(blue, (18, 4, 28, 14))[4:14, 18:28]
    refs = [_square(red, (8, 8, 24, 24)), _square(blue, (6, 6, 26, 26))]
    other_dog = _square((30, 190, 240), (6, 6, 26, 26))  # another dog: blue, but with green in it
    meta = [{"refs": refs, "categories": ["cat", "dog"]}, {"refs": [refs[0], other_dog], "categories": ["cat", "dog"]}]
    right, swapped = quality_maps(judges, [out, out], meta)
    assert right.found.all() and right.subject.min() > 0.9  # the crops' padding is background: not quite 1
    assert right.gen[9, 7] > 0.95 and right.gen[9, 23] > 0.95  # inside both subjects
    assert np.isnan(right.gen[28, 2])  # the background stays unscored
    # the dog read against another dog's reference: lower where the dog is, the cat untouched
    assert swapped.subject[0] == right.subject[0] and swapped.subject[1] < right.subject[1] - 0.1
    assert swapped.gen[9, 23] < right.gen[9, 23] - 0.1 and swapped.gen[9, 7] == right.gen[9, 7]
    # the reference weights: high on the reference the output failed to reproduce
    assert np.nanmin(swapped.refs[1]) < np.nanmin(right.refs[1]) - 0.2
    # a subject the grounder misses in the output counts 0, and all of its reference was lost:
    # quality 0 over the reference's subject, nothing off it
    missing = quality_maps(judges, [_square(red, (2, 4, 12, 14))], meta[:1])[0]
    assert list(missing.found) == [True, False] and missing.subject[1] == 0
    assert missing.refs[1][16, 16] == 0 and np.isnan(missing.refs[1][1, 1]) and np.nanmax(missing.refs[1]) == 0


def test_every_weight_one_is_flow_matching():
    g = torch.Generator().manual_seed(0)
    v1, v2, t1, t2 = (torch.randn(3, 8, 12, generator=g) for _ in range(4))
    e1, e2 = (v1 - t1) ** 2, (v2 - t2) ** 2
    ones = torch.ones_like(e1)
    expected = F.mse_loss(torch.cat([v1, v2]), torch.cat([t1, t2]))
    assert torch.allclose(patch_weighted_loss(e1, e2, ones, ones), expected)
    assert torch.allclose(patch_weighted_loss(e1, e2, None, None), expected)


def test_a_negative_weight_pushes_the_prediction_away_and_a_positive_one_pulls_it_in():
    target = torch.zeros(1, 4, 3)
    for sign in (1.0, -1.0):
        v = torch.full((1, 4, 3), 0.5, requires_grad=True)
        err_before = ((v - target) ** 2).sum().item()
        loss = patch_weighted_loss((v - target) ** 2 * 0, (v - target) ** 2, None, torch.full((1, 4, 3), sign))
        loss.backward()
        with torch.no_grad():
            v -= 0.1 * v.grad
        err_after = ((v - target) ** 2).sum().item()
        assert (err_after < err_before) if sign > 0 else (err_after > err_before)


def test_the_objective_with_unit_weights_is_the_unweighted_control():
    model = SubjectGenerator.tiny(**SMALL_GEN, seed=1)
    s = model.config.resolution
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, (4, s, s, 3), dtype=np.uint8)
    refs = [[rng.integers(0, 255, (s, s, 3), dtype=np.uint8)] for _ in range(2)]
    batch = PairBatch(imgs[:2], imgs[2:], ["a cat", "a dog"], refs, torch.ones(2, s, s), torch.ones(2, s, s))
    a, _ = PatchDPO(weighted=True)(model, batch, torch.Generator().manual_seed(3))
    b, _ = PatchDPO(weighted=False)(model, batch, torch.Generator().manual_seed(3))
    assert torch.allclose(a, b)
    c, terms = PatchDPO(weighted=True)(model, PairBatch(imgs[:2], imgs[2:], ["a cat", "a dog"], refs,
                                                        torch.ones(2, s, s), -torch.ones(2, s, s)),
                                       torch.Generator().manual_seed(3))
    assert c < a and terms["negative_share"] == 1.0


def test_dpo_prefers_the_winner():
    zero = torch.zeros(2)
    loss0, margin0 = dpo_loss(zero, zero, zero, zero, beta=100.0)
    assert loss0 == pytest.approx(np.log(2)) and (margin0 == 0).all()
    # the policy fits the winner better than the frozen model does and the loser worse: the margin is positive
    loss, margin = dpo_loss(torch.tensor([0.1, 0.1]), torch.tensor([0.3, 0.3]), torch.tensor([0.2, 0.2]),
                            torch.tensor([0.2, 0.2]), beta=100.0)
    assert (margin > 0).all() and loss < loss0


@pytest.fixture(scope="module")
def world(judged_world, tmp_path_factory):
    """The tiny judges and 'SFT' generator of the shared world, and the data stage run on them."""
    models, data = judged_world[0] / "models", judged_world[1]
    root = tmp_path_factory.mktemp("patchdpo")
    params = default_params()
    params["judges"].update(TINY_JUDGES)
    params["judges"]["grounding_threshold"] = 1e-6
    params["generator"].update(SMALL_GEN)
    params["patchdpo"].update(rows=6, steps=4, checkpoint_every=2, sample_every=2)
    params["training"].update(batch_size=3, warmup_steps=1, log_every=1, grid_rows=2)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / "models").symlink_to(models)
    assert patchdpo_data.main(["--params", str(root / "params.yaml"), "--data", str(data / "multi"), "--init",
                               str(models / "sft"), "--judges", str(models / "judges"), "--out",
                               str(root / "data" / "patchdpo"), "--reports", str(root / "reports" / "patchdpo_data"),
                               "--metrics", str(root / "metrics" / "patchdpo_data.json")]) == 0
    return root, data


def _train(root, data, name, **cfg):
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["patchdpo"].update(cfg)
    (root / f"{name}.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert patchdpo.main(["--params", str(root / f"{name}.yaml"), "--pairs", str(root / "data" / "patchdpo"), "--data",
                          str(data / "multi"), "--init", str(root / "models" / "sft"), "--out", str(root / name / "model"),
                          "--reports", str(root / name / "reports"), "--checkpoints", str(root / name / "ck"),
                          "--metrics", str(root / name / "metrics.json")]) == 0
    return json.loads((root / name / "metrics.json").read_text())


def test_the_data_stage_draws_scores_and_weights_training_rows(world):
    root, data = world
    out = root / "data" / "patchdpo"
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert len(manifest) == 12 and manifest.row.nunique() == 6 and set(manifest["sample"]) == {0, 1}
    assert manifest.row.str.startswith("multi").all()  # training rows, never the benchmark's
    maps = dict(np.load(out / MAPS))
    assert maps["quality"].shape == (12, 32, 32) and maps["ref_quality"].shape == (12, 4, 32, 32)
    m = json.loads((root / "metrics" / "patchdpo_data.json").read_text())
    assert m["samples"] == 12 and 0 <= m["bad_pixel_share"] <= 1 and m["found_rate"] > 0
    cfg = load_params(root / "params.yaml").patchdpo
    threshold = json.loads((out / "calibration.json").read_text())["threshold"]
    ref_w, gen_w = pair_weights(maps, threshold, cfg, 5.0, "patch")
    on = ~np.isnan(maps["quality"].astype(np.float32))
    assert gen_w[on].min() >= -1.5 - 1e-5 and gen_w[on].max() <= 5.0 and (gen_w[~on] == 1.0).all()
    assert ref_w.min() >= 0 and ref_w.max() <= 5 * 1.3 + 1e-5
    assert (ref_w[np.isnan(maps["ref_quality"].astype(np.float32))] == 0).all()  # off a reference's subject
    ref_c, gen_c = pair_weights(maps, threshold, cfg, 5.0, "flow_matching")  # the control: SFT's weighting
    assert set(np.unique(gen_c)) <= {1.0, 5.0} and (gen_c[on] == 5.0).all() and set(np.unique(ref_c)) <= {1.0, 5.0}
    for name in ("maps.png", "weights.png", "weights.json"):
        assert (root / "reports" / "patchdpo_data" / name).stat().st_size > 0
    # the two samples of a row differ (their own noise)
    a, b = (np.asarray(pd.read_parquet(out / "manifest.parquet").query("sample == @s").image) for s in (0, 1))
    assert a[0] != b[0]


@pytest.mark.parametrize("objective", ["patch", "flow_matching", "image_dpo"])
def test_the_stage_trains_with_each_objective(world, objective):
    root, data = world
    m = _train(root, data, objective, objective=objective, min_gap=0.0)
    assert m["objective"] == objective and m["steps"] == 4 and m["pairs"] > 0
    model = SubjectGenerator.from_pretrained(root / objective / "model")
    assert SamplingSettings.load(root / objective / "model") == SamplingSettings.load(root / "models" / "sft")
    sft = SubjectGenerator.from_pretrained(root / "models" / "sft")
    assert any(not torch.equal(a, b) for a, b in zip(model.transformer.parameters(), sft.transformer.parameters()))
    if objective == "image_dpo":
        assert "final_accuracy" in m and "rows_tied" in m
    elif objective == "flow_matching":  # the control never pushes away
        assert m["final_negative_share"] == 0


def test_missed_subjects_and_normalized_weights(world, tmp_path):
    """A subject missed in the output (quality 0 over its reference, the most weight: the
    estimator test) is a pair's reference candidate only with ``missed_references``;
    ``normalize_weights`` scales the subjects' weights to average ``subject_weight`` per image kind."""
    root, data = world
    out = tmp_path / "pairs"
    shutil.copytree(root / "data" / "patchdpo", out)
    maps = dict(np.load(out / MAPS))
    assert maps["found"][:, 0].all()  # the tiny world's grounder finds every first subject
    # the first subject of the first three samples missed in the output, as the estimator stores it
    ref_q = maps["ref_quality"].astype(np.float32)
    maps["found"][:3, 0] = False
    ref_q[:3, 0] = np.where(np.isnan(ref_q[:3, 0]), np.nan, 0.0)
    maps["ref_quality"] = ref_q.astype(np.float16)
    np.savez_compressed(out / MAPS, **maps)
    has_map = ~np.isnan(ref_q).all((2, 3))
    params = load_params(root / "params.yaml")
    model = SubjectGenerator.from_pretrained(root / "models" / "sft")
    counts = {}
    for flag in (False, True):
        p = params.model_copy(update={"patchdpo": params.patchdpo.model_copy(update={"missed_references": flag})})
        pairs, info = load_pairs(p, out, data / "multi", model)
        counts[flag] = (info["pairs"], int(sum(c.sum() for c in pairs.candidates.values())))
    assert counts[False] == (int(maps["found"].any(1).sum()), int(maps["found"].sum()))
    assert counts[True] == (int(has_map.any(1).sum()), int(has_map.sum())) and counts[True][1] == counts[False][1] + 3
    threshold = json.loads((out / "calibration.json").read_text())["threshold"]
    ref_w, gen_w = pair_weights(maps, threshold, params.patchdpo, 5.0, "patch")
    assert np.nanmax(np.where(ref_q[:3, 0] == 0, ref_w[:3, 0], np.nan)) == pytest.approx(5 * 1.3)  # lost: the most
    cfg = params.patchdpo.model_copy(update={"normalize_weights": True})
    ref_w, gen_w = pair_weights(maps, threshold, cfg, 5.0, "patch")
    on, ref_on = ~np.isnan(maps["quality"].astype(np.float32)), ~np.isnan(ref_q)
    assert gen_w[on].mean() == pytest.approx(5.0, rel=1e-3) and ref_w[ref_on].mean() == pytest.approx(5.0, rel=1e-3)
    assert (gen_w[~on] == params.patchdpo.background_weight).all()
    # patchdpo.subject_weight replaces training.subject_weight on the subjects of both images, and
    # reference_weights: raw reaches the stage's pairs
    loaded = {}
    for sw, rw in ((None, "calibrated"), (1.0, "calibrated"), (1.0, "raw")):
        cfg = params.patchdpo.model_copy(update={"subject_weight": sw, "reference_weights": rw})
        pairs, _ = load_pairs(params.model_copy(update={"patchdpo": cfg}), out, data / "multi", model)
        loaded[sw, rw] = pairs
    k = next(iter(loaded[None, "calibrated"].first_weight))
    five, one, raw = (loaded[key] for key in ((None, "calibrated"), (1.0, "calibrated"), (1.0, "raw")))
    on_subject = five.second_weight[k] != params.patchdpo.background_weight
    assert params.training.subject_weight == 5 and on_subject.any()
    assert torch.allclose(five.second_weight[k][on_subject], 5 * one.second_weight[k][on_subject])
    assert torch.equal(five.second_weight[k][~on_subject], one.second_weight[k][~on_subject])
    assert torch.allclose(five.first_weight[k], 5 * one.first_weight[k])
    assert not torch.allclose(raw.first_weight[k], one.first_weight[k])
    assert torch.equal(raw.second_weight[k], one.second_weight[k])
