"""The multisubject stage (PSR's data bootstrapping) with transparent stand-in judges (they read
the world's ground truth, as in test_rewards) and a stand-in regenerator, so each status is
forced on purpose: a faithful regeneration is kept, another identity of the same category is
dropped as inconsistent, an image without the subject as not_in_reference."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from components import multisubject, world
from components.config import Params
from components.datasets import read_manifest
from components.grids import load_rgb
from components.judges.base import JudgeSet
from components.multisubject import MultisubjectPaths, isolate, pair_status
from components.stage import DataValidationError
from components.world.render import Scene
from tests.test_rewards import ConstantAesthetic, HistogramEncoder, Truth, TruthGrounder, TruthSemantic


def test_isolate_centres_the_subject_crop_at_the_given_size():
    image = np.zeros((32, 32, 3), np.uint8)
    image[2:8, 20:30] = 255  # a 10x6 white subject in the top right corner
    out = isolate(image, (20, 2, 30, 8), subject_size=20)
    assert out.shape == (32, 32, 3)
    white = np.argwhere(out.min(-1) > 200)
    (y0, x0), (y1, x1) = white.min(0), white.max(0)
    assert abs((x0 + x1) / 2 - 15.5) <= 1 and abs((y0 + y1) / 2 - 15.5) <= 1  # centred
    assert 14 <= x1 - x0 + 1 <= 20  # scaled up from 10 px to most of the 20 px crop


def test_a_pair_keeps_only_if_every_subject_does():
    assert pair_status(["kept", "kept", "kept"]) == "kept"
    assert pair_status(["kept", "inconsistent"]) == "inconsistent"
    assert pair_status(["inconsistent", "not_in_target"]) == "not_in_target"
    assert pair_status(["not_in_reference", "inconsistent"]) == "not_in_reference"


class NoModel:
    def eval(self):
        return self


@pytest.fixture
def staged(judge_world, tmp_path, monkeypatch):
    """The stage on judge_world's multi data with truth judges; each regeneration shows its
    subject exactly as the scene does, except scene 0's first (other colours) and scene 1's
    first (nothing at all)."""
    data = judge_world[0]
    manifest = read_manifest(data / "multi")
    truth = Truth()
    for scene in manifest.scene:  # the targets, so the grounder knows them
        truth.render(Scene.from_dict(json.loads(scene)))
    judges = JudgeSet(HistogramEncoder(), TruthGrounder(truth), TruthSemantic(truth), ConstantAesthetic())
    pool = world.identity_pool("bench", 0.1, "subjectflow-v1")
    regenerations = []
    for i, (scene_json, n) in enumerate(zip(manifest.scene, manifest.n_subjects)):
        scene = Scene.from_dict(json.loads(scene_json))
        for k in range(n):
            if i == 0 and k == 0:  # the same category, in colours the subject does not have
                p = scene.placements[0]
                other = next(x for x in pool[p.identity.category] if not set(x.colors) & set(p.identity.colors))
                regenerations.append(truth.render(replace(scene, placements=(replace(p, identity=other),)
                                                          + scene.placements[1:])))
            elif i == 1 and k == 0:
                regenerations.append(np.zeros((32, 32, 3), np.uint8))
            else:  # a perfect redraw: the subject exactly as in the scene
                regenerations.append(truth.render(scene))
    calls = {"seeds": []}

    def fake_regenerate(model, inputs, prompts, batch_size, steps, guidance, seed):
        calls.update(inputs=inputs, prompts=prompts)
        calls["seeds"].append(seed)
        return regenerations[:len(inputs)]

    monkeypatch.setattr(multisubject, "load_judge_set", lambda *a, **k: judges)
    monkeypatch.setattr(multisubject.SubjectGenerator, "from_pretrained", classmethod(lambda cls, p: NoModel()))
    monkeypatch.setattr(multisubject, "regenerate", fake_regenerate)
    calls["perfect"] = [truth.render(Scene.from_dict(json.loads(s))) for s, n in zip(manifest.scene, manifest.n_subjects)
                        for _ in range(n)]
    paths = MultisubjectPaths(data=data / "multi", bench=data / "bench", generator=tmp_path / "pretrain",
                              judges=tmp_path / "judges", out=tmp_path / "multisubject", reports=tmp_path / "reports")
    return manifest, paths, calls


def test_bootstrapping_keeps_consistent_pairs_and_says_why_others_were_dropped(staged):
    manifest, paths, calls = staged
    params = Params.model_validate({"multisubject": {"threshold": 0.9}})
    m = multisubject.run(params, paths)
    n_subjects = int(manifest.n_subjects.sum())
    assert m["scenes"] == len(manifest) and m["subjects"] == n_subjects == m["regenerations"]
    assert m["dropped_by_reason"] == {"not_in_target": 0, "not_in_reference": 1, "inconsistent": 1}
    assert m["kept"] == len(manifest) - 2 and m["gate"]["success"]
    subjects = pd.read_csv(paths.reports / "subjects.csv")
    first = subjects[subjects.sample_id == manifest.id[0]].iloc[0]
    assert first.status == "inconsistent" and first.similarity < 0.5
    assert subjects[subjects.status == "kept"].similarity.min() > 0.99
    assert subjects[subjects.sample_id == manifest.id[1]].iloc[0].status == "not_in_reference"
    assert (subjects.status == "kept").sum() == n_subjects - 2
    # single-subject prompts on another background than the scene's
    assert all(p.startswith("the ") and "from image 1" in p for p in calls["prompts"])
    bg = dict(zip(subjects.sample_id + subjects.k.astype(str), subjects.background))
    assert all(bg[r.id + "0"] != r.background for r in manifest.itertuples())
    # the published dataset: kept scenes, their regenerations as references, ids mapped back
    out = read_manifest(paths.out)
    assert len(out) == m["kept"] and set(out.split) == {"multisubject"}
    sources = [json.loads(s[0])["source"] for s in out.ref_scenes]
    assert manifest.id[0] not in sources and manifest.id[1] not in sources
    row = out.iloc[0]
    src = manifest.set_index("id").loc[sources[0]]
    assert row.prompt == src.prompt and list(row.categories) == list(src.categories)
    assert np.array_equal(load_rgb(paths.out / row.target), load_rgb(paths.data / src.target))
    assert len(row.refs) == len(src.refs) and all((paths.out / r).is_file() for r in row.refs)
    for name in ("summary.md", "similarity.png", "kept.png", "dropped.png", "pairs.csv", "validate/summary.md"):
        assert (paths.reports / name).is_file(), name


def test_the_most_consistent_of_several_candidates_is_judged(staged, monkeypatch):
    """Two candidates per subject: the first sampler seed gives the flawed regenerations of
    the fixture, the second perfect ones; every subject then keeps its perfect candidate."""
    manifest, paths, calls = staged
    flawed = multisubject.regenerate

    def two_kinds(model, inputs, prompts, batch_size, steps, guidance, seed):
        first = flawed(model, inputs, prompts, batch_size, steps, guidance, seed)
        return first if seed < multisubject.SEED_STRIDE else calls["perfect"][:len(inputs)]

    monkeypatch.setattr(multisubject, "regenerate", two_kinds)
    m = multisubject.run(Params.model_validate({"multisubject": {"threshold": 0.9, "candidates": 2, "seed": 5}}), paths)
    assert calls["seeds"] == [5, 5 + multisubject.SEED_STRIDE]
    assert m["kept"] == len(manifest) and m["candidates"] == 2
    assert m["dropped_by_reason"] == {"not_in_target": 0, "not_in_reference": 0, "inconsistent": 0}


def test_the_gate_rejects_a_bootstrapped_dataset_with_nothing_kept(staged, monkeypatch):
    manifest, paths, _ = staged
    monkeypatch.setattr(multisubject, "regenerate", lambda model, inputs, *a: [np.zeros((32, 32, 3), np.uint8)] * len(inputs))
    with pytest.raises(DataValidationError, match="row_count"):
        multisubject.run(Params(), paths)
    assert not paths.out.exists()  # nothing published
