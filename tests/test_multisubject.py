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
from pydantic import ValidationError

from components import multisubject, world
from components.bootstrap import pairs, redraw
from components.bootstrap.pairs import pair_status
from components.bootstrap import is_recomposed
from components.judging.base import keep_in_place
from components.config import Params
from components.data.grids import load_rgb
from components.data.manifest import read_manifest
from components.judging.base import JudgeSet, isolate
from components.multisubject import MultisubjectPaths
from components.pipeline.stage import DataValidationError
from components.world.render import Scene
from tests.test_rewards import ConstantAesthetic, HistogramEncoder, Truth, TruthGrounder, TruthSemantic

# Bootstrapping in its plain form (every scene, one draw per subject, references re-centred, no
# recomposition); each test adds the one setting it is about. The shipped defaults sample more.
PLAIN = {"max_scenes": None, "subset_weights": {}, "in_place": 0.0, "candidates": 1, "recompose": {},
         "recompose_layout": "as_given"}


def test_isolate_centres_the_subject_crop_at_the_given_size():
    image = np.zeros((32, 32, 3), np.uint8)
    image[2:8, 20:30] = 255  # a 10x6 white subject in the top right corner
    out = isolate(image, (20, 2, 30, 8), subject_size=20)
    assert out.shape == (32, 32, 3)
    white = np.argwhere(out.min(-1) > 200)
    (y0, x0), (y1, x1) = white.min(0), white.max(0)
    assert abs((x0 + x1) / 2 - 15.5) <= 1 and abs((y0 + y1) / 2 - 15.5) <= 1  # centred
    assert 14 <= x1 - x0 + 1 <= 20  # scaled up from 10 px to most of the 20 px crop


def test_keep_in_place_keeps_the_subject_where_it_sits_and_drops_the_others():
    image = np.zeros((32, 32, 3), np.uint8)
    image[:] = (40, 90, 200)  # sky
    image[2:8, 20:30] = 255  # the subject, 10x6, top right
    image[20:30, 2:12] = (200, 30, 30)  # another subject, bottom left
    out = keep_in_place(image, (20, 2, 30, 8))
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.array_equal(out[2:8, 20:30], image[2:8, 20:30])  # same pixels, same place, same size
    assert not np.any(np.all(out == (200, 30, 30), axis=-1))  # the other subject is gone
    assert np.all(out[20:30, 2:12] == (40, 90, 200))  # its place continues the box's surround
    edge = keep_in_place(image, (0, 0, 3, 3), pad=0.5)  # a box at the border stays inside the image
    assert edge.shape == image.shape and np.array_equal(edge[:3, :3], image[:3, :3])


def test_scenes_are_drawn_with_their_subset_weights():
    subsets = pd.Series(["Four"] * 500 + ["Action"] * 500)
    rows = redraw.draw_scenes(subsets, 200, {"Four": 4.0}, seed=0)
    assert len(set(rows)) == 200 and list(rows) == sorted(rows)
    assert 140 <= (subsets[rows] == "Four").sum() <= 180  # about 4 of every 5 (more as Four rows run out)
    even = redraw.draw_scenes(subsets, 200, {}, seed=0)
    assert 70 <= (subsets[even] == "Four").sum() <= 130
    with pytest.raises(ValidationError, match="Fuor"):  # a misspelt subset is a params error
        Params.model_validate({"multisubject": {**PLAIN, "subset_weights": {"Fuor": 2.0}}})


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
    targets = [load_rgb(data / "multi" / t) for t in manifest.target]
    regenerations, perfect, modes, inputs = {}, {}, {}, []  # per input: its redraw, a perfect one, its mode
    for i, (scene_json, n) in enumerate(zip(manifest.scene, manifest.n_subjects)):
        scene = Scene.from_dict(json.loads(scene_json))
        for k in range(n):
            box = judges.grounder.ground([targets[i]], [scene.placements[k].identity.category])[0].box
            # what the stage hands the model: the subject re-centred, or where it sits (in_place)
            keys = (isolate(targets[i], box, 20).tobytes(), keep_in_place(targets[i], box).tobytes())
            inputs += keys
            exact = truth.render(scene)  # a perfect redraw: the subject exactly as in the scene
            if i == 0 and k == 0:  # the same category, in colours the subject does not have
                p = scene.placements[0]
                other = next(x for x in pool[p.identity.category] if not set(x.colors) & set(p.identity.colors))
                drawn = truth.render(replace(scene, placements=(replace(p, identity=other),) + scene.placements[1:]))
            elif i == 1 and k == 0:
                drawn = np.zeros((32, 32, 3), np.uint8)
            else:
                drawn = exact
            for key, mode in zip(keys, ("moved", "in_place")):
                perfect[key], regenerations[key], modes[key] = exact, drawn, mode
    assert len(set(inputs)) == len(inputs)  # every subject's input is its own
    calls = {"seeds": [], "prompts": [], "inputs": [], "perfect": perfect, "modes": modes}

    def fake_regenerate(model, inputs, prompts, batch_size, steps, guidance, seed, precision="fp32", fan=None):
        calls["prompts"] += prompts
        calls["inputs"] += [x.tobytes() for x in inputs]
        calls["seeds"].append(seed)
        return [regenerations[x.tobytes()] for x in inputs]

    monkeypatch.setattr(pairs, "load_judge_set", lambda *a, **k: judges)
    monkeypatch.setattr(pairs.SubjectGenerator, "from_pretrained", classmethod(lambda cls, p: NoModel()))
    monkeypatch.setattr(redraw, "regenerate", fake_regenerate)
    paths = MultisubjectPaths(data=data / "multi", bench=data / "bench", generator=tmp_path / "pretrain",
                              judges=tmp_path / "judges", out=tmp_path / "multisubject", reports=tmp_path / "reports")
    return manifest, paths, calls


def test_bootstrapping_keeps_consistent_pairs_and_says_why_others_were_dropped(staged):
    manifest, paths, calls = staged
    params = Params.model_validate({"multisubject": {**PLAIN, "threshold": 0.9}})
    m = multisubject.run(params, paths)
    n_subjects = int(manifest.n_subjects.sum())
    # scenes 0 and 1 fail on their first subject, so their later subjects are never drawn
    lost = int(manifest.n_subjects[0] + manifest.n_subjects[1]) - 2
    assert m["scenes"] == len(manifest) and m["subjects"] == n_subjects and m["regenerations"] == n_subjects - lost
    assert m["dropped_by_reason"] == {"not_in_target": 0, "not_in_reference": 1, "inconsistent": 1}
    assert m["kept"] == len(manifest) - 2 and m["gate"]["success"]
    subjects = pd.read_csv(paths.reports / "subjects.csv")
    first = subjects[subjects.sample_id == manifest.id[0]].iloc[0]
    assert first.status == "inconsistent" and first.similarity < 0.5
    assert subjects[subjects.status == "kept"].similarity.min() > 0.99
    assert subjects[subjects.sample_id == manifest.id[1]].iloc[0].status == "not_in_reference"
    assert (subjects.status == "kept").sum() == n_subjects - 2 - lost
    assert (subjects.status == "not_drawn").sum() == lost and (subjects.draws == 1).sum() == n_subjects - lost
    assert len(set(calls["inputs"])) == len(calls["inputs"])  # with one candidate, nothing is drawn twice
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


def test_a_share_of_scenes_hands_its_subjects_over_in_place(staged):
    """``in_place`` decides per scene how its subjects reach the model: every subject of an
    in-place scene where it sits in the scene, every other one re-centred; the share follows the
    knob, and each reference's provenance says which it was."""
    manifest, paths, calls = staged
    m = multisubject.run(Params.model_validate({"multisubject": {**PLAIN, "threshold": 0.9, "in_place": 0.5}}), paths)
    subjects = pd.read_csv(paths.reports / "subjects.csv")
    drawn = subjects[subjects.draws > 0]
    assert sorted(calls["modes"][x] for x in calls["inputs"]) == sorted(
        "in_place" if v else "moved" for v in drawn.in_place)
    assert (subjects.groupby("sample_id").in_place.nunique() == 1).all()  # one mode per scene
    n_in = int(subjects.groupby("sample_id").in_place.first().sum())
    assert 0 < n_in < len(manifest) and m["in_place"]["scenes"] == n_in
    assert m["in_place"]["scenes"] + m["moved"]["scenes"] == len(manifest)
    assert m["in_place"]["kept"] + m["moved"]["kept"] == m["kept"]
    out = read_manifest(paths.out)
    flags = subjects.set_index(["sample_id", "k"]).in_place
    for r in out.itertuples():
        for k, desc in enumerate(r.ref_scenes):
            assert json.loads(desc)["in_place"] == bool(flags[(json.loads(desc)["source"], k)])
    for share, mode in ((0.0, "moved"), (1.0, "in_place")):
        calls["inputs"].clear()
        multisubject.run(Params.model_validate({"multisubject": {**PLAIN, "threshold": 0.9, "in_place": share}}), paths)
        assert calls["inputs"] and {calls["modes"][x] for x in calls["inputs"]} == {mode}


def test_a_failing_subject_is_redrawn_until_one_passes(staged, monkeypatch):
    """Three candidates: the first sampler seed gives the fixture's flawed redraws, the second a
    perfect one. The two flawed subjects are redrawn once more and pass; nothing that passed is
    drawn again, and no subject reaches a third draw."""
    manifest, paths, calls = staged
    flawed = redraw.regenerate

    def first_flawed(model, inputs, prompts, batch_size, steps, guidance, seed, precision="fp32", fan=None):
        first = flawed(model, inputs, prompts, batch_size, steps, guidance, seed, precision)
        return first if seed < redraw.SEED_STRIDE else [calls["perfect"][x.tobytes()] for x in inputs]

    monkeypatch.setattr(redraw, "regenerate", first_flawed)
    m = multisubject.run(Params.model_validate({"multisubject": {**PLAIN, "threshold": 0.9, "candidates": 3, "seed": 5}}), paths)
    assert m["kept"] == len(manifest) and m["candidates"] == 3
    assert m["dropped_by_reason"] == {"not_in_target": 0, "not_in_reference": 0, "inconsistent": 0}
    n_subjects = int(manifest.n_subjects.sum())
    assert m["regenerations"] == n_subjects + 2  # the two flawed first subjects, twice
    subjects = pd.read_csv(paths.reports / "subjects.csv")
    assert sorted(subjects.draws.tolist()) == [1] * (n_subjects - 2) + [2, 2]
    assert calls["seeds"][:2] == [5, 5 + redraw.SEED_STRIDE]  # one seed per round
    assert all(s - 5 == r * redraw.SEED_STRIDE for r, s in enumerate(calls["seeds"]))


def test_a_subject_failing_every_candidate_ends_its_scene(staged):
    """Scene 0's first subject fails on every seed: it is drawn ``candidates`` times, and the
    scene's other subjects never."""
    manifest, paths, calls = staged
    m = multisubject.run(Params.model_validate({"multisubject": {**PLAIN, "threshold": 0.9, "candidates": 4}}), paths)
    subjects = pd.read_csv(paths.reports / "subjects.csv")
    scene0 = subjects[subjects.sample_id == manifest.id[0]].sort_values("k")
    assert scene0.draws.tolist() == [4] + [0] * (len(scene0) - 1)
    assert scene0.status.tolist() == ["inconsistent"] + ["not_drawn"] * (len(scene0) - 1)
    assert m["kept"] == len(manifest) - 2


def test_the_gate_rejects_a_bootstrapped_dataset_with_nothing_kept(staged, monkeypatch):
    manifest, paths, _ = staged
    monkeypatch.setattr(redraw, "regenerate", lambda model, inputs, *a: [np.zeros((32, 32, 3), np.uint8)] * len(inputs))
    with pytest.raises(DataValidationError, match="row_count"):
        multisubject.run(Params.model_validate({"multisubject": PLAIN}), paths)
    assert not paths.out.exists()  # nothing published


def test_recomposed_pairs_render_new_scenes_of_identities_whose_reference_passed(staged):
    """Scene 0's and scene 1's first subjects fail; every other subject passes. Recomposed
    Three/Four pairs are new renders of the world whose subjects all have a passing reference,
    and each reference is one of that identity's passing regenerations."""
    manifest, paths, _ = staged
    params = Params.model_validate({"multisubject": {**PLAIN, "threshold": 0.9, "recompose": {"Three": 6, "Four": 4}}})
    m = multisubject.run(params, paths)
    assert m["recomposed"] == {"Three": 6, "Four": 4} and m["rows"] == m["kept"] + 10 and m["gate"]["success"]
    subjects = pd.read_csv(paths.reports / "subjects.csv")
    ident = {(r.sample_id, r.k): manifest.set_index("id").identities[r.sample_id][r.k] for r in subjects.itertuples()}
    passed = {ident[(r.sample_id, r.k)] for r in subjects.itertuples() if r.status == "kept"}
    failed = {ident[(manifest.id[0], 0)], ident[(manifest.id[1], 0)]} - passed
    assert m["identities_passed"] == len(passed) and failed
    out = read_manifest(paths.out)
    new = out[out.id.str.match(r"multisubject-(three|four)-")]
    # sft_std tells the packed rows by their ids (training/sft.py: target_references)
    assert list(out.id.map(is_recomposed)) == list(out.id.isin(new.id)) and len(new) == 10
    assert len(new) == 10 and out.id.is_unique and set(new.subset) == {"Three", "Four"}
    assert all(len(r.identities) == len(r.refs) == {"Three": 3, "Four": 4}[r.subset] for r in new.itertuples())
    assert all(set(r.identities) <= passed for r in new.itertuples())
    # a reference is the regeneration that passed for that identity (its provenance says where from)
    regen = {}
    for r in out[~out.id.isin(new.id)].itertuples():
        for i, ref in zip(r.identities, r.refs):
            regen.setdefault(i, []).append(load_rgb(paths.out / ref))
    for r in new.itertuples():
        scene = Scene.from_dict(json.loads(r.scene))
        assert np.array_equal(load_rgb(paths.out / r.target), world.render(scene, 32, 32, 4).image)
        assert [p.identity.id for p in scene.placements] == list(r.identities)
        for i, ref, desc in zip(r.identities, r.refs, r.ref_scenes):
            assert json.loads(desc)["similarity"] >= 0.9
            assert i in regen and any(np.array_equal(load_rgb(paths.out / ref), x) for x in regen[i])
    assert (paths.reports / "recomposed.png").is_file() and "Recomposed" in (paths.reports / "summary.md").read_text()


def test_slot_layout_puts_subject_k_and_its_packed_reference_in_slot_k(staged):
    """``recompose_layout: slots``: a recomposed pair's subject k stands in slot k of
    models/layout.py, its reference is one of the identity's re-centred passing regenerations
    packed into the same slot (never an in-place one), and the dataset records the layout that
    sft hands on to the model."""
    from components.models import layout

    manifest, paths, _ = staged
    params = Params.model_validate({"multisubject": {**PLAIN, "threshold": 0.9, "in_place": 0.5, "recompose": {"Three": 5, "Four": 5},
                                                     "recompose_layout": "slots"}})
    m = multisubject.run(params, paths)
    assert m["recomposed"] == {"Three": 5, "Four": 5} and m["gate"]["success"]
    assert layout.load_layout(paths.out) == "slots"
    out = read_manifest(paths.out)
    new = out[out.id.str.match(r"multisubject-(three|four)-")]
    regen = {}  # identity -> its re-centred passing regenerations, with their subject boxes
    for r in out[~out.id.isin(new.id)].itertuples():
        for i, ref, box, desc in zip(r.identities, r.refs, r.ref_boxes, r.ref_scenes):
            if not json.loads(desc)["in_place"]:
                regen.setdefault(i, []).append((load_rgb(paths.out / ref), list(box)))
    assert regen
    for r in new.itertuples():
        n = len(r.refs)
        scene = Scene.from_dict(json.loads(r.scene))
        for k, (p, box, ref, ref_box, desc, i) in enumerate(zip(scene.placements, r.boxes, r.refs, r.ref_boxes,
                                                              r.ref_scenes, r.identities)):
            sx, sy = layout.SLOTS[n][k]
            assert abs(p.cx - sx) <= 0.04 + 1e-9 and abs(p.cy - sy) <= 0.04 + 1e-9
            assert abs((box[0] + box[2]) / 2 / 32 - sx) < 0.15 and abs((box[1] + box[3]) / 2 / 32 - sy) < 0.15
            assert not json.loads(desc)["in_place"]
            image = load_rgb(paths.out / ref)
            assert any(np.array_equal(image, layout.pack(x, k, n)) and list(ref_box) == layout.pack_box(b, k, n, 32)
                       for x, b in regen[i])
    # the free layout records as_given
    multisubject.run(Params.model_validate({"multisubject": {**PLAIN, "threshold": 0.9, "recompose": {"Three": 2}}}), paths)
    assert layout.load_layout(paths.out) == "as_given"


def test_slot_layout_rejects_tasks_it_has_no_slots_for():
    with pytest.raises(ValidationError, match="slots for"):
        Params.model_validate({"multisubject": {**PLAIN, "recompose": {"Position": 3}, "recompose_layout": "slots"}})
